"""MViT (multiscale vision transformer) in Flax linen, number for number the SlowFast `MViT` (spec §4).

Layout: channels last ([B,T,H,W,C] for convolutions), tokens in (t,h,w) row-major order with the cls token
(when on) first. ViT is a configuration of the same model (2-D patch conv, no pooling, absolute position
embedding). Parameter names follow the official state-dict keys (`patch_embed/proj`, `blocks_3/attn/qkv`,
`blocks_3/attn/rel_pos_h`, `cls_token`, ...), so `maskfeat_jax.convert` is a table.

The architecture is resolved once, in plain Python, into an `ArchSpec` (hashable, so modules stay cheap to
re-trace): per-block widths, heads, pooling kernels/strides and rel-pos table sizes exactly as
`MViT.__init__` derives them (round_width, adaptive KV strides, DIM_MUL_IN_ATT layouts).
"""
import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-6  # every LayerNorm of the official MViT / MaskMViT (spec §4.2)
REMAT_POLICIES = ("none", "full", "dots")


# ----------------------------------------------------------------------------------------------------------
# Architecture resolution (plain Python).
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One MultiScaleBlock as the official constructor builds it."""
  index: int
  dim: int  # input width
  dim_out: int  # output width
  num_heads: int
  att_dim: int  # attention width: dim_out with DIM_MUL_IN_ATT, else dim
  table_size: tuple[int, int, int]  # official `input_size` (integer-divided): sizes the rel-pos tables
  thw: tuple[int, int, int]  # actual token grid entering the block (conv arithmetic)
  q_kernel: tuple[int, ...]  # () = Q not pooled
  q_stride: tuple[int, ...]  # () = block not listed in pool_q_stride
  kv_kernel: tuple[int, ...]
  kv_stride: tuple[int, ...]
  drop_path: float

  @property
  def head_dim(self) -> int:
    return self.att_dim // self.num_heads

  @property
  def rel_pos_hw_len(self) -> int:
    size = self.table_size[1]
    q_size = size // self.q_stride[1] if self.q_stride else size
    kv_size = size // self.kv_stride[1] if self.kv_stride else size
    return 2 * max(q_size, kv_size) - 1

  @property
  def rel_pos_t_len(self) -> int:
    return 2 * self.table_size[0] - 1

  @property
  def q_thw(self) -> tuple[int, int, int]:
    return _pooled_size(self.thw, self.q_kernel, self.q_stride)

  @property
  def kv_thw(self) -> tuple[int, int, int]:
    return _pooled_size(self.thw, self.kv_kernel, self.kv_stride)

  @property
  def skip_pool(self) -> Optional[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(kernel, stride, padding) of the max-pooled residual, or None (only where Q is strided)."""
    if not self.q_stride or math.prod(self.q_stride) == 1:
      return None
    kernel = tuple(s + 1 if s > 1 else s for s in self.q_stride)
    return kernel, self.q_stride, tuple(k // 2 for k in kernel)

  @property
  def out_thw(self) -> tuple[int, int, int]:
    return self.q_thw


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """Everything the modules need, resolved from `config.model`."""
  input_size: tuple[int, int, int]  # (T, H, W); T = 1 for images
  patch_2d: bool
  patch_kernel: tuple[int, int, int]
  patch_stride: tuple[int, int, int]
  patch_padding: tuple[int, int, int]
  embed_dim: int
  mlp_ratio: float
  qkv_bias: bool
  pool_mode: str
  cls_embed: bool
  use_abs_pos: bool
  sep_pos_embed: bool
  rel_pos_spatial: bool
  rel_pos_temporal: bool
  rel_pos_zero_init: bool
  residual_pooling: bool
  dim_mul_in_att: bool
  pixel_mean: tuple[float, float, float]
  pixel_std: tuple[float, float, float]
  dtype: str
  remat_policy: str
  blocks: tuple[BlockSpec, ...]

  @property
  def patch_grid(self) -> tuple[int, int, int]:
    """Token grid after the patch conv (conv arithmetic; equals the official T, H, W asserts)."""
    if self.patch_2d:
      return (1,) + _conv_out(self.input_size[1:], self.patch_kernel[1:], self.patch_stride[1:],
                              self.patch_padding[1:])
    return _conv_out(self.input_size, self.patch_kernel, self.patch_stride, self.patch_padding)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def feature_stride(self, block: int) -> tuple[int, int, int]:
    """(temporal, spatial-h, spatial-w) pixel stride of block `block`'s output tokens."""
    stride = list((1,) + self.patch_stride[1:] if self.patch_2d else self.patch_stride)
    for b in self.blocks[:block + 1]:
      if b.q_stride:
        stride = [s * q for s, q in zip(stride, b.q_stride)]
    return tuple(stride)


def _conv_out(size, kernel, stride, padding) -> tuple[int, ...]:
  return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, padding))


def _pooled_size(thw, kernel, stride) -> tuple[int, int, int]:
  if not kernel:
    return tuple(thw)
  return _conv_out(thw, kernel, stride, tuple(k // 2 for k in kernel))


def round_width(width, multiplier, min_width=1, divisor=1) -> int:
  """SlowFast `round_width` (models/utils.py)."""
  if not multiplier:
    return width
  width *= multiplier
  min_width = min_width or divisor
  width_out = max(min_width, int(width + divisor / 2) // divisor * divisor)
  if width_out < 0.9 * width:
    width_out += divisor
  return int(width_out)


def _index_table(entries, depth: int, what: str, ndim: int) -> list:
  table = [()] * depth
  for entry in entries:
    entry = tuple(entry)
    if len(entry) != ndim + 1 or not 0 <= int(entry[0]) < depth:
      raise ValueError(f"config.model.{what} entry {entry} must be (block, {ndim} values) with block in "
                       f"[0, {depth}) (depth={depth})")
    table[int(entry[0])] = tuple(entry[1:])
  return table


def _multipliers(entries, depth: int, what: str) -> list:
  mul = [1.0] * (depth + 1)
  for entry in entries:
    if len(entry) != 2 or not 0 <= int(entry[0]) <= depth:
      raise ValueError(f"config.model.{what} entry {tuple(entry)} must be (block, multiplier), block <= "
                       f"{depth}")
    mul[int(entry[0])] = float(entry[1])
  return mul


def arch_spec(m: Any, num_blocks: Optional[int] = None) -> ArchSpec:
  """Resolves `config.model` into an ArchSpec (mirrors `MViT.__init__`, spec §4.4).

  Args:
    m: the `config.model` section (registry schema).
    num_blocks: build only the first `num_blocks` blocks (MaskMViT deletes the blocks after its last
      prediction depth); drop-path rates still follow the full configured depth.
  """
  if m.pool_mode not in ("conv", "max", "avg"):
    raise ValueError(f"config.model.pool_mode={m.pool_mode!r}; expected 'conv', 'max' or 'avg'")
  if m.remat_policy not in REMAT_POLICIES:
    raise ValueError(f"config.model.remat_policy={m.remat_policy!r}; expected one of {REMAT_POLICIES}")
  for key in ("input_size", "patch_kernel", "patch_stride", "patch_padding"):
    if len(getattr(m, key)) != 3:
      raise ValueError(f"config.model.{key}={tuple(getattr(m, key))} must have 3 entries (T, H, W); "
                       "images use T = 1")
  depth = int(m.depth)
  n = depth if num_blocks is None else int(num_blocks)
  if not 0 < n <= depth:
    raise ValueError(f"num_blocks={n} must be in [1, config.model.depth={depth}]")
  dim_mul = _multipliers(m.dim_mul, depth, "dim_mul")
  head_mul = _multipliers(m.head_mul, depth, "head_mul")
  kvq_kernel = tuple(m.pool_kvq_kernel)

  def kernel_for(stride):
    return kvq_kernel if kvq_kernel else tuple(s + 1 if s > 1 else s for s in stride)

  stride_q = _index_table(m.pool_q_stride, depth, "pool_q_stride", 3)
  if tuple(m.pool_kv_stride_adaptive):
    # Adaptive KV stride: divided by every listed Q stride, set for every block (MViT.__init__).
    kv = tuple(m.pool_kv_stride_adaptive)
    kv_entries = []
    for i in range(depth):
      if stride_q[i]:
        kv = tuple(max(kv[d] // stride_q[i][d], 1) for d in range(len(kv)))
      kv_entries.append((i,) + kv)
  else:
    kv_entries = m.pool_kv_stride
  stride_kv = _index_table(kv_entries, depth, "pool_kv_stride", 3)

  spec = dict(
      input_size=tuple(int(v) for v in m.input_size), patch_2d=bool(m.patch_2d),
      patch_kernel=tuple(m.patch_kernel), patch_stride=tuple(m.patch_stride),
      patch_padding=tuple(m.patch_padding), embed_dim=int(m.embed_dim), mlp_ratio=float(m.mlp_ratio),
      qkv_bias=bool(m.qkv_bias), pool_mode=str(m.pool_mode), cls_embed=bool(m.cls_embed),
      use_abs_pos=bool(m.use_abs_pos), sep_pos_embed=bool(m.sep_pos_embed),
      rel_pos_spatial=bool(m.rel_pos_spatial), rel_pos_temporal=bool(m.rel_pos_temporal),
      rel_pos_zero_init=bool(m.rel_pos_zero_init), residual_pooling=bool(m.residual_pooling),
      dim_mul_in_att=bool(m.dim_mul_in_att), pixel_mean=tuple(float(v) for v in m.pixel_mean),
      pixel_std=tuple(float(v) for v in m.pixel_std), dtype=str(m.dtype),
      remat_policy=str(m.remat_policy))
  proto = ArchSpec(blocks=(), **spec)
  if spec["rel_pos_spatial"] and proto.input_size[1] != proto.input_size[2]:
    raise ValueError(f"spatial rel-pos needs a square input; config.model.input_size={proto.input_size}")

  # Official sizes: integer division of the configured input (MViT.__init__ `input_size`).
  stride0 = (1,) + proto.patch_stride[1:] if proto.patch_2d else proto.patch_stride
  table_size = tuple(s // p for s, p in zip(proto.input_size, stride0))
  thw = proto.patch_grid
  dpr = np.linspace(0.0, float(m.drop_path_rate), depth, dtype=np.float32)
  num_heads, width = int(m.num_heads), int(m.embed_dim)
  blocks = []
  for i in range(depth):
    num_heads = round_width(num_heads, head_mul[i])
    if spec["dim_mul_in_att"]:
      dim_out = round_width(width, dim_mul[i], divisor=round_width(num_heads, head_mul[i]))
    else:
      dim_out = round_width(width, dim_mul[i + 1], divisor=round_width(num_heads, head_mul[i + 1]))
    q_kernel = kernel_for(stride_q[i]) if stride_q[i] else ()
    kv_kernel = kernel_for(stride_kv[i]) if stride_kv[i] else ()
    # "Skip pooling with kernel and stride size of (1, 1, 1)" (MultiScaleAttention.__init__).
    if math.prod(q_kernel) == 1 and math.prod(stride_q[i]) == 1:
      q_kernel = ()
    if math.prod(kv_kernel) == 1 and math.prod(stride_kv[i]) == 1:
      kv_kernel = ()
    att_dim = dim_out if spec["dim_mul_in_att"] else width
    if att_dim % num_heads:
      raise ValueError(f"block {i}: attention width {att_dim} is not divisible by {num_heads} heads")
    block = BlockSpec(index=i, dim=width, dim_out=dim_out, num_heads=num_heads, att_dim=att_dim,
                      table_size=table_size, thw=tuple(thw), q_kernel=q_kernel, q_stride=stride_q[i],
                      kv_kernel=kv_kernel, kv_stride=stride_kv[i], drop_path=float(dpr[i]))
    blocks.append(block)
    if stride_q[i]:
      table_size = tuple(s // q for s, q in zip(table_size, stride_q[i]))
    thw = block.out_thw
    width = dim_out
  return dataclasses.replace(proto, blocks=tuple(blocks[:n]))


# ----------------------------------------------------------------------------------------------------------
# Initialisers (spec §4.7) and layer factories with logical axis names.
# ----------------------------------------------------------------------------------------------------------
def trunc_normal(std: float = 0.02, bound: float = 2.0) -> Callable:
  """torch.nn.init.trunc_normal_(std=std, a=-bound, b=bound): bounds are absolute, not in stds."""
  def init(key, shape, dtype=jnp.float32):
    return (jax.random.truncated_normal(key, -bound / std, bound / std, shape, jnp.float32) * std).astype(dtype)
  return init


def uniform_symmetric(limit: float) -> Callable:
  """PyTorch's default conv bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, jnp.float32, -limit, limit).astype(dtype)
  return init


def _lp(init: Callable, names: Sequence[Optional[str]]) -> Callable:
  return nn.with_logical_partitioning(init, tuple(names))


def dense(features: int, names: tuple[Optional[str], Optional[str]], dtype, *, use_bias: bool = True,
          kernel_init: Callable = trunc_normal(), bias_init: Callable = nn.initializers.constant(0.02),
          name: Optional[str] = None) -> nn.Dense:
  """Linear layer; official init: weight trunc-normal 0.02, bias 0.02 (MViT._init_weights)."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=_lp(kernel_init, names), bias_init=_lp(bias_init, names[1:]), name=name)


def layer_norm(dtype, names: tuple[Optional[str]] = ("embed",), bias: float = 0.02,
               name: Optional[str] = None) -> nn.LayerNorm:
  """LayerNorm eps 1e-6, two-pass variance (as PyTorch), official init: weight 1, bias 0.02."""
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False,
                      scale_init=_lp(nn.initializers.ones, names),
                      bias_init=_lp(nn.initializers.constant(bias), names), name=name)


# ----------------------------------------------------------------------------------------------------------
# Relative positions (attention.py: get_rel_pos, cal_rel_pos_spatial, cal_rel_pos_temporal).
# ----------------------------------------------------------------------------------------------------------
def linear_resize_weights(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Indices and weights of F.interpolate(mode='linear', align_corners=False), no antialias."""
  scale = np.float32(in_len / out_len)
  src = (np.arange(out_len, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  src = np.maximum(src, np.float32(0.0))
  i0 = src.astype(np.int64)  # floor (src >= 0)
  lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
  i1 = np.where(i0 < in_len - 1, i0 + 1, i0)
  return i0, i1, lam


def resize_rel_pos(table, length: int):
  """Linearly resamples a rel-pos table [L, d] to [length, d] (official get_rel_pos); numpy or jnp."""
  if table.shape[0] == length:
    return table
  i0, i1, lam = linear_resize_weights(table.shape[0], length)
  lam = lam[:, None].astype(table.dtype)
  return table[i0] * (1 - lam) + table[i1] * lam


def rel_pos_distance(q_size: int, k_size: int) -> np.ndarray:
  """Index [q, k] into a rel-pos table; float32 arithmetic then truncation, as `.long()` in torch."""
  q_ratio = np.float32(max(k_size / q_size, 1.0))
  k_ratio = np.float32(max(q_size / k_size, 1.0))
  dist = (np.arange(q_size, dtype=np.float32)[:, None] * q_ratio
          - np.arange(k_size, dtype=np.float32)[None, :] * k_ratio)
  dist = dist + np.float32((k_size - 1) * float(k_ratio))
  return dist.astype(np.int64)


def add_rel_pos(attn, q, has_cls: bool, q_shape, k_shape, rel_pos_h=None, rel_pos_w=None,
                rel_pos_t=None):
  """attn[B,h,Nq,Nk] + decomposed rel-pos terms on the non-cls block, in the official summation order.

  `q` is the pooled, normed and UNscaled query [B,h,Nq,d]; the terms are added after q·k scaling.
  """
  sp = 1 if has_cls else 0
  qt, qh, qw = q_shape
  kt, kh, kw = k_shape
  b, nh, _, d = q.shape
  r_q = q[:, :, sp:].reshape(b, nh, qt, qh, qw, d)
  a = attn[:, :, sp:, sp:].reshape(b, nh, qt, qh, qw, kt, kh, kw)
  if rel_pos_h is not None:
    r_h = resize_rel_pos(rel_pos_h, 2 * max(qh, kh) - 1)[rel_pos_distance(qh, kh)]
    r_w = resize_rel_pos(rel_pos_w, 2 * max(qw, kw) - 1)[rel_pos_distance(qw, kw)]
    rel_h = jnp.einsum("bythwc,hkc->bythwk", r_q, r_h)
    rel_w = jnp.einsum("bythwc,wkc->bythwk", r_q, r_w)
    a = a + rel_h[:, :, :, :, :, None, :, None] + rel_w[:, :, :, :, :, None, None, :]
  if rel_pos_t is not None:
    r_t = resize_rel_pos(rel_pos_t, 2 * max(qt, kt) - 1)[rel_pos_distance(qt, kt)]
    rel_t = jnp.einsum("bythwc,tkc->bythwk", r_q, r_t)
    a = a + rel_t[:, :, :, :, :, :, None, None]
  a = a.reshape(b, nh, qt * qh * qw, kt * kh * kw)
  if not sp:
    return a
  # Reassemble around the untouched cls row / column (no scatter).
  bottom = jnp.concatenate([attn[:, :, 1:, :1], a], axis=-1)
  return jnp.concatenate([attn[:, :, :1, :], bottom], axis=2)


def attention_pool(tensor, pool: Optional[Callable], thw, has_cls: bool, norm: Optional[Callable] = None):
  """Pools [B,h,N,d] tokens on their (t,h,w) grid; the cls row bypasses the pool but not the norm."""
  if pool is None:
    return tensor, tuple(thw)
  if has_cls:
    cls_tok, tensor = tensor[:, :, :1], tensor[:, :, 1:]
  b, nh, _, c = tensor.shape
  t, h, w = thw
  pooled = pool(tensor.reshape(b * nh, t, h, w, c))
  new_thw = tuple(pooled.shape[1:4])
  tensor = pooled.reshape(b, nh, -1, c)
  if has_cls:
    tensor = jnp.concatenate([cls_tok, tensor], axis=2)
  if norm is not None:
    tensor = norm(tensor)
  return tensor, new_thw


def _pad(kernel):
  return tuple((k // 2, k // 2) for k in kernel)


def max_pool3d(kernel, stride):
  """nn.MaxPool3d(kernel, stride, kernel // 2): pads with -inf."""
  return lambda x: nn.max_pool(x, tuple(kernel), tuple(stride), padding=_pad(kernel))


def avg_pool3d(kernel, stride):
  """nn.AvgPool3d(kernel, stride, kernel // 2): count_include_pad=True, as PyTorch's default."""
  return lambda x: nn.avg_pool(x, tuple(kernel), tuple(stride), padding=_pad(kernel), count_include_pad=True)


# ----------------------------------------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------------------------------------
def depthwise_conv3d(x, kernel, stride):
  """Conv3d(C, C, k, stride, padding=k//2, groups=C, bias=False) on [N,T,H,W,C] as a sum of shifted slices.

  Same arithmetic as the grouped convolution (one product per tap, summed over the k_t·k_h·k_w taps), but
  built from strided slices and multiplies that XLA fuses into one loop: on CPU the grouped-conv kernels
  (and especially their weight gradient) are several times slower.
  """
  kt, kh, kw = kernel.shape[:3]
  pads = [(0, 0)] + [(k // 2, k // 2) for k in (kt, kh, kw)] + [(0, 0)]
  xp = jnp.pad(x, pads)
  out_size = [(n + 2 * (k // 2) - k) // s + 1 for n, k, s in zip(x.shape[1:4], (kt, kh, kw), stride)]
  out = None
  for a in range(kt):
    for b in range(kh):
      for c in range(kw):
        start = (0, a, b, c, 0)
        limit = (xp.shape[0], a + stride[0] * (out_size[0] - 1) + 1, b + stride[1] * (out_size[1] - 1) + 1,
                 c + stride[2] * (out_size[2] - 1) + 1, xp.shape[4])
        tap = jax.lax.slice(xp, start, limit, (1,) + tuple(stride) + (1,)) * kernel[a, b, c, 0]
        out = tap if out is None else out + tap
  return out


class DepthwiseConv3D(nn.Module):
  """Depthwise pooling conv of MultiScaleAttention; param `kernel` [kt, kh, kw, 1, C] as nn.Conv's."""
  kernel_size: tuple[int, int, int]
  strides: tuple[int, int, int]
  dtype: Any

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", _lp(trunc_normal(), (None, None, None, None, "kv")),
                        tuple(self.kernel_size) + (1, x.shape[-1]))
    return depthwise_conv3d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides)


class PatchEmbed(nn.Module):
  """Conv3d (Conv2d for images) patch embedding -> [B, T', H', W', C] (T' = 1 for images)."""
  spec: ArchSpec

  def setup(self):
    s = self.spec
    kernel, stride, padding = s.patch_kernel, s.patch_stride, s.patch_padding
    if s.patch_2d:
      kernel, stride, padding = kernel[1:], stride[1:], padding[1:]
    fan_in = 3 * math.prod(kernel)
    self.proj = nn.Conv(
        s.embed_dim, kernel_size=kernel, strides=stride, padding=tuple((p, p) for p in padding),
        dtype=s.compute_dtype, param_dtype=jnp.float32,
        kernel_init=_lp(trunc_normal(), (None,) * (len(kernel) + 1) + ("embed",)),
        bias_init=_lp(uniform_symmetric(1.0 / math.sqrt(fan_in)), ("embed",)))

  def __call__(self, x):
    y = self.proj(x)
    return y[:, None] if self.spec.patch_2d else y


class Mlp(nn.Module):
  hidden: int
  out: int
  dtype: Any

  def setup(self):
    self.fc1 = dense(self.hidden, ("embed", "mlp"), self.dtype)
    self.fc2 = dense(self.out, ("mlp", "embed"), self.dtype)

  def __call__(self, x):
    return self.fc2(nn.gelu(self.fc1(x), approximate=False))


class MultiScaleAttention(nn.Module):
  """Pooling attention, mode conv/max/avg, POOL_FIRST False, fused qkv (spec §4.3)."""
  spec: ArchSpec
  block: BlockSpec

  def setup(self):
    s, b = self.spec, self.block
    dt = s.compute_dtype
    d = b.head_dim
    self.qkv = dense(3 * b.att_dim, ("embed", "heads"), dt, use_bias=s.qkv_bias)
    self.proj = dense(b.att_dim, ("heads", "embed"), dt)
    # Conv mode: depthwise conv over the head dim, shared by all heads, then LayerNorm(d) that also
    # normalises the cls row. Max / avg modes have no parameters (built in __call__).
    if s.pool_mode == "conv":
      for n, kernel, stride in (("q", b.q_kernel, b.q_stride), ("k", b.kv_kernel, b.kv_stride),
                                ("v", b.kv_kernel, b.kv_stride)):
        if kernel:
          setattr(self, f"pool_{n}", DepthwiseConv3D(kernel, stride, dt))
          setattr(self, f"norm_{n}", layer_norm(dt, ("kv",)))
    rel_init = nn.initializers.zeros if s.rel_pos_zero_init else trunc_normal()
    if s.rel_pos_spatial:
      self.rel_pos_h = self.param("rel_pos_h", _lp(rel_init, (None, "kv")), (b.rel_pos_hw_len, d))
      self.rel_pos_w = self.param("rel_pos_w", _lp(rel_init, (None, "kv")), (b.rel_pos_hw_len, d))
    if s.rel_pos_temporal:
      self.rel_pos_t = self.param("rel_pos_t", _lp(rel_init, (None, "kv")), (b.rel_pos_t_len, d))

  def __call__(self, x):
    s, b = self.spec, self.block
    bsz, n, _ = x.shape
    qkv = self.qkv(x).reshape(bsz, n, 3, b.num_heads, b.head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, d]
    pooled = []
    for n, t in (("q", q), ("k", k), ("v", v)):
      pool, norm = self._pool(n)
      pooled.append(attention_pool(t, pool, b.thw, s.cls_embed, norm))
    (q, q_shape), (k, k_shape), (v, _) = pooled
    scale = b.head_dim ** -0.5
    attn = jnp.einsum("bhqd,bhkd->bhqk", q * scale, k)
    if s.rel_pos_spatial or s.rel_pos_temporal:
      attn = add_rel_pos(attn, q, s.cls_embed, q_shape, k_shape,
                         rel_pos_h=self.rel_pos_h if s.rel_pos_spatial else None,
                         rel_pos_w=self.rel_pos_w if s.rel_pos_spatial else None,
                         rel_pos_t=self.rel_pos_t if s.rel_pos_temporal else None)
    # Softmax in float32 whatever the compute dtype.
    attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", attn, v)
    if s.residual_pooling:
      if s.cls_embed:
        out = jnp.concatenate([out[:, :, :1], out[:, :, 1:] + q[:, :, 1:]], axis=2)
      else:
        out = out + q
    out = out.transpose(0, 2, 1, 3).reshape(bsz, -1, b.att_dim)
    return self.proj(out), q_shape

  def _pool(self, n):
    """(pool fn, norm fn) for q / k / v, (None, None) where the block does not pool."""
    s, b = self.spec, self.block
    kernel, stride = (b.q_kernel, b.q_stride) if n == "q" else (b.kv_kernel, b.kv_stride)
    if not kernel:
      return None, None
    if s.pool_mode == "conv":
      return getattr(self, f"pool_{n}"), getattr(self, f"norm_{n}")
    op = max_pool3d if s.pool_mode == "max" else avg_pool3d
    return op(kernel, stride), None


class MultiScaleBlock(nn.Module):
  """MultiScaleBlock (attention.py), both DIM_MUL_IN_ATT layouts (spec §4.2)."""
  spec: ArchSpec
  block: BlockSpec

  def setup(self):
    s, b = self.spec, self.block
    dt = s.compute_dtype
    self.norm1 = layer_norm(dt)
    self.attn = MultiScaleAttention(s, b)
    self.norm2 = layer_norm(dt)
    self.mlp = Mlp(int(b.att_dim * s.mlp_ratio), b.dim_out, dt)
    if b.dim != b.dim_out:
      self.proj = dense(b.dim_out, ("embed", "mlp"), dt)

  def _drop_path(self, x, train: bool):
    """Per-sample stochastic depth scaled by 1/keep (timm DropPath)."""
    rate = self.block.drop_path
    if not train or rate == 0.0:
      return x
    keep = 1.0 - rate
    u = jax.random.uniform(self.make_rng("dropout"), (x.shape[0],) + (1,) * (x.ndim - 1), jnp.float32)
    return x / keep * jnp.floor(keep + u).astype(x.dtype)

  def __call__(self, x, train: bool = False):
    s, b = self.spec, self.block
    x_norm = self.norm1(x)
    x_block, _ = self.attn(x_norm)
    if s.dim_mul_in_att and b.dim != b.dim_out:
      x = self.proj(x_norm)
    skip = b.skip_pool
    if skip is not None:
      x, _ = attention_pool(x[:, None], max_pool3d(*skip[:2]), b.thw, s.cls_embed)
      x = x[:, 0]
    x = x + self._drop_path(x_block, train)
    x_norm = self.norm2(x)
    x_mlp = self.mlp(x_norm)
    if not s.dim_mul_in_att and b.dim != b.dim_out:
      x = self.proj(x_norm)
    x = x + self._drop_path(x_mlp, train)
    return nn.with_logical_constraint(x, ("batch", "tokens", "embed"))


def _block_class(policy: str):
  if policy == "none":
    return MultiScaleBlock
  # `train` (argument 2, self being 0) is static: it decides whether drop path draws randomness.
  jax_policy = None if policy == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  return nn.remat(MultiScaleBlock, static_argnums=(2,), policy=jax_policy)


class MViT(nn.Module):
  """The backbone: normalise -> patch embed -> (mask) -> cls -> abs pos -> blocks.

  Subclasses (`MaskFeat`, `Classifier`) add their heads; parameters sit at the top level under the
  official names.
  """
  spec: ArchSpec

  def setup(self):
    self._setup_backbone()

  def _setup_backbone(self):
    s = self.spec
    d = s.embed_dim
    self.patch_embed = PatchEmbed(s)
    if s.cls_embed:
      self.cls_token = self.param("cls_token", _lp(trunc_normal(), (None, None, "embed")), (1, 1, d))
    if s.use_abs_pos:
      t, h, w = s.patch_grid
      if s.sep_pos_embed:
        self.pos_embed_spatial = self.param("pos_embed_spatial", _lp(trunc_normal(), (None, "tokens", "embed")),
                                            (1, h * w, d))
        self.pos_embed_temporal = self.param("pos_embed_temporal",
                                             _lp(trunc_normal(), (None, "tokens", "embed")), (1, t, d))
        if s.cls_embed:
          self.pos_embed_class = self.param("pos_embed_class", _lp(trunc_normal(), (None, None, "embed")),
                                            (1, 1, d))
      else:
        n = t * h * w + (1 if s.cls_embed else 0)
        self.pos_embed = self.param("pos_embed", _lp(trunc_normal(), (None, "tokens", "embed")), (1, n, d))
    block_cls = _block_class(s.remat_policy)
    self.blocks = [block_cls(s, b) for b in s.blocks]

  # -- pieces shared by the heads --------------------------------------------------------------------------
  def normalize(self, x):
    """Raw pixels (uint8 or float 0-255), channels last -> float32 (x - 255·mean) / (255·std)."""
    s = self.spec
    want = s.input_size[1:] + (3,) if s.patch_2d else s.input_size + (3,)
    if tuple(x.shape[1:]) != want:
      kind = "[B,H,W,3]" if s.patch_2d else "[B,T,H,W,3]"
      raise ValueError(f"input shape {tuple(x.shape)} does not match config.model.input_size="
                       f"{s.input_size} (expected {kind} = [B, {', '.join(map(str, want))}]); set "
                       "config.model.input_size (or the data's num_frames / crop_size) to agree")
    mean = jnp.asarray(np.asarray(s.pixel_mean, np.float32) * np.float32(255.0))
    std = jnp.asarray(np.asarray(s.pixel_std, np.float32) * np.float32(255.0))
    return (x.astype(jnp.float32) - mean) / std

  def tokens(self, x_norm):
    """Patch tokens [B, T', H', W', C] in the compute dtype."""
    return self.patch_embed(x_norm.astype(self.spec.compute_dtype))

  def add_cls_and_pos(self, x):
    """[B, N, C] patch tokens -> [B, 1+N, C] with cls token and absolute positions (if configured)."""
    s = self.spec
    b = x.shape[0]
    if s.cls_embed:
      cls = jnp.broadcast_to(self.cls_token.astype(x.dtype), (b, 1, x.shape[-1]))
      x = jnp.concatenate([cls, x], axis=1)
    if s.use_abs_pos:
      if s.sep_pos_embed:
        t, h, w = s.patch_grid
        pos = (jnp.tile(self.pos_embed_spatial, (1, t, 1))
               + jnp.repeat(self.pos_embed_temporal, h * w, axis=1))
        if s.cls_embed:
          pos = jnp.concatenate([self.pos_embed_class, pos], axis=1)
      else:
        pos = self.pos_embed
      x = x + pos.astype(x.dtype)
    return nn.with_logical_constraint(x, ("batch", "tokens", "embed"))

  def run_blocks(self, x, train: bool = False, collect: Sequence[int] = ()):
    """Runs every block; returns (last output, {block index: output} for `collect`)."""
    outputs = {}
    for i, blk in enumerate(self.blocks):
      x = blk(x, train)
      if i in collect:
        outputs[i] = x
    return x, outputs

  def backbone(self, x, train: bool = False):
    """Raw pixels -> last block tokens [B, (1+)N, C]."""
    t = self.tokens(self.normalize(x))
    b, c = t.shape[0], t.shape[-1]
    x = self.add_cls_and_pos(t.reshape(b, -1, c))
    x, _ = self.run_blocks(x, train)
    return x

  def features(self, x, train: bool = False):
    """[B, C] mean of the non-cls tokens of the last block (linear probe features)."""
    x = self.backbone(x, train)
    if self.spec.cls_embed:
      x = x[:, 1:]
    return jnp.mean(x.astype(jnp.float32), axis=1)

  def __call__(self, x, train: bool = False):
    return self.backbone(x, train)
