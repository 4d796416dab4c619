"""MaskFeat pre-training model (official `MaskMViT`, spec §2.3 and §3).

The full token sequence goes through the backbone with masked patch embeddings replaced by one learned
`mask_token` (after the patch conv, before the cls token and absolute positions). Each configured
prediction depth has a head LayerNorm + Linear; targets (HOG or pixels) are computed inside `apply` from the
RAW input pixels (spec §1 "Flat regions and rounding"); the loss is the MSE over masked tokens.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskfeat_jax import masking
from maskfeat_jax import targets as targets_lib
from maskfeat_jax.models import mvit


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
    self.transforms = [mvit.layer_norm(self.dtype, bias=0.0) for _ in self.out_dims]
    self.projections = [mvit.dense(d, ("embed", None), self.dtype, bias_init=nn.initializers.zeros)
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
    self.mask_token = self.param("mask_token", mvit._lp(mvit.trunc_normal(), (None, None, "embed")),
                                 (1, 1, s.embed_dim))
    self.pred_head = PredHead(tuple(self.target_dim(j) for j in self.pretrain_depth), s.compute_dtype)

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
    m = masking.resize_mask(m, tuple(grid[1:]))
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
