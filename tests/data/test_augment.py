"""Tests for the host-side fine-tuning augmentation (RandAugment, random erasing)."""
import math

import numpy as np
import pytest
from PIL import Image

from maskfeat_jax.data import augment

SPEC = "rand-m7-mstd0.5-inc1"


def _clip(seed=0, t=4, h=32, w=40):
  """A clip with structure (gradients + noise) so geometric and histogram ops change it."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  base = np.stack([yy * 255 // h, xx * 255 // w, (yy + xx) * 255 // (h + w)], -1)
  frames = base[None] + rng.integers(-20, 20, (t, h, w, 3))
  return np.clip(frames, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- parsing
def test_parse_official_specs():
  s = augment.parse_rand_augment_spec("rand-m7-mstd0.5-inc1")
  assert (s.magnitude, s.num_layers, s.magnitude_std, s.increasing, s.prob) == (7.0, 2, 0.5, True, 0.5)
  assert s.transforms == augment.RAND_INCREASING_TRANSFORMS
  s = augment.parse_rand_augment_spec("rand-m9-n3-mstd0.5", num_layers=2)
  assert (s.magnitude, s.num_layers, s.increasing) == (9.0, 3, False)
  assert augment.parse_rand_augment_spec("rand-m9-inc0").increasing is False  # timm quirk fixed
  assert augment.parse_rand_augment_spec("rand-m9", num_layers=4).num_layers == 4
  assert len(augment.RAND_TRANSFORMS) == len(augment.RAND_INCREASING_TRANSFORMS) == 15


@pytest.mark.parametrize("bad", ["auto-m9", "rand-q5", "rand-m", "rand-mfoo", "rand-w3"])
def test_parse_errors_name_the_spec(bad):
  with pytest.raises(ValueError, match="augment.randaug"):
    augment.parse_rand_augment_spec(bad)


def test_op_subset_restricts_the_drawn_ops():
  s = augment.parse_rand_augment_spec(SPEC, ops=("Rotate", "Color", "TranslateXRel"))
  assert s.transforms == ("Rotate", "ColorIncreasing", "TranslateXRel")  # inc1 picks the increasing variant
  assert augment.parse_rand_augment_spec("rand-m7", ops=("Color",)).transforms == ("Color",)
  spec = augment.parse_rand_augment_spec("rand-m7-p1.0-n2", ops=("Rotate", "ShearX"))
  rng = np.random.default_rng(0)
  drawn = {op.name for _ in range(100) for op in augment.sample_rand_augment(rng, spec)}
  assert drawn == {"Rotate", "ShearX"}
  with pytest.raises(ValueError, match="randaug_ops.*'Zoom'"):
    augment.parse_rand_augment_spec(SPEC, ops=("Rotate", "Zoom"))
  with pytest.raises(ValueError, match="w0"):
    augment.parse_rand_augment_spec("rand-m7-w0", ops=("Rotate",))
  # The clip path passes the subset through: only geometric ops never change a uniform grey frame.
  grey = np.full((2, 16, 16, 3), 128, np.uint8)
  out = augment.rand_augment_video(grey, np.random.default_rng(3), "rand-m9-p1.0-n2",
                                   ops=("Rotate", "ShearX", "ShearY"))
  np.testing.assert_array_equal(out, grey)
  hit = [not np.array_equal(augment.rand_augment_video(grey, np.random.default_rng(i), "rand-m9-p1.0-n1",
                                                       ops=("Invert",)), grey) for i in range(3)]
  assert all(hit)


# ------------------------------------------------------------------------------------------ level maps
def test_level_to_args_follow_timm_ranges():
  rng = np.random.default_rng(0)
  assert augment._level_to_args("PosterizeIncreasing", 10.0, rng) == (0,)
  assert augment._level_to_args("PosterizeIncreasing", 0.0, rng) == (4,)
  assert augment._level_to_args("SolarizeIncreasing", 0.0, rng) == (256,)
  assert augment._level_to_args("SolarizeIncreasing", 5.0, rng) == (128,)
  assert augment._level_to_args("SolarizeAdd", 10.0, rng) == (110,)
  assert augment._level_to_args("Brightness", 10.0, rng) == pytest.approx((1.9,))
  rot = [augment._level_to_args("Rotate", 7.0, rng)[0] for _ in range(40)]
  assert set(np.round(np.abs(rot), 9)) == {21.0} and min(rot) < 0 < max(rot)
  signs = {np.sign(augment._level_to_args("ShearX", 10.0, rng)[0]) for _ in range(50)}
  assert signs == {-1.0, 1.0}
  enh = [augment._level_to_args("ContrastIncreasing", 7.0, rng)[0] for _ in range(50)]
  assert set(np.round(enh, 6)) == {round(1 - 0.63, 6), round(1 + 0.63, 6)}


def test_sampled_magnitudes_are_clipped_and_noisy():
  spec = augment.parse_rand_augment_spec("rand-m9-mstd0.5-p1.0-n1")
  rng = np.random.default_rng(1)
  shears = []
  for _ in range(400):
    (op,) = augment.sample_rand_augment(rng, spec)
    if op.name == "ShearX":
      shears.append(abs(op.args[0]) / 0.3 * 10)
  shears = np.array(shears)
  assert shears.max() <= 10.0 + 1e-9 and shears.min() >= 0.0
  assert 0.3 < shears.std() < 0.7 and abs(np.median(shears) - 9.0) < 0.3


def test_every_op_preserves_shape_and_dtype():
  img = Image.fromarray(_clip()[0])
  rng = np.random.default_rng(0)
  for name in set(augment.RAND_TRANSFORMS + augment.RAND_INCREASING_TRANSFORMS):
    op = augment.SampledOp(name, augment._level_to_args(name, 9.0, rng), Image.BICUBIC)
    out = np.asarray(augment.apply_op(img, op, augment.DEFAULT_FILL))
    assert out.shape == (32, 40, 3) and out.dtype == np.uint8, name


def test_translate_fills_with_fill_colour():
  img = Image.fromarray(np.full((20, 20, 3), 7, np.uint8))
  op = augment.SampledOp("TranslateXRel", (0.45,), Image.BILINEAR)
  out = np.asarray(augment.apply_op(img, op, (128, 100, 50)))
  assert (out[:, -5:] == (128, 100, 50)).all()  # shifted left by 9 px: right edge is fill
  assert (out[:, :5] == 7).all()


# -------------------------------------------------------------------------------------- RandAugment API
def test_rand_augment_reproducible_per_seed():
  x = _clip()
  a = augment.rand_augment_video(x, np.random.default_rng(123), SPEC)
  b = augment.rand_augment_video(x, np.random.default_rng(123), SPEC)
  np.testing.assert_array_equal(a, b)
  outs = [augment.rand_augment_video(x, np.random.default_rng(s), SPEC) for s in range(8)]
  assert len({o.tobytes() for o in outs}) > 3  # different seeds give different augmentations


def test_rand_augment_identical_across_frames():
  # A clip of identical frames stays identical frame to frame, for every seed: same ops, same params.
  frame = _clip(t=1)[0]
  x = np.repeat(frame[None], 6, axis=0)
  changed = 0
  for seed in range(30):
    y = augment.rand_augment_video(x, np.random.default_rng(seed), "rand-m9-mstd0.5-inc1-n3")
    for t in range(1, 6):
      np.testing.assert_array_equal(y[t], y[0])
    changed += not np.array_equal(y[0], frame)
  assert changed >= 20


def test_rand_augment_video_matches_per_frame_ops():
  # The clip path equals applying the sampled ops to each frame independently (no hidden per-frame rng).
  x = _clip(t=3)
  spec = augment.parse_rand_augment_spec("rand-m9-mstd0.5-inc1-p1.0")
  ops = augment.sample_rand_augment(np.random.default_rng(5), spec)
  y = augment.rand_augment_video(x, np.random.default_rng(5), "rand-m9-mstd0.5-inc1-p1.0")
  for t in range(3):
    img = Image.fromarray(x[t])
    for op in ops:
      img = augment.apply_op(img, op, augment.DEFAULT_FILL)
    np.testing.assert_array_equal(y[t], np.asarray(img))


def test_rand_augment_image_and_input_checks():
  img = _clip(t=1)[0]
  y = augment.rand_augment_image(img, np.random.default_rng(0), "rand-m9-mstd0.5-inc1")
  assert y.shape == img.shape and y.dtype == np.uint8
  with pytest.raises(ValueError, match="uint8"):
    augment.rand_augment_video(img.astype(np.float32)[None], np.random.default_rng(0), SPEC)
  x = _clip()
  x0 = x.copy()
  augment.rand_augment_video(x, np.random.default_rng(0), SPEC)
  np.testing.assert_array_equal(x, x0)  # input untouched


# ------------------------------------------------------------------------------------------ erasing
def _erased_mask(x, y):
  return np.any(x != y, axis=-1)


def test_erasing_same_box_on_all_frames():
  x = np.full((5, 48, 64, 3), 200, np.uint8)  # 200 is ~2.1 std above the mean: noise rarely hits it
  for seed in range(20):
    y = augment.random_erasing(x, np.random.default_rng(seed), prob=1.0)
    rows = np.where(_erased_mask(x, y).any(axis=(0, 2)))[0]
    cols = np.where(_erased_mask(x, y).any(axis=(0, 1)))[0]
    assert rows.size and cols.size
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Noise differs per frame (fresh N(0,1) per frame and pixel, as the official)...
    assert not np.array_equal(y[0, top:bottom, left:right], y[1, top:bottom, left:right])
    # ...but the box is the same: outside it every frame is untouched, inside each frame is mostly changed.
    outside = np.ones((48, 64), bool)
    outside[top:bottom, left:right] = False
    assert (y[:, outside] == 200).all()
    frac = _erased_mask(x, y)[:, top:bottom, left:right].mean(axis=(1, 2))
    assert (frac > 0.9).all()
    area = (bottom - top) * (right - left) / (48 * 64)
    assert 0.01 < area < 1 / 3 + 0.05


def test_erasing_pixel_noise_statistics_and_prob():
  x = np.zeros((2, 200, 200, 3), np.uint8)
  rng = np.random.default_rng(0)
  y = augment.random_erasing(x, rng, prob=1.0, mean=(0.5, 0.5, 0.5), std=(0.1, 0.1, 0.1))
  vals = y[_erased_mask(x, y)].astype(np.float64) / 255
  assert abs(vals.mean() - 0.5) < 0.01 and abs(vals.std() - 0.1) < 0.01
  hits = sum(not np.array_equal(augment.random_erasing(x[:, :20, :20], rng, prob=0.25), x[:, :20, :20])
             for _ in range(400))
  assert 70 < hits < 130  # ~100 expected at p = 0.25
  np.testing.assert_array_equal(augment.random_erasing(x, rng, prob=0.0), x)


def test_erasing_const_and_image_modes():
  img = np.zeros((30, 30, 3), np.uint8)
  y = augment.random_erasing(img, np.random.default_rng(3), prob=1.0, mode="const", mean=(0.4, 0.5, 0.6))
  assert y.shape == img.shape
  assert set(map(tuple, y[_erased_mask(img, y)])) == {(102, 128, 153)}
  with pytest.raises(ValueError, match="mode"):
    augment.random_erasing(img, np.random.default_rng(0), 1.0, mode="bogus")
  with pytest.raises(ValueError, match="erase_prob"):
    augment.random_erasing(img, np.random.default_rng(0), 1.5)


def test_erasing_box_distribution_matches_official_ranges():
  rng = np.random.default_rng(0)
  areas, aspects = [], []
  for _ in range(2000):
    top, left, h, w = augment.sample_erasing_box(rng, 224, 224)
    assert 0 <= top <= 224 - h and 0 <= left <= 224 - w
    areas.append(h * w / 224**2)
    aspects.append(h / w)
  assert 0.015 < min(areas) and max(areas) < 0.35
  assert abs(np.mean(areas) - (0.02 + 1 / 3) / 2) < 0.02
  assert abs(np.mean(np.log(aspects))) < 0.1  # log-uniform symmetric around 1
  assert min(aspects) > 0.25 and max(aspects) < 1 / 0.25
  assert math.isclose(np.median(aspects), 1.0, abs_tol=0.15)
