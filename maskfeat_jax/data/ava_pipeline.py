"""AVA readers over converted shards (data/ava_convert.py; record format: data/ava.py).

`make_train_iterator(config, ...)` (Grain, checkpointable; ground-truth boxes, short-side jitter + crop + flip
with the boxes, optional box jitter) and `eval_batches(config, split)` (detected boxes above the score
threshold, centre crop; the ground truth and the boxes in frame coordinates for the evaluation).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np
from absl import logging

from maskfeat_jax.data import pipeline
from maskfeat_jax.data import storage
from maskfeat_jax.data import transforms
from maskfeat_jax.data.ava import AvaMeta, frame_key, load_meta, parse_record


def _pad(boxes: np.ndarray, n: int, fill=0.0) -> tuple[np.ndarray, np.ndarray]:
  out = np.full((n,) + boxes.shape[1:], fill, boxes.dtype)
  m = min(n, len(boxes))
  out[:m] = boxes[:m]
  mask = np.zeros((n,), bool)
  mask[:m] = True
  return out, mask


def crop_boxes(boxes: np.ndarray, frame_hw: tuple[int, int], resized_hw: tuple[int, int],
               offset: tuple[int, int], crop: int, flip: bool) -> np.ndarray:
  """Normalised frame boxes -> normalised boxes of the crop (clipped to it; flipped with it)."""
  rh, rw = resized_hw
  b = boxes.astype(np.float64) * np.asarray([rw, rh, rw, rh])
  b = b - np.asarray([offset[1], offset[0], offset[1], offset[0]])
  b = np.clip(b, 0.0, crop)
  if flip:
    b = np.stack([crop - b[:, 2], b[:, 1], crop - b[:, 0], b[:, 3]], axis=1)
  return (b / crop).astype(np.float32)


def uncrop_boxes(boxes: np.ndarray, resized_hw, offset, crop: int) -> np.ndarray:
  """Inverse of crop_boxes without flip (boxes of the crop -> normalised frame boxes)."""
  rh, rw = resized_hw
  b = boxes.astype(np.float64) * crop + np.asarray([offset[1], offset[0], offset[1], offset[0]])
  return (b / np.asarray([rw, rh, rw, rh])).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Spec:
  """The plain config values the map functions need (picklable for worker processes)."""
  seed: int
  num_classes: int
  num_frames: int
  crop_size: int
  jitter_scales: tuple[int, int]
  random_flip: bool
  max_boxes: int
  eval_max_boxes: int
  box_jitter: float
  score_thresh: float


def spec_for(config, meta: AvaMeta) -> Spec:
  d = config.detection
  return Spec(seed=int(config.seed), num_classes=meta.num_classes, num_frames=int(config.data.num_frames),
              crop_size=int(config.data.crop_size),
              jitter_scales=tuple(int(x) for x in config.data.train_jitter_scales),
              random_flip=bool(config.data.random_flip), max_boxes=int(d.max_boxes),
              eval_max_boxes=int(d.eval_max_boxes),
              box_jitter=float(d.train_box_jitter), score_thresh=float(d.score_thresh))


def train_example(spec: Spec, record: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """One training clip: short-side jitter, random crop, flip, boxes moved with them (official AVA train)."""
  p = parse_record(record, spec.num_classes)
  frames = pipeline.decode_frames(p["frames"], np.arange(len(p["frames"])))
  h, w = frames.shape[1:3]
  short = int(round(rng.uniform(spec.jitter_scales[0], spec.jitter_scales[1])))
  rh, rw = transforms.short_side_size(h, w, max(short, spec.crop_size))
  y = int(rng.integers(0, rh - spec.crop_size + 1))
  x = int(rng.integers(0, rw - spec.crop_size + 1))
  flip = bool(spec.random_flip and rng.random() < 0.5)
  clip = transforms.resize_crop(frames, (rh, rw), (y, x), spec.crop_size, flip)
  boxes = p["boxes"]
  if spec.box_jitter > 0 and len(boxes):
    # Box jitter (optional, not in the official loader): each coordinate moves by N(0, j * box size).
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    boxes = np.clip(boxes + rng.normal(0.0, spec.box_jitter, boxes.shape) * size, 0.0, 1.0).astype(np.float32)
  boxes = crop_boxes(boxes, (h, w), (rh, rw), (y, x), spec.crop_size, flip)
  if len(boxes) > spec.max_boxes:
    logging.log_first_n(logging.WARNING, "AVA keyframe %s,%s has %d boxes; keeping the first %d "
                        "(config.detection.max_boxes)", 5, p["video_id"], p["timestamp"], len(boxes), spec.max_boxes)
  boxes, mask = _pad(boxes, spec.max_boxes)
  labels, _ = _pad(p["labels"], spec.max_boxes)
  return {"video": clip[None], "boxes": boxes[None], "box_mask": mask[None], "box_labels": labels[None]}


class _TrainMap:
  def __init__(self, spec: Spec, files: tuple[str, ...], num_examples: int, shuffle: bool, process_index: int,
               process_count: int, per_batch: int):
    self.spec, self.num_examples, self.shuffle = spec, num_examples, shuffle
    self.process_index, self.process_count, self.per_batch = process_index, process_count, per_batch
    self.records = pipeline.Records(files)  # opened once per process, safely from Grain's read threads

  def __call__(self, step_index: int, _):
    batch, row = divmod(step_index, self.per_batch)
    position = (batch * self.process_count + self.process_index) * self.per_batch + row
    epoch, position = divmod(position, self.num_examples)
    order = pipeline.epoch_order(self.spec.seed, epoch, self.num_examples, self.shuffle, salt=0xA7A)
    example = int(order[position])
    rng = np.random.default_rng([self.spec.seed, epoch, example])
    return train_example(self.spec, self.records[example], rng)


def _concat(elements):
  return {k: np.concatenate([e[k] for e in elements]) for k in elements[0]}


def make_train_iterator(config, *, process_index: int = 0, process_count: int = 1):
  """Infinite, checkpointable iterator of {'video', 'boxes', 'box_mask', 'box_labels'} training batches."""
  meta = load_meta(config)
  split = config.data.train_split
  if split not in meta.split_files:
    raise ValueError(f"config.data.train_split={split!r}: {meta.directory} has splits {sorted(meta.split_files)}")
  if config.batch_size % process_count:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the {process_count} processes")
  local = config.batch_size // process_count
  n = meta.split_sizes[split]
  fn = _TrainMap(spec_for(config, meta), meta.split_files[split], n, bool(config.data.shuffle), process_index,
                 process_count, local)
  ds = grain.MapDataset.range(n).repeat().map_with_index(fn)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(1, 2 * local)))
  it = it.batch(local, drop_remainder=True, batch_fn=_concat)
  if config.data.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(config.data.num_workers)))
  return iter(it)


def visible_fraction(boxes: np.ndarray, resized_hw: tuple[int, int], offset: tuple[int, int], crop: int) -> np.ndarray:
  """Share of each normalised frame box's area inside the crop (0 for a degenerate box)."""
  rh, rw = resized_hw
  b = boxes.astype(np.float64) * np.asarray([rw, rh, rw, rh])
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  y0, x0 = offset
  iw = np.clip(np.minimum(b[:, 2], x0 + crop) - np.maximum(b[:, 0], x0), 0.0, None)
  ih = np.clip(np.minimum(b[:, 3], y0 + crop) - np.maximum(b[:, 1], y0), 0.0, None)
  return np.where(area > 0, iw * ih / np.where(area > 0, area, 1.0), 0.0)


def eval_example(spec: Spec, record: bytes, use_detections: bool = True, num_crops: int = 3) -> dict[str, Any]:
  """One test keyframe: short side = crop size, `num_crops` crops (1: centre; 3: the official left / centre /
  right `uniform_crop`s, which together cover a 16:9 frame); the detector's boxes above the score threshold (or
  the ground-truth boxes), in every crop's coordinates, each box assigned to the crop that shows the largest
  share of it (its scores are read from that crop: the model needs a fixed input size, so the whole frame is
  covered by crops instead of being fed at once as the official test does)."""
  p = parse_record(record, spec.num_classes)
  frames = pipeline.decode_frames(p["frames"], np.arange(len(p["frames"])))
  h, w = frames.shape[1:3]
  rh, rw = transforms.short_side_size(h, w, spec.crop_size)
  if use_detections:
    frame_boxes = p["det_boxes"][p["det_scores"] >= spec.score_thresh]
  else:
    frame_boxes = p["boxes"]
  dropped = max(0, len(frame_boxes) - spec.eval_max_boxes)
  frame_boxes = frame_boxes[:spec.eval_max_boxes]
  # Centre first so that a tie (a box fully inside two crops) goes to the centre crop.
  order = sorted(transforms.spatial_indices(num_crops), key=lambda i: (i != 1, i))
  clips, boxes, masks, fractions = [], [], [], []
  for idx in order:
    offset = transforms.uniform_crop_offset(rh, rw, spec.crop_size, idx)
    clips.append(transforms.resize_crop(frames, (rh, rw), offset, spec.crop_size))
    b, m = _pad(crop_boxes(frame_boxes, (h, w), (rh, rw), offset, spec.crop_size, False), spec.eval_max_boxes)
    boxes.append(b)
    masks.append(m)
    fractions.append(visible_fraction(frame_boxes, (rh, rw), offset, spec.crop_size))
  assign = np.argmax(np.stack(fractions), axis=0) if len(frame_boxes) else np.zeros((0,), np.int64)
  return {"video": np.stack(clips), "boxes": np.stack(boxes), "box_mask": np.stack(masks), "crop_of_box": assign,
          "frame_boxes": frame_boxes, "key": frame_key(p["video_id"], p["timestamp"]), "gt_boxes": p["boxes"],
          "gt_labels": p["labels"], "dropped": dropped}


def eval_batches(config, split: str, meta: AvaMeta, batch_size: int, use_detections: bool = True):
  """Every keyframe of `split` in order: batches of batch_size rows = keyframes x crops (config.eval.num_crops),
  padded (pad rows have an all-False box_mask); yields (arrays, per-keyframe items)."""
  spec = spec_for(config, meta)
  crops = int(config.eval.num_crops)
  if batch_size % crops:
    raise ValueError(f"config.eval.batch_size={batch_size} must be a multiple of config.eval.num_crops={crops} "
                     "(every keyframe's crops go in one batch).")
  if split not in meta.split_files:
    raise ValueError(f"config.data.eval_split={split!r}: {meta.directory} has splits {sorted(meta.split_files)}")
  source = storage.open_source(meta.split_files[split])
  n, per_batch = len(source), batch_size // crops
  for start in range(0, n, per_batch):
    items = [eval_example(spec, source[i], use_detections, crops) for i in range(start, min(n, start + per_batch))]
    pad = per_batch - len(items)

    def stack(key):
      return np.concatenate([e[key] for e in items] + [np.zeros_like(items[0][key])] * pad)
    yield {"video": stack("video"), "boxes": stack("boxes"), "box_mask": stack("box_mask")}, items
