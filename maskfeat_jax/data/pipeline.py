"""Grain input pipelines over the TFDS array_record shards (no TensorFlow).

Training (`make_train_iterator`), per JAX process:

  step index i (infinite) -> (epoch, example) via a per-epoch global shuffle (seed, epoch) and this process's
  slice -> read record -> decode only the sampled JPEG frames -> clip sampling + crop/flip (+ FT augs) -> mask
  -> batch of config.batch_size // process_count clips (Grain worker processes when config.data.num_workers > 0)

All host randomness of an example comes from `np.random.default_rng([seed, epoch, example])`, so it does not
depend on the number of processes or workers, and a run resumed from a saved iterator state draws the same crops
and masks. The global batch order does not depend on the process count either: the run reads one stream of
examples (epoch e = a permutation of the N examples by (seed, e), epochs back to back, batches straddling
epoch ends) in global batches of B examples; process p of P takes the p-th contiguous block of B / P examples
of each global batch, which is what `jax.make_array_from_process_local_data` expects of the processes' rows
(process p's devices hold rows [p B/P, (p+1) B/P) of the global batch). So 2 processes x 2 devices train on
exactly the batches, and put each example on the same device, as 1 process x 4 devices.

Evaluation (`data/eval_pipeline.py::make_eval_iterator`) is finite: every example of the split yields num_clips x num_crops views;
process p takes examples p, p + P, ...; batches are padded to full size (`valid` = False) and every process yields
the same number of batches (collectives stay in step).

A record that cannot be read or decoded is skipped (training) or yields invalid views (eval), counted and logged;
the pipeline raises only when nothing can be read.
"""
from __future__ import annotations

import dataclasses
import functools
import threading

import grain
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from maskfeat_jax import paths
from maskfeat_jax.data import augment
from maskfeat_jax.data import label_flip
from maskfeat_jax.data import masking
from maskfeat_jax.data import storage
from maskfeat_jax.data import synthetic
from maskfeat_jax.data import synthetic_shapes
from maskfeat_jax.data import transforms

SYNTHETIC_NAME = "synthetic_motion"
# The embedded procedural datasets, generated into data_dir on first use: name -> generate(data_dir).
GENERATED = {synthetic.NAME: synthetic.generate, synthetic_shapes.NAME: synthetic_shapes.generate}
_MAX_FAILURES_WITHOUT_SUCCESS = 16  # consecutive unreadable records, with none readable, before giving up


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What `prepare_dataset` found: enough to size the model head and the schedule."""
  name: str
  directory: str
  num_classes: int
  class_names: tuple[str, ...]
  split_sizes: dict[str, int]
  image_mode: bool


# ----------------------------------------------------------------------------------------------- dataset
def load_meta(config) -> storage.DatasetMeta:
  data = config.data
  if data.name in GENERATED and not paths.is_remote(data.data_dir):
    # Always this code's version (generated on first use): an older cached copy holds other content and
    # must not be picked up as the "newest". (On a bucket: read as uploaded there, like any dataset.)
    ds_dir = GENERATED[data.name](data.data_dir)
  else:
    ds_dir = storage.find_dataset_dir(data.data_dir, data.name)
  if ds_dir is None:
    raise FileNotFoundError(
        f"Dataset {data.name!r} not found under config.data.data_dir={data.data_dir!r} (looked for "
        f"{data.data_dir}/{data.name}/<version>/dataset_info.json). Convert videos with "
        "`python -m maskfeat_jax.data.build_shards`, or set config.data.name / config.data.data_dir.")
  meta = storage.read_meta(ds_dir)
  if meta.image_mode != bool(data.image_mode):
    kind = "an image" if meta.image_mode else "a video"
    raise ValueError(f"Dataset {data.name!r} at {ds_dir} is {kind} dataset but config.data.image_mode="
                     f"{data.image_mode}; set config.data.image_mode={meta.image_mode}.")
  return meta


def prepare_dataset(config) -> DatasetInfo:
  """Finds (or, for synthetic_motion, generates) the dataset and returns its description."""
  meta = load_meta(config)
  return DatasetInfo(name=meta.name, directory=meta.directory, num_classes=meta.num_classes,
                     class_names=meta.class_names, split_sizes=dict(meta.split_sizes),
                     image_mode=meta.image_mode)


# ----------------------------------------------------------------------------------------------- sampling spec
@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """The plain values of the config the map functions need (small and picklable for worker processes)."""
  seed: int
  split: str
  image_mode: bool
  num_frames: int
  sampling: str  # 'stride' | 'segments' (config.data.sampling; data/transforms.py)
  sampling_rate: int
  target_fps: float
  crop_size: int
  use_rrc: bool
  rrc_scale: tuple[float, float]
  rrc_aspect: tuple[float, float]
  jitter_scales: tuple[int, int]
  random_flip: bool
  jitter_inverse_uniform: bool
  # Fine-tuning with config.data.label_flip_map: the label after a flip of every class (-1 = never flipped);
  # () = flipped clips keep their label.
  label_flip: tuple[int, ...]
  test_short_side: int
  num_sample: int
  num_clips: int
  num_crops: int
  mask: dict | None
  randaug: str
  randaug_num_layers: int
  randaug_ops: tuple[str, ...]
  erase_prob: float
  pixel_mean: tuple[float, float, float]
  pixel_std: tuple[float, float, float]


def clip_spec(config, split: str, train: bool) -> ClipSpec:
  d = config.data
  pretrain = train and config.mode == "pretrain"
  finetune_aug = train and config.mode != "pretrain"
  # The map names classes: resolved against the dataset's class names (a bad name fails here, before compiling).
  flip = label_flip.flip_table(str(d.label_flip_map), load_meta(config).class_names) \
      if finetune_aug and d.label_flip_map else ()
  if d.sampling == "segments" and not train and int(config.eval.num_clips) != 1:
    # Here, not per record: a record-level error would only be logged as an unreadable record.
    raise ValueError(f"config.data.sampling='segments' has one test clip (slowfast/datasets/ssv2.py); "
                     f"config.eval.num_clips={config.eval.num_clips} must be 1.")
  return ClipSpec(
      seed=int(config.seed), split=split, image_mode=bool(d.image_mode), num_frames=int(d.num_frames),
      sampling=str(d.sampling), sampling_rate=int(d.sampling_rate), target_fps=float(d.target_fps),
      crop_size=int(d.crop_size), jitter_inverse_uniform=bool(d.jitter_inverse_uniform), label_flip=flip,
      use_rrc=bool(d.use_random_resized_crop), rrc_scale=tuple(float(x) for x in d.rrc_scale),
      rrc_aspect=tuple(float(x) for x in d.rrc_aspect), jitter_scales=tuple(int(x) for x in d.train_jitter_scales),
      random_flip=bool(d.random_flip), test_short_side=int(d.test_short_side), num_sample=int(d.num_sample),
      num_clips=int(config.eval.num_clips), num_crops=int(config.eval.num_crops),
      mask=config.mask.to_dict() if pretrain else None,
      randaug=str(config.augment.randaug) if finetune_aug else "",
      randaug_num_layers=int(config.augment.randaug_num_layers),
      randaug_ops=tuple(str(o) for o in config.augment.randaug_ops),
      erase_prob=float(config.augment.erase_prob) if finetune_aug else 0.0,
      pixel_mean=tuple(float(x) for x in config.model.pixel_mean),
      pixel_std=tuple(float(x) for x in config.model.pixel_std))


def clip_indices(spec: ClipSpec, video_size: int, fps: float, *, rng: np.random.Generator | None = None,
                 clip_idx: int = -1) -> np.ndarray:
  """Frame indices of one clip: random (clip_idx -1, with rng) or test clip clip_idx of spec.num_clips."""
  if spec.sampling == "segments":
    if clip_idx >= 0 and spec.num_clips != 1:
      raise ValueError(f"config.data.sampling='segments' has one test clip; config.eval.num_clips={spec.num_clips}")
    return transforms.segment_indices(video_size, spec.num_frames, rng=rng if clip_idx == -1 else None)
  return transforms.temporal_indices(video_size, fps, spec.num_frames, spec.sampling_rate, spec.target_fps,
                                     rng=rng, clip_idx=clip_idx, num_clips=spec.num_clips if clip_idx >= 0 else 1)


class Records:
  """Lazily opened shard source (opened in whichever process reads, so it pickles as file names)."""

  def __init__(self, files: tuple[str, ...]):
    self.files = files
    self._source = None
    self._lock = threading.Lock()  # Grain's read threads call __getitem__ concurrently: open the shards once

  def __len__(self) -> int:
    return len(self._get())

  def _get(self):
    if self._source is None:
      with self._lock:
        if self._source is None:
          self._source = storage.open_source(self.files)
    return self._source

  def __getitem__(self, index: int) -> bytes:
    return self._get()[index]

  def __getstate__(self):
    return {"files": self.files}

  def __setstate__(self, state):
    self.__init__(state["files"])


class Failures:
  """Counts unreadable records in this process; raises when nothing at all could be read."""

  def __init__(self, split: str):
    self.split = split
    self.failed = 0
    self.succeeded = 0
    self._lock = threading.Lock()

  def ok(self) -> None:
    with self._lock:
      self.succeeded += 1

  def record(self, index: int, error: Exception) -> None:
    with self._lock:
      self.failed += 1
      failed, succeeded = self.failed, self.succeeded
    logging.warning("Skipping unreadable record %d of split %r (%s: %s); %d skipped so far in this process.",
                    index, self.split, type(error).__name__, error, failed)
    if succeeded == 0 and failed >= _MAX_FAILURES_WITHOUT_SUCCESS:
      raise RuntimeError(f"No record of split {self.split!r} could be read ({failed} failed, the last one "
                         f"record {index}: {type(error).__name__}: {error}).") from error

  def __getstate__(self):
    return {"split": self.split, "failed": 0, "succeeded": 0}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()


def decode_frames(frames_jpeg, indices: np.ndarray) -> np.ndarray:
  """Decodes only the needed frames (each once) -> uint8 [len(indices), H, W, 3]."""
  unique, inverse = np.unique(indices, return_inverse=True)
  decoded = [storage.decode_image(frames_jpeg[i]) for i in unique]
  shape = decoded[0].shape
  for i, frame in zip(unique, decoded):
    if frame.shape != shape:
      raise ValueError(f"frame {i} has shape {frame.shape}, frame {unique[0]} has {shape}")
  return np.stack(decoded)[inverse]


def _mask_generator(spec: ClipSpec):
  return masking.build_mask_generator(ml_collections.ConfigDict(spec.mask))


class _TrainMap:
  """Step index -> one training element (num_sample clips of one example), or None for an unreadable record."""

  def __init__(self, spec: ClipSpec, records: Records, num_examples: int, shuffle: bool, process_index: int,
               process_count: int, offset: int = 0, examples_per_batch: int = 1):
    self.spec = spec
    self.records = records
    self.num_examples = num_examples
    self.offset = offset  # first record of a sliced split ('train[100:]')
    self.shuffle = shuffle
    self.process_index = process_index
    self.process_count = process_count
    self.examples_per_batch = examples_per_batch  # this process's examples per batch (B / P / num_sample)
    self.failures = Failures(spec.split)
    self._mask_gen = None

  def global_position(self, step_index: int) -> int:
    """Position in the run's example stream of this process's `step_index`-th element (module docstring)."""
    batch, row = divmod(step_index, self.examples_per_batch)
    return (batch * self.process_count + self.process_index) * self.examples_per_batch + row

  def example_at(self, step_index: int) -> tuple[int, int]:
    """(epoch, record index) of this process's `step_index`-th element."""
    epoch, position = divmod(self.global_position(step_index), self.num_examples)
    order = epoch_order(self.spec.seed, epoch, self.num_examples, self.shuffle)
    return epoch, self.offset + int(order[position])

  def __call__(self, step_index: int, _) -> dict[str, np.ndarray] | None:
    epoch, example = self.example_at(step_index)
    rng = np.random.default_rng([self.spec.seed, epoch, example])
    try:
      record = self.records[example]
      element = _image_train(self.spec, record, rng) if self.spec.image_mode else \
          _video_train(self.spec, record, rng)
    except Exception as error:  # pylint: disable=broad-except
      self.failures.record(example, error)
      return None
    self.failures.ok()
    if self.spec.mask is not None:
      if self._mask_gen is None:
        self._mask_gen = _mask_generator(self.spec)
      element["mask"] = np.stack([np.asarray(self._mask_gen(rng), np.uint8) for _ in range(self.spec.num_sample)])
    return element

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_mask_gen"] = None  # a closure; rebuilt in each worker
    return state


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, num_examples: int, shuffle: bool, salt: int = 0x5EED) -> np.ndarray:
  """The epoch's example order (cached: the map asks for it once per element); `salt` keeps datasets apart."""
  if not shuffle:
    return np.arange(num_examples)
  return np.random.default_rng([seed, epoch, num_examples, salt]).permutation(num_examples)


def _augment(spec: ClipSpec, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Fine-tuning augmentations of a cropped uint8 clip [T,H,W,3] or image [H,W,3].

  Applied after the crop (SlowFast applies RandAugment to the decoded frames before it; the ops' magnitudes are
  relative to the frame size, and the crop is ~4x fewer pixels to transform). Clips use the same op parameters
  and erasing box on every frame; images fill geometric ops with the mean colour, as timm.
  """
  if not spec.randaug and spec.erase_prob <= 0:
    return x
  if spec.randaug:
    if x.ndim == 3:
      x = augment.rand_augment_image(x, rng, spec.randaug, spec.randaug_num_layers,
                                     fill=augment.fill_from_mean(spec.pixel_mean), ops=spec.randaug_ops)
    else:
      x = augment.rand_augment_video(x, rng, spec.randaug, spec.randaug_num_layers, ops=spec.randaug_ops)
  if spec.erase_prob > 0:
    x = augment.random_erasing(x, rng, spec.erase_prob, mean=spec.pixel_mean, std=spec.pixel_std)
  return x


def _video_train(spec: ClipSpec, record: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
  parsed = storage.parse_video_record(record)
  frames = parsed["frames"]
  index_sets = [clip_indices(spec, len(frames), parsed["fps"], rng=rng) for _ in range(spec.num_sample)]
  # Repeated sampling: the frames of all clips are decoded once.
  all_indices = np.concatenate(index_sets)
  decoded = decode_frames(frames, all_indices)
  label = int(parsed["label"])
  # With a label-flip map a flipped clip takes the mirrored class; a class without a mirror is never flipped.
  can_flip = spec.random_flip and (not spec.label_flip or spec.label_flip[label] >= 0)
  clips, labels = [], []
  for k in range(spec.num_sample):
    clip = decoded[k * spec.num_frames:(k + 1) * spec.num_frames]
    clip, flipped = transforms.train_spatial(clip, rng, crop_size=spec.crop_size, use_rrc=spec.use_rrc,
                                             rrc_scale=spec.rrc_scale, rrc_aspect=spec.rrc_aspect,
                                             jitter_scales=spec.jitter_scales, random_flip=can_flip,
                                             inverse_uniform=spec.jitter_inverse_uniform, return_flip=True)
    clips.append(_augment(spec, clip, rng))
    labels.append(spec.label_flip[label] if flipped and spec.label_flip else label)
  return {"video": np.stack(clips), "label": np.asarray(labels, np.int32)}


def _image_train(spec: ClipSpec, record: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
  parsed = storage.parse_image_record(record)
  image = storage.decode_image(parsed["image"])
  images = []
  for _ in range(spec.num_sample):
    crop = _image_rrc(image, spec, rng)
    images.append(_augment(spec, crop, rng))
  return {"image": np.stack(images), "label": np.full((spec.num_sample,), parsed["label"], np.int32)}


def _image_rrc(image: np.ndarray, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
  """Image pre-training crop as timm's RandomResizedCropAndInterpolation(bicubic) + flip (PIL resampling)."""
  h, w = image.shape[:2]
  top, left, ch, cw = transforms.random_resized_crop_box(h, w, spec.rrc_scale, spec.rrc_aspect, rng)
  out = Image.fromarray(image).resize((spec.crop_size, spec.crop_size), Image.BICUBIC,
                                      box=(left, top, left + cw, top + ch))
  out = np.asarray(out)
  if spec.random_flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def _concat_batch(elements):
  """Grain batch_fn: elements carry a leading num_sample axis; concatenating gives [b, ...]."""
  return {k: np.concatenate([e[k] for e in elements]) for k in elements[0]}


def _check_batch(config, process_count: int) -> int:
  if config.batch_size % process_count:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the {process_count} processes")
  local = config.batch_size // process_count
  if local % config.data.num_sample:
    raise ValueError(f"The per-process batch {local} (config.batch_size / processes) must be a multiple of "
                     f"config.data.num_sample={config.data.num_sample}")
  return local


def read_options(config, elements_per_batch: int):
  return grain.ReadOptions(num_threads=2,
                           prefetch_buffer_size=max(1, config.data.prefetch_buffer_size * elements_per_batch))


def make_train_iterator(config, *, process_index: int = 0, process_count: int = 1):
  """Infinite, checkpointable (get_state / set_state) iterator of this process's training batches.

  A saved state restores only into an iterator built with the same config (seed, batch size, num_workers).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, {process_count})")
  local_batch = _check_batch(config, process_count)
  meta = load_meta(config)
  split = config.data.train_split
  files = meta.files(split)
  start, stop = meta.split_range(split)  # an empty split or slice is an error naming it
  videos_per_batch = local_batch // config.data.num_sample
  fn = _TrainMap(clip_spec(config, split, train=True), Records(files), stop - start, bool(config.data.shuffle),
                 process_index, process_count, offset=start, examples_per_batch=videos_per_batch)
  # The element index is this process's position in its (infinite) stream; fn maps it to the example.
  ds = grain.MapDataset.range(stop - start).repeat().map_with_index(fn)
  it = ds.to_iter_dataset(read_options(config, videos_per_batch))
  it = it.batch(videos_per_batch, drop_remainder=True, batch_fn=_concat_batch)
  if config.data.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(config.data.num_workers),
                                                     per_worker_buffer_size=int(config.data.prefetch_buffer_size)))
  return iter(it)
