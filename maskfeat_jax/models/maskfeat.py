"""MaskFeat pre-training model: `slowfast/models/masked.py::MaskMViT`.

The full token sequence goes through the backbone with masked patch embeddings replaced by one learned
`mask_token` (after the patch conv, before the cls token and absolute positions). Each configured
prediction depth has a head LayerNorm + Linear; targets (HOG or pixels) are computed inside `apply` from the
RAW input pixels (the official computes them after normalising, where flat regions round to noise); the loss is the MSE over masked tokens.
"""
import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskfeat_jax import targets as targets_lib
from maskfeat_jax.models import layers
from maskfeat_jax.models import mvit


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
  # F.interpolate(mode="nearest"): source index floor(i * in / out).
  return (np.arange(n_out) * n_in) // n_out


def resize_mask(mask: jnp.ndarray, grid: Sequence[int]) -> jnp.ndarray:
  """Nearest resize of a mask batch over its last two (spatial) dims, like F.interpolate(nearest).

  Args:
    mask: [B, T', h, w] (video) or [B, h, w] (image), any dtype.
    grid: target (H, W), or the full target grid (T', H, W) / (H, W) whose temporal size must match.

  Returns:
    [B, T', H, W] or [B, H, W], same dtype.
  """
  mask = jnp.asarray(mask)
  grid = tuple(int(g) for g in grid)
  if mask.ndim not in (3, 4):
    raise ValueError(f"resize_mask expects [B, h, w] or [B, T', h, w], got shape {tuple(mask.shape)}")
  if len(grid) == mask.ndim - 1 and len(grid) == 3 and grid[0] != mask.shape[1]:
    raise ValueError(f"resize_mask resizes spatially only: mask {tuple(mask.shape)} vs grid {grid}")
  if len(grid) not in (2, mask.ndim - 1):
    raise ValueError(f"resize_mask grid must be (H, W) or match the mask rank; got {grid} for "
                     f"mask {tuple(mask.shape)}")
  out_h, out_w = grid[-2:]
  in_h, in_w = mask.shape[-2:]
  if out_h % in_h == 0 and out_w % in_w == 0:
    # Integer upsampling (the usual case): a broadcast + reshape, no gather.
    rh, rw = out_h // in_h, out_w // in_w
    lead = mask.shape[:-2]
    up = jnp.broadcast_to(mask[..., :, None, :, None], (*lead, in_h, rh, in_w, rw))
    return up.reshape(*lead, out_h, out_w)
  mask = jnp.take(mask, _nearest_index(in_h, out_h), axis=-2)
  return jnp.take(mask, _nearest_index(in_w, out_w), axis=-1)


@dataclasses.dataclass(frozen=True)
class TargetSpec:
  """`config.target`, frozen (read by maskfeat_jax.targets.token_targets by attribute)."""
  type: str
  nbins: int
  cell_size: int
  gaussian_window: int

  @classmethod
  def from_config(cls, t: Any) -> "TargetSpec":
    return cls(type=str(t.type), nbins=int(t.nbins), cell_size=int(t.cell_size),
               gaussian_window=int(t.gaussian_window))


class PredHead(nn.Module):
  """`MSSeparateHead`: per depth, LayerNorm (weight 1, bias 0) then Linear (trunc-normal 0.02, bias 0)."""
  out_dims: tuple[int, ...]
  dtype: Any

  def setup(self):
    self.transforms = [layers.layer_norm(self.dtype, bias=0.0) for _ in self.out_dims]
    self.projections = [layers.dense(d, ("embed", None), self.dtype, bias_init=nn.initializers.zeros)
                        for d in self.out_dims]

  def __call__(self, index: int, x):
    return self.projections[index](self.transforms[index](x))


class MaskFeat(mvit.MViT):
  """apply(variables, x, mask, train=False) -> dict(pred, target, token_mask, loss, ...).

  x: raw pixels [B,T,H,W,3] (images [B,H,W,3]), uint8 or float on the 0-255 scale.
  mask: [B, T', h', w'] (images [B, h', w']) on the mask grid, 1 = masked; nearest-resized (spatially) to
    the input token grid and to each prediction grid. T' must equal the temporal token count.

  Returns (per prediction depth `j` in the tuples; the unsuffixed keys are the last depth):
    pred [B,N,D] float32 for every prediction token in (t,h,w) order, target [B,N,D], token_mask [B,N]
    bool, loss (sum over depths of weight_j · MSE over masked tokens and dims), losses, preds, targets,
    token_masks.
  """
  target: TargetSpec = None
  pretrain_depth: tuple[int, ...] = ()
  loss_weights: tuple[float, ...] = ()

  def setup(self):
    self._setup_backbone()
    s = self.spec
    self.mask_token = self.param("mask_token", layers.lp(layers.trunc_normal(), (None, None, "embed")),
                                 (1, 1, s.embed_dim))
    self.pred_head = PredHead(tuple(self.target_dim(j) for j in self.pretrain_depth), layers.compute_dtype(s))

  def target_dim(self, depth: int) -> int:
    return targets_lib.target_dim(self.target, self.spec.feature_stride(depth)[1])

  def _mask_on(self, mask, grid, what: str):
    """[B, T', h', w'] (or [B, h', w']) -> float [B, t*h*w] on `grid` (t, h, w)."""
    s = self.spec
    m = jnp.asarray(mask).astype(jnp.float32)
    want_ndim = 3 if s.patch_2d else 4
    if m.ndim != want_ndim:
      raise ValueError(f"mask shape {tuple(m.shape)}: expected {want_ndim} dims "
                       f"({'[B,h,w]' if s.patch_2d else '[B,T,h,w]'}) on config.mask.grid")
    if not s.patch_2d and m.shape[1] != grid[0]:
      raise ValueError(f"mask temporal size {m.shape[1]} (mask shape {tuple(m.shape)}) must equal the "
                       f"{what} temporal size {grid[0]} (grid {tuple(grid)}): masks are resized spatially "
                       "only; set config.mask.grid[0] accordingly")
    m = resize_mask(m, tuple(grid[1:]))
    return m.reshape(m.shape[0], -1)

  def __call__(self, x, mask, train: bool = False):
    s = self.spec
    raw = jnp.asarray(x)
    tok = self.tokens(self.normalize(raw))  # [B, T', H', W', C]
    b, c = tok.shape[0], tok.shape[-1]
    grid = tok.shape[1:4]
    m = self._mask_on(mask, grid, "token grid")[..., None].astype(tok.dtype)
    tok = tok.reshape(b, -1, c)
    tok = tok * (1 - m) + self.mask_token.astype(tok.dtype) * m
    h = self.add_cls_and_pos(tok)
    _, feats = self.run_blocks(h, train, collect=self.pretrain_depth)

    sp = 1 if s.cls_embed else 0
    weights = self.loss_weights
    if not weights:
      weights = (1.0 if self.target.type == "hog" else 1.0 / len(self.pretrain_depth),) * len(
          self.pretrain_depth)
    out = {"preds": [], "targets": [], "token_masks": [], "losses": []}
    total = jnp.zeros((), jnp.float32)
    for j, depth in enumerate(self.pretrain_depth):
      pred = self.pred_head(j, feats[depth][:, sp:]).astype(jnp.float32)
      pgrid = s.blocks[depth].out_thw
      stride = s.feature_stride(depth)
      tgt = targets_lib.token_targets(raw, self.target, stride[1], stride[0])
      if tgt.shape[1:-1] != (pgrid[1:] if s.patch_2d else pgrid):
        raise ValueError(f"target grid {tuple(tgt.shape[1:-1])} (stride {stride}) does not match block "
                         f"{depth}'s token grid {pgrid}")
      tgt = jax.lax.stop_gradient(tgt.reshape(b, -1, tgt.shape[-1]).astype(jnp.float32))
      lm = self._mask_on(mask, pgrid, f"block {depth} prediction grid")
      count = jnp.sum(lm)
      # Mean over masked tokens and target dims (nn.MSELoss over pred[mask]); 0 if nothing is masked.
      sq = jnp.sum(jnp.square(pred - tgt), axis=-1)
      loss = jnp.sum(sq * lm) / (jnp.maximum(count, 1.0) * pred.shape[-1])
      total = total + weights[j] * loss
      out["preds"].append(pred)
      out["targets"].append(tgt)
      out["token_masks"].append(lm > 0.5)
      out["losses"].append(loss)
    out = {k: tuple(v) for k, v in out.items()}
    out.update(pred=out["preds"][-1], target=out["targets"][-1], token_mask=out["token_masks"][-1],
               loss=total)
    return out
