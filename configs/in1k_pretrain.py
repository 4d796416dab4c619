r"""MaskFeat pre-training of ViT-B/16 or ViT-L/16 on ImageNet-1K (official SlowFast
configs/masked_ssl/in1k_VIT_B_MaskFeat_PT.yaml, configs/masked_ssl/in1k_VIT_L_MaskFeat_PT.yaml).

  python -m maskfeat_jax.main --config=configs/in1k_pretrain.py:B --workdir=/tmp/pt_vit_b
  python -m maskfeat_jax.main --config=configs/in1k_pretrain.py:L --workdir=/tmp/pt_vit_l
  python -m maskfeat_jax.main --config=configs/in1k_pretrain.py:B,local --workdir=/tmp/pt_vit_b_local

Args: `B` (the default), `L`, `B,local`, `L,local`.

Recipe, the same for both sizes (per 8-GPU node; lr = base_lr x batch_size / reference_batch): 256 images per
step, AdamW (0.9, 0.999) wd 0.05, base lr 2e-4 per 256 images, 30 warmup epochs from 1e-6, cosine to 1e-6 over
300 epochs (the released checkpoints: 1600, `--config.epochs=1600`), gradient clipping 0.02, no layer decay,
no drop path. RandomResizedCrop area (0.5, 1) aspect (3/4, 4/3) to 224 (bicubic), flip; ImageNet mean/std.
BEiT block-wise masking of 40% of the 14x14 patch grid; HOG target (9 bins, 8-px cells). Fine-tuned: 84.0%
(B) / 85.7% (L) top-1 (1 crop).

Expects an image dataset in the TFDS array_record format (`image`, `label`) named `imagenet2012` under
config.data.data_dir (see maskfeat_jax.data.build_shards).

`,local`: a 4-block ViT/16 at 224² (B: 192 wide, L: 256 wide) with batch 32 and 200 steps on the same data (a
smoke run on one host).
"""
from maskfeat_jax import recipes
from maskfeat_jax.config import base_config
from maskfeat_jax.models import layouts

SIZES = ("B", "L")
MODELS = {
    "B": "maskfeat_vit_b_pt",  # configs/masked_ssl/in1k_VIT_B_MaskFeat_PT.yaml (MVIT.*)
    "L": "maskfeat_vit_l_pt",  # configs/masked_ssl/in1k_VIT_L_MaskFeat_PT.yaml (MVIT.*)
}


def get_config(arg=None):
  size, local = recipes.parse_arg("configs/in1k_pretrain.py", arg, SIZES)
  c = base_config()
  c.mode = "pretrain"
  c.model = layouts.get_model_config(MODELS[size])
  # Values below: configs/masked_ssl/in1k_VIT_{B,L}_MaskFeat_PT.yaml (the same in both).
  c.target.type, c.target.nbins, c.target.cell_size, c.target.gaussian_window = "hog", 9, 8, 0
  c.mask.type, c.mask.grid, c.mask.ratio = "block", (14, 14), 0.4
  recipes.imagenet_images(c, rrc_scale=(0.5, 1.0))
  c.batch_size = 256
  c.epochs = 300.0
  o = c.optim
  o.base_lr, o.reference_batch = 2e-4, 256
  o.warmup_epochs, o.start_lr, o.end_lr = 30.0, 1e-6, 1e-6
  o.weight_decay, o.b1, o.b2, o.eps = 0.05, 0.9, 0.999, 1e-8
  o.clip_grad_norm = 0.02
  o.layer_decay = 1.0
  o.zero_wd_1d, o.zero_wd_pos_cls = True, False
  c.model.drop_path_rate = 0.0
  if local:
    recipes.imagenet_local(c, size)  # lr = 2e-4 x 32 / 256
    c.model.pretrain_depth = (3,)
  return c
