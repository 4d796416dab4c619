"""The MViT architecture resolved in plain Python: `ArchSpec`, and the shapes a model reads and writes.

`arch_spec(config.model)` mirrors `slowfast/models/video_model_builder.py::MViT.__init__`: per-block widths,
heads, pooling kernels/strides and rel-pos table sizes (round_width, adaptive KV strides, DIM_MUL_IN_ATT
layouts). An `ArchSpec` is hashable, so Flax modules holding it stay cheap to re-trace.

`io_shapes(config)` is the one place the input shape, the patch-token grid and the prediction grids are
derived (conv arithmetic, as the official asserts). The config check, the example batch the state is
initialised from, and the models all read it, so they cannot disagree (e.g. on an odd frame count).

No JAX here: the config check runs it before anything touches a device.
"""
import dataclasses
import math
from typing import Any, Optional, Sequence

import numpy as np

LN_EPS = 1e-6  # every LayerNorm of the official MViT / MaskMViT (video_model_builder.py, masked.py)
REMAT_POLICIES = ("none", "full", "dots")
ATTENTION_IMPLS = ("xla", "flash")

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


def scan_groups(blocks: Sequence[BlockSpec], collect: Sequence[int] = ()) -> list[list[int]]:
  """Consecutive runs of blocks that compute the same function of (input, params): equal specs up to the
  index and drop-path rate. A run ends at a block in `collect` (its output is needed on its own)."""
  groups: list[list[int]] = []
  for blk in blocks:
    key = dataclasses.replace(blk, index=0, drop_path=0.0)
    if groups and groups[-1][-1] not in collect and key == dataclasses.replace(
        blocks[groups[-1][0]], index=0, drop_path=0.0):
      groups[-1].append(blk.index)
    else:
      groups.append([blk.index])
  return groups


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
  scan_blocks: bool
  attention_impl: str
  blocks: tuple[BlockSpec, ...]

  @property
  def patch_grid(self) -> tuple[int, int, int]:
    """Token grid after the patch conv (conv arithmetic; equals the official T, H, W asserts)."""
    if self.patch_2d:
      return (1,) + _conv_out(self.input_size[1:], self.patch_kernel[1:], self.patch_stride[1:],
                              self.patch_padding[1:])
    return _conv_out(self.input_size, self.patch_kernel, self.patch_stride, self.patch_padding)

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
  """Resolves `config.model` into an ArchSpec (mirrors `video_model_builder.py::MViT.__init__`).

  Args:
    m: the `config.model` section (`layouts.model_schema()` keys).
    num_blocks: build only the first `num_blocks` blocks (MaskMViT deletes the blocks after its last
      prediction depth); drop-path rates still follow the full configured depth.
  """
  if m.pool_mode not in ("conv", "max", "avg"):
    raise ValueError(f"config.model.pool_mode={m.pool_mode!r}; expected 'conv', 'max' or 'avg'")
  if m.get("attention_impl", "xla") not in ATTENTION_IMPLS:
    raise ValueError(f"config.model.attention_impl={m.attention_impl!r}; expected one of {ATTENTION_IMPLS}")
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
      remat_policy=str(m.remat_policy), scan_blocks=bool(m.get("scan_blocks", True)),
      attention_impl=str(m.get("attention_impl", "xla")))
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
# What goes in and comes out.
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class IOShapes:
  """Per-example shapes of a model built from a config (no batch dim)."""
  pixels: tuple[int, ...]  # raw input: (T, H, W, 3) for video, (H, W, 3) for images
  token_grid: tuple[int, ...]  # patch tokens: (T', H', W') for video, (H', W') for images
  prediction_grids: tuple[tuple[int, ...], ...]  # MaskFeat: per prediction depth, same rank as token_grid
  mask_grid: tuple[int, ...]  # MaskFeat: the mask the loader draws (config.mask.grid); () otherwise

  @property
  def image(self) -> bool:
    return len(self.token_grid) == 2


def pretrain_depths(m: Any) -> tuple[int, ...]:
  """config.model.pretrain_depth, checked: the blocks whose outputs feed a prediction head."""
  depths = tuple(int(d) for d in m.pretrain_depth)
  if not depths or list(depths) != sorted(set(depths)) or depths[0] < 0 or depths[-1] >= m.depth:
    raise ValueError(f"config.model.pretrain_depth={tuple(m.pretrain_depth)} must be a non-empty, strictly "
                     f"increasing tuple of block indices in [0, config.model.depth={m.depth})")
  weights = tuple(float(w) for w in m.pred_loss_weights)
  if weights and len(weights) != len(depths):
    raise ValueError(f"config.model.pred_loss_weights={weights} needs one weight per pretrain_depth {depths}")
  return depths


def model_spec(m: Any) -> ArchSpec:
  """The ArchSpec of config.model as built: MaskMViT keeps only the blocks up to its last prediction depth."""
  if m.type == "maskfeat":
    return arch_spec(m, num_blocks=pretrain_depths(m)[-1] + 1)
  return arch_spec(m)


def _drop_t(grid, image: bool) -> tuple[int, ...]:
  return tuple(grid[1:]) if image else tuple(grid)


def io_shapes(config: Any) -> IOShapes:
  """Input, token, prediction and mask shapes of config.model (and config.mask for MaskFeat)."""
  m = config.model
  spec = model_spec(m)
  image = spec.patch_2d
  t, h, w = spec.input_size
  pixels = (h, w, 3) if image else (t, h, w, 3)
  tokens = _drop_t(spec.patch_grid, image)
  preds, mask = (), ()
  if m.type == "maskfeat":
    preds = tuple(_drop_t(spec.blocks[d].out_thw, image) for d in pretrain_depths(m))
    mask = tuple(int(g) for g in config.mask.grid)
  return IOShapes(pixels=pixels, token_grid=tokens, prediction_grids=preds, mask_grid=mask)


def check_mask_grid(mask_grid: Sequence[int], grid: Sequence[int], what: str = "token grid") -> None:
  """Raises ValueError unless the mask grid divides `grid` spatially and equals it in time.

  The official model (`slowfast/models/masked.py::MaskMViT`) resizes the mask with nearest interpolation
  over the spatial dims only, so for video the temporal sizes must be equal and each spatial size of the
  grid a multiple of the mask's.
  """
  mask_grid, grid = tuple(mask_grid), tuple(grid)
  if len(mask_grid) != len(grid) or len(mask_grid) not in (2, 3):
    raise ValueError(f"mask grid {mask_grid} and {what} {grid} must both be (H, W) or (T, H, W)")
  if len(mask_grid) == 3 and mask_grid[0] != grid[0]:
    raise ValueError(f"mask grid {mask_grid} and {what} {grid} need equal temporal sizes "
                     "(masks are resized spatially only)")
  for a, b in zip(mask_grid[-2:], grid[-2:]):
    if a < 1 or b % a:
      raise ValueError(f"mask grid {mask_grid} does not divide {what} {grid}")


def check_io(config, shapes: Optional[IOShapes] = None) -> IOShapes:
  """The mask grid fits the token grid and every prediction grid; a message that says what to set."""
  s = shapes or io_shapes(config)
  if not s.mask_grid or config.mask.type == "none":
    return s
  grids = [("token grid", s.token_grid)] + [
      (f"prediction grid of block {d}", g) for d, g in zip(pretrain_depths(config.model), s.prediction_grids)]
  for what, g in grids:
    try:
      check_mask_grid(s.mask_grid, g, what)
    except ValueError as e:
      raise ValueError(
          f"config.mask.grid={s.mask_grid} does not fit the {what} {g} of config.model.input_size="
          f"{tuple(config.model.input_size)} ({config.model.name or 'config.model'}): {e}. Use a mask grid "
          f"with temporal size {s.token_grid[0] if not s.image else '-'} whose spatial sizes divide "
          f"{[tuple(x[-2:]) for _, x in grids]}.") from e
  return s
