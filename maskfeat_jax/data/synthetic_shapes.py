"""`synthetic_shapes`: the embedded procedural dataset of the demo, where APPEARANCE decides the class.

Each clip shows one large, bright, textured foreground object moving and turning slowly over a dark, softly
textured, panning background, with small dimmer distractors (thin bars and dots) moving independently. The
class is the foreground object's SHAPE FAMILY:

  0 disk  1 square  2 triangle  3 cross  4 star  5 ring  6 crescent  7 heart

Everything else -- the object's size, aspect ratio, tilt (within 20 degrees of the family's upright pose),
spin, position, path and speed, its fill texture and colours; the background's colours, texture and pan; the
distractors -- is drawn independently of the class, so a model has to recognise the outline of the object,
which is what MaskFeat's HOG target (histograms of edge orientations) describes. Bright-on-dark with a small
tilt, as synthetic_motion's shapes: with random rotations, random contrast polarity and a busier ground the
tiny demo model learned nothing from few labels (BENCHMARKS.md, "Demo on synthetic_shapes").

Splits: `unlabeled` (2,400 clips; labels are stored, the demo's pre-training never reads them), `train`
(400 labelled clips) and `test` (400 held-out clips). In every split the labels cycle through the classes
in record order (clip i has class i % 8 and the shards are contiguous), so any slice `train[:N]` with N a
multiple of 8 holds N / 8 clips of each class: the few-label fine-tuning sets of the demo.

The clips are deterministic from `seed` (one generator per clip, seeded by (seed, split, index)), rendered
analytically per frame (no resampling), and written once, through the same shard writer as the converter,
into DATA_DIR/synthetic_shapes/VERSION (16 frames of 64x64 at 30 fps).
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pathlib
import shutil
import time
import uuid

from absl import logging
import numpy as np

from maskfeat_jax.data import storage

NAME = "synthetic_shapes"
# New content or order needs a new version: `generate` writes DATA_DIR/NAME/VERSION and the pipeline reads
# exactly this version.
VERSION = "1.0.0"
CLASS_NAMES = ("disk", "square", "triangle", "cross", "star", "ring", "crescent", "heart")
NUM_FRAMES = 16
HEIGHT = 64
WIDTH = 64
FPS = 30.0
SPLITS = {"unlabeled": (2400, 4), "train": (400, 1), "test": (400, 1)}  # split -> (clips, shards)
_SPLIT_CODE = {"unlabeled": 3, "train": 1, "test": 2}
_RADIUS = (10.0, 16.0)     # foreground object radius (pixels of the 64x64 frame)
_ASPECT = (0.75, 1.33)     # ... stretched along its own axis by this factor
_SPEED = (0.0, 1.0)        # foreground path, pixels per frame (any direction)
_TILT = (-20.0, 20.0)      # foreground orientation about the family's upright pose, degrees
_SPIN = (-1.0, 1.0)        # foreground rotation, degrees per frame
_PAN = (0.0, 1.0)          # background pan, pixels per frame (any direction)
_NUM_DISTRACTORS = (3, 6)  # thin bars and small dots, each with its own motion


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, _SPLIT_CODE[split], index])


def label_of(index: int) -> int:
  return index % len(CLASS_NAMES)


def shape_mask(family: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside-test of a shape family in its own unit coordinates (u right, v down; radius about 1)."""
  if family == "disk":
    return u * u + v * v < 1.0
  if family == "square":
    return np.maximum(np.abs(u), np.abs(v)) < 0.8
  if family == "triangle":  # equilateral, pointing up, centred on its centroid
    return (v < 0.5) & (np.sqrt(3.0) * u - v < 1.0) & (-np.sqrt(3.0) * u - v < 1.0)
  if family == "cross":
    return ((np.abs(u) < 0.32) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.32) & (np.abs(u) < 1.0))
  if family == "star":  # five points: the boundary's radius goes from 0.4 (between points) to 1.0
    r = np.sqrt(u * u + v * v)
    a = np.arctan2(v, u)
    return r < 0.4 + 0.6 * (0.5 + 0.5 * np.cos(5.0 * a)) ** 2
  if family == "ring":
    r2 = u * u + v * v
    return (r2 < 1.0) & (r2 > 0.45 ** 2)
  if family == "crescent":
    return (u * u + v * v < 1.0) & ((u - 0.45) ** 2 + v * v > 0.75 ** 2)
  if family == "heart":
    x, y = 1.15 * u, -1.15 * v + 0.25
    return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 < 0.0
  raise KeyError(f"unknown shape family {family!r}; known: {CLASS_NAMES}")


def _direction(rng: np.random.Generator, speed: tuple[float, float]) -> np.ndarray:
  a = rng.uniform(0, 2 * np.pi)
  return (rng.uniform(*speed) * np.array([np.sin(a), np.cos(a)])).astype(np.float32)


def _texture(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, waves: int, freq: tuple[float, float],
             shift: np.ndarray | None = None) -> np.ndarray:
  """Sum of `waves` random plane waves in [-1, 1] (roughly) at (y, x), float32.

  shift: [T, 2] per-frame (y, x) offsets of 2-D coordinates (a pan): the result is [T, H, W], computed as
  sin(S + P_t) = sin S cos P_t + cos S sin P_t (two transcendentals per pixel, not per pixel and frame).
  """
  field = 0.0
  for _ in range(waves):
    k, a, ph = rng.uniform(*freq), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
    cy, cx = np.float32(k * np.sin(a)), np.float32(k * np.cos(a))
    phase = cx * x + cy * y + np.float32(ph)
    if shift is None:
      field = field + np.sin(phase)
    else:
      p = (cy * shift[:, 0] + cx * shift[:, 1])[:, None, None]
      field = field + np.sin(phase) * np.cos(p) + np.cos(phase) * np.sin(p)
  return field / np.float32(waves)


def render_clip(rng: np.random.Generator, label: int, num_frames: int = NUM_FRAMES) -> np.ndarray:
  """uint8 [T,H,W,3] clip of class `label` (its shape family) drawn from `rng`."""
  t = np.arange(num_frames, dtype=np.float32)[:, None, None] - np.float32((num_frames - 1) / 2)
  yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)

  # Background: a mid-level colour with two textures (coarse and fine), panning as one.
  pan = _direction(rng, _PAN)
  shift = pan[None, :] * t[:, 0, :]  # [T, 2]
  base = rng.uniform(20, 70, size=3).astype(np.float32)
  amp = rng.uniform(4, 10, size=3).astype(np.float32)
  coarse = _texture(rng, yy, xx, 3, (0.05, 0.2), shift)
  fine = _texture(rng, yy, xx, 2, (0.4, 1.2), shift)
  frames = base + amp * (coarse + np.float32(0.25) * fine)[..., None]
  yy, xx = yy[None], xx[None]

  # Distractors: thin bars and small dots, each with its own colour and motion.
  for _ in range(rng.integers(_NUM_DISTRACTORS[0], _NUM_DISTRACTORS[1] + 1)):
    c0, d = rng.uniform(4, WIDTH - 4, size=2).astype(np.float32), _direction(rng, (0.0, 1.5))
    dy, dx = yy - (c0[0] + d[0] * t), xx - (c0[1] + d[1] * t)
    if rng.random() < 0.5:  # bar
      a = rng.uniform(0, np.pi)
      ca, sa = np.float32(np.cos(a)), np.float32(np.sin(a))
      along = ca * dx + sa * dy
      across = ca * dy - sa * dx
      m = (np.abs(along) < rng.uniform(4, 10)) & (np.abs(across) < rng.uniform(0.6, 1.5))
    else:  # dot
      m = dy * dy + dx * dx < rng.uniform(1.5, 3.5) ** 2
    frames[m] = rng.uniform(60, 140, size=3).astype(np.float32)

  # Foreground: the class's shape family, textured, moving along a line and turning.
  r = rng.uniform(*_RADIUS)
  aspect = rng.uniform(*_ASPECT)
  centre = rng.uniform(HEIGHT * 0.35, HEIGHT * 0.65, size=2).astype(np.float32)
  vel = _direction(rng, _SPEED)
  theta = np.deg2rad(np.float32(rng.uniform(*_TILT)) + np.float32(rng.uniform(*_SPIN)) * t)
  cy, cx = centre[0] + vel[0] * t, centre[1] + vel[1] * t
  dy, dx = yy - cy, xx - cx
  cos, sin = np.cos(theta), np.sin(theta)
  u = (cos * dx + sin * dy) * np.float32(1 / (r * aspect))
  v = (-sin * dx + cos * dy) * np.float32(aspect / r)
  inside = shape_mask(CLASS_NAMES[label], u, v)
  # Fill: two bright colours mixed by a stripe / blob texture fixed to the object.
  fill_a = rng.uniform(170, 255, size=3).astype(np.float32)
  fill_b = np.clip(fill_a + rng.uniform(-40, 40, size=3), 0, 255).astype(np.float32)
  mix = 0.5 + 0.5 * _texture(rng, v, u, 2, (2.0, 6.0))
  fill = fill_a + (fill_b - fill_a) * mix[..., None]
  frames = np.where(inside[..., None], fill, frames)

  frames += np.float32(3.0) * rng.standard_normal(size=frames.shape, dtype=np.float32)  # sensor noise
  return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _write_shard(seed: int, split: str, indices: range, path: pathlib.Path, quality: int) -> int:
  serializer = storage.VideoExampleSerializer(CLASS_NAMES)

  def records():
    for index in indices:
      label = label_of(index)
      clip = render_clip(clip_rng(seed, split, index), label)
      yield serializer([storage.encode_jpeg(f, quality) for f in clip], label, f"{split}_{index:05d}", FPS)
  return storage.write_shard(path, records())


def generate(data_dir: str | os.PathLike, seed: int = 0, quality: int = 90,
             splits: dict[str, tuple[int, int]] | None = None, workers: int | None = None) -> pathlib.Path:
  """Writes the dataset into DATA_DIR/synthetic_shapes/VERSION unless it is there; returns that directory.

  `splits` (split -> (clips, shards); default SPLITS) exists for tests that need a small copy: a different
  value must go to a different data_dir. Shards are rendered by `workers` processes (default: up to 2, one
  per CPU core), each clip from its own generator, so the content does not depend on the worker count.
  Written into a private temporary directory and renamed into place, so concurrent first uses never see a
  half-written dataset.
  """
  final = storage.dataset_dir(data_dir, NAME, VERSION)
  if (final / "dataset_info.json").is_file():
    return final
  splits = dict(SPLITS if splits is None else splits)
  for split in splits:
    if split not in _SPLIT_CODE:
      raise ValueError(f"synthetic_shapes.generate: unknown split {split!r}; known: {sorted(_SPLIT_CODE)}")
  total = sum(n for n, _ in splits.values())
  # stdout, not only the log: main hides INFO logs, and a silent pause on first use looks like a hang.
  print(f"Generating the {NAME} dataset {VERSION} into {final} (first use, {total} clips) ...", flush=True)
  logging.info("Generating the %s dataset %s into %s (first use).", NAME, VERSION, final)
  t0 = time.perf_counter()
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = final.parent / f".tmp-{uuid.uuid4().hex}"
  tmp.mkdir()
  try:
    jobs = []  # (split, shard, indices, path); contiguous: records are in clip-index order across the shards
    for split, (num_clips, num_shards) in splits.items():
      per_shard = -(-num_clips // num_shards)
      for shard in range(num_shards):
        indices = range(shard * per_shard, min(num_clips, (shard + 1) * per_shard))
        jobs.append((split, shard, indices, tmp / storage.shard_filename(NAME, split, shard, num_shards)))
    workers = workers or min(2, os.cpu_count() or 1)
    if workers > 1:
      # spawn, not fork: the caller may be a JAX process (multithreaded), which must not be forked.
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        counts = list(pool.map(_write_shard, *zip(*[(seed, s, i, p, quality) for s, _, i, p in jobs])))
    else:
      counts = [_write_shard(seed, s, i, p, quality) for s, _, i, p in jobs]
    lengths = {split: [] for split in splits}
    for (split, _, _, _), n in zip(jobs, counts):
      lengths[split].append(n)
    storage.write_dataset_info(tmp, NAME, CLASS_NAMES, lengths, version=VERSION, description=__doc__)
    try:
      os.rename(tmp, final)
    except OSError:
      if not (final / "dataset_info.json").is_file():
        raise
      # Another process finished first; its copy is identical (same seed), ours is discarded below.
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  print(f"Generated {total} clips in {time.perf_counter() - t0:.0f}s.", flush=True)
  return final
