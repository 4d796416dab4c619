"""Sampling geometry of data/transforms.py against the official loader's formulas.

References: `slowfast/datasets/decoder.py::get_start_end_idx` / `temporal_sampling` and
`slowfast/datasets/utils.py::spatial_sampling`.
"""
import math

import numpy as np
import pytest

from maskfeat_jax.data import transforms


# ----------------------------------------------------------------------------------------------- temporal
@pytest.mark.parametrize("source_fps, span", [(30.0, 64), (60.0, 128), (15.0, 32)])
def test_training_clip_span_and_start_range(source_fps, span):
  rng = np.random.default_rng(0)
  video_size = 300
  for _ in range(200):
    idx = transforms.temporal_indices(video_size, source_fps, 16, 4, 30.0, rng=rng)
    assert len(idx) == 16 and np.all(np.diff(idx) >= 0)
    # linspace(start, start + span - 1) truncated: first = floor(start), last = floor(start + span - 1).
    assert idx[-1] - idx[0] == span - 1
    assert 0 <= idx[0] and idx[-1] <= video_size - 1
  assert transforms.clip_span(16, 4, 30.0, source_fps) == span


def test_training_starts_cover_the_whole_video():
  rng = np.random.default_rng(1)
  firsts = [transforms.temporal_indices(100, 30.0, 8, 2, 30.0, rng=rng)[0] for _ in range(500)]
  assert min(firsts) == 0 and max(firsts) == 83  # delta = 100 - 16 = 84, start ~ U(0, 84)


def test_linspace_truncation_matches_official_formula():
  idx = transforms.clip_indices(300, 10.7, 64.0, 16)
  expected = [int(x) for x in np.linspace(10.7, 10.7 + 63, 16)]
  assert idx.tolist() == expected


def test_test_clips_are_evenly_spaced():
  video_size, k = 300, 4
  span = transforms.clip_span(16, 4, 30.0, 30.0)
  delta = video_size - span
  for clip in range(k):
    idx = transforms.temporal_indices(video_size, 30.0, 16, 4, 30.0, clip_idx=clip, num_clips=k)
    assert idx[0] == clip * math.floor(delta / (k - 1))
  last = transforms.temporal_indices(video_size, 30.0, 16, 4, 30.0, clip_idx=k - 1, num_clips=k)
  assert last[-1] <= video_size - 1
  single = transforms.temporal_indices(video_size, 30.0, 16, 4, 30.0, clip_idx=0, num_clips=1)
  assert single[0] == math.floor(delta / 2)  # one clip: the middle


def test_short_video_repeats_last_frame():
  idx = transforms.temporal_indices(10, 30.0, 8, 4, 30.0, clip_idx=0, num_clips=1)
  assert idx[0] == 0 and idx[-1] == 9 and np.sum(idx == 9) > 1


def test_unknown_fps_uses_target_rate():
  assert transforms.clip_span(16, 4, 30.0, 0.0) == 64


# ----------------------------------------------------------------------------------------------- crops
def test_random_resized_crop_ranges():
  rng = np.random.default_rng(0)
  h, w = 320, 427
  for _ in range(500):
    top, left, ch, cw = transforms.random_resized_crop_box(h, w, (0.5, 1.0), (0.75, 1.3333), rng)
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
    area = ch * cw / (h * w)
    assert 0.5 - 0.01 <= area <= 1.0 + 1e-9
    assert 0.75 - 0.02 <= cw / ch <= 1.3333 + 0.02


def test_random_resized_crop_fallback_is_centre():
  rng = np.random.default_rng(0)
  # A very wide frame and a scale range that cannot fit: centre crop clipped to the max aspect.
  top, left, ch, cw = transforms.random_resized_crop_box(10, 100, (1.0, 1.0), (0.75, 1.3333), rng)
  assert (ch, cw) == (10, 13) and top == 0 and left == (100 - 13) // 2


def test_jitter_crop_ranges():
  rng = np.random.default_rng(0)
  frames = np.arange(64 * 80, dtype=np.float64).reshape(1, 64, 80, 1)
  frames = (frames % 251).astype(np.uint8)
  for _ in range(20):
    out = transforms.train_spatial(frames, rng, crop_size=48, use_rrc=False, rrc_scale=(0.5, 1),
                                   rrc_aspect=(0.75, 1.33), jitter_scales=(48, 64), random_flip=True)
    assert out.shape == (1, 48, 48, 1)


def test_short_side_size_and_uniform_crop_offsets():
  assert transforms.short_side_size(320, 427, 256) == (256, 341)  # landscape: floor(427/320*256)
  assert transforms.short_side_size(427, 320, 256) == (341, 256)
  assert [transforms.uniform_crop_offset(256, 341, 224, i) for i in range(3)] == [(16, 0), (16, 59), (16, 117)]
  assert [transforms.uniform_crop_offset(341, 256, 224, i) for i in range(3)] == [(0, 16), (59, 16), (117, 16)]
  assert transforms.spatial_indices(1) == (1,) and transforms.spatial_indices(3) == (0, 1, 2)
  with pytest.raises(ValueError, match="num_crops"):
    transforms.spatial_indices(2)


# ----------------------------------------------------------------------------------------------- resampling
def _reference_bilinear(img, top, left, ch, cw, oh, ow):
  """Per-pixel torch `interpolate(crop, (oh, ow), mode='bilinear', align_corners=False)` of img[top:, left:]."""
  crop = img[top:top + ch, left:left + cw].astype(np.float64)
  out = np.zeros((oh, ow) + img.shape[2:])
  for i in range(oh):
    sy = max((i + 0.5) * ch / oh - 0.5, 0.0)
    y0 = int(sy)
    y1 = min(y0 + 1, ch - 1)
    ly = sy - y0
    for j in range(ow):
      sx = max((j + 0.5) * cw / ow - 0.5, 0.0)
      x0 = int(sx)
      x1 = min(x0 + 1, cw - 1)
      lx = sx - x0
      out[i, j] = ((1 - ly) * ((1 - lx) * crop[y0, x0] + lx * crop[y0, x1]) +
                   ly * ((1 - lx) * crop[y1, x0] + lx * crop[y1, x1]))
  return out


@pytest.mark.parametrize("box, out", [((3, 5, 20, 30), (13, 11)), ((0, 0, 9, 7), (16, 20)), ((2, 1, 25, 28), (25, 28))])
def test_crop_resize_matches_torch_bilinear(box, out):
  img = np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
  got = transforms.crop_resize(img[None], box, out)[0]
  want = _reference_bilinear(img, *box, *out)
  assert np.abs(got.astype(np.float64) - want).max() <= 0.5 + 1e-6  # rounding to uint8 only
  flipped = transforms.crop_resize(img[None], box, out, flip=True)[0]
  np.testing.assert_array_equal(flipped, got[:, ::-1])


def test_resize_then_crop_is_one_resampling():
  img = np.random.default_rng(1).integers(0, 256, size=(2, 24, 32, 3), dtype=np.uint8)
  full = transforms.resize_crop(img, (36, 48), (0, 0), (36, 48))
  part = transforms.resize_crop(img, (36, 48), (5, 7), 20)
  np.testing.assert_array_equal(part, full[:, 5:25, 7:27])
  want = _reference_bilinear(img[1], 0, 0, 24, 32, 36, 48)
  assert np.abs(full[1].astype(np.float64) - want).max() <= 0.5 + 1e-6
  with pytest.raises(ValueError, match="does not fit"):
    transforms.resize_crop(img, (36, 48), (20, 0), 20)
