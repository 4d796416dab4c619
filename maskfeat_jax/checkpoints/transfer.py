"""Pre-training -> fine-tuning: the fine-tuning layout of a pre-training config, and its params moved over.

As SlowFast's checkpoint loader (`slowfast/utils/checkpoint.py::load_checkpoint` with `inflation=False`):
shared backbone params are copied, rel-pos tables whose length differs are linearly interpolated, the new
head and final norm keep their fresh init, MaskFeat's `mask_token` / prediction heads are dropped.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from maskfeat_jax.config import locked_copy
from maskfeat_jax.models import layers


def finetune_config(pt_config: Any, num_classes: int, drop_path_rate: Optional[float] = None):
  """The fine-tuning layout of a pre-training config: the official MaskFeat PT and FT MViT configs differ
  only in the last stage's Q stride, so the last-stage block gets (1, 2, 2) back; ViT layouts are unchanged.
  """
  c = locked_copy(pt_config)
  m = c.model
  m.type, m.num_classes = "classifier", int(num_classes)
  m.head_init_scale = 0.001
  m.use_mean_pooling = True
  if drop_path_rate is not None:
    m.drop_path_rate = float(drop_path_rate)
  if m.pool_q_stride and m.head_mul:
    last = max(int(b) for b, _ in m.head_mul)
    strides = [tuple(e) for e in m.pool_q_stride]
    for i, e in enumerate(strides):
      if e[0] == last and tuple(e[1:]) == (1, 1, 1):
        strides[i] = (last, 1, 2, 2)
    m.pool_q_stride = tuple(strides)
  m.pretrain_depth = (int(m.depth) - 1,)
  return c


def pretrain_to_finetune(pt_params: Any, ft_params: Any) -> Any:
  """Pre-training params into the fine-tuning tree (same structure and boxing as `ft_params`).

  Shared backbone params are copied; `rel_pos_{h,w,t}` tables whose length differs are linearly
  interpolated (align_corners=False, no antialias, as SlowFast's checkpoint loader); `norm` / `head`
  keep their fresh values; `mask_token` / `pred_head` are dropped. Anything else that does not line up
  is an error listing it.
  """
  pt = traverse_util.flatten_dict(nn.unbox(pt_params))
  ft_leaves, treedef = jax.tree_util.tree_flatten_with_path(
      ft_params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  new_leaves, problems, used = [], [], set()
  for kp, leaf in ft_leaves:
    path = tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in kp)
    value = leaf.unbox() if isinstance(leaf, nn.meta.AxisMetadata) else leaf
    if path in pt:
      used.add(path)
      src = np.asarray(pt[path], np.float32)
      if src.shape != tuple(value.shape):
        if path[-1] in ("rel_pos_h", "rel_pos_w", "rel_pos_t") and src.shape[1:] == tuple(value.shape[1:]):
          src = layers.resize_rel_pos(src, value.shape[0]).astype(np.float32)
        else:
          problems.append(f"{'/'.join(path)}: pre-trained {src.shape} vs fine-tuning {tuple(value.shape)}")
      new = src
    elif path[0] in ("norm", "head"):
      new = value
    else:
      problems.append(f"{'/'.join(path)}: missing from the pre-trained params")
      new = value
    new_leaves.append(leaf.replace_boxed(new) if isinstance(leaf, nn.meta.AxisMetadata) else new)
  extra = [p for p in pt if p not in used and p[0] not in ("mask_token", "pred_head")]
  problems += [f"{'/'.join(p)}: pre-trained only" for p in extra]
  if problems:
    raise ValueError("pre-trained params do not fit the fine-tuning model:\n  " + "\n  ".join(problems))
  return jax.tree_util.tree_unflatten(treedef, new_leaves)
