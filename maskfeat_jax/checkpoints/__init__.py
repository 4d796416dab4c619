"""Checkpoints: the one on-disk layout (orbax.py), where runs get their weights (init.py), official
SlowFast checkpoints (slowfast.py, pyth.py) and pre-training -> fine-tuning (transfer.py)."""
