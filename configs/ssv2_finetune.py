r"""Fine-tuning of a MaskFeat MViT on Something-Something v2 (174 classes): size S (16x4 model, 16 frames at
224²) or L (the 16x4 layout fed 40 frames at 312², as configs/SSv2/MVITv2_L_40x3.yaml).

  python -m maskfeat_jax.main --config=configs/ssv2_finetune.py:S \
      --config.init_from=/path/to/k400_MVIT_S_MaskFeat_PT_epoch_00300.pyth --workdir=/tmp/ssv2_s
  python -m maskfeat_jax.main --config=configs/ssv2_finetune.py:L \
      --config.init_from=/path/to/k400_MVIT_L_MaskFeat_PT_epoch_00800.pyth --workdir=/tmp/ssv2_l
  python -m maskfeat_jax.main --config=configs/ssv2_finetune.py:S,local --workdir=/tmp/ssv2_s_local

Args: `S` (the default), `L`, `S,local`, `L,local`.

The official repository has no MaskFeat SSv2 fine-tuning config, so the values come from two official files:
  * the SSv2 recipe, configs/SSv2/MVITv2_S_16x4.yaml (S) and configs/SSv2/MVITv2_L_40x3.yaml (L): the loader
    (`slowfast/datasets/ssv2.py`: one frame from each of NUM_FRAMES equal segments, random in training and the
    middle in testing; short-side jitter TRAIN_JITTER_SCALES drawn inverse-uniformly, random crop; RANDOM_FLIP
    False), the test (1 clip x 3 crops, the short side resized to TEST_CROP_SIZE), augmentation (RandAugment
    rand-m7-n4-mstd0.5-inc1, i.e. 4 ops; random erasing 0.25; mixup 0.8 / cutmix 1.0 with MIXUP.PROB 1.0 (S) and
    0.0 (L: label smoothing only), label smoothing 0.1), drop path (0.4 / 0.75), head dropout 0.5, the batch per
    8-GPU node (16 / 8 clips), the schedule length (100 / 40 epochs, 3 warmup epochs, cosine to 1e-6) and
    activation checkpointing for L;
  * the MaskFeat fine-tuning optimiser of the same size, configs/masked_ssl/k400_MVITv2_{S,L}_16x4_FT.yaml: AdamW
    (0.9, 0.999) wd 0.05, base lr 6e-4 per the K400 batch (32 / 16 clips; the SSv2 batch gets lr x 16/32 and
    x 8/16), warmup from 1e-6 / 1e-8, layer decay 0.75 / 0.875, gradient clipping 5.0, no wd on 1-D params. The
    SSv2 yamls' SGD (lr 0.0025 / 0.00125, wd 1e-4) belongs to supervised MViTv2 fine-tuning from a K400 classifier,
    and this project's optimiser is AdamW.
The model is MaskFeat's fine-tuning layout (mvit_s_16x4_ft / mvit_l_16x4_ft, models/layouts.py) so the released
pre-training checkpoints load; L's rel-pos tables are interpolated to the 40x312² grid when loading
(checkpoints/transfer.py). Pixel mean / std stay the layout's (the pre-training's). The paper reports 75.0% top-1
on SSv2 (MViT-L, K600 pre-training); nothing here has been measured at that scale.

`,local`: the recipe on the tiny MViT (16x64²) and synthetic_motion (8 classes of motion direction), batch 8
clips, 300 steps, evaluated with 1 clip x 3 crops at short side 64.
"""
from maskfeat_jax import recipes
from maskfeat_jax.config import base_config
from maskfeat_jax.models import layouts

SIZES = ("S", "L")
RECIPES = {
    # configs/SSv2/MVITv2_S_16x4.yaml + configs/masked_ssl/k400_MVITv2_S_16x4_FT.yaml (optimiser)
    "S": dict(model="mvit_s_16x4_ft", frames=16, crop=224, jitter=(256, 320), drop_path=0.4, mixup_prob=1.0,
              batch_size=16, eval_batch=64, epochs=100.0, warmup_epochs=3.0, remat="none",
              base_lr=6e-4, reference_batch=32, start_lr=1e-6, layer_decay=0.75),
    # configs/SSv2/MVITv2_L_40x3.yaml + configs/masked_ssl/k400_MVITv2_L_16x4_FT.yaml (optimiser)
    "L": dict(model="mvit_l_16x4_ft", frames=40, crop=312, jitter=(356, 446), drop_path=0.75, mixup_prob=0.0,
              batch_size=8, eval_batch=8, epochs=40.0, warmup_epochs=3.0, remat="full",
              base_lr=6e-4, reference_batch=16, start_lr=1e-8, layer_decay=0.875),
}
NUM_CLASSES = 174


def get_config(arg=None):
  size, local = recipes.parse_arg("configs/ssv2_finetune.py", arg, SIZES)
  r = RECIPES[size]
  c = base_config()
  c.mode = "finetune"
  c.model = layouts.get_model_config(r["model"])
  c.model.num_classes = NUM_CLASSES
  c.model.input_size = (r["frames"], r["crop"], r["crop"])
  c.model.drop_path_rate = r["drop_path"]
  c.model.dropout_rate = 0.5  # MODEL.DROPOUT_RATE
  c.model.remat_policy = r["remat"]  # MODEL.ACT_CHECKPOINT (L)
  c.mask.type = "none"
  recipes.ssv2_clips(c, r["frames"], r["crop"], r["jitter"])
  recipes.finetune_augment(c, "rand-m7-n4-mstd0.5-inc1")  # erasing 0.25, mixup 0.8 / cutmix 1.0, smoothing 0.1
  c.augment.mixup_prob = r["mixup_prob"]
  c.batch_size = r["batch_size"]
  c.epochs = r["epochs"]
  o = c.optim
  o.base_lr, o.reference_batch = r["base_lr"], r["reference_batch"]
  o.warmup_epochs, o.start_lr, o.end_lr = r["warmup_epochs"], r["start_lr"], 1e-6
  o.weight_decay, o.b1, o.b2, o.eps = 0.05, 0.9, 0.999, 1e-8
  o.clip_grad_norm = 5.0
  o.layer_decay = r["layer_decay"]
  o.zero_wd_1d, o.zero_wd_pos_cls = True, False
  c.eval.batch_size = r["eval_batch"]
  if local:
    recipes.ssv2_local(c, "mvit_tiny_ft")
    c.model.num_classes = 0  # taken from the dataset (synthetic_motion: 8)
    c.model.dropout_rate = 0.5
  return c
