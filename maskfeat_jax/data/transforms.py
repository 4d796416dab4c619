"""Host-side clip sampling as the official SlowFast Kinetics loader does it, in numpy.

Temporal sampling mirrors `slowfast/datasets/decoder.py::get_start_end_idx` / `temporal_sampling`, spatial
sampling `slowfast/datasets/utils.py::spatial_sampling` (with the crops of `slowfast/datasets/transform.py`).

Temporal (`config.data.sampling`): 'stride' (Kinetics) - a clip spans `num_frames * sampling_rate` frames at
`target_fps`, i.e. that many seconds' worth of source frames; `num_frames` indices are
`linspace(start, start + span - 1)` truncated to int and clamped to the video. Training draws the start uniformly;
testing takes K evenly spaced starts. 'segments' (Something-Something v2, `slowfast/datasets/ssv2.py::Ssv2.
get_seq_frames`) - the whole video is cut into `num_frames` equal segments and one frame is taken from each: a
random one in training, the middle one in testing (so testing has exactly one temporal clip).

Spatial: random-resized-crop (10 tries, centre fallback) or short-side jitter + random crop in training; short-side
resize + centre / 3 crops in testing; resizing is bilinear with align_corners=False (torch's `interpolate`), done
as ONE resampling of the stored frames straight into the output crop (a crop of a resize is just a subset of the
resize's sampling points, so this equals resize-then-crop exactly). Horizontal flip is folded into the sampling.
Everything returns uint8; normalisation happens on device.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


# ----------------------------------------------------------------------------------------------- temporal
def clip_span(num_frames: int, sampling_rate: int, target_fps: float, source_fps: float) -> float:
  """Clip length in SOURCE frames (official `clip_sz = sampling_rate * num_frames / target_fps * fps`)."""
  if source_fps <= 0:  # unknown frame rate: treat the stored frames as being at the target rate
    source_fps = target_fps
  return sampling_rate * num_frames / target_fps * source_fps


def clip_start(video_size: int, span: float, clip_idx: int, num_clips: int,
               rng: np.random.Generator | None = None) -> float:
  """Official `get_start_end_idx` with `USE_OFFSET_SAMPLING`: clip_idx -1 = random start (training)."""
  delta = max(video_size - span, 0.0)
  if clip_idx == -1:
    if rng is None:
      raise ValueError("clip_idx=-1 (random start) needs an rng")
    return float(rng.uniform(0.0, delta))
  if not 0 <= clip_idx < num_clips:
    raise ValueError(f"clip_idx {clip_idx} outside [0, {num_clips})")
  if num_clips == 1:
    return float(math.floor(delta / 2))
  return float(clip_idx * math.floor(delta / (num_clips - 1)))


def clip_indices(video_size: int, start: float, span: float, num_frames: int) -> np.ndarray:
  """`linspace(start, start + span - 1, num_frames)` truncated to int, clamped to [0, video_size - 1]."""
  index = np.linspace(start, start + span - 1.0, num_frames)
  index = np.clip(index, 0, video_size - 1)
  return index.astype(np.int64)  # truncation, as torch's .long() (values are >= 0 after the clamp)


def temporal_indices(video_size: int, source_fps: float, num_frames: int, sampling_rate: int,
                     target_fps: float, *, rng: np.random.Generator | None = None, clip_idx: int = -1,
                     num_clips: int = 1) -> np.ndarray:
  """Frame indices of one clip (random start when clip_idx == -1, else clip clip_idx of num_clips)."""
  if video_size <= 0:
    raise ValueError("video has no frames")
  span = clip_span(num_frames, sampling_rate, target_fps, source_fps)
  start = clip_start(video_size, span, clip_idx, num_clips, rng)
  return clip_indices(video_size, start, span, num_frames)


SAMPLINGS = ("stride", "segments")


def segment_indices(video_size: int, num_frames: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
  """One frame from each of `num_frames` equal segments of the whole video (the SSv2 loader).

  As `slowfast/datasets/ssv2.py::Ssv2.get_seq_frames`: segment i spans [round(i s), round((i + 1) s)] with
  s = (video_size - 1) / num_frames (np.round, half to even; both ends inclusive, so neighbouring segments
  share their boundary frame); with an rng (training) a uniform frame of the segment (`random.randint`,
  inclusive), without one (testing) the middle `(start + end) // 2`. A video shorter than num_frames repeats
  frames; every index is within [0, video_size - 1].
  """
  if video_size <= 0:
    raise ValueError("video has no frames")
  if num_frames <= 0:
    raise ValueError(f"num_frames must be positive, got {num_frames}")
  seg_size = float(video_size - 1) / num_frames
  bounds = np.round(seg_size * np.arange(num_frames + 1)).astype(np.int64)
  start, end = bounds[:-1], bounds[1:]
  if rng is None:
    return (start + end) // 2
  return rng.integers(start, end + 1).astype(np.int64)


# ----------------------------------------------------------------------------------------------- crop boxes
def random_resized_crop_box(height: int, width: int, scale: Sequence[float], aspect: Sequence[float],
                            rng: np.random.Generator, num_tries: int = 10) -> tuple[int, int, int, int]:
  """torchvision/SlowFast RandomResizedCrop parameters -> (top, left, crop_h, crop_w) in source pixels.

  Area fraction ~ U(scale), aspect ratio log-uniform in `aspect`; `num_tries` tries, then the centre crop of
  the whole frame clipped to the aspect range.
  """
  area = height * width
  log_ratio = (math.log(aspect[0]), math.log(aspect[1]))
  for _ in range(num_tries):
    target_area = area * rng.uniform(scale[0], scale[1])
    ratio = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * ratio)))
    h = int(round(math.sqrt(target_area / ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(aspect):
    w = width
    h = int(round(w / min(aspect)))
  elif in_ratio > max(aspect):
    h = height
    w = int(round(h * max(aspect)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
  """Official `random_short_side_scale_jitter` output size (long side floored)."""
  if width < height:
    return int(math.floor(height / width * short)), short
  return short, int(math.floor(width / height * short))


def uniform_crop_offset(height: int, width: int, size: int, spatial_idx: int) -> tuple[int, int]:
  """Official `uniform_crop`: idx 1 = centre, 0 / 2 = start / end along the longer side."""
  y = int(math.ceil((height - size) / 2))
  x = int(math.ceil((width - size) / 2))
  if height > width:
    if spatial_idx == 0:
      y = 0
    elif spatial_idx == 2:
      y = height - size
  else:
    if spatial_idx == 0:
      x = 0
    elif spatial_idx == 2:
      x = width - size
  return y, x


# ----------------------------------------------------------------------------------------------- resampling
def _axis(src_lo: float, scale: float, out_size: int, clamp_lo: int, clamp_hi: int, flip: bool = False):
  """Bilinear (align_corners=False) taps along one axis.

  Output pixel i samples source coordinate src_lo + (i + 0.5) * scale - 0.5, clamped to [clamp_lo, clamp_hi]
  (torch clamps negative coordinates to the first pixel and repeats the last one at the far edge).
  """
  coord = src_lo + (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  coord = np.clip(coord, clamp_lo, clamp_hi)
  i0 = np.floor(coord).astype(np.int64)
  i1 = np.minimum(i0 + 1, clamp_hi)
  w1 = (coord - i0).astype(np.float32)
  if flip:
    i0, i1, w1 = i0[::-1].copy(), i1[::-1].copy(), w1[::-1].copy()
  return i0, i1, w1


def _resample(frames: np.ndarray, ys, xs) -> np.ndarray:
  """uint8 [..., H, W, C] -> uint8 [..., oh, ow, C] with separable bilinear taps (rows, then columns).

  Written for speed (this is most of a clip's CPU time after JPEG decoding): rows are gathered as uint8 with
  np.take, the column gather moves whole pixels (C float32 viewed as one opaque item), arithmetic is in place.
  """
  y0, y1, wy = ys
  x0, x1, wx = xs
  # Only the columns the output reads are interpolated in the row pass.
  lo, hi = int(min(x0.min(), x1.min())), int(max(x0.max(), x1.max())) + 1
  sub = frames[..., lo:hi, :]
  rows = np.take(sub, y0, axis=-3).astype(np.float32)
  below = np.take(sub, y1, axis=-3).astype(np.float32)
  below -= rows
  below *= wy[:, None, None]
  rows += below
  shape = rows.shape
  pixels = rows.view(np.dtype((np.void, 4 * shape[-1]))).reshape(shape[:-1])
  out_shape = shape[:-2] + (len(x0), shape[-1])
  left = np.take(pixels, x0 - lo, axis=-1).view(np.float32).reshape(out_shape)
  right = np.take(pixels, x1 - lo, axis=-1).view(np.float32).reshape(out_shape)
  right -= left
  right *= wx[:, None]
  left += right
  np.rint(left, out=left)  # convex combinations of 0..255 stay in range: no clipping needed
  return left.astype(np.uint8)


def crop_resize(frames: np.ndarray, box: tuple[int, int, int, int], out_size: int | tuple[int, int],
                flip: bool = False) -> np.ndarray:
  """Crops box (top, left, h, w) and resizes it bilinearly to out_size (torch crop-then-interpolate)."""
  oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
  top, left, h, w = box
  ys = _axis(top, h / oh, oh, top, top + h - 1)
  xs = _axis(left, w / ow, ow, left, left + w - 1, flip)
  return _resample(frames, ys, xs)


def resize_crop(frames: np.ndarray, resized_hw: tuple[int, int], offset: tuple[int, int],
                out_size: int | tuple[int, int], flip: bool = False) -> np.ndarray:
  """Resizes the frames to resized_hw and takes the out_size crop at integer `offset`, in one resampling."""
  h, w = frames.shape[-3], frames.shape[-2]
  oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
  rh, rw = resized_hw
  if offset[0] < 0 or offset[1] < 0 or offset[0] + oh > rh or offset[1] + ow > rw:
    raise ValueError(f"crop {oh}x{ow} at {offset} does not fit in the resized {rh}x{rw} frame")
  sy, sx = h / rh, w / rw
  ys = _axis(offset[0] * sy, sy, oh, 0, h - 1)
  xs = _axis(offset[1] * sx, sx, ow, 0, w - 1, flip)
  return _resample(frames, ys, xs)


# ----------------------------------------------------------------------------------------------- clip level
def train_spatial(frames: np.ndarray, rng: np.random.Generator, *, crop_size: int, use_rrc: bool,
                  rrc_scale: Sequence[float], rrc_aspect: Sequence[float], jitter_scales: Sequence[int],
                  random_flip: bool, inverse_uniform: bool = False, return_flip: bool = False):
  """Training crop of a clip (or image) [..., H, W, 3]: RRC or short-side jitter + random crop, then flip.

  inverse_uniform: the jittered short side is 1 / U(1 / max, 1 / min) (official INV_UNIFORM_SAMPLE, used by the
  SSv2 configs) instead of U(min, max). return_flip: also return whether the clip was flipped (a label-flip map
  swaps the label of flipped clips, data/pipeline.py).
  """
  h, w = frames.shape[-3], frames.shape[-2]
  if use_rrc:
    box = random_resized_crop_box(h, w, rrc_scale, rrc_aspect, rng)
    flip = bool(random_flip and rng.random() < 0.5)
    out = crop_resize(frames, box, crop_size, flip)
    return (out, flip) if return_flip else out
  if inverse_uniform:  # `slowfast/datasets/transform.py::random_short_side_scale_jitter`
    short = int(round(1.0 / rng.uniform(1.0 / jitter_scales[1], 1.0 / jitter_scales[0])))
  else:
    short = int(round(rng.uniform(jitter_scales[0], jitter_scales[1])))
  if short < crop_size:
    raise ValueError(f"config.data.train_jitter_scales {tuple(jitter_scales)} must be >= crop_size {crop_size}")
  rh, rw = short_side_size(h, w, short)
  y = int(rng.integers(0, rh - crop_size + 1))
  x = int(rng.integers(0, rw - crop_size + 1))
  flip = bool(random_flip and rng.random() < 0.5)
  out = resize_crop(frames, (rh, rw), (y, x), crop_size, flip)
  return (out, flip) if return_flip else out


def test_spatial(frames: np.ndarray, *, short_side: int, crop_size: int, spatial_idx: int) -> np.ndarray:
  """Test view: short side resized to `short_side`, crop `spatial_idx` (0/1/2) of size crop_size."""
  h, w = frames.shape[-3], frames.shape[-2]
  if short_side < crop_size:
    raise ValueError(f"config.data.test_short_side {short_side} must be >= crop_size {crop_size}")
  rh, rw = short_side_size(h, w, short_side)
  offset = uniform_crop_offset(rh, rw, crop_size, spatial_idx)
  return resize_crop(frames, (rh, rw), offset, crop_size)


def spatial_indices(num_crops: int) -> tuple[int, ...]:
  """Official spatial crop indices: 1 crop = centre (1); 3 crops = (0, 1, 2)."""
  if num_crops == 1:
    return (1,)
  if num_crops == 3:
    return (0, 1, 2)
  raise ValueError(f"config.eval.num_crops must be 1 or 3, got {num_crops}")


def downscaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
  """(width, height) after resizing the short side down to `short_side` (never up; <= 0: unchanged)."""
  if short_side <= 0 or min(width, height) <= short_side:
    return width, height
  if width < height:
    return short_side, int(round(height * short_side / width))
  return int(round(width * short_side / height)), short_side
