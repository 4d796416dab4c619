r"""AVA v2.2 action detection with a MaskFeat MViT-S / MViT-L 16x4 (MViT backbone + RoI head, models/detection.py).

  python -m maskfeat_jax.main --config=configs/ava_detection.py:S \
      --config.init_from=/path/to/k400_MVIT_S_MaskFeat_PT_epoch_00300.pyth --workdir=/tmp/ava_s
  python -m maskfeat_jax.main --config=configs/ava_detection.py:S --config.mode=eval \
      --config.init_from=/tmp/ava_s --workdir=/tmp/ava_s_eval
  python -m maskfeat_jax.main --config=configs/ava_detection.py:S,local --workdir=/tmp/ava_local

Args: `S` (the default), `L`, `S,local`, `L,local`. Data: `python -m maskfeat_jax.data.build_shards --mode=ava`
(README, "Downstream transfer"): one record per keyframe, 16 frames at stride 4 of the 30 fps timeline.

What follows the official code (SlowFast `slowfast/config/defaults.py` DETECTION / AVA keys and the AVA
configs): the 60 evaluated classes of ava_action_list_v2.2_for_activitynet_2019.pbtxt; RoIAlign 7x7,
spatial scale 1/16 (the pre-training layout keeps a stride-16 last stage), sampling ratio 0, aligned;
max-pool, dropout 0.5, linear + sigmoid, BCE on the ground-truth boxes; training clips with short-side
jitter (256, 320), random crop 224 and flip; testing on the person detector's boxes with score >= 0.8
(DETECTION_SCORE_THRESH of the AVA configs); frame-level mAP@0.5 (eval/ava_map.py).

What does not: MaskFeat's AVA fine-tuning config is not released (SlowFast's configs/masked_ssl has Kinetics
only), so the optimiser values below are this project's, not verified against the paper's 39.8 mAP:
the K400 fine-tuning recipe's AdamW (0.9, 0.999), weight decay 0.05, layer decay (S 0.75, L 0.875), clipping
5.0, cosine schedule, with 30 epochs and 5 warmup epochs (the schedule length of the MViT AVA runs), base lr
1e-4 per 64 clips, drop path S 0.2 / L 0.4. Testing resizes the short side to 224 and scores each box in
the one of 3 crops (left / centre / right, together the whole frame) that shows most of it: MViT's position
tables fix the input size, where the official AVA test feeds the whole short-side-256 frame at once.

`,local`: the recipe on the tiny MViT (16x64², 3 classes) and the AVA-like synthetic fixture
(`build_shards --mode=ava --ava_synthetic=DIR`, dataset 'ava_synthetic'), batch 4, 60 steps, base lr 1e-2 per 64.
"""
from maskfeat_jax import recipes
from maskfeat_jax.config import base_config
from maskfeat_jax.models import layouts

SIZES = ("S", "L")
RECIPES = {
    "S": dict(model="mvit_s_16x4_det", layer_decay=0.75),
    "L": dict(model="mvit_l_16x4_det", layer_decay=0.875),
}


def get_config(arg=None):
  size, local = recipes.parse_arg("configs/ava_detection.py", arg, SIZES)
  r = RECIPES[size]
  c = base_config()
  c.mode = "finetune"
  c.model = layouts.get_model_config(r["model"])
  c.mask.type = "none"
  d = c.data
  d.name, d.train_split, d.eval_split = "ava_v2_2", "train", "val"
  d.num_frames, d.sampling_rate, d.target_fps = 16, 4, 30.0  # must match the converter's --num_frames
  d.crop_size = 224
  d.train_jitter_scales = (256, 320)
  d.random_flip = True
  c.detection.max_boxes = 16
  c.detection.score_thresh = 0.8
  c.batch_size = 64
  c.epochs = 30.0
  o = c.optim
  o.base_lr, o.reference_batch = 1e-4, 64
  o.warmup_epochs, o.start_lr, o.end_lr = 5.0, 1e-6, 1e-6
  o.weight_decay, o.b1, o.b2, o.eps = 0.05, 0.9, 0.999, 1e-8
  o.clip_grad_norm = 5.0
  o.layer_decay = r["layer_decay"]
  o.zero_wd_1d, o.zero_wd_pos_cls = True, False
  # 3 crops (left / centre / right) cover a 16:9 frame; each box is scored in the one showing most of it.
  c.eval.num_clips, c.eval.num_crops, c.eval.batch_size = 1, 3, 48
  if local:
    c.model = layouts.get_model_config("mvit_tiny_det")
    d.name = "ava_synthetic"
    d.num_frames, d.sampling_rate = 16, 2
    d.crop_size = 64
    d.train_jitter_scales = (64, 80)
    d.num_workers = 0
    c.batch_size = 4
    c.epochs = 0.0
    c.total_steps = 60
    o.warmup_epochs, o.warmup_steps = 0.0, 5
    # per 64 clips as above: 6.25e-4 at batch 4 (the tiny model from scratch; 1e-3 per 64 barely moves in 12 steps)
    o.base_lr = 1e-2
    c.log_every_steps = 10
    c.checkpoint_every_steps = 100
    c.eval.batch_size = 12
  return c
