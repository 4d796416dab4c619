"""The MViT layers in Flax linen, number for number `slowfast/models/attention.py` and `common.py`.

Channels last ([B,T,H,W,C] for convolutions), tokens in (t,h,w) row-major order with the cls token (when
on) first. Every parameter carries logical axis names for the weights (`embed`, `mlp`, `heads`, `qkv`,
...), every activation constraint the activation names (`act_batch`, `act_tokens`, `act_embed`), so
`config.mesh.rules` can shard them independently.
"""
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskfeat_jax.models import maxpool
from maskfeat_jax.models.arch import LN_EPS, ArchSpec, BlockSpec
from maskfeat_jax.models.depthwise import depthwise_conv3d


# Logical names of activations, separate from the weights' (`embed`, `mlp`, ...): a rule sharding weights
# over a mesh axis then does not also constrain activations to it.
ACT_TOKENS = ("act_batch", "act_tokens", "act_embed")


def compute_dtype(spec: ArchSpec):
  return jnp.dtype(spec.dtype)


# ----------------------------------------------------------------------------------------------------------
# Initialisers (`slowfast/models/video_model_builder.py::MViT._init_weights`) and layer factories with
# logical axis names.
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


def lp(init: Callable, names: Sequence[Optional[str]]) -> Callable:
  return nn.with_logical_partitioning(init, tuple(names))


def dense(features: int, names: tuple[Optional[str], Optional[str]], dtype, *, use_bias: bool = True,
          kernel_init: Callable = trunc_normal(), bias_init: Callable = nn.initializers.constant(0.02),
          name: Optional[str] = None) -> nn.Dense:
  """Linear layer; official init: weight trunc-normal 0.02, bias 0.02 (MViT._init_weights)."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=lp(kernel_init, names), bias_init=lp(bias_init, names[1:]), name=name)


def layer_norm(dtype, names: tuple[Optional[str]] = ("embed",), bias: float = 0.02,
               name: Optional[str] = None) -> nn.LayerNorm:
  """LayerNorm eps 1e-6, two-pass variance (as PyTorch), official init: weight 1, bias 0.02."""
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False,
                      scale_init=lp(nn.initializers.ones, names),
                      bias_init=lp(nn.initializers.constant(bias), names), name=name)


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


def _rel_pos_terms(q, has_cls: bool, q_shape, k_shape, rel_pos_h=None, rel_pos_w=None, rel_pos_t=None):
  """The decomposed rel-pos terms of every query, side by side: ([B, h, Nq, R], key dims).

  Columns: rel_t (one per key time index, if temporal), then rel_h and rel_w (one per key row / column, if
  spatial), i.e. `slowfast/models/attention.py::cal_rel_pos_spatial` / `cal_rel_pos_temporal`'s einsums of
  the pooled, normed, unscaled query with the resized, distance-indexed tables. The cls query's row is zero.
  """
  sp = 1 if has_cls else 0
  qt, qh, qw = q_shape
  kt, kh, kw = k_shape
  b, nh, nq, d = q.shape
  r_q = q[:, :, sp:].reshape(b, nh, qt, qh, qw, d)
  terms, dims = [], []
  if rel_pos_t is not None:
    r_t = resize_rel_pos(rel_pos_t, 2 * max(qt, kt) - 1)[rel_pos_distance(qt, kt)]
    terms.append(jnp.einsum("bythwc,tkc->bythwk", r_q, r_t))
    dims.append(0)
  if rel_pos_h is not None:
    r_h = resize_rel_pos(rel_pos_h, 2 * max(qh, kh) - 1)[rel_pos_distance(qh, kh)]
    r_w = resize_rel_pos(rel_pos_w, 2 * max(qw, kw) - 1)[rel_pos_distance(qw, kw)]
    terms.append(jnp.einsum("bythwc,hkc->bythwk", r_q, r_h))
    terms.append(jnp.einsum("bythwc,wkc->bythwk", r_q, r_w))
    dims += [1, 2]
  rel = jnp.concatenate([t.reshape(b, nh, nq - sp, -1) for t in terms], axis=-1).astype(q.dtype)
  if sp:
    rel = jnp.pad(rel, [(0, 0), (0, 0), (1, 0), (0, 0)])
  return rel, dims


def add_rel_pos(attn, q, has_cls: bool, q_shape, k_shape, rel_pos_h=None, rel_pos_w=None,
                rel_pos_t=None):
  """attn[B,h,Nq,Nk] + the decomposed rel-pos terms on the non-cls block (cls row and column untouched).

  `q` is the pooled, normed and UNscaled query [B,h,Nq,d]; the terms are added after q·k scaling, as in
  the official code. The term of query i and key j is rel_t[i, t(j)] + rel_h[i, h(j)] + rel_w[i, w(j)]:
  one small matmul of the side-by-side terms with one-hot indicators of each key's (t, h, w). On CPU that
  is cheaper than broadcasting the terms over the [.., kt, kh, kw] key grid (minor axes of 7) and
  reassembling the cls row and column (figures in BENCHMARKS.md, "Model step on CPU"); the sums are the
  official ones in another order.
  """
  if rel_pos_h is None and rel_pos_t is None:
    return attn
  rel, dims = _rel_pos_terms(q, has_cls, q_shape, k_shape, rel_pos_h, rel_pos_w, rel_pos_t)
  onehot = jnp.asarray(_key_indicators(k_shape, has_cls, dims, rel.dtype))
  return attn + jnp.einsum("bhqr,kr->bhqk", rel, onehot).astype(attn.dtype)


def _key_indicators(k_shape, has_cls: bool, dims: Sequence[int], dtype) -> np.ndarray:
  """[Nk, sum of k_shape[dims]]: one-hot of each key token's t / h / w coordinate (the cls key: zeros)."""
  coords = np.indices(k_shape).reshape(3, -1)  # (t, h, w) of each key in row-major order
  cols = [np.eye(k_shape[d], dtype=np.float32)[coords[d]] for d in dims]
  onehot = np.concatenate(cols, axis=1)
  if has_cls:
    onehot = np.concatenate([np.zeros((1, onehot.shape[1]), np.float32), onehot], axis=0)
  return onehot.astype(dtype)


def folded_attention(q, k, v, scale: float, has_cls: bool, q_shape, k_shape, rel_pos_h=None, rel_pos_w=None,
                     rel_pos_t=None):
  """softmax(scale·q·k + decomposed rel-pos terms) v through `jax.nn.dot_product_attention`, bias-free.

  The rel-pos term of query i and key j is rel_t[i, t(j)] + rel_h[i, h(j)] + rel_w[i, w(j)]: appending the
  per-query terms to q and one-hot indicators of (t(j), h(j), w(j)) to k makes it part of the dot product,
  so a fused (cuDNN flash) kernel computes exactly the logits of `add_rel_pos`, and autodiff reaches the
  rel-pos tables through q. v is zero-padded to the widened head dim and the output cut back.
  q, k, v: [B, heads, N, d]; returns [B, heads, Nq, d].
  """
  d = q.shape[-1]
  q_wide, k_wide = q * jnp.asarray(scale, q.dtype), k
  if rel_pos_h is not None or rel_pos_t is not None:
    rel, dims = _rel_pos_terms(q, has_cls, q_shape, k_shape, rel_pos_h, rel_pos_w, rel_pos_t)
    onehot = jnp.asarray(_key_indicators(k_shape, has_cls, dims, k.dtype))
    q_wide = jnp.concatenate([q_wide, rel], axis=-1)
    k_wide = jnp.concatenate([k, jnp.broadcast_to(onehot, k.shape[:2] + onehot.shape)], axis=-1)
  width = -(-q_wide.shape[-1] // 8) * 8  # fused kernels want head dims in multiples of 8
  pad = lambda t: jnp.pad(t, [(0, 0)] * 3 + [(0, width - t.shape[-1])])
  # dot_product_attention takes [B, N, heads, D]; softmax statistics are float32 inside it.
  out = jax.nn.dot_product_attention(*(pad(t).transpose(0, 2, 1, 3) for t in (q_wide, k_wide, v)), scale=1.0)
  return out.transpose(0, 2, 1, 3)[..., :d]


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
  """nn.MaxPool3d(kernel, stride, kernel // 2): pads with -inf (models/maxpool.py: a cheaper backward)."""
  return lambda x: maxpool.max_pool3d(x, tuple(kernel), tuple(stride))


def avg_pool3d(kernel, stride):
  """nn.AvgPool3d(kernel, stride, kernel // 2): count_include_pad=True, as PyTorch's default."""
  return lambda x: nn.avg_pool(x, tuple(kernel), tuple(stride), padding=_pad(kernel), count_include_pad=True)


# ----------------------------------------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------------------------------------


class DepthwiseConv3D(nn.Module):
  """Depthwise pooling conv of MultiScaleAttention; param `kernel` [kt, kh, kw, 1, C] as nn.Conv's."""
  kernel_size: tuple[int, int, int]
  strides: tuple[int, int, int]
  dtype: Any

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", lp(trunc_normal(), (None, None, None, None, "kv")),
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
        dtype=compute_dtype(s), param_dtype=jnp.float32,
        kernel_init=lp(trunc_normal(), (None,) * (len(kernel) + 1) + ("embed",)),
        bias_init=lp(uniform_symmetric(1.0 / math.sqrt(fan_in)), ("embed",)))

  def __call__(self, x):
    y = self.proj(x)
    return y[:, None] if self.spec.patch_2d else y


class QKV(nn.Module):
  """The fused `attn.qkv` Linear (param `kernel` [C, 3·D], `bias` [3·D], as nn.Dense's, so checkpoints and
  the official key table are unchanged), applied as three projections straight into [B, heads, N, d].

  Reshaping one [B, N, 3·D] output into q, k, v (the official `qkv(x).reshape(B, N, 3, h, d).permute`)
  costs, under autodiff, a pad of each of the three gradients back into the fused buffer plus transposes
  (figures in BENCHMARKS.md, "Model step"); three matmuls on slices of the kernel do not.
  """
  att_dim: int
  num_heads: int
  use_bias: bool
  dtype: Any

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    kernel = self.param("kernel", lp(trunc_normal(), ("embed", "qkv")), (dim, 3 * self.att_dim))
    bias = (self.param("bias", lp(nn.initializers.constant(0.02), ("qkv",)), (3 * self.att_dim,))
            if self.use_bias else None)
    heads, head_dim = self.num_heads, self.att_dim // self.num_heads
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype).reshape(dim, 3, heads, head_dim)
    outs = []
    for i in range(3):
      y = jnp.einsum("bnc,chd->bhnd", x, kernel[:, i])
      if bias is not None:
        y = y + bias.astype(self.dtype).reshape(3, heads, 1, head_dim)[i]
      outs.append(y)
    return tuple(outs)


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
  """`slowfast/models/attention.py::MultiScaleAttention`: mode conv/max/avg, POOL_FIRST False, fused qkv."""
  spec: ArchSpec
  block: BlockSpec

  def setup(self):
    s, b = self.spec, self.block
    dt = compute_dtype(s)
    d = b.head_dim
    self.qkv = QKV(b.att_dim, b.num_heads, s.qkv_bias, dt)
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
      self.rel_pos_h = self.param("rel_pos_h", lp(rel_init, (None, "kv")), (b.rel_pos_hw_len, d))
      self.rel_pos_w = self.param("rel_pos_w", lp(rel_init, (None, "kv")), (b.rel_pos_hw_len, d))
    if s.rel_pos_temporal:
      self.rel_pos_t = self.param("rel_pos_t", lp(rel_init, (None, "kv")), (b.rel_pos_t_len, d))

  def __call__(self, x):
    s, b = self.spec, self.block
    bsz, n, _ = x.shape
    q, k, v = self.qkv(x)  # [B, heads, N, d]
    pooled = []
    for n, t in (("q", q), ("k", k), ("v", v)):
      pool, norm = self._pool(n)
      pooled.append(attention_pool(t, pool, b.thw, s.cls_embed, norm))
    (q, q_shape), (k, k_shape), (v, _) = pooled
    scale = b.head_dim ** -0.5
    tables = dict(rel_pos_h=self.rel_pos_h if s.rel_pos_spatial else None,
                  rel_pos_w=self.rel_pos_w if s.rel_pos_spatial else None,
                  rel_pos_t=self.rel_pos_t if s.rel_pos_temporal else None)
    if s.attention_impl == "flash":
      out = folded_attention(q, k, v, scale, s.cls_embed, q_shape, k_shape, **tables)
    else:
      attn = jnp.einsum("bhqd,bhkd->bhqk", q * scale, k)
      if s.rel_pos_spatial or s.rel_pos_temporal:
        attn = add_rel_pos(attn, q, s.cls_embed, q_shape, k_shape, **tables)
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
  """`slowfast/models/attention.py::MultiScaleBlock`, both DIM_MUL_IN_ATT layouts."""
  spec: ArchSpec
  block: BlockSpec

  def setup(self):
    s, b = self.spec, self.block
    dt = compute_dtype(s)
    self.norm1 = layer_norm(dt)
    self.attn = MultiScaleAttention(s, b)
    self.norm2 = layer_norm(dt)
    self.mlp = Mlp(int(b.att_dim * s.mlp_ratio), b.dim_out, dt)
    if b.dim != b.dim_out:
      self.proj = dense(b.dim_out, ("embed", "mlp"), dt)

  def _drop_path(self, x, train: bool, rate):
    """Per-sample stochastic depth scaled by 1/keep (timm DropPath); `rate` may be traced (under scan)."""
    if not train or (isinstance(rate, float) and rate == 0.0):
      return x
    keep = 1.0 - rate
    u = jax.random.uniform(self.make_rng("dropout"), (x.shape[0],) + (1,) * (x.ndim - 1), jnp.float32)
    return x / jnp.asarray(keep, x.dtype) * jnp.floor(keep + u).astype(x.dtype)

  def __call__(self, x, train: bool = False, drop_path=None):
    """`drop_path`: this block's rate when it is not the spec's (a traced per-block rate under scan)."""
    s, b = self.spec, self.block
    rate = b.drop_path if drop_path is None else drop_path
    x_norm = self.norm1(x)
    x_block, _ = self.attn(x_norm)
    if s.dim_mul_in_att and b.dim != b.dim_out:
      x = self.proj(x_norm)
    skip = b.skip_pool
    if skip is not None:
      x, _ = attention_pool(x[:, None], max_pool3d(*skip[:2]), b.thw, s.cls_embed)
      x = x[:, 0]
    x = x + self._drop_path(x_block, train, rate)
    x_norm = self.norm2(x)
    x_mlp = self.mlp(x_norm)
    if not s.dim_mul_in_att and b.dim != b.dim_out:
      x = self.proj(x_norm)
    x = x + self._drop_path(x_mlp, train, rate)
    return nn.with_logical_constraint(x, ACT_TOKENS)


def checkpoint_policy(policy: str):
  """The jax.checkpoint policy of `model.remat_policy` ('full': save nothing; 'dots': keep matmul outputs)."""
  return None if policy == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable


def block_class(policy: str):
  if policy == "none":
    return MultiScaleBlock
  # `train` (argument 2, self being 0) is static: it decides whether drop path draws randomness.
  return nn.remat(MultiScaleBlock, static_argnums=(2,), policy=checkpoint_policy(policy))
