"""MaskFeat in JAX/Flax: masked HOG-feature prediction for video and image transformers."""

__version__ = "0.1.0"
