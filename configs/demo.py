"""The README's main job: a small MaskFeat MViT on the embedded synthetic motion dataset, on a CPU.

Pre-trains, fine-tunes and evaluates, and compares with the same fine-tuning from scratch.
"""
from maskfeat_jax.config_defaults import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.mode = "demo"
  return c
