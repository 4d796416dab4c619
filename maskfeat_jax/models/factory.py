"""Model factory: MViT / ViT backbones, the MaskFeat pre-training model and the fine-tuning classifier.

`build_model(config)` takes the full config tree (config.model, config.target; config.mask for example
inputs). `registry.get_model_config(name)` gives the named official layouts (importable without JAX).
"""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maskfeat_jax.models.classifier import Classifier
from maskfeat_jax.models.maskfeat import MaskFeat, TargetSpec
from maskfeat_jax.models.mvit import arch_spec


def _pretrain_depths(m) -> tuple[int, ...]:
  depths = tuple(int(d) for d in m.pretrain_depth)
  if not depths or list(depths) != sorted(set(depths)) or depths[0] < 0 or depths[-1] >= m.depth:
    raise ValueError(f"config.model.pretrain_depth={tuple(m.pretrain_depth)} must be a non-empty, strictly "
                     f"increasing tuple of block indices in [0, config.model.depth={m.depth})")
  weights = tuple(float(w) for w in m.pred_loss_weights)
  if weights and len(weights) != len(depths):
    raise ValueError(f"config.model.pred_loss_weights={weights} needs one weight per pretrain_depth {depths}")
  return depths


def build_model(config: Any):
  """Flax module for config.model.type: 'maskfeat' -> MaskFeat, 'classifier' -> Classifier."""
  m = config.model
  if m.type == "maskfeat":
    depths = _pretrain_depths(m)
    # MaskMViT deletes the blocks after its last prediction depth.
    spec = arch_spec(m, num_blocks=depths[-1] + 1)
    return MaskFeat(spec=spec, target=TargetSpec.from_config(config.target), pretrain_depth=depths,
                    loss_weights=tuple(float(w) for w in m.pred_loss_weights))
  if m.type == "classifier":
    if int(m.num_classes) <= 0:
      raise ValueError(f"config.model.num_classes={m.num_classes}: a classifier needs at least one class")
    return Classifier(spec=arch_spec(m), num_classes=int(m.num_classes),
                      use_mean_pooling=bool(m.use_mean_pooling), dropout_rate=float(m.dropout_rate),
                      head_init_scale=float(m.head_init_scale))
  raise ValueError(f"config.model.type={m.type!r}; expected 'maskfeat' or 'classifier'")


def example_inputs(config: Any, batch_size: int = 1) -> tuple:
  """Zero inputs of the right shapes for `model.init` / `jax.eval_shape`: (x,) or (x, mask)."""
  m = config.model
  t, h, w = tuple(m.input_size)
  shape = (batch_size, h, w, 3) if m.patch_2d else (batch_size, t, h, w, 3)
  x = jnp.zeros(shape, jnp.uint8)
  if m.type != "maskfeat":
    return (x,)
  return x, jnp.zeros((batch_size,) + tuple(config.mask.grid), jnp.uint8)


def param_shapes(config: Any, model=None) -> Any:
  """Unboxed parameter ShapeDtypeStructs via jax.eval_shape (no memory, no compute)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  model = model if model is not None else build_model(config)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *example_inputs(config)))
  return nn.unbox(variables)["params"]


def count_params(config: Any, model=None) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(param_shapes(config, model))))
