r"""MaskFeat pre-training of MViTv2 16x4 on Kinetics-400: size S or L (official SlowFast
configs/masked_ssl/k400_MVITv2_S_16x4_MaskFeat_PT.yaml, configs/masked_ssl/k400_MVITv2_L_16x4_MaskFeat_PT.yaml).

  python -m maskfeat_jax.main --config=configs/k400_pretrain.py:S --workdir=/tmp/pt_s
  python -m maskfeat_jax.main --config=configs/k400_pretrain.py:L --workdir=/tmp/pt_l
  python -m maskfeat_jax.main --config=configs/k400_pretrain.py:S,local --workdir=/tmp/pt_s_local

Args: `S` (the default), `L`, `S,local`, `L,local`.

Recipe, the same for both sizes (per 8-GPU node; the lr follows the linear scaling rule lr = base_lr x
batch_size / reference_batch, so a global batch of 32 x nodes gets 1e-4 x nodes, as BASE_LR_SCALE_NUM_SHARDS
does): batch 32 clips, AdamW (0.9, 0.999) wd 0.05, base lr 1e-4 per 32 clips, 10 warmup epochs from 1e-6,
cosine to 1e-6 over 300 epochs, gradient clipping 0.02, no layer decay, no drop path. 16 frames at stride 4
(30 fps), short side 256, RandomResizedCrop area (0.5, 1) aspect (3/4, 4/3) to 224, flip. Cube masking of 40%
of an 8x7x7 grid; HOG target (9 bins, 8-px cells, no Gaussian window). S: the released checkpoint is this
recipe's epoch 300. L: the config says 300 epochs; the released checkpoint (84.3% after fine-tuning) was
trained for 800 (`--config.epochs=800`).

`,local`: the same recipe on the tiny MViT (16x64², golden layout; the S and L layouts do not fit a CPU, so
both sizes give the same local run) and the embedded synthetic_motion dataset, a few hundred steps on one host.
"""
from maskfeat_jax import recipes
from maskfeat_jax.config import base_config
from maskfeat_jax.models import layouts

SIZES = ("S", "L")
MODELS = {
    "S": "maskfeat_mvit_s_16x4_pt",  # configs/masked_ssl/k400_MVITv2_S_16x4_MaskFeat_PT.yaml (MVIT.*)
    "L": "maskfeat_mvit_l_16x4_pt",  # configs/masked_ssl/k400_MVITv2_L_16x4_MaskFeat_PT.yaml (MVIT.*)
}


def get_config(arg=None):
  size, local = recipes.parse_arg("configs/k400_pretrain.py", arg, SIZES)
  c = base_config()
  c.mode = "pretrain"
  c.model = layouts.get_model_config(MODELS[size])
  # Values below: configs/masked_ssl/k400_MVITv2_{S,L}_16x4_MaskFeat_PT.yaml (the same in both).
  c.target.type, c.target.nbins, c.target.cell_size, c.target.gaussian_window = "hog", 9, 8, 0
  c.mask.type, c.mask.grid, c.mask.ratio = "cube", (8, 7, 7), 0.4
  recipes.kinetics_clips(c, rrc_scale=(0.5, 1.0))
  c.batch_size = 32
  c.epochs = 300.0
  o = c.optim
  o.base_lr, o.reference_batch = 1e-4, 32
  o.warmup_epochs, o.start_lr, o.end_lr = 10.0, 1e-6, 1e-6
  o.weight_decay, o.b1, o.b2, o.eps = 0.05, 0.9, 0.999, 1e-8
  o.clip_grad_norm = 0.02
  o.layer_decay = 1.0
  o.zero_wd_1d, o.zero_wd_pos_cls = True, False
  c.model.drop_path_rate = 0.0
  if local:
    recipes.kinetics_local(c, "maskfeat_mvit_tiny")  # lr = 1e-4 x 8 / 32
    c.mask.grid = (8, 2, 2)  # 32-pixel mask units, as 8x7x7 at 224²
  return c
