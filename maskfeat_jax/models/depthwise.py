"""The depthwise pooling convolution of `slowfast/models/attention.py::MultiScaleAttention` (mode "conv"),
Conv3d(C, C, k, stride, padding=k//2, groups=C, bias=False) on channels-last [N, T, H, W, C], with its
backward pass written by hand (figures in BENCHMARKS.md, "Model step on CPU"); and the shifted-slice helpers
(`tap_slice`, `dilate_for_transpose`, ...) that models/maxpool.py shares.
"""
import functools

import jax
import jax.numpy as jnp


def conv_out_size(x_shape, kernel_size, stride) -> tuple[int, int, int]:
  return tuple((n + 2 * (k // 2) - k) // s + 1 for n, k, s in zip(x_shape[1:4], kernel_size, stride))


def tap_slice(xp, offset, stride, out_size, lead: int = 1):
  """The strided slice of the padded input that kernel tap `offset` multiplies: [N, *out_size, C].

  `lead`: the number of axes before (t, h, w) -- 1 for [N, T, H, W, C], 2 for channels-first [C, N, T, H, W].
  """
  trail = xp.ndim - lead - 3
  start = (0,) * lead + tuple(offset) + (0,) * trail
  limit = (xp.shape[:lead] + tuple(o + s * (n - 1) + 1 for o, s, n in zip(offset, stride, out_size))
           + xp.shape[lead + 3:])
  return jax.lax.slice(xp, start, limit, (1,) * lead + tuple(stride) + (1,) * trail)


def kernel_taps(kernel_size):
  kt, kh, kw = kernel_size
  return [(a, b, c) for a in range(kt) for b in range(kh) for c in range(kw)]


def _shifted_sum(xp, kernel, stride, out_size):
  """sum over taps of tap(xp) * kernel[tap]: one fused elementwise loop."""
  out = None
  for tap in kernel_taps(kernel.shape[:3]):
    term = tap_slice(xp, tap, stride, out_size) * kernel[tap + (0,)]
    out = term if out is None else out + term
  return out


def pad_same(x, kernel_size, value=0):
  return jnp.pad(x, [(0, 0)] + [(k // 2, k // 2) for k in kernel_size] + [(0, 0)], constant_values=value)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv3d(x, kernel, stride):
  """Conv3d(C, C, k, stride, padding=k//2, groups=C, bias=False) on [N,T,H,W,C] as a sum of shifted slices.

  Same arithmetic as the grouped convolution (one product per tap, summed over the k_t·k_h·k_w taps), but
  built from strided slices and multiplies that XLA fuses into one loop: on CPU the grouped-conv kernels
  (and especially their weight gradient) are several times slower. The backward is written by hand
  (`_depthwise_bwd`): autodiff of the slices gives one full-tensor reduction per tap for the kernel
  gradient and one pad-and-add per tap for the input gradient (figures in BENCHMARKS.md, "Model step").
  """
  kernel_size = kernel.shape[:3]
  return _shifted_sum(pad_same(x, kernel_size), kernel, stride, conv_out_size(x.shape, kernel_size, stride))


def _depthwise_fwd(x, kernel, stride):
  return depthwise_conv3d(x, kernel, stride), (x, kernel)


def _depthwise_bwd(stride, residuals, g):
  x, kernel = residuals
  kernel_size = kernel.shape[:3]
  xp = pad_same(x, kernel_size)
  dkernel = _kernel_grad(xp, g, kernel_size, stride).reshape(kernel.shape).astype(kernel.dtype)
  # Input gradient = the transposed convolution: g dilated by the stride, padded by k-1 (and up to the
  # padded input's size), then the same shifted-slice sum with the kernel flipped; crop the padding off.
  padded_size = xp.shape[1:4]
  gpad = dilate_for_transpose(g, kernel_size, stride, padded_size, 0)
  dxp = None
  for tap in kernel_taps(kernel_size):
    term = transposed_tap(gpad, kernel_size, tap, padded_size) * kernel[tap + (0,)].astype(g.dtype)
    dxp = term if dxp is None else dxp + term
  return crop_same(dxp, kernel_size, x.shape).astype(x.dtype), dkernel


def _kernel_grad(xp, g, kernel_size, stride):
  """[taps, C] kernel gradient: per tap, the sum over all positions of tap(xp) * g, in float32.

  One variadic reduction with an output per tap: XLA fuses the 27 products into a single loop that reads
  xp and g once. Channels first (one transpose of each), so every tap's sum runs along contiguous memory:
  XLA:CPU emits a reduction that keeps the minor (channel) axis as a strided scalar loop per channel,
  several times slower. Per-tap reductions (what autodiff of the shifted slices gives) cost one kernel and
  one pass over the tensors each (figures in BENCHMARKS.md, "Model step on CPU").
  """
  xt = jnp.moveaxis(xp, -1, 0).astype(jnp.float32)  # [C, N, T, H, W]
  gt = jnp.moveaxis(g, -1, 0).astype(jnp.float32)
  products = [tap_slice(xt, tap, stride, g.shape[1:4], lead=2) * gt for tap in kernel_taps(kernel_size)]
  n = len(products)
  sums = jax.lax.reduce(tuple(products), tuple(jnp.float32(0) for _ in range(n)),
                        lambda a, b: tuple(a[i] + b[i] for i in range(n)), (1, 2, 3, 4))
  return jnp.stack(sums)


def dilate_for_transpose(g, kernel_size, stride, padded_size, fill):
  """An output-shaped [N, t, h, w, C] tensor dilated by the stride and padded by k-1 in front (and up to
  the padded input's size behind), so that `transposed_tap` of it, summed over taps, is the transposed
  strided window op: padded-input position p receives, from tap t, output o where p = o*stride + t."""
  out_size = g.shape[1:4]
  return jax.lax.pad(g, jnp.asarray(fill, g.dtype),
                     [(0, 0, 0)] + [(k - 1, p - ((n - 1) * s + 1), s - 1) for k, p, n, s in
                                    zip(kernel_size, padded_size, out_size, stride)] + [(0, 0, 0)])


def transposed_tap(gpad, kernel_size, tap, padded_size):
  """What tap `tap` sends back to every padded-input position, from `dilate_for_transpose`'s tensor."""
  offset = tuple(k - 1 - t for k, t in zip(kernel_size, tap))
  return tap_slice(gpad, offset, (1, 1, 1), padded_size)


def crop_same(xp, kernel_size, x_shape):
  """The inverse of `pad_same`: the unpadded [N, T, H, W, C] region."""
  pt, ph, pw = (k // 2 for k in kernel_size)
  return xp[:, pt:pt + x_shape[1], ph:ph + x_shape[2], pw:pw + x_shape[3]]


depthwise_conv3d.defvjp(_depthwise_fwd, _depthwise_bwd)
