"""Models: MViT / ViT backbones, the MaskFeat pre-training model and the fine-tuning classifier.

  arch.py        ArchSpec and the input / token / prediction / mask shapes (pure Python, no JAX)
  layouts.py     the named official layouts as `config.model` sections (config data, no JAX)
  layers.py      the MViT layers (attention, pooling, patch embedding, blocks)
  mvit.py        the backbone;  maskfeat.py  the pre-training model;  classifier.py  the fine-tuning model
  factory.py     build_model(config), example_inputs, param_shapes, count_params

Importing this package imports no JAX, so the config tree and the config check load fast.
"""
