"""Named model layouts (the official MaskFeat / MViTv2 / ViT configs) as `config.model` sections.

Importable without JAX: the config tree and command-line tools read it before any device work.

Every name yields the same key set (`model_schema()`), so `--config.model.<key>=...` works for all of
them. Field meanings follow the official SlowFast `MVIT.*` keys (`slowfast/config/defaults.py`, read by
`slowfast/models/video_model_builder.py::MViT`):

  input_size            (T, H, W) the model is built for (T = 1 for images). Rel-pos tables and absolute
                        position embeddings are sized from it; the input must have this shape.
  patch_2d              image model: 2-D patch conv (`patch_kernel/stride/padding` then use [1:]).
  dim_mul, head_mul     ((block, multiplier), ...): width / heads multiply at that block (MVIT.DIM_MUL).
  pool_mode             'conv' (depthwise conv + LayerNorm) | 'max' | 'avg' pooling of Q/K/V.
  pool_kvq_kernel       pooling kernel for Q, K and V; () = derived from the stride (s+1 if s>1 else s).
  pool_q_stride         ((block, st, sh, sw), ...); a block listed here pools Q (and is a "Q-stride entry").
  pool_kv_stride        ((block, st, sh, sw), ...); used only when pool_kv_stride_adaptive is ().
  pool_kv_stride_adaptive  (st, sh, sw) start of the adaptive KV stride (divided by every Q stride).
  pretrain_depth        MaskFeat: blocks whose output feeds a prediction head (the last one is the model's
                        last block).
  pred_loss_weights     MaskFeat: one weight per pretrain_depth; () = official (1.0 each for HOG,
                        1/len for pixels).
  use_mean_pooling      classifier: mean of non-cls tokens -> norm; else cls token (norm first) or
                        norm -> mean when there is no cls token.
"""
from typing import Sequence

import ml_collections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


def model_schema() -> ml_collections.ConfigDict:
  """The full key set with neutral defaults (an MViT-S-like layout)."""
  m = ml_collections.ConfigDict()
  m.name = ""
  m.type = "maskfeat"  # 'maskfeat' (pre-training) | 'classifier' (fine-tuning) | 'detection' (AVA)
  m.num_classes = 0
  m.dtype = "float32"  # compute dtype; params are always float32
  m.remat_policy = "none"  # 'none' | 'full' | 'dots'
  # Run each stage's identical blocks as one lax.scan (compiled once per stage, not once per block); the
  # parameters keep their per-block names (blocks_3/...), stacked only inside the forward.
  m.scan_blocks = True
  # 'xla': logits, softmax and weighted sum as three ops (exact official order). 'flash': the rel-pos
  # terms folded into q·k and jax.nn.dot_product_attention (cuDNN's fused kernel on GPU).
  m.attention_impl = "xla"
  m.drop_path_rate = 0.0
  m.dropout_rate = 0.0  # classifier head dropout (official MODEL.DROPOUT_RATE)
  m.pixel_mean = KINETICS_MEAN
  m.pixel_std = KINETICS_STD
  m.input_size = (16, 224, 224)
  m.patch_2d = False
  m.patch_kernel = (3, 7, 7)
  m.patch_stride = (2, 4, 4)
  m.patch_padding = (1, 3, 3)
  m.embed_dim = 96
  m.num_heads = 1
  m.depth = 16
  m.mlp_ratio = 4.0
  m.qkv_bias = True
  m.dim_mul = ((1, 2.0), (3, 2.0), (14, 2.0))
  m.head_mul = ((1, 2.0), (3, 2.0), (14, 2.0))
  m.pool_mode = "conv"
  m.pool_kvq_kernel = (3, 3, 3)
  m.pool_q_stride = _q_strides(16, (1, 3))
  m.pool_kv_stride = ()
  m.pool_kv_stride_adaptive = (1, 8, 8)
  m.cls_embed = True
  m.use_abs_pos = False
  m.sep_pos_embed = False
  m.rel_pos_spatial = True
  m.rel_pos_temporal = True
  m.rel_pos_zero_init = False
  m.residual_pooling = True
  m.dim_mul_in_att = False
  m.use_mean_pooling = True
  m.head_init_scale = 1.0
  m.pretrain_depth = (15,)
  m.pred_loss_weights = ()
  # Detection (type 'detection', models/detection.py; official DETECTION.* keys): RoIAlign output size
  # (ROI_XFORM_RESOLUTION), input pixels per feature cell (SPATIAL_SCALE_FACTOR), samples per bin (0 =
  # adaptive, as the official head) and the half-pixel alignment (ALIGNED).
  m.roi_resolution = 7
  m.roi_scale_factor = 16
  m.roi_sampling_ratio = 0
  m.roi_aligned = True
  return m


def _q_strides(depth: int, strided: Sequence[int], stride=(1, 2, 2)) -> tuple:
  """Every block listed (stride 1 unless in `strided`), as the official MViT configs do."""
  return tuple((i,) + (tuple(stride) if i in strided else (1, 1, 1)) for i in range(depth))


def _muls(blocks: Sequence[int]) -> tuple:
  return tuple((b, 2.0) for b in blocks)


def _mvit(m, *, embed, heads, depth, stages, q_blocks, frames=16, crop=224):
  m.input_size = (frames, crop, crop)
  m.embed_dim, m.num_heads, m.depth = embed, heads, depth
  m.dim_mul = _muls(stages)
  m.head_mul = _muls(stages)
  m.pool_q_stride = _q_strides(depth, q_blocks)
  return m


def _vit(m, *, embed, heads, depth, crop=224):
  m.input_size = (1, crop, crop)
  m.patch_2d = True
  m.patch_kernel, m.patch_stride, m.patch_padding = (1, 16, 16), (1, 16, 16), (0, 0, 0)
  m.embed_dim, m.num_heads, m.depth = embed, heads, depth
  m.dim_mul, m.head_mul = (), ()
  m.pool_kvq_kernel, m.pool_q_stride, m.pool_kv_stride, m.pool_kv_stride_adaptive = (), (), (), ()
  m.rel_pos_spatial = m.rel_pos_temporal = m.residual_pooling = False
  m.use_abs_pos, m.sep_pos_embed = True, False
  m.pixel_mean, m.pixel_std = IMAGENET_MEAN, IMAGENET_STD
  m.pretrain_depth = (depth - 1,)
  return m


def _pt(m):
  m.type, m.num_classes = "maskfeat", 0
  m.pretrain_depth = (m.depth - 1,)
  return m


def _ft(m, classes, drop_path, head_init_scale=0.001):
  m.type, m.num_classes = "classifier", classes
  m.drop_path_rate = drop_path
  m.head_init_scale = head_init_scale
  return m


def _det(m, classes, drop_path):
  """AVA detector: the pre-training layout (no Q stride in the last stage: stride-16 map, as the
  official SPATIAL_SCALE_FACTOR 16), RoI head over `classes`, dropout 0.5 (the AVA configs' DROPOUT_RATE)."""
  m.type, m.num_classes = "detection", classes
  m.drop_path_rate = drop_path
  m.dropout_rate = 0.5
  return m


def _tiny(m):
  """The golden tiny MaskMViT layout (depth 5, width 16) on 16x64² clips: fast on a CPU.

  Token grid 8x16x16, prediction grid 8x4x4 at stride 16 (108-d HOG). Masks on an (8, 2, 2) grid
  (32-pixel units, as the official 8x7x7 grid at 224²) or (8, 4, 4) fit it.
  """
  m = _mvit(m, embed=16, heads=1, depth=5, stages=(1, 3, 4), q_blocks=(1, 3), frames=16, crop=64)
  m.pool_kv_stride_adaptive = (1, 4, 4)
  return m


def _build(name: str) -> ml_collections.ConfigDict:
  m = model_schema()
  m.name = name
  if name == "maskfeat_mvit_tiny":
    return _pt(_tiny(m))
  if name == "mvit_tiny_ft":
    m = _tiny(m)
    m.pool_q_stride = _q_strides(5, (1, 3, 4))
    return _ft(m, 10, 0.0)
  if name == "mvit_tiny_det":
    return _det(_tiny(m), 3, 0.0)
  if name == "mvit_s_16x4_det":
    return _det(_mvit(m, embed=96, heads=1, depth=16, stages=(1, 3, 14), q_blocks=(1, 3)), 60, 0.2)
  if name == "mvit_l_16x4_det":
    return _det(_mvit(m, embed=144, heads=2, depth=48, stages=(2, 8, 44), q_blocks=(2, 8)), 60, 0.4)
  if name == "maskfeat_mvit_s_16x4_pt":
    return _pt(_mvit(m, embed=96, heads=1, depth=16, stages=(1, 3, 14), q_blocks=(1, 3)))
  if name == "mvit_s_16x4_ft":
    return _ft(_mvit(m, embed=96, heads=1, depth=16, stages=(1, 3, 14), q_blocks=(1, 3, 14)), 400, 0.1)
  if name == "maskfeat_mvit_l_16x4_pt":
    return _pt(_mvit(m, embed=144, heads=2, depth=48, stages=(2, 8, 44), q_blocks=(2, 8)))
  if name == "mvit_l_16x4_ft":
    return _ft(_mvit(m, embed=144, heads=2, depth=48, stages=(2, 8, 44), q_blocks=(2, 8, 44)), 400, 0.2)
  # Supervised MViTv2 (configs/Kinetics/MVITv2_*): widening inside attention, cls-token head.
  if name in ("mvitv2_s_16x4", "mvitv2_b_32x3", "mvitv2_l_40x3"):
    if name == "mvitv2_s_16x4":
      m = _mvit(m, embed=96, heads=1, depth=16, stages=(1, 3, 14), q_blocks=(1, 3, 14))
      drop_path = 0.2
    elif name == "mvitv2_b_32x3":
      m = _mvit(m, embed=96, heads=1, depth=24, stages=(2, 5, 21), q_blocks=(2, 5, 21), frames=32)
      drop_path = 0.3
    else:
      m = _mvit(m, embed=144, heads=2, depth=48, stages=(2, 8, 44), q_blocks=(2, 8, 44), frames=40,
                crop=312)
      drop_path = 0.75
    m = _ft(m, 400, drop_path, head_init_scale=1.0)
    m.dim_mul_in_att = True
    m.use_mean_pooling = False
    return m
  if name == "maskfeat_vit_b_pt":
    return _pt(_vit(m, embed=768, heads=12, depth=12))
  if name == "vit_b_ft":
    return _ft(_vit(m, embed=768, heads=12, depth=12), 1000, 0.1)
  if name == "maskfeat_vit_l_pt":
    return _pt(_vit(m, embed=1024, heads=16, depth=24))
  if name == "vit_l_ft":
    return _ft(_vit(m, embed=1024, heads=16, depth=24), 1000, 0.1)
  raise KeyError(f"unknown model name {name!r}; known names: {', '.join(MODEL_NAMES)}")


MODEL_NAMES = (
    "maskfeat_mvit_tiny", "mvit_tiny_ft", "maskfeat_mvit_s_16x4_pt", "mvit_s_16x4_ft",
    "maskfeat_mvit_l_16x4_pt", "mvit_l_16x4_ft", "mvitv2_s_16x4", "mvitv2_b_32x3", "mvitv2_l_40x3",
    "maskfeat_vit_b_pt", "vit_b_ft", "maskfeat_vit_l_pt", "vit_l_ft",
    "mvit_tiny_det", "mvit_s_16x4_det", "mvit_l_16x4_det",
)


def get_model_config(name: str) -> ml_collections.ConfigDict:
  """The `config.model` section of the named layout (a fresh, mutable ConfigDict)."""
  return _build(name)
