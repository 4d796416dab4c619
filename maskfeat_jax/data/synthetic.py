"""`synthetic_motion`: the embedded procedural video dataset (the default dataset of the demo and the tests).

Each clip shows one textured object on a textured background. The class is the object's MOTION only:

  0 move_right  1 move_left  2 move_up  3 move_down  4 rotate_clockwise  5 rotate_counterclockwise
  6 grow        7 shrink

Everything a single frame shows — background and object texture and colours, object shape, position, orientation,
size, speed — is drawn independently of the class, and positions wrap around the frame (a torus), so an object
moving right is not more likely to be on the left at the start. One frame alone therefore carries (almost) no
class information; a model has to look at how frames change.

The dataset is deterministic from `seed` and written once, through the same writer as the converter, into
DATA_DIR/synthetic_motion/1.0.0 (32 frames of 64x80 at 30 fps; 400 train / 80 test clips, balanced).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import uuid

import numpy as np

from maskfeat_jax.data import tfds_video

NAME = "synthetic_motion"
CLASS_NAMES = ("move_right", "move_left", "move_up", "move_down", "rotate_clockwise",
               "rotate_counterclockwise", "grow", "shrink")
NUM_FRAMES = 32
HEIGHT = 64
WIDTH = 80
FPS = 30.0
SPLITS = {"train": (400, 4), "test": (80, 1)}  # split -> (clips, shards)
_SPLIT_CODE = {"train": 1, "test": 2}
_SHAPES = ("disk", "square", "diamond", "ellipse", "cross")
_R_MIN, _R_MAX = 7.0, 24.0  # object radius range in pixels (all classes, all frames)


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, _SPLIT_CODE[split], index])


def label_of(index: int) -> int:
  return index % len(CLASS_NAMES)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """Smooth random colour texture: a few random plane waves per channel around a random base colour."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  base = rng.uniform(40, 215, size=3).astype(np.float32)
  img = np.empty((h, w, 3), np.float32)
  for c in range(3):
    field = np.zeros((h, w), np.float32)
    for _ in range(3):
      k = rng.uniform(0.05, 0.35)
      a = rng.uniform(0, 2 * np.pi)
      field += rng.uniform(8, 25) * np.sin(k * (np.cos(a) * xx + np.sin(a) * yy) + rng.uniform(0, 2 * np.pi))
    img[..., c] = base[c] + field
  return img


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


def _trajectory(rng: np.random.Generator, label: int, t: np.ndarray):
  """Per-frame centre (y, x), angle (rad) and radius; only the motion depends on `label`."""
  n = len(t)
  c0 = np.array([rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)])
  theta0 = rng.uniform(0, 2 * np.pi)
  vel = np.zeros(2)
  omega = 0.0
  if label < 4:  # translation, 0.8-2 px per frame
    speed = rng.uniform(0.8, 2.0)
    vel = speed * np.array([[0, 1], [0, -1], [-1, 0], [1, 0]][label], np.float64)
  elif label < 6:  # rotation, 4-10 degrees per frame; image y points down, so clockwise = +angle
    omega = np.deg2rad(rng.uniform(4.0, 10.0)) * (1.0 if label == 4 else -1.0)
  centre = c0[None, :] + t[:, None] * vel[None, :]
  angle = theta0 + omega * t
  if label >= 6:  # scaling by 1.5-2.5x over the clip, inside the common radius range
    log_range = np.log(rng.uniform(1.5, 2.5))
    log_start = rng.uniform(np.log(_R_MIN), np.log(_R_MAX) - log_range)
    frac = t / max(n - 1, 1)
    if label == 7:
      frac = 1.0 - frac
    radius = np.exp(log_start + log_range * frac)
  else:
    radius = np.full(n, np.exp(rng.uniform(np.log(_R_MIN), np.log(_R_MAX))))
  return centre, angle, radius


def render_clip(rng: np.random.Generator, label: int, num_frames: int = NUM_FRAMES, height: int = HEIGHT,
                width: int = WIDTH) -> np.ndarray:
  """uint8 [T,H,W,3] clip of class `label` drawn from `rng`."""
  if height != HEIGHT or width != WIDTH:
    raise ValueError(f"render_clip draws {HEIGHT}x{WIDTH} frames (trajectory ranges are tuned for it)")
  t = np.arange(num_frames, dtype=np.float64)
  background = _background(rng, height, width)
  shape = _SHAPES[rng.integers(len(_SHAPES))]
  colours = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
  freq = rng.uniform(2.0, 5.0)
  wave_angle = rng.uniform(0, 2 * np.pi)
  phase = rng.uniform(0, 2 * np.pi)
  checker = rng.random() < 0.5
  centre, angle, radius = _trajectory(rng, label, t)

  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  # Offsets to the object centre on the torus, so objects leaving one side re-enter on the other.
  dy = (yy[None] - centre[:, 0, None, None].astype(np.float32) + height / 2) % height - height / 2
  dx = (xx[None] - centre[:, 1, None, None].astype(np.float32) + width / 2) % width - width / 2
  cos = np.cos(angle).astype(np.float32)[:, None, None]
  sin = np.sin(angle).astype(np.float32)[:, None, None]
  r = radius.astype(np.float32)[:, None, None]
  u = (cos * dx + sin * dy) / r  # object coordinates (rotation by -angle, scaled by the radius)
  v = (-sin * dx + cos * dy) / r
  inside = _shape_mask(shape, u, v)
  if checker:
    pattern = (np.floor(u * freq / 2) + np.floor(v * freq / 2)) % 2
  else:
    pattern = 0.5 + 0.5 * np.sin(freq * (np.cos(wave_angle) * u + np.sin(wave_angle) * v) * np.pi + phase)
  pattern = pattern.astype(np.float32)[..., None]
  obj = colours[0] * pattern + colours[1] * (1 - pattern)
  frames = np.where(inside[..., None], obj, background[None])
  frames += rng.normal(0, 3.0, size=frames.shape).astype(np.float32)  # sensor noise, every frame
  return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _records(seed: int, split: str, indices, serializer, quality: int):
  for index in indices:
    label = label_of(index)
    clip = render_clip(clip_rng(seed, split, index), label)
    frames = [tfds_video.encode_jpeg(f, quality) for f in clip]
    yield serializer(frames, label, f"{split}_{index:05d}", FPS)


def generate(data_dir: str | os.PathLike, seed: int = 0, quality: int = 90) -> pathlib.Path:
  """Writes the dataset into DATA_DIR/synthetic_motion/VERSION unless it is there; returns that directory.

  Written into a private temporary directory and renamed into place, so concurrent first uses (several test
  workers or JAX processes on one host) never see a half-written dataset.
  """
  final = tfds_video.dataset_dir(data_dir, NAME)
  if (final / "dataset_info.json").is_file():
    return final
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = final.parent / f".tmp-{uuid.uuid4().hex}"
  tmp.mkdir()
  try:
    serializer = tfds_video.VideoExampleSerializer(CLASS_NAMES)
    lengths = {}
    for split, (num_clips, num_shards) in SPLITS.items():
      lengths[split] = []
      for shard in range(num_shards):  # deterministic: clip i goes to shard i % num_shards
        indices = range(shard, num_clips, num_shards)
        path = tmp / tfds_video.shard_filename(NAME, split, shard, num_shards)
        lengths[split].append(tfds_video.write_shard(path, _records(seed, split, indices, serializer, quality)))
    tfds_video.write_dataset_info(tmp, NAME, CLASS_NAMES, lengths, description=__doc__)
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
