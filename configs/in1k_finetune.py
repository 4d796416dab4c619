r"""Fine-tuning of a MaskFeat ViT-B/16 or ViT-L/16 on ImageNet-1K (official SlowFast
configs/masked_ssl/in1k_VIT_B_MaskFeat_FT.yaml, configs/masked_ssl/in1k_VIT_L_MaskFeat_FT.yaml).

  python -m maskfeat_jax.main --config=configs/in1k_finetune.py:B \
      --config.init_from=/path/to/in1k_VIT_B_MaskFeat_PT_epoch_01600.pyth --workdir=/tmp/ft_vit_b
  python -m maskfeat_jax.main --config=configs/in1k_finetune.py:L \
      --config.init_from=/path/to/in1k_VIT_L_MaskFeat_PT_epoch_01600.pyth --workdir=/tmp/ft_vit_l
  python -m maskfeat_jax.main --config=configs/in1k_finetune.py:B,local \
      --config.init_from=/tmp/pt_vit_b_local --workdir=/tmp/ft_vit_b_local

Args: `B` (the default), `L`, `B,local`, `L,local`.

Recipe (per 8-GPU node; lr = base_lr x batch_size / reference_batch): AdamW (0.9, 0.999) wd 0.05, warmup from
1e-8, cosine to 1e-6, drop path 0.1, no gradient clipping; timm pipeline: RandomResizedCrop area (0.08, 1) to
224, flip, RandAugment rand-m9-mstd0.5-inc1 (2 ops), random erasing p 0.25 (pixel), mixup 0.8 / cutmix 1.0
(switch 0.5), label smoothing 0.1. Test: short side 256 (bicubic), centre crop 224, 1 view. Per size:
  B: 512 images per step, base lr 2e-3 per 512 images, 20 warmup epochs, 100 epochs, layer decay 0.65.
     README: 84.0% top-1.
  L: 256 images per step, base lr 1e-3 per 256 images, 5 warmup epochs, 50 epochs, layer decay 0.75.
     README: 85.7% top-1.

`,local`: a 4-block ViT/16 (B: 192 wide, L: 256 wide) with batch 32 and 200 steps on the same data (a smoke
run on one host).
"""
from maskfeat_jax import recipes
from maskfeat_jax.config import base_config
from maskfeat_jax.models import layouts

SIZES = ("B", "L")
# batch_size = reference_batch (images per step per node).
RECIPES = {
    # configs/masked_ssl/in1k_VIT_B_MaskFeat_FT.yaml
    "B": dict(model="vit_b_ft", batch_size=512, base_lr=2e-3, warmup_epochs=20.0, epochs=100.0,
              layer_decay=0.65),
    # configs/masked_ssl/in1k_VIT_L_MaskFeat_FT.yaml
    "L": dict(model="vit_l_ft", batch_size=256, base_lr=1e-3, warmup_epochs=5.0, epochs=50.0,
              layer_decay=0.75),
}


def get_config(arg=None):
  size, local = recipes.parse_arg("configs/in1k_finetune.py", arg, SIZES)
  r = RECIPES[size]
  c = base_config()
  c.mode = "finetune"
  c.model = layouts.get_model_config(r["model"])
  # Values below: configs/masked_ssl/in1k_VIT_{B,L}_MaskFeat_FT.yaml (the same in both).
  c.model.num_classes = 1000
  c.model.drop_path_rate = 0.1
  c.mask.type = "none"
  recipes.imagenet_images(c, rrc_scale=(0.08, 1.0))
  recipes.finetune_augment(c, "rand-m9-mstd0.5-inc1")
  c.batch_size = r["batch_size"]
  c.epochs = r["epochs"]
  o = c.optim
  o.base_lr, o.reference_batch = r["base_lr"], r["batch_size"]
  o.warmup_epochs, o.start_lr, o.end_lr = r["warmup_epochs"], 1e-8, 1e-6
  o.weight_decay, o.b1, o.b2, o.eps = 0.05, 0.9, 0.999, 1e-8
  o.clip_grad_norm = 0.0  # none in the image FT recipe
  o.layer_decay = r["layer_decay"]
  o.zero_wd_1d, o.zero_wd_pos_cls = True, False
  if local:
    recipes.imagenet_local(c, size)  # lr = base_lr x 32 / the recipe's batch
    c.eval.batch_size = 32
  return c
