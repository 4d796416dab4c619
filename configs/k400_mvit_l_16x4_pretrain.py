r"""MaskFeat pre-training of MViT-L 16x4 on Kinetics-400 (official k400_MVITv2_L_16x4_MaskFeat_PT.yaml; spec §5).

  python -m maskfeat_jax.main --config=configs/k400_mvit_l_16x4_pretrain.py --workdir=/tmp/pt_l
  python -m maskfeat_jax.main --config=configs/k400_mvit_l_16x4_pretrain.py:local --workdir=/tmp/pt_l_local

Recipe (per 8-GPU node; the lr follows the linear scaling rule lr = base_lr x batch_size / reference_batch,
so a global batch of 32 x nodes gets 1e-4 x nodes, as BASE_LR_SCALE_NUM_SHARDS does): batch 32 clips, AdamW
(0.9, 0.999) wd 0.05, base lr 1e-4 per 32 clips, 10 warmup epochs from 1e-6, cosine to 1e-6 over 300 epochs,
gradient clipping 0.02, no layer decay, no drop path. 16 frames at stride 4 (30 fps), short side 256,
RandomResizedCrop area (0.5, 1) aspect (3/4, 4/3) to 224, flip. Cube masking of 40% of an 8x7x7 grid; HOG
target (9 bins, 8-px cells, no Gaussian window). The config says 300 epochs; the released checkpoint
(84.3% after fine-tuning) was trained for 800 (`--config.epochs=800`).

`:local`: the same recipe on the tiny MViT (16x64², golden layout; the L layout does not fit a CPU) and the
embedded synthetic_motion dataset, a few hundred steps on one host.
"""
from maskfeat_jax import recipes
from maskfeat_jax.config_defaults import base_config
from maskfeat_jax.models import registry


def _local(c):
  """Tiny MViT on synthetic_motion (64x80 clips): runs on a CPU."""
  c.model = registry.get_model_config("maskfeat_mvit_tiny")
  c.data.name = "synthetic_motion"
  c.data.sampling_rate = 2  # 16 frames spanning the 32-frame synthetic clips
  c.data.crop_size = 64
  c.data.train_jitter_scales = (64, 80)
  c.data.test_short_side = 64
  c.data.num_workers = 0
  c.mask.grid = (8, 2, 2)  # 32-pixel mask units, as 8x7x7 at 224²
  c.batch_size = 8
  c.optim.reference_batch = 32  # keep the official lr per 32 clips: lr = 1e-4 x 8 / 32
  c.epochs = 0.0
  c.total_steps = 300
  c.optim.warmup_epochs = 0.0
  c.optim.warmup_steps = 30
  c.log_every_steps = 20
  c.checkpoint_every_steps = 100


def get_config(arg=None):
  c = base_config()
  c.mode = "pretrain"
  c.model = registry.get_model_config("maskfeat_mvit_l_16x4_pt")
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
  if arg == "local":
    _local(c)
  elif arg:
    raise ValueError(f"configs/k400_mvit_l_16x4_pretrain.py:{arg}: unknown variant (known: '', 'local').")
  return c
