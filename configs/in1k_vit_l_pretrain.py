r"""MaskFeat pre-training of ViT-L/16 on ImageNet-1K (official in1k_VIT_L_MaskFeat_PT.yaml; spec §5).

  python -m maskfeat_jax.main --config=configs/in1k_vit_l_pretrain.py --workdir=/tmp/pt_vit_l

Recipe (per 8-GPU node; lr = base_lr x batch_size / reference_batch): 256 images per step, AdamW (0.9, 0.999)
wd 0.05, base lr 2e-4 per 256 images, 30 warmup epochs from 1e-6, cosine to 1e-6 over 300 epochs (the
released checkpoint: 1600, `--config.epochs=1600`), gradient clipping 0.02, no layer decay, no drop path.
RandomResizedCrop area (0.5, 1) aspect (3/4, 4/3) to 224 (bicubic), flip; ImageNet mean/std. BEiT block-wise
masking of 40% of the 14x14 patch grid; HOG target (9 bins, 8-px cells). Fine-tuned: 85.7% top-1 (1 crop).

Expects an image dataset in the TFDS array_record format (`image`, `label`) named `imagenet2012` under
config.data.data_dir (see maskfeat_jax.data.convert).

`:local`: a 4-block, 256-wide ViT/16 at 224² with batch 32 and 200 steps on the same data (a smoke run on one
host).
"""
from maskfeat_jax import recipes
from maskfeat_jax.config_defaults import base_config
from maskfeat_jax.models import registry


def _local(c):
  c.model.embed_dim, c.model.depth, c.model.num_heads = 256, 4, 4
  c.model.pretrain_depth = (3,)
  c.batch_size = 32
  c.optim.reference_batch = 256  # keep the official lr per 256 images
  c.epochs = 0.0
  c.total_steps = 200
  c.optim.warmup_epochs = 0.0
  c.optim.warmup_steps = 20
  c.log_every_steps = 20
  c.checkpoint_every_steps = 100


def get_config(arg=None):
  c = base_config()
  c.mode = "pretrain"
  c.model = registry.get_model_config("maskfeat_vit_l_pt")
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
  if arg == "local":
    _local(c)
  elif arg:
    raise ValueError(f"configs/in1k_vit_l_pretrain.py:{arg}: unknown variant (known: '', 'local').")
  return c
