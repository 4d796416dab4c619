"""Mask generators vs the official statistics, determinism, grid checks and the nearest resize."""
import json

import numpy as np
import pytest

from maskfeat_jax.data import masking
from maskfeat_jax.config import base_config

N_SAMPLES = 4000


def _mask_config(**overrides):
  cfg = base_config().mask
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


@pytest.fixture(scope="module")
def golden_stats(golden_dir):
  return json.loads((golden_dir / "mask_stats.json").read_text())


def _sample(cfg, n, seed=0):
  gen = masking.build_mask_generator(cfg)
  rng = np.random.default_rng(seed)
  return np.stack([gen(rng) for _ in range(n)])


def _check_stats(masks, want):
  ratios = masks.reshape(len(masks), -1).mean(1)
  per_cell = masks.mean(0)
  assert abs(ratios.mean() - want["ratio_mean"]) <= 0.003
  # Spread: the std within 25%, extremes within a couple of grid cells of the official ones.
  assert abs(ratios.std() - want["ratio_std"]) <= 0.25 * want["ratio_std"]
  n_cells = masks[0].size
  assert ratios.max() <= want["ratio_max"] + 1e-6
  assert abs(ratios.min() - want["ratio_min"]) <= 4 / n_cells + 0.01
  # Per-cell rates (centre cells are masked far more often than corners) in the same range.
  assert abs(per_cell.min() - want["per_cell_rate_min"]) <= 0.03
  assert abs(per_cell.max() - want["per_cell_rate_max"]) <= 0.03


def test_cube_statistics_match_official(golden_stats):
  want = golden_stats["video_cube_8x7x7_ratio0.4"]
  masks = _sample(_mask_config(type="cube", grid=(8, 7, 7), ratio=0.4), N_SAMPLES)
  assert masks.shape == (N_SAMPLES, 8, 7, 7) and masks.dtype == np.uint8
  assert masks.reshape(N_SAMPLES, -1).sum(1).max() <= 157  # never more than round(392 * 0.4)
  _check_stats(masks, want)
  touched = (masks.sum((2, 3)) > 0).sum(1).mean()
  assert abs(touched - want["mean_time_slices_touched"]) <= 0.1


def test_block_statistics_match_official(golden_stats):
  want = golden_stats["image_block_14x14_78"]
  masks = _sample(_mask_config(type="block", grid=(14, 14), ratio=0.4), N_SAMPLES)
  assert masks.shape == (N_SAMPLES, 14, 14)
  assert masks.reshape(N_SAMPLES, -1).sum(1).max() <= 78
  _check_stats(masks, want)


@pytest.mark.parametrize("kind,grid", [("cube", (8, 7, 7)), ("block", (14, 14)), ("tube", (8, 7, 7)),
                                       ("frame", (8, 7, 7)), ("random", (8, 7, 7))])
def test_seed_reproduces_masks(kind, grid):
  cfg = _mask_config(type=kind, grid=grid)
  a, b, c = _sample(cfg, 20, seed=7), _sample(cfg, 20, seed=7), _sample(cfg, 20, seed=8)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_tube_frame_random_none():
  tube = _sample(_mask_config(type="tube", grid=(8, 7, 7)), 50)
  np.testing.assert_array_equal(tube, np.broadcast_to(tube[:, :1], tube.shape))  # same in every t
  assert 0 < tube[:, 0].sum((1, 2)).max() <= round(49 * 0.4)

  frame = _sample(_mask_config(type="frame", grid=(8, 7, 7), ratio=0.4), 50)
  per_t = frame.mean((2, 3))
  assert set(np.unique(per_t)) <= {0.0, 1.0}  # whole temporal units
  np.testing.assert_array_equal(per_t.sum(1), round(8 * 0.4))

  rand = _sample(_mask_config(type="random", grid=(14, 14), ratio=0.4), 50)
  np.testing.assert_array_equal(rand.reshape(50, -1).sum(1), round(196 * 0.4))

  none = _sample(_mask_config(type="none", grid=(8, 7, 7)), 2)
  assert none.shape == (2, 8, 7, 7) and none.sum() == 0


def test_config_overrides_are_used():
  # Cuboids of 49 cells never fit strictly (h, w < 7) in a 7x7 grid, and the cube generator does not
  # shrink the area to the remaining budget, so nothing can be masked; the defaults mask ~40%.
  assert _sample(_mask_config(type="cube", min_num_patches=49, max_num_patches=49), 20).sum() == 0
  assert _sample(_mask_config(type="cube"), 20).mean() > 0.3


@pytest.mark.parametrize("overrides,match", [
    (dict(type="blocky"), "blocky"),
    (dict(type="cube", grid=(14, 14)), "3-D"),
    (dict(type="block", grid=(8, 7, 7)), "2-D"),
    (dict(type="frame", grid=(14, 14)), "3-D"),
    (dict(type="cube", ratio=1.5), "ratio"),
    (dict(type="cube", grid=(8, 0, 7)), "grid"),
])
def test_bad_configs_raise(overrides, match):
  with pytest.raises(ValueError, match=match):
    masking.build_mask_generator(_mask_config(**overrides))
