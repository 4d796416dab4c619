"""`synthetic_motion`: the embedded procedural video dataset (the default dataset of the demo and the tests).

Each clip is a camera moving over a flat scene: a dark, softly textured ground scattered with bright shapes
(disks, squares, diamonds, ellipses, crosses). The class is the MOTION of the scene content in the frame:

  0 move_right  1 move_left  2 move_up  3 move_down  4 rotate_clockwise  5 rotate_counterclockwise
  6 grow (zoom in)  7 shrink (zoom out)

Everything a single frame shows -- ground colour and texture, the shapes, their colours and sizes, the camera's
start angle, speed and zoom range -- is drawn independently of the class, so one frame alone carries (almost) no
class information; a model has to look at how frames change.

Why this design: a tiny model cannot learn motion whose evidence sits in a few tokens and flips sign with a
random contrast, which is what version 1.0.0 (ONE object of random colour over a random-colour texture) asked
of it (BENCHMARKS.md, "synthetic_motion: why version 2"). Here every token sees the same motion, and
bright-on-dark shapes give every edge the same contrast polarity, so a spatio-temporal filter that detects
one direction detects it everywhere.

The scene is evaluated analytically at each frame's camera coordinates (no resampling), so every frame is
sharp. The dataset is deterministic from `seed` and written once, through the same writer as the converter,
into DATA_DIR/synthetic_motion/VERSION (32 frames of 64x80 at 30 fps; 400 train / 160 test clips, balanced).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import uuid

from absl import logging
import numpy as np

from maskfeat_jax.data import storage

NAME = "synthetic_motion"
# 2.0.0: camera motion over bright shapes on a dark ground (1.0.0: one object of random contrast).
# 2.1.0: the same clips, stored in index order (contiguous shards), so labels cycle through the classes in
# record order and any slice 'train[:N]' is class-balanced (2.0.0 put clip i in shard i % 4: its first
# quarter held two classes). New content or order needs a new version: `generate` writes
# DATA_DIR/NAME/VERSION and the pipeline reads exactly this version.
VERSION = "2.1.0"
CLASS_NAMES = ("move_right", "move_left", "move_up", "move_down", "rotate_clockwise",
               "rotate_counterclockwise", "grow", "shrink")
NUM_FRAMES = 32
HEIGHT = 64
WIDTH = 80
FPS = 30.0
SPLITS = {"train": (400, 4), "test": (160, 1)}  # split -> (clips, shards)
_SPLIT_CODE = {"train": 1, "test": 2}
_SHAPES = ("disk", "square", "diamond", "ellipse", "cross")
_NUM_SHAPES = 12          # shapes scattered over the part of the scene the camera sees during a clip
_SCATTER = 70.0           # ... within this radius (pixels) of the camera's mean position
_SHAPE_RADIUS = (5.0, 14.0)
_SPEED = (0.8, 2.0)       # pan, pixels per frame
_SPIN = (3.0, 6.0)        # rotation, degrees per frame (<= 24 degrees between frames 4 apart: unambiguous)
_ZOOM = (1.5, 2.2)        # zoom factor over the clip


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, _SPLIT_CODE[split], index])


def label_of(index: int) -> int:
  return index % len(CLASS_NAMES)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  if shape == "disk":
    return u * u + v * v < 1.0
  if shape == "square":
    return np.maximum(np.abs(u), np.abs(v)) < 0.8
  if shape == "diamond":
    return np.abs(u) + np.abs(v) < 1.0
  if shape == "ellipse":
    return u * u + (v / 0.55) ** 2 < 1.0
  return ((np.abs(u) < 0.35) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.35) & (np.abs(u) < 1.0))  # cross


def _camera(rng: np.random.Generator, label: int, t: np.ndarray):
  """Per-frame camera centre (y, x), angle and scale in scene coordinates; only the motion depends on `label`.

  The scene moves one way in the frame when the camera moves the other way; image y points down, so content
  turning clockwise means the camera turns counter-clockwise (negative angle).
  """
  vel = np.zeros(2)
  omega = 0.0
  log_scale = np.zeros(len(t))
  if label < 4:
    direction = np.array([[0, 1], [0, -1], [-1, 0], [1, 0]][label], np.float64)
    vel = -rng.uniform(*_SPEED) * direction
  elif label < 6:
    omega = -np.deg2rad(rng.uniform(*_SPIN)) * (1.0 if label == 4 else -1.0)
  else:  # zoom about the frame centre, symmetric in log scale so single frames match between grow/shrink
    log_range = np.log(rng.uniform(*_ZOOM))
    log_scale = (t / max(len(t) - 1, 1) - 0.5) * log_range * (-1.0 if label == 6 else 1.0)
  angle = rng.uniform(0, 2 * np.pi) + omega * t
  centre = t[:, None] * vel[None, :]
  return centre, angle, np.exp(log_scale)


def render_clip(rng: np.random.Generator, label: int, num_frames: int = NUM_FRAMES, height: int = HEIGHT,
                width: int = WIDTH) -> np.ndarray:
  """uint8 [T,H,W,3] clip of class `label` drawn from `rng`."""
  if height != HEIGHT or width != WIDTH:
    raise ValueError(f"render_clip draws {HEIGHT}x{WIDTH} frames (motion ranges are tuned for it)")
  t = np.arange(num_frames, dtype=np.float64)
  centre, angle, scale = _camera(rng, label, t)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
  py, px = yy - height / 2, xx - width / 2
  cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
  s = scale[:, None, None]
  # Scene coordinates seen by each pixel of each frame: centre + scale * R(angle) @ (pixel - frame centre).
  sy = centre[:, 0, None, None] + s * (cos * py - sin * px)
  sx = centre[:, 1, None, None] + s * (sin * py + cos * px)

  frames = np.empty((num_frames, height, width, 3), np.float32)
  base = rng.uniform(20, 70, size=3)
  for c in range(3):  # dark ground: a few soft plane waves per channel
    field = np.full(sy.shape, base[c])
    for _ in range(3):
      k, a = rng.uniform(0.05, 0.3), rng.uniform(0, 2 * np.pi)
      field += rng.uniform(2.4, 7.5) * np.sin(k * (np.cos(a) * sx + np.sin(a) * sy) + rng.uniform(0, 2 * np.pi))
    frames[..., c] = field
  mean_centre = centre.mean(0)
  for _ in range(_NUM_SHAPES):
    oy, ox = mean_centre + rng.uniform(-_SCATTER, _SCATTER, size=2)
    r = rng.uniform(*_SHAPE_RADIUS)
    theta = rng.uniform(0, 2 * np.pi)
    shape = _SHAPES[rng.integers(len(_SHAPES))]
    colour = rng.uniform(170, 255, size=3).astype(np.float32)
    dy, dx = sy - oy, sx - ox
    u = (np.cos(theta) * dx + np.sin(theta) * dy) / r
    v = (-np.sin(theta) * dx + np.cos(theta) * dy) / r
    frames[_shape_mask(shape, u, v)] = colour
  frames += rng.normal(0, 3.0, size=frames.shape).astype(np.float32)  # sensor noise, every frame
  return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _records(seed: int, split: str, indices, serializer, quality: int):
  for index in indices:
    label = label_of(index)
    clip = render_clip(clip_rng(seed, split, index), label)
    frames = [storage.encode_jpeg(f, quality) for f in clip]
    yield serializer(frames, label, f"{split}_{index:05d}", FPS)


def generate(data_dir: str | os.PathLike, seed: int = 0, quality: int = 90) -> pathlib.Path:
  """Writes the dataset into DATA_DIR/synthetic_motion/VERSION unless it is there; returns that directory.

  Written into a private temporary directory and renamed into place, so concurrent first uses (several test
  workers or JAX processes on one host) never see a half-written dataset.
  """
  final = storage.dataset_dir(data_dir, NAME, VERSION)
  if (final / "dataset_info.json").is_file():
    return final
  # stdout, not only the log: main hides INFO logs, and a silent ~20 s pause on first use looks like a hang.
  print(f"Generating the {NAME} dataset {VERSION} into {final} (first use, ~20 s) ...", flush=True)
  logging.info("Generating the %s dataset %s into %s (first use).", NAME, VERSION, final)
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = final.parent / f".tmp-{uuid.uuid4().hex}"
  tmp.mkdir()
  try:
    serializer = storage.VideoExampleSerializer(CLASS_NAMES)
    lengths = {}
    for split, (num_clips, num_shards) in SPLITS.items():
      lengths[split] = []
      per_shard = -(-num_clips // num_shards)
      for shard in range(num_shards):  # contiguous: records are in clip-index order across the shards
        indices = range(shard * per_shard, min(num_clips, (shard + 1) * per_shard))
        path = tmp / storage.shard_filename(NAME, split, shard, num_shards)
        lengths[split].append(storage.write_shard(path, _records(seed, split, indices, serializer, quality)))
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
  return final
