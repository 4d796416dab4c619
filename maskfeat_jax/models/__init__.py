"""Models: MViT / ViT backbones, the MaskFeat pre-training model and the fine-tuning classifier.

- `build_model(config)` (full config tree) -> Flax module; `example_inputs`, `param_shapes`,
  `count_params` helpers (models/factory.py).
- `registry.get_model_config(name)`: the named official layouts.

Importing this package (or `registry`) does not import JAX: the config tree reads the registry; the
JAX-side names load on first use.
"""
import importlib

from maskfeat_jax.models import registry

_LAZY = {
    "build_model": "factory", "example_inputs": "factory", "param_shapes": "factory",
    "count_params": "factory", "MaskFeat": "maskfeat", "TargetSpec": "maskfeat", "Classifier": "classifier",
    "MViT": "mvit", "ArchSpec": "mvit", "BlockSpec": "mvit", "arch_spec": "mvit",
}

__all__ = ["registry"] + sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(f"maskfeat_jax.models.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'maskfeat_jax.models' has no attribute {name!r}")
