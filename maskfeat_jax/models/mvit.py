"""MViT (multiscale vision transformer) backbone, number for number the SlowFast
`slowfast/models/video_model_builder.py::MViT`.

ViT is a configuration of the same model (2-D patch conv, no pooling, absolute position embedding).
Parameter names follow the official state-dict keys (`patch_embed/proj`, `blocks_3/attn/qkv`,
`blocks_3/attn/rel_pos_h`, `cls_token`, ...), so `maskfeat_jax.checkpoints.slowfast` is a table. The
architecture comes resolved as an `ArchSpec` (models/arch.py); the layers are in models/layers.py.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskfeat_jax.models import layers
from maskfeat_jax.models import arch
from maskfeat_jax.models.arch import ArchSpec

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
    self.patch_embed = layers.PatchEmbed(s)
    if s.cls_embed:
      self.cls_token = self.param("cls_token", layers.lp(layers.trunc_normal(), (None, None, "embed")), (1, 1, d))
    if s.use_abs_pos:
      t, h, w = s.patch_grid
      if s.sep_pos_embed:
        self.pos_embed_spatial = self.param("pos_embed_spatial", layers.lp(layers.trunc_normal(), (None, "tokens", "embed")),
                                            (1, h * w, d))
        self.pos_embed_temporal = self.param("pos_embed_temporal",
                                             layers.lp(layers.trunc_normal(), (None, "tokens", "embed")), (1, t, d))
        if s.cls_embed:
          self.pos_embed_class = self.param("pos_embed_class", layers.lp(layers.trunc_normal(), (None, None, "embed")),
                                            (1, 1, d))
      else:
        n = t * h * w + (1 if s.cls_embed else 0)
        self.pos_embed = self.param("pos_embed", layers.lp(layers.trunc_normal(), (None, "tokens", "embed")), (1, n, d))
    block_cls = layers.block_class(s.remat_policy)
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
    return self.patch_embed(x_norm.astype(layers.compute_dtype(self.spec)))

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
    return nn.with_logical_constraint(x, layers.ACT_TOKENS)

  def run_blocks(self, x, train: bool = False, collect: Sequence[int] = ()):
    """Runs every block; returns (last output, {block index: output} for `collect`).

    With `scan_blocks`, each run of identical blocks (same shapes, strides and kernels; only the drop-path
    rate differs) is one `lax.scan` over their stacked parameters, so XLA compiles one block body per stage
    instead of one per block (compile time; figures in BENCHMARKS.md, "Model step"). The parameters stay
    per block (`blocks_3/...`, the official keys): they are stacked here, inside the forward, and their
    gradients unstacked by autodiff. Initialisation runs the blocks one by one (it creates the parameters).
    """
    outputs = {}
    if not self.spec.scan_blocks or self.is_initializing():
      for i, blk in enumerate(self.blocks):
        x = blk(x, train)
        if i in collect:
          outputs[i] = x
      return x, outputs
    for group in arch.scan_groups(self.spec.blocks, collect):
      if len(group) == 1:
        x = self.blocks[group[0]](x, train)
      else:
        x = self._scan_group(group, x, train)
      if group[-1] in collect:
        outputs[group[-1]] = x
    return x, outputs

  def _scan_group(self, group: Sequence[int], x, train: bool):
    s = self.spec
    params = nn.unbox(self.variables["params"])
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[params[f"blocks_{i}"] for i in group])
    rates = jnp.asarray([s.blocks[i].drop_path for i in group], jnp.float32)
    draws = train and any(s.blocks[i].drop_path > 0.0 for i in group)
    keys = (jax.random.split(self.make_rng("dropout"), len(group)) if draws
            else jnp.zeros((len(group),), jnp.uint32))
    template = layers.MultiScaleBlock(s, s.blocks[group[0]], parent=None)  # a pure function, not a child

    def body(h, layer):
      p, rate, key = layer
      rngs = {"dropout": key} if draws else None
      return template.apply({"params": p}, h, train, rate if draws else 0.0, rngs=rngs), None

    if s.remat_policy != "none":
      body = jax.checkpoint(body, policy=layers.checkpoint_policy(s.remat_policy), prevent_cse=False)
    x, _ = jax.lax.scan(body, x, (stacked, rates, keys))
    return x

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
