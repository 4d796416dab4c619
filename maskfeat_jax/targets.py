"""MaskFeat regression targets: HOG (the official `HOGLayerC`) and per-token normalised pixels.

Everything here is jittable, scatter-free and wrapped in `stop_gradient`. Inputs are channels-last:
images `[..., H, W, 3]`, clips `[B, T, H, W, 3]`. The targets are meant to be computed from the RAW pixel
values (uint8, or float 0-255): HOG is computed and L2-normalised per colour channel and its kernels sum to
zero, so a per-channel mean/std normalisation would not change it in exact arithmetic, while on raw integer
values the formulation below is exact in float32 (integer differences and their [1, 2, 1] sums are exact,
whereas `slowfast/models/operators.py::HOGLayerC` convolves the normalised float input, where a zero gradient
rounds to a tiny residue of random sign): flat cells give an all-zero target and edges are binned by their
true orientation.

HOG, per channel (as `slowfast/models/operators.py::HOGLayerC`): reflect-pad 1 px; gx = left - right column,
gy = top - bottom row, each smoothed with [1, 2, 1] across the other axis (the official negative-Sobel
cross-correlation); magnitude sqrt(gx² + gy²); bin = floor(atan2(gx, gy) / pi * nbins) mod nbins (unsigned
orientation, hard assignment; computed by comparisons, see `_orientation_bins`); optional Gaussian weighting
of the magnitudes; sums over non-overlapping cells; L2 over the bins of each (channel, cell) with eps 1e-12.
"""
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maskfeat_jax import compiler

_L2_EPS = 1e-12  # F.normalize default, as the official code uses.
_PIXEL_EPS = 1e-6  # official pixel-target normalisation: (x - mean) / sqrt(var + 1e-6).



def _check_channels_last(x: jax.Array, min_ndim: int, what: str) -> None:
  if x.ndim < min_ndim or x.shape[-1] != 3:
    raise ValueError(f"{what} expects channels-last RGB input with at least {min_ndim} dims "
                     f"[..., H, W, 3]; got shape {tuple(x.shape)}")


def _to_float(x: jax.Array) -> jax.Array:
  # uint8 -> float32 keeps integer values, which is what makes the gradients exact.
  return jnp.asarray(x).astype(jnp.float32)


def gaussian_weights(size: int, height: int, width: int) -> np.ndarray:
  """The official `get_gkern(size, size // 2)` kernel tiled over a `height x width` image.

  Args:
    size: window g > 0.
    height: image height; must be a multiple of g.
    width: image width; must be a multiple of g.

  Returns:
    float32 array [height, width]: outer(w, w) / sum, w_n = exp(-0.5 ((n - (g-1)/2) / (g//2))²), tiled.
  """
  if size <= 0:
    raise ValueError(f"gaussian_window must be > 0 to build a window, got {size}")
  if height % size or width % size:
    raise ValueError(f"gaussian_window={size} must divide the image size; got H={height}, W={width}")
  sigma = size // 2
  if sigma == 0:
    raise ValueError(f"gaussian_window={size} gives sigma = size // 2 = 0; use a window >= 2")
  n = (np.arange(size, dtype=np.float64) - (size - 1) / 2) / sigma
  w = np.exp(-0.5 * n**2)
  kern = np.outer(w, w)
  kern /= kern.sum()
  # The official code tiles the kernel (H/g) x (H/g) times (it assumes square images); we tile per axis.
  return np.tile(kern, (height // size, width // size)).astype(np.float32)


def _smooth_reflect(d: jax.Array, axis: int) -> jax.Array:
  """[1, 2, 1] along `axis` with reflect padding (index -1 -> 1, n -> n-2)."""
  n = d.shape[axis]
  sl = lambda a, b: jax.lax.slice_in_dim(d, a, b, axis=axis)
  first = 2.0 * (sl(0, 1) + sl(1, 2))
  inner = sl(0, n - 2) + 2.0 * sl(1, n - 1) + sl(2, n)
  last = 2.0 * (sl(n - 2, n - 1) + sl(n - 1, n))
  return jax.lax.concatenate([first, inner, last], axis)


def _gradients(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """gx, gy of the official HOG kernels on planar [..., H, W] with reflect padding.

  Differences first, smoothing second: on integer-valued input every intermediate is a small integer, so
  the result is exact. Reflect padding makes the difference across the padded axis zero on the border
  (x[-1] = x[1]), so the differences are zero-padded there and only the smoothing needs the reflection;
  this avoids materialising a padded copy of the image.
  """
  nd = x.ndim
  pad_w = [(0, 0, 0)] * (nd - 1) + [(1, 1, 0)]
  pad_h = [(0, 0, 0)] * (nd - 2) + [(1, 1, 0), (0, 0, 0)]
  dx = jax.lax.pad(x[..., :, :-2] - x[..., :, 2:], jnp.zeros((), x.dtype), pad_w)  # left - right
  dy = jax.lax.pad(x[..., :-2, :] - x[..., 2:, :], jnp.zeros((), x.dtype), pad_h)  # top - bottom
  return _smooth_reflect(dx, nd - 2), _smooth_reflect(dy, nd - 1)


def _orientation_bins(gx: jax.Array, gy: jax.Array, nbins: int) -> jax.Array:
  """floor(atan2(gx, gy) / pi * nbins) mod nbins, computed with comparisons instead of atan2.

  The official bin of the angle theta of (gy, gx) is the unsigned sector [k pi/n, (k+1) pi/n) holding
  theta mod pi. Folding (gx, gy) -> (-gx, -gy) when gx < 0 (or gx == 0 and gy < 0) gives theta' =
  theta mod pi in [0, pi); for a in (0, pi), theta' >= a iff sin(theta' - a) >= 0 iff
  gx' cos a - gy' sin a >= 0, so the bin is the number of boundaries a_k = k pi / n passed. This agrees
  with atan2 at the exactly representable boundaries (0 and pi -> bin 0, pi/2 -> bin n/2), is several
  times cheaper on CPU, and is exact on integer gradients (they never come within float32 rounding of
  the irrational boundaries). gx = gy = 0 lands in the last bin, with weight 0.
  """
  flip = (gx < 0) | ((gx == 0) & (gy < 0))
  gx = jnp.where(flip, -gx, gx)
  gy = jnp.where(flip, -gy, gy)
  bins = jnp.zeros(gx.shape, jnp.int32)
  for k in range(1, nbins):
    a = k * math.pi / nbins
    passed = gx * np.float32(math.cos(a)) >= gy * np.float32(math.sin(a))
    bins = bins + passed.astype(jnp.int32)
  return bins


def _hog_planar(x: jax.Array, nbins: int, cell_size: int, gaussian_window: int) -> jax.Array:
  """HOG of planar float32 images [..., C, H, W] -> normalised [..., C, H/cell, W/cell, nbins]."""
  *lead, c, h, w = x.shape
  hc, wc = h // cell_size, w // cell_size
  gx, gy = _gradients(x)
  mag = jnp.sqrt(gx * gx + gy * gy)
  if gaussian_window:
    # Weights the magnitudes of the full image, before cropping to whole cells (as the official code).
    mag = mag * jnp.asarray(gaussian_weights(gaussian_window, h, w))
  bins = _orientation_bins(gx, gy, nbins)
  # Crop to whole cells and expose the cell structure [..., C, hc, cell, wc, cell].
  cell_shape = (*lead, c, hc, cell_size, wc, cell_size)
  mag = mag[..., :hc * cell_size, :wc * cell_size].reshape(cell_shape)
  bins = bins[..., :hc * cell_size, :wc * cell_size].reshape(cell_shape)
  # Hard assignment as compare-and-sum over a trailing one-hot axis (no scatter), cells by reshape-sum.
  onehot = bins[..., None] == jnp.arange(nbins, dtype=jnp.int32)
  hist = jnp.sum(jnp.where(onehot, mag[..., None], 0.0), axis=(-4, -2))  # [..., C, hc, wc, nbins]
  norm = jnp.sqrt(jnp.sum(hist * hist, axis=-1, keepdims=True))
  return jax.lax.stop_gradient(hist / jnp.maximum(norm, _L2_EPS))


def _planar_input(images: jax.Array, nbins: int, cell_size: int) -> jax.Array:
  """Validates [..., H, W, 3] input and returns planar float32 [..., 3, H, W]."""
  images = jnp.asarray(images)
  _check_channels_last(images, 3, "hog")
  if nbins < 2 or cell_size < 1:
    raise ValueError(f"hog needs nbins >= 2 and cell_size >= 1; got nbins={nbins}, cell_size={cell_size}")
  h, w = images.shape[-3], images.shape[-2]
  if min(h, w) < max(2, cell_size):
    raise ValueError(f"hog needs H, W >= max(2, cell_size={cell_size}); got shape {tuple(images.shape)}")
  # Planar layout: W becomes the contiguous axis, which XLA vectorises far better than 3 channels; uint8
  # -> float32 keeps the integer values that make the gradients exact.
  return jnp.moveaxis(images, -1, -3).astype(jnp.float32)


# Jitted at definition (shape/arg errors still raise at trace time): eager callers get one compiled
# program instead of dozens of op-by-op dispatches, with the same compiler options as the train step
# (maskfeat_jax.compiler); inside another jit this simply inlines.
@functools.partial(compiler.jit, static_argnames=("nbins", "cell_size", "gaussian_window"))
def hog(images: jax.Array, nbins: int = 9, cell_size: int = 8, gaussian_window: int = 0) -> jax.Array:
  """Histograms of oriented gradients exactly as the official MaskFeat `HOGLayerC`.

  Args:
    images: [..., H, W, 3] pixel values (any real dtype; cast to float32). Any leading batch dims.
    nbins: orientation bins over 180 degrees (unsigned).
    cell_size: cell side in pixels; trailing pixels that do not fill a cell are dropped.
    gaussian_window: 0 (MaskFeat default: off) or g > 0 to weight magnitudes by the tiled g x g Gaussian
      window (H and W must be multiples of g).

  Returns:
    float32 [..., H // cell_size, W // cell_size, 3, nbins], each (cell, channel) vector L2-normalised
    (all-zero where the cell has no gradient). No gradient flows through it.
  """
  x = _planar_input(images, nbins, cell_size)
  out = _hog_planar(x, nbins, cell_size, gaussian_window)  # [..., C, hc, wc, nbins]
  return jnp.moveaxis(out, -4, -2)


def _select_frames(x: jax.Array, temporal_stride: int) -> jax.Array:
  """Video [B,T,H,W,3] -> frames 0, ts, 2ts, ... (the first frame of each temporal token).

  ceil(T / ts) frames, as the official `x[:, :, ::ts]`; with the patch embedding's kernel 3 / pad 1 / stride 2
  that is also its number of temporal tokens when T is odd.
  """
  if temporal_stride < 1:
    raise ValueError(f"temporal_stride must be >= 1, got {temporal_stride}")
  return x[:, ::temporal_stride]


def _check_spatial(x: jax.Array, feature_stride: int) -> None:
  h, w = x.shape[-3], x.shape[-2]
  if feature_stride < 1 or h % feature_stride or w % feature_stride:
    raise ValueError(f"image size {h}x{w} is not a multiple of feature_stride={feature_stride} "
                     f"(input shape {tuple(x.shape)})")


def _check_rank(x: jax.Array, what: str) -> None:
  if x.ndim not in (4, 5) or x.shape[-1] != 3:
    raise ValueError(f"{what} expects an image batch [B,H,W,3] or a clip batch [B,T,H,W,3]; "
                     f"got shape {tuple(x.shape)}")


@functools.partial(compiler.jit, static_argnames=("feature_stride", "temporal_stride", "nbins", "cell_size",
                                             "gaussian_window"))
def hog_token_targets(x: jax.Array, feature_stride: int = 16, temporal_stride: int = 2, nbins: int = 9,
                      cell_size: int = 8, gaussian_window: int = 0) -> jax.Array:
  """Per-token HOG targets on the prediction grid.

  As `slowfast/models/masked.py::MaskMViT._get_hog_label_2d` (images) / `_get_hog_label_3d` (clips).

  Args:
    x: raw pixels, image batch [B,H,W,3] or clip batch [B,T,H,W,3] (uint8 or float 0-255).
    feature_stride: pixels per output token side; a multiple of `cell_size` dividing H and W.
    temporal_stride: video only; HOG of frames 0, ts, 2ts, ... (ceil(T / ts) frames, as the official code).
    nbins, cell_size, gaussian_window: as in `hog`.

  Returns:
    image [B, H/s, W/s, D] or video [B, ceil(T/ts), H/s, W/s, D], D = 3 * nbins * (s / cell)², each vector in
    (channel, bin, cell_row, cell_col) order, i.e. index ((c * nbins + bin) * u + cy) * u + cx.
  """
  x = jnp.asarray(x)
  _check_rank(x, "hog_token_targets")
  if feature_stride % cell_size:
    raise ValueError(f"feature_stride={feature_stride} must be a multiple of cell_size={cell_size}")
  _check_spatial(x, feature_stride)
  if x.ndim == 5:
    x = _select_frames(x, temporal_stride)
  planar = _planar_input(x, nbins, cell_size)
  feats = _hog_planar(planar, nbins, cell_size, gaussian_window)  # [..., C, hc, wc, nbins]
  u = feature_stride // cell_size
  *lead, c, hc, wc, nb = feats.shape
  h, w = hc // u, wc // u
  feats = feats.reshape(*lead, c, h, u, w, u, nb)
  n = len(lead)
  # [..., c, h, cy, w, cx, bin] -> [..., h, w, c, bin, cy, cx]
  perm = tuple(range(n)) + (n + 1, n + 3, n, n + 5, n + 2, n + 4)
  return feats.transpose(perm).reshape(*lead, h, w, c * nb * u * u)


@functools.partial(compiler.jit, static_argnames=("feature_stride", "temporal_stride"))
def pixel_token_targets(x: jax.Array, feature_stride: int = 16, temporal_stride: int = 2) -> jax.Array:
  """Per-token normalised pixel targets (`slowfast/models/masked.py::MaskMViT._get_pixel_label_2d/3d`).

  Each token's vector is standardised over its own elements: (v - mean) / sqrt(var + 1e-6) with the
  UNBIASED variance (torch.var default). Vector orders follow the official code so that its pixel heads
  would line up: video (row, col, channel) with channel fastest (one frame per temporal token); image
  (channel, row, col) (the official 2-D path uses unfold). Computed on the raw 0-255 values, so the 1e-6
  eps is relatively smaller than in the official code, which sees mean/std-normalised input.

  Args:
    x: raw pixels, image batch [B,H,W,3] or clip batch [B,T,H,W,3].
    feature_stride: patch side in pixels (dividing H and W).
    temporal_stride: video only; frames 0, ts, 2ts, ... are used.

  Returns:
    image [B, H/s, W/s, 3·s²] or video [B, T/ts, H/s, W/s, 3·s²], float32.
  """
  x = jnp.asarray(x)
  _check_rank(x, "pixel_token_targets")
  _check_spatial(x, feature_stride)
  if x.ndim == 5:
    x = _select_frames(x, temporal_stride)
  x = _to_float(x)
  s = feature_stride
  *lead, hh, ww, c = x.shape
  h, w = hh // s, ww // s
  x = x.reshape(*lead, h, s, w, s, c)
  n = len(lead)
  if n == 1:  # image: (channel, row, col)
    perm = (0, 1, 3, 5, 2, 4)
  else:  # video: (row, col, channel)
    perm = tuple(range(n)) + (n, n + 2, n + 1, n + 3, n + 4)
  v = x.transpose(perm).reshape(*lead, h, w, s * s * c)
  mean = jnp.mean(v, axis=-1, keepdims=True)
  var = jnp.var(v, axis=-1, keepdims=True, ddof=1)
  return jax.lax.stop_gradient((v - mean) / jnp.sqrt(var + _PIXEL_EPS))


def target_dim(target_config: Any, feature_stride: int) -> int:
  """Length D of one token's target vector for `target_config` (config.target) at `feature_stride`."""
  kind = target_config.type
  if kind == "hog":
    cell = target_config.cell_size
    if feature_stride % cell:
      raise ValueError(f"feature_stride={feature_stride} must be a multiple of target.cell_size={cell}")
    return 3 * target_config.nbins * (feature_stride // cell) ** 2
  if kind == "pixel":
    return 3 * feature_stride**2
  raise ValueError(f"unknown target.type {kind!r}; expected 'hog' or 'pixel'")


def token_targets(x: jax.Array, target_config: Any, feature_stride: int, temporal_stride: int) -> jax.Array:
  """Targets of `target_config.type` ('hog' | 'pixel') for raw pixels x; see the functions above."""
  kind = target_config.type
  if kind == "hog":
    return hog_token_targets(x, feature_stride, temporal_stride, nbins=target_config.nbins,
                             cell_size=target_config.cell_size,
                             gaussian_window=target_config.gaussian_window)
  if kind == "pixel":
    return pixel_token_targets(x, feature_stride, temporal_stride)
  raise ValueError(f"unknown target.type {kind!r}; expected 'hog' or 'pixel'")
