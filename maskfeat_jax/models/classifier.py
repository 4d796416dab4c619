"""Fine-tuning classifier: the official `MViT` with `slowfast/models/head_helper.py::TransformerBasicHead`.

apply(variables, x, train=False) -> logits [B, classes] (pre-softmax; the official head applies softmax
only in eval mode, so compare softmax(logits) with its eval outputs).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from maskfeat_jax.models import layers
from maskfeat_jax.models import mvit


def _scaled(init, scale: float):
  def scaled_init(key, shape, dtype=jnp.float32):
    return init(key, shape, dtype) * scale
  return scaled_init


class TransformerHead(nn.Module):
  """`head.projection`: Linear with weight and bias multiplied by HEAD_INIT_SCALE after the init."""
  num_classes: int
  init_scale: float
  dtype: Any

  def setup(self):
    self.projection = layers.dense(
        self.num_classes, ("embed", "classes"), self.dtype,
        kernel_init=_scaled(layers.trunc_normal(), self.init_scale),
        bias_init=nn.initializers.constant(0.02 * self.init_scale))

  def __call__(self, x):
    return self.projection(x)


class Classifier(mvit.MViT):
  """Backbone -> pooling -> LayerNorm -> dropout -> Linear."""
  num_classes: int = 0
  use_mean_pooling: bool = True
  dropout_rate: float = 0.0
  head_init_scale: float = 1.0

  def setup(self):
    self._setup_backbone()
    self.norm = layers.layer_norm(layers.compute_dtype(self.spec))
    self.head = TransformerHead(self.num_classes, self.head_init_scale,
                                  layers.compute_dtype(self.spec))
    self.dropout = nn.Dropout(self.dropout_rate)

  def pooled(self, x, train: bool = False):
    """The normalised [B, C] vector the head sees (MViT.forward's three pooling modes)."""
    h = self.backbone(x, train)
    if self.use_mean_pooling:
      if self.spec.cls_embed:
        h = h[:, 1:]
      return self.norm(jnp.mean(h, axis=1))
    if self.spec.cls_embed:
      return self.norm(h)[:, 0]
    return jnp.mean(self.norm(h), axis=1)

  def __call__(self, x, train: bool = False):
    h = self.dropout(self.pooled(x, train), deterministic=not train)
    return self.head(h).astype(jnp.float32)
