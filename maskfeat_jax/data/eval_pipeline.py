"""The evaluation input pipeline: every view (clip x crop) of every example of a split, in finite batches.

Every example of the split yields num_clips x num_crops views (`slowfast/datasets/kinetics.py` test mode:
uniformly spaced temporal clips, left/centre/right or top/centre/bottom crops at the test short side; with
config.data.sampling='segments' the one clip of `slowfast/datasets/ssv2.py`, the middle frame of each segment);
process p takes examples p, p + P, ...; batches are padded to full size (`valid` = False) and every process
yields the same number of batches (collectives stay in step). A record that cannot be read yields invalid
views, counted and logged. Dataset, clip spec and record reading are shared with the train pipeline
(data/pipeline.py).
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import grain
import numpy as np
from PIL import Image

from maskfeat_jax.data import storage
from maskfeat_jax.data import transforms
from maskfeat_jax.data.pipeline import (ClipSpec, Failures, Records, clip_indices, clip_spec, decode_frames,
                                        load_meta, read_options)


class _EvalMap:
  """Example index -> all its views {'video' [V,...], 'label', 'ok'} (ok False for an unreadable record)."""

  def __init__(self, spec: ClipSpec, records: Records):
    self.spec = spec
    self.records = records
    self.failures = Failures(spec.split)
    self.num_views = 1 if spec.image_mode else spec.num_clips * len(transforms.spatial_indices(spec.num_crops))

  def view_shape(self) -> tuple[int, ...]:
    s = self.spec.crop_size
    return (s, s, 3) if self.spec.image_mode else (self.spec.num_frames, s, s, 3)

  def __call__(self, example: int) -> dict[str, Any]:
    try:
      record = self.records[example]
      views, label = (_image_eval if self.spec.image_mode else _video_eval)(self.spec, record)
    except Exception as error:  # pylint: disable=broad-except
      self.failures.record(example, error)
      return {"views": np.zeros((self.num_views,) + self.view_shape(), np.uint8), "label": np.int32(0),
              "example": np.int32(example), "ok": np.bool_(False)}
    self.failures.ok()
    return {"views": views, "label": np.int32(label), "example": np.int32(example), "ok": np.bool_(True)}


def _video_eval(spec: ClipSpec, record: bytes):
  parsed = storage.parse_video_record(record)
  frames = parsed["frames"]
  crops = transforms.spatial_indices(spec.num_crops)
  index_sets = [clip_indices(spec, len(frames), parsed["fps"], clip_idx=k) for k in range(spec.num_clips)]
  decoded = decode_frames(frames, np.concatenate(index_sets))
  views = []
  for k in range(spec.num_clips):  # view = clip_idx * num_crops + crop position (official order)
    clip = decoded[k * spec.num_frames:(k + 1) * spec.num_frames]
    for spatial_idx in crops:
      views.append(transforms.test_spatial(clip, short_side=spec.test_short_side, crop_size=spec.crop_size,
                                           spatial_idx=spatial_idx))
  return np.stack(views), parsed["label"]


def _image_eval(spec: ClipSpec, record: bytes):
  """timm eval: bicubic resize of the short side to test_short_side, centre crop (PIL)."""
  parsed = storage.parse_image_record(record)
  image = storage.decode_image(parsed["image"])
  h, w = image.shape[:2]
  rh, rw = transforms.short_side_size(h, w, spec.test_short_side)
  resized = np.asarray(Image.fromarray(image).resize((rw, rh), Image.BICUBIC))
  top = int(round((rh - spec.crop_size) / 2))
  left = int(round((rw - spec.crop_size) / 2))
  return resized[None, top:top + spec.crop_size, left:left + spec.crop_size], parsed["label"]


class EvalIterator:
  """Finite iterator of padded eval batches; `num_batches` is the same on every process."""

  def __init__(self, per_example, num_local_examples: int, num_batches: int, batch_size: int, num_views: int,
               view_shape: tuple[int, ...], key: str):
    self._per_example = per_example
    self.num_local_examples = num_local_examples
    self.num_batches = num_batches
    self.batch_size = batch_size
    self.num_views = num_views
    self._view_shape = view_shape
    self._key = key

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    buf = self._empty()
    fill = 0
    emitted = 0
    for element in self._per_example:
      for v in range(self.num_views):
        buf[self._key][fill] = element["views"][v]
        buf["label"][fill] = element["label"]
        buf["example_id"][fill] = element["example"]
        buf["view"][fill] = v
        buf["valid"][fill] = element["ok"]
        fill += 1
        if fill == self.batch_size:
          yield buf
          emitted += 1
          buf, fill = self._empty(), 0
    while emitted < self.num_batches:  # the partial batch, then all-padding batches to match other processes
      yield buf
      emitted += 1
      buf = self._empty()

  def _empty(self) -> dict[str, np.ndarray]:
    b = self.batch_size
    return {self._key: np.zeros((b,) + self._view_shape, np.uint8), "label": np.zeros((b,), np.int32),
            "example_id": np.full((b,), -1, np.int32), "view": np.full((b,), -1, np.int32),
            "valid": np.zeros((b,), bool)}


def make_eval_iterator(config, split: str, *, process_index: int = 0, process_count: int = 1,
                       batch_size: int | None = None) -> EvalIterator:
  """Finite iterator over all views of `split` for this process (see module docstring)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, {process_count})")
  batch_size = int(batch_size or config.eval.batch_size)
  if batch_size <= 0:
    raise ValueError(f"eval batch_size must be positive, got {batch_size}")
  meta = load_meta(config)
  files = meta.files(split)
  start, stop = meta.split_range(split)  # an empty split or slice is an error naming it
  fn = _EvalMap(clip_spec(config, split, train=False), Records(files))
  per_process = math.ceil((stop - start) / process_count)
  num_batches = math.ceil(per_process * fn.num_views / batch_size)
  local = list(range(start + process_index, stop, process_count))
  ds = grain.MapDataset.source(local).map(fn)
  it = ds.to_iter_dataset(read_options(config, max(1, batch_size // fn.num_views)))
  if config.data.num_workers > 0 and local:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(config.data.num_workers),
                                                     per_worker_buffer_size=int(config.data.prefetch_buffer_size)))
  return EvalIterator(it, len(local), num_batches, batch_size, fn.num_views, fn.view_shape(),
                      "image" if meta.image_mode else "video")
