r"""Fine-tuning of a MaskFeat ViT-L/16 on ImageNet-1K (official in1k_VIT_L_MaskFeat_FT.yaml; spec §5.3–§5.4).

  python -m maskfeat_jax.main --config=configs/in1k_vit_l_finetune.py \
      --config.init_from=/path/to/in1k_VIT_L_MaskFeat_PT_epoch_01600.pyth --workdir=/tmp/ft_vit_l

Recipe (per 8-GPU node; lr = base_lr x batch_size / reference_batch): 256 images per step, AdamW (0.9, 0.999)
wd 0.05, base lr 1e-3 per 256 images, 5 warmup epochs from 1e-8, cosine to 1e-6 over 50 epochs, layer decay
0.75, drop path 0.1, no gradient clipping; timm pipeline: RandomResizedCrop area (0.08, 1) to 224, flip,
RandAugment rand-m9-mstd0.5-inc1 (2 ops), random erasing p 0.25 (pixel), mixup 0.8 / cutmix 1.0 (switch 0.5),
label smoothing 0.1. Test: short side 256 (bicubic), centre crop 224, 1 view. README: 85.7% top-1.

`:local`: a 4-block, 256-wide ViT/16 with batch 32 and 200 steps on the same data (a smoke run on one host).
"""
from maskfeat_jax import recipes
from maskfeat_jax.config_defaults import base_config
from maskfeat_jax.models import registry


def _local(c):
  c.model.embed_dim, c.model.depth, c.model.num_heads = 256, 4, 4
  c.batch_size = 32
  c.epochs = 0.0
  c.total_steps = 200
  c.optim.warmup_epochs = 0.0
  c.optim.warmup_steps = 20
  c.log_every_steps = 20
  c.checkpoint_every_steps = 100
  c.eval.batch_size = 32


def get_config(arg=None):
  c = base_config()
  c.mode = "finetune"
  c.model = registry.get_model_config("vit_l_ft")
  c.model.num_classes = 1000
  c.model.drop_path_rate = 0.1
  c.mask.type = "none"
  recipes.imagenet_images(c, rrc_scale=(0.08, 1.0))
  recipes.finetune_augment(c, "rand-m9-mstd0.5-inc1")
  c.batch_size = 256
  c.epochs = 50.0
  o = c.optim
  o.base_lr, o.reference_batch = 1e-3, 256
  o.warmup_epochs, o.start_lr, o.end_lr = 5.0, 1e-8, 1e-6
  o.weight_decay, o.b1, o.b2, o.eps = 0.05, 0.9, 0.999, 1e-8
  o.clip_grad_norm = 0.0  # none in the image FT recipe
  o.layer_decay = 0.75
  o.zero_wd_1d, o.zero_wd_pos_cls = True, False
  if arg == "local":
    _local(c)
  elif arg:
    raise ValueError(f"configs/in1k_vit_l_finetune.py:{arg}: unknown variant (known: '', 'local').")
  return c
