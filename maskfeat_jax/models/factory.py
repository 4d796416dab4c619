"""Builds the Flax module of a config and inspects it without allocating: `build_model(config)`,
`example_batch`, `example_inputs`, `param_shapes`, `count_params`."""
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from maskfeat_jax.config import input_key
from maskfeat_jax.models import arch
from maskfeat_jax.models.classifier import Classifier
from maskfeat_jax.models.detection import Detector
from maskfeat_jax.models.maskfeat import MaskFeat, TargetSpec


def build_model(config: Any):
  """Flax module for config.model.type: 'maskfeat' -> MaskFeat, 'classifier' -> Classifier, 'detection' ->
  Detector (AVA: MViT + RoI head)."""
  m = config.model
  if m.type == "maskfeat":
    return MaskFeat(spec=arch.model_spec(m), target=TargetSpec.from_config(config.target),
                    pretrain_depth=arch.pretrain_depths(m),
                    loss_weights=tuple(float(w) for w in m.pred_loss_weights))
  if m.type == "classifier":
    if int(m.num_classes) <= 0:
      raise ValueError(f"config.model.num_classes={m.num_classes}: a classifier needs at least one class")
    return Classifier(spec=arch.model_spec(m), num_classes=int(m.num_classes),
                      use_mean_pooling=bool(m.use_mean_pooling), dropout_rate=float(m.dropout_rate),
                      head_init_scale=float(m.head_init_scale))
  if m.type == "detection":
    if int(m.num_classes) <= 0:
      raise ValueError(f"config.model.num_classes={m.num_classes}: a detector needs at least one class")
    return Detector(spec=arch.model_spec(m), num_classes=int(m.num_classes), roi_resolution=int(m.roi_resolution),
                    roi_scale_factor=float(m.roi_scale_factor), roi_sampling_ratio=int(m.roi_sampling_ratio),
                    roi_aligned=bool(m.roi_aligned), dropout_rate=float(m.dropout_rate))
  raise ValueError(f"config.model.type={m.type!r}; expected 'maskfeat', 'classifier' or 'detection'")


def example_batch(config: Any, batch_size: int = 1) -> dict:
  """Zeros shaped like one loader batch (uint8 pixels, uint8 mask, int32 labels), from models.arch."""
  shapes = arch.io_shapes(config)
  out = {input_key(config): np.zeros((batch_size,) + shapes.pixels, np.uint8),
         "label": np.zeros((batch_size,), np.int32)}
  if config.model.type == "maskfeat":
    out["mask"] = np.zeros((batch_size,) + shapes.mask_grid, np.uint8)
  if config.model.type == "detection":  # boxes padded to a static count (models/detection.py)
    n, k = int(config.detection.max_boxes), int(config.model.num_classes)
    out["boxes"] = np.zeros((batch_size, n, 4), np.float32)
    out["box_mask"] = np.zeros((batch_size, n), bool)
    out["box_labels"] = np.zeros((batch_size, n, k), np.uint8)
  return out


def example_inputs(config: Any, batch_size: int = 1) -> tuple:
  """The model's inputs of one batch of zeros, for `model.init` / `jax.eval_shape`: (x,) or (x, mask)."""
  ex = example_batch(config, batch_size)
  x = ex[input_key(config)]
  if config.model.type == "detection":
    return (x, ex["boxes"])
  return (x, ex["mask"]) if config.model.type == "maskfeat" else (x,)


def param_shapes(config: Any, model=None) -> Any:
  """Unboxed parameter ShapeDtypeStructs via jax.eval_shape (no memory, no compute)."""
  model = model if model is not None else build_model(config)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *example_inputs(config)))
  return nn.unbox(variables)["params"]


def count_params(params) -> int:
  """Number of parameters in a tree of arrays or ShapeDtypeStructs."""
  return int(sum(x.size for x in jax.tree.leaves(params)))
