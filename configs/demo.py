"""The README's main job: MaskFeat on unlabelled clips makes few labels go further, on a CPU.

  python -m maskfeat_jax.main --config=configs/demo.py --workdir=/tmp/maskfeat_demo

The standard self-supervised protocol, in miniature, on the embedded `synthetic_shapes` dataset (the class is
the foreground object's shape family; maskfeat_jax/data/synthetic_shapes.py):
  1. pre-train `maskfeat_mvit_tiny` with HOG targets on the `unlabeled` split (labels never read);
  2. linear probe: a softmax classifier on the frozen features of the pre-trained model, and of the same
     model at its random init, trained on the few labelled clips and tested on `test`;
  3. fine-tune `mvit_tiny_ft` from the pre-training on the few labelled clips (`train[:N]`, class-balanced),
     evaluated multi-view on `test`;
  4. the same fine-tuning from a random init (same recipe, same steps): the baseline.
One config tree: `config.demo.pretrain` / `config.demo.finetune` hold what the phases change
(maskfeat_jax.demo.phase_config derives the phase configs from it); `config.demo.targets` lists the
pre-training targets (one pre-training, probe and fine-tuning each).

Variants: `configs/demo.py` (the demo), `configs/demo.py:ablation` (HOG vs pixel targets from the same
budget, both next to scratch: the paper's central ablation in miniature) and `configs/demo.py:tiny` (a few
steps of every phase on the small `synthetic_motion` dataset: a smoke test of the whole path, which many tests
also use as their tiny run). Trials behind the values: BENCHMARKS.md, "Demo on synthetic_shapes".
"""
import ml_collections

from maskfeat_jax.config import base_config


def _input(c, ft_model, *, frames: int, crop: int, jitter: tuple, mask_grid: tuple):
  """Input clip size, its crops and the mask grid, on the data, the pre-training model and ft_model."""
  c.data.num_frames = frames
  c.data.crop_size = crop
  c.data.train_jitter_scales = jitter
  c.data.test_short_side = crop
  c.model.input_size = (frames, crop, crop)
  ft_model.input_size = (frames, crop, crop)
  c.mask.grid = mask_grid


def get_config(arg=None):
  c = base_config()
  c.mode = "demo"
  c.seed = 0

  # Data: synthetic_shapes (16 frames of 64x64, 8 shape classes; unlabeled 2,400 / train 400 / test 400
  # clips), read as 8 frames (every 2nd: the whole clip). The classes are mirror-symmetric shape families,
  # so horizontal flips keep the class.
  c.data.name = "synthetic_shapes"
  c.data.sampling_rate = 4
  c.data.rrc_scale = (0.5, 1.0)
  c.data.random_flip = True
  c.data.num_workers = 0
  c.eval.num_clips = 2
  c.eval.num_crops = 1
  c.eval.batch_size = 16

  c.batch_size = 8
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 1
  c.log.tensorboard = True

  # The few labels: fine-tuning trains on train[:N] (class-balanced: N/8 clips of each class; 5 per class
  # here: with 10 per class the scratch model learnt the shapes nearly as well and the gain swung from +20
  # to -6 points across seeds, BENCHMARKS.md "Demo on synthetic_shapes"). The linear probe, a measure of
  # the frozen features rather than of label efficiency, trains on all 400 labelled clips (on 40, 128-d
  # features fit any labels). Everything is tested on `test`.
  labelled = "train[:40]"
  c.probe.train_split = "train"
  c.probe.eval_split = "test"
  c.probe.num_clips = 1
  c.probe.steps = 300
  c.probe.lr = 1e-2
  c.probe.weight_decay = 1e-4

  # Pre-training targets: one pre-training (and probe and fine-tuning) per entry; ':ablation' adds 'pixel'.
  c.demo.targets = ("hog",)

  # Phase 1: MaskFeat pre-training on the unlabelled split: the official video recipe (SlowFast
  # configs/masked_ssl/k400_MVITv2_S_16x4_MaskFeat_PT.yaml: AdamW, wd 0.05, clip 0.02), scaled down.
  pt = ml_collections.ConfigDict()
  pt.total_steps = 1500
  pt.viz_every_steps = 500  # WORKDIR/pretrain/pictures/prediction_<step>.png + curves.png (reads params only)
  pt.data = ml_collections.ConfigDict(dict(train_split="unlabeled"))
  pt.optim = ml_collections.ConfigDict(dict(
      base_lr=5e-4, reference_batch=8, warmup_steps=100, start_lr=1e-5, end_lr=1e-5,
      clip_grad_norm=0.02, weight_decay=0.05, layer_decay=1.0))
  c.demo.pretrain = pt

  # Phase 2: fine-tuning on the few labels: the official video recipe (configs/masked_ssl/
  # k400_MVITv2_S_16x4_FT.yaml) scaled to a depth-5 model; used both from the pre-trained weights and from
  # scratch, same recipe and budget: layer decay 0.9 (0.75 over 16 blocks officially), drop path 0.1, label
  # smoothing 0.1, clip 5, head init scale 1.0 (0.001 officially: the tiny head then needs far more steps);
  # RandAugment m3 (m7), 1 op per clip (2), random erasing 0.1 (0.25), mixup 0.8 / cutmix 1.0 at batch
  # probability 0.1 (1.0).
  ft = ml_collections.ConfigDict()
  ft.total_steps = 600
  ft.data = ml_collections.ConfigDict(dict(train_split=labelled))
  ft.model = ml_collections.ConfigDict(dict(name="mvit_tiny_ft", num_classes=8, drop_path_rate=0.1,
                                            head_init_scale=1.0))
  ft.optim = ml_collections.ConfigDict(dict(
      base_lr=3e-4, reference_batch=8, warmup_steps=50, start_lr=1e-5, end_lr=1e-5,
      clip_grad_norm=5.0, weight_decay=0.05, layer_decay=0.9))
  ft.augment = ml_collections.ConfigDict(dict(
      randaug="rand-m3-mstd0.5-inc1", randaug_num_layers=1,
      randaug_ops=("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
                   "Color", "Contrast", "Brightness", "Sharpness"),
      erase_prob=0.1, mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=0.1, switch_prob=0.5,
      label_smoothing=0.1))
  c.demo.finetune = ft

  # The tiny MaskMViT (depth 5, width 16) on 8x48x48 clips: token grid 4x12x12, prediction grid 4x3x3 at
  # stride 16; cube masks on a 4x3x3 grid (16-pixel units: one prediction token each).
  _input(c, ft.model, frames=4, crop=48, jitter=(48, 60), mask_grid=(2, 3, 3))
  c.mask.ratio = 0.4

  if arg == "ablation":  # HOG vs pixel targets, same budget, both next to scratch
    c.demo.targets = ("hog", "pixel")
  elif arg == "tiny":
    # Smoke test of the whole path: a few steps of every phase, on synthetic_motion at 8x32x32 (small and
    # quick to generate; many tests use this config as their tiny run and rely on its data and shapes).
    c.data.name = "synthetic_motion"
    c.data.sampling_rate = 4
    c.data.random_flip = False  # its classes are motion directions: a flip turns move_right into move_left
    _input(c, ft.model, frames=8, crop=32, jitter=(32, 40), mask_grid=(4, 2, 2))
    pt.data.train_split = "train"
    ft.data.train_split = c.probe.train_split = "train[:16]"
    c.batch_size = 4
    c.log_every_steps = 2
    c.checkpoint_every_steps = 3
    c.eval.num_clips = 1
    c.eval.batch_size = 8
    c.probe.steps = 5
    pt.total_steps = 3
    pt.optim.warmup_steps = 1
    pt.viz_every_steps = 0  # no pictures in the smoke test (tests/test_visualize.py runs the hook)
    ft.total_steps = 3
    ft.optim.warmup_steps = 1
  elif arg not in (None, ""):
    raise ValueError(f"configs/demo.py: unknown variant {arg!r}; use configs/demo.py, configs/demo.py:ablation "
                     "or configs/demo.py:tiny.")
  return c
