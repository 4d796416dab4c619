"""3-D max pooling as `nn.MaxPool3d(kernel, stride, padding=kernel // 2)` on channels-last [N, T, H, W, C],
built from shifted strided slices (models/depthwise.py) with a hand-written backward.

Why not `flax.linen.max_pool`: its gradient (JAX's reduce-window max VJP) lowers on XLA:CPU to a
reduce-window with extra index outputs plus a scatter, which MViT's residual ("skip") pooling of every
stage-transition block pays in each training step (BENCHMARKS.md, "Model step on CPU"). Here the forward
keeps, per output, which tap won (int8), and the backward sends each output's gradient to that tap's input
position with the same transposed shifted-slice sum as the depthwise conv's input gradient: one fused loop.

Ties go to the first tap in (t, h, w) window order, as PyTorch's max_pool3d backward does; padded positions
are -inf and never win against a finite input.
"""
import functools

import jax
import jax.numpy as jnp

from maskfeat_jax.models import depthwise as dw


def _forward(x, kernel_size, stride):
  xp = dw.pad_same(x, kernel_size, -jnp.inf)
  out_size = dw.conv_out_size(x.shape, kernel_size, stride)
  best = winner = None
  for i, tap in enumerate(dw.kernel_taps(kernel_size)):
    v = dw.tap_slice(xp, tap, stride, out_size)
    if best is None:
      best, winner = v, jnp.zeros(v.shape, jnp.int8)
    else:
      better = v > best  # strictly: an equal later tap does not take over (first tap wins ties)
      best, winner = jnp.where(better, v, best), jnp.where(better, jnp.int8(i), winner)
  return best, winner


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool3d(x, kernel_size: tuple[int, int, int], stride: tuple[int, int, int]):
  """nn.MaxPool3d(kernel_size, stride, padding=k // 2) of [N, T, H, W, C] (kernels up to 127 taps)."""
  return _forward(x, tuple(kernel_size), tuple(stride))[0]


def _fwd(x, kernel_size, stride):
  kernel_size, stride = tuple(kernel_size), tuple(stride)
  if len(dw.kernel_taps(kernel_size)) > 127:
    raise ValueError(f"max_pool3d: kernel {kernel_size} has more than 127 taps (the winner index is int8)")
  out, winner = _forward(x, kernel_size, stride)
  return out, (winner, x.shape)


def _bwd(kernel_size, stride, residuals, g):
  winner, x_shape = residuals
  kernel_size, stride = tuple(kernel_size), tuple(stride)
  padded_size = tuple(n + 2 * (k // 2) for n, k in zip(x_shape[1:4], kernel_size))
  gpad = dw.dilate_for_transpose(g, kernel_size, stride, padded_size, 0)
  wpad = dw.dilate_for_transpose(winner, kernel_size, stride, padded_size, -1)  # -1: no output there
  dxp = None
  for i, tap in enumerate(dw.kernel_taps(kernel_size)):
    won = dw.transposed_tap(wpad, kernel_size, tap, padded_size) == i
    term = jnp.where(won, dw.transposed_tap(gpad, kernel_size, tap, padded_size), jnp.zeros((), g.dtype))
    dxp = term if dxp is None else dxp + term
  return (dw.crop_same(dxp, kernel_size, x_shape),)


max_pool3d.defvjp(_fwd, _bwd)
