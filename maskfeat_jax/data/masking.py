"""Mask generators of the official MaskFeat data loaders (`slowfast/datasets/transform.py::MaskingGenerator3D`
and the BEiT `MaskingGenerator`).

Generators run on the host, one mask per example, driven by a `numpy.random.Generator` (so a seed
reproduces the masks, independent of Python's global `random`). They return uint8 arrays on the mask
grid, 1 = masked:

  cube    SlowFast `MaskingGenerator3D` (video default): space-time cuboids on (T', H', W').
  block   BEiT block-wise `MaskingGenerator` (image default): rectangles on (H', W').
  tube    a `block` mask on (H', W') repeated over all T' temporal units.
  frame   round(T' * ratio) whole temporal units.
  random  exactly round(N * ratio) cells, uniformly.
  none    all zeros.

The draws mirror the official code one for one (Python `random.uniform(a, b)` = a + (b - a) * U[0,1),
`random.randint(a, b)` inclusive, banker's `round`), so the mask distributions match even though the
random streams differ.
"""
import math
from typing import Any, Callable, Sequence

import numpy as np

MASK_TYPES = ("cube", "block", "tube", "frame", "random", "none")

MaskGenerator = Callable[[np.random.Generator], np.ndarray]


def _uniform(rng: np.random.Generator, a: float, b: float) -> float:
  # Python's random.uniform: also defined (and used by the 2-D generator) when b < a.
  return a + (b - a) * rng.random()


def _randint(rng: np.random.Generator, a: int, b: int) -> int:
  return int(rng.integers(a, b + 1))  # inclusive, as random.randint


def _block_shape(rng: np.random.Generator, min_area: float, max_area: float,
                 log_aspect: tuple[float, float]) -> tuple[int, int]:
  area = _uniform(rng, min_area, max_area)
  aspect = math.exp(_uniform(rng, *log_aspect))
  return int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))


def _log_aspect(min_aspect: float, max_aspect: float | None) -> tuple[float, float]:
  if min_aspect <= 0:
    raise ValueError(f"mask.min_aspect must be > 0, got {min_aspect}")
  return math.log(min_aspect), math.log(max_aspect or 1.0 / min_aspect)


def cube_mask(rng: np.random.Generator, grid: Sequence[int], num_masking: int, min_num: int, max_num: int,
              min_aspect: float = 0.3, max_aspect: float | None = None) -> np.ndarray:
  """SlowFast `MaskingGenerator3D`: cuboids until `num_masking` cells are masked or no cuboid fits.

  Per cuboid, up to 100 attempts: area ~ U(min_num, max_num) (the full range, NOT capped by the remaining
  budget), aspect log-uniform, h, w rounded (banker's), duration t ~ randint(1, T'); the shape must fit
  strictly (w < W', h < H'); position uniform; accepted if it adds 0 < new <= remaining cells.
  """
  tt, hh, ww = grid
  mask = np.zeros((tt, hh, ww), np.uint8)
  log_aspect = _log_aspect(min_aspect, max_aspect)
  count = 0
  while count < num_masking:
    remaining = num_masking - count
    added = 0
    for _ in range(100):
      h, w = _block_shape(rng, min_num, max_num, log_aspect)
      t = _randint(rng, 1, tt)
      if w < ww and h < hh:
        top, left, front = _randint(rng, 0, hh - h), _randint(rng, 0, ww - w), _randint(rng, 0, tt - t)
        region = mask[front:front + t, top:top + h, left:left + w]
        new = h * w * t - int(region.sum())
        if 0 < new <= remaining:
          region[...] = 1
          added = new
          break
    if added == 0:
      break
    count += added
  return mask


def block_mask(rng: np.random.Generator, grid: Sequence[int], num_masking: int, min_num: int, max_num: int,
               min_aspect: float = 0.3, max_aspect: float | None = None) -> np.ndarray:
  """BEiT block-wise `MaskingGenerator` on (H', W'), as the official image MaskFeat uses it.

  Per block, up to 10 attempts: area ~ U(min_num, min(remaining, max_num)), aspect log-uniform, strict
  fit (w < W', h < H'), position uniform, accepted if it adds 0 < new <= that cap.
  """
  hh, ww = grid
  mask = np.zeros((hh, ww), np.uint8)
  log_aspect = _log_aspect(min_aspect, max_aspect)
  count = 0
  while count < num_masking:
    cap = min(num_masking - count, max_num)
    added = 0
    for _ in range(10):
      h, w = _block_shape(rng, min_num, cap, log_aspect)
      if w < ww and h < hh:
        top, left = _randint(rng, 0, hh - h), _randint(rng, 0, ww - w)
        region = mask[top:top + h, left:left + w]
        new = h * w - int(region.sum())
        if 0 < new <= cap:
          region[...] = 1
          added = new
          break
    if added == 0:
      break
    count += added
  return mask


def frame_mask(rng: np.random.Generator, grid: Sequence[int], ratio: float) -> np.ndarray:
  """round(T' * ratio) whole temporal units, chosen without replacement (official MASK_FRAMES)."""
  mask = np.zeros(tuple(grid), np.uint8)
  n = round(grid[0] * ratio)
  mask[rng.choice(grid[0], size=n, replace=False)] = 1
  return mask


def random_mask(rng: np.random.Generator, grid: Sequence[int], ratio: float) -> np.ndarray:
  """Exactly round(N * ratio) of the N cells, uniformly at random."""
  total = int(np.prod(grid))
  flat = np.zeros(total, np.uint8)
  flat[rng.choice(total, size=round(total * ratio), replace=False)] = 1
  return flat.reshape(tuple(grid))


def _grid(mask_config: Any) -> tuple[int, ...]:
  grid = tuple(int(g) for g in mask_config.grid)
  if len(grid) not in (2, 3) or min(grid) < 1:
    raise ValueError(f"mask.grid must be (H', W') or (T', H', W') of positive sizes, got {grid}")
  return grid


def _need_rank(kind: str, grid: tuple[int, ...], rank: int) -> None:
  if len(grid) != rank:
    want = "(T', H', W')" if rank == 3 else "(H', W')"
    raise ValueError(f"mask.type={kind!r} needs a {rank}-D mask.grid {want}, got {grid}")


def build_mask_generator(mask_config: Any) -> MaskGenerator:
  """Returns gen(rng) -> uint8 mask of shape mask_config.grid (1 = masked) for mask_config.type.

  Config keys (config.mask): type, grid, ratio, min_num_patches, max_num_patches (0 = official default),
  min_aspect. Official defaults: cube n = round(T'H'W' ratio), max = H'W', min = max // 5; block and tube
  n = round(H'W' ratio), max = n, min = n // 5.
  """
  kind = mask_config.type
  grid = _grid(mask_config)
  ratio = float(mask_config.ratio)
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"mask.ratio must be in [0, 1], got {ratio}")
  aspect = float(mask_config.min_aspect)
  min_cfg, max_cfg = int(mask_config.min_num_patches), int(mask_config.max_num_patches)

  if kind == "cube":
    _need_rank(kind, grid, 3)
    n = round(math.prod(grid) * ratio)
    max_num = max_cfg or grid[1] * grid[2]
    min_num = min_cfg or max_num // 5
    return lambda rng: cube_mask(rng, grid, n, min_num, max_num, aspect)
  if kind in ("block", "tube"):
    spatial = grid if kind == "block" else grid[1:]
    _need_rank(kind, grid, 2 if kind == "block" else 3)
    n = round(math.prod(spatial) * ratio)
    max_num = max_cfg or n
    min_num = min_cfg or n // 5
    if kind == "block":
      return lambda rng: block_mask(rng, spatial, n, min_num, max_num, aspect)
    return lambda rng: np.tile(block_mask(rng, spatial, n, min_num, max_num, aspect), (grid[0], 1, 1))
  if kind == "frame":
    _need_rank(kind, grid, 3)
    return lambda rng: frame_mask(rng, grid, ratio)
  if kind == "random":
    return lambda rng: random_mask(rng, grid, ratio)
  if kind == "none":
    return lambda rng: np.zeros(grid, np.uint8)
  raise ValueError(f"unknown mask.type {kind!r}; expected one of {MASK_TYPES}")
