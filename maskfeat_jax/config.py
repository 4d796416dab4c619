"""The one config tree every run uses (`base_config`), and `validate`: every check that needs no compilation.

Config files in `configs/` start from `base_config()` and change what their experiment needs, so every
key exists (a typo in `--config.x.y=...` is an error, not a silently ignored setting) and every run
writes out the complete resolved tree. Sections are owned by the module that reads them:

  model      -> maskfeat_jax.models        (architecture; models/layouts.py holds the named layouts)
  target     -> maskfeat_jax.targets       (HOG / pixel regression target)
  mask       -> maskfeat_jax.data.masking  (mask generator and its grid)
  data       -> maskfeat_jax.data          (dataset, sampling, crops, workers)
  augment    -> maskfeat_jax.data / train  (fine-tuning augmentation: RandAugment, erasing, mixup)
  optim      -> maskfeat_jax.train.optim   (AdamW, lr schedule, clipping, layer decay)
  mesh       -> maskfeat_jax.sharding      (device mesh and logical-axis rules)
  checkpoint -> maskfeat_jax.checkpoints.orbax
  log        -> maskfeat_jax.train.logger
  eval       -> maskfeat_jax.eval.multiview (multi-view testing)
  probe      -> maskfeat_jax.eval.probe    (linear probe)

`validate(config, ...)` runs before anything is compiled (main, run, the demo's phases): mode and model
type, input and mask shapes against the model (models.arch), batch divisibility, augmentation strings, temporal
sampling and label flipping. It
imports no JAX: the caller passes the mesh shape and process count it knows.
"""
import copy
import importlib.util
import math
import pathlib
import re

import ml_collections

from maskfeat_jax.data import augment
from maskfeat_jax.data import label_flip
from maskfeat_jax.data import transforms
from maskfeat_jax.models import arch
from maskfeat_jax.models import layouts


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # What main.py runs: 'pretrain' | 'finetune' | 'eval' | 'probe' | 'demo'.
  c.mode = "pretrain"
  c.seed = 0
  c.batch_size = 8  # global batch (all processes together)
  c.total_steps = 100  # if `epochs` > 0, total_steps is derived from it and the dataset size
  c.epochs = 0.0
  c.log_every_steps = 10
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 3
  c.eval_every_steps = 0  # 0 = only at the end
  # MaskFeat pre-training: WORKDIR/pictures/prediction_<step>.png (target vs predicted HOG of the eval
  # split's first clip, mask from the seed) every N steps and at the end, plus pictures/curves.png at the
  # end (maskfeat_jax/viz/hook.py). 0 = off.
  c.viz_every_steps = 0
  # Persistent XLA compilation cache shared by runs and phases ("" = off): a rerun, or the demo's
  # from-scratch phase after its fine-tuning phase, reuses compiled steps instead of recompiling.
  c.compilation_cache_dir = "~/.cache/maskfeat_jax/xla_cache"
  # Fine-tuning / eval / probe start from this checkpoint: one of our workdirs or checkpoint dirs,
  # or an official .pyth / state-dict .npz (converted on the fly).
  c.init_from = ""
  # Demo phases (mode 'demo'): overrides of this tree for the pre-training and the fine-tuning phase
  # (the from-scratch baseline is the fine-tuning phase without init_from). Filled in configs/demo.py.
  c.demo = ml_collections.ConfigDict()
  c.demo.pretrain = ml_collections.ConfigDict()
  c.demo.finetune = ml_collections.ConfigDict()

  # ---- model (owned by maskfeat_jax.models) ----
  # The full architecture schema of a named layout (models/layouts.py; every name has the same keys, so
  # `--config.model.<key>=...` works for all). build_model reads the fields; `name` records their origin.
  # Common fields: type ('maskfeat' | 'classifier'), num_classes, dtype (compute; params stay float32),
  # remat_policy ('none' | 'full' | 'dots'), drop_path_rate, dropout_rate, and pixel_mean / pixel_std
  # (fractions of 255) used to normalise the raw input on device. input_size (T, H, W) must match the data.
  c.model = layouts.get_model_config("maskfeat_mvit_tiny")

  # ---- target (owned by maskfeat_jax.targets) ----
  c.target = ml_collections.ConfigDict()
  c.target.type = "hog"  # 'hog' | 'pixel'
  c.target.nbins = 9
  c.target.cell_size = 8
  c.target.gaussian_window = 0

  # ---- mask (owned by maskfeat_jax.data.masking) ----
  c.mask = ml_collections.ConfigDict()
  c.mask.type = "cube"  # 'cube' | 'block' | 'tube' | 'frame' | 'random' | 'none'
  c.mask.grid = (8, 7, 7)  # (T', H', W') for video, (H', W') for images
  c.mask.ratio = 0.4
  c.mask.min_num_patches = 0  # 0 = official default (max // 5 for cube, n // 5 for block)
  c.mask.max_num_patches = 0  # 0 = official default (H'*W' for cube, n for block)
  c.mask.min_aspect = 0.3

  # ---- data (owned by maskfeat_jax.data) ----
  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic_motion"  # TFDS dataset name ('synthetic_motion' is generated on first use)
  c.data.data_dir = "~/.cache/maskfeat_jax/data"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.image_mode = False  # True: image datasets (`image`, `label`) for image MaskFeat
  c.data.num_frames = 16
  # Temporal sampling (data/transforms.py): 'stride' = num_frames at sampling_rate (Kinetics loader);
  # 'segments' = the whole video in num_frames equal segments, one frame each (SSv2 loader: random in
  # training, the middle in testing, so eval.num_clips must be 1; sampling_rate / target_fps unused).
  c.data.sampling = "stride"
  c.data.sampling_rate = 4
  c.data.target_fps = 30.0
  c.data.crop_size = 224
  c.data.train_jitter_scales = (256, 320)
  c.data.use_random_resized_crop = True
  c.data.rrc_scale = (0.5, 1.0)
  c.data.rrc_aspect = (0.75, 1.3333)
  c.data.random_flip = True
  # Fine-tuning: the class a flipped clip becomes (data/label_flip.py): '' = none, 'left_right' = from the
  # class names, or a JSON file of class pairs. SSv2 (left/right in its labels) may flip only with a map.
  c.data.label_flip_map = ""
  # Short-side jitter drawn as 1 / U(1/max, 1/min) (official DATA.INV_UNIFORM_SAMPLE; the SSv2 configs).
  c.data.jitter_inverse_uniform = False
  c.data.test_short_side = 256
  c.data.num_workers = 2  # Grain worker processes per JAX process (0 = in-process)
  c.data.prefetch_buffer_size = 4
  c.data.num_sample = 1  # repeated sampling: clips drawn per decoded video
  c.data.shuffle = True

  # ---- fine-tuning augmentation ----
  c.augment = ml_collections.ConfigDict()
  c.augment.randaug = ""  # e.g. 'rand-m7-mstd0.5-inc1' (video FT), 'rand-m9-mstd0.5-inc1' (image FT)
  c.augment.randaug_num_layers = 2
  c.augment.randaug_ops = ()  # restrict RandAugment to these ops (e.g. ('Rotate', 'Color')); () = all 15
  c.augment.erase_prob = 0.0
  c.augment.mixup_alpha = 0.0
  c.augment.cutmix_alpha = 0.0
  c.augment.mixup_prob = 1.0
  c.augment.switch_prob = 0.5
  c.augment.label_smoothing = 0.0

  # ---- optimisation (owned by maskfeat_jax.train.optim) ----
  c.optim = ml_collections.ConfigDict()
  c.optim.base_lr = 1e-4  # per `reference_batch` examples; lr = base_lr * batch_size / reference_batch
  c.optim.reference_batch = 32
  c.optim.warmup_steps = 0  # or warmup_epochs (converted with the dataset size) if > 0
  c.optim.warmup_epochs = 0.0
  c.optim.start_lr = 1e-6
  c.optim.end_lr = 1e-6
  c.optim.weight_decay = 0.05
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.clip_grad_norm = 0.02  # 0 = no clipping
  c.optim.layer_decay = 1.0
  c.optim.zero_wd_1d = True  # no weight decay for 1-D params and biases (official ZERO_WD_1D_PARAM)
  c.optim.zero_wd_pos_cls = False  # official ZERO_DECAY_POS_CLS: also exempt cls/mask tokens, pos/rel-pos
  c.optim.grad_accum_steps = 1

  # ---- mesh (owned by maskfeat_jax.sharding) ----
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)  # -1 = all remaining devices
  c.mesh.axes = ("data", "fsdp")
  # Logical axis -> mesh axes. Data parallel + FSDP: the batch (activations and input) is split over both
  # axes, weights along 'embed' over 'fsdp'. Weight names: embed, mlp, heads, qkv, kv, tokens, classes;
  # activation names: act_batch, act_tokens, act_embed (the batch input is placed by the act_batch rule).
  c.mesh.rules = (
      ("act_batch", ("data", "fsdp")),
      ("act_tokens", None),
      ("act_embed", None),
      ("embed", "fsdp"),
      ("mlp", None),
      ("heads", None),
      ("qkv", None),
      ("kv", None),
      ("tokens", None),
      ("classes", None),
  )

  # ---- checkpointing ----
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.async_save = True  # Orbax writes in the background while training continues

  # ---- logging ----
  c.log = ml_collections.ConfigDict()
  c.log.tensorboard = True
  # Stop when the loss exceeds this factor times the run's first loss (0 = off); NaN/inf always stops.
  c.log.explode_factor = 10.0

  # ---- evaluation (multi-view) ----
  c.eval = ml_collections.ConfigDict()
  c.eval.num_clips = 1
  c.eval.num_crops = 1
  c.eval.batch_size = 8

  # ---- linear probe ----
  c.probe = ml_collections.ConfigDict()
  c.probe.steps = 200
  c.probe.lr = 1e-2
  c.probe.weight_decay = 0.0
  c.probe.batch_size = 0  # 0 = full-batch steps on the cached features
  c.probe.train_split = ""  # '' = data.train_split
  c.probe.eval_split = ""  # '' = data.eval_split
  c.probe.num_clips = 1  # feature views per example (deterministic eval views, averaged)
  c.probe.num_crops = 1

  # ---- detection (AVA v2.2: data/ava*.py, models/detection.py, eval/ava_eval.py) ----
  c.detection = ml_collections.ConfigDict()
  # Boxes per clip, padded with a validity mask so shapes stay static under jit (more: the first ones kept).
  c.detection.max_boxes = 16
  # Boxes per test clip (the detector's, above score_thresh); more are not scored, and counted in the eval output.
  c.detection.eval_max_boxes = 32
  c.detection.train_box_jitter = 0.0  # std of the training boxes' coordinates, in box sizes (0 = off)
  c.detection.score_thresh = 0.8  # test boxes: person-detector score >= this (official AVA DETECTION_SCORE_THRESH)
  c.detection.groundtruth_csv = ""  # eval ground truth: '' = the records' boxes; else the official ava_val_v2.2.csv
  c.detection.exclusions_csv = ""  # ava_val_excluded_timestamps_v2.2.csv ('' = none beyond the converter's)
  return c


def load_config(spec: str, lock: bool = True) -> ml_collections.ConfigDict:
  """`configs/x.py[:arg]` -> its get_config(arg), locked as `--config=` gives it to main (tests, notebooks).

  A relative path is taken from the current directory, then from the repository root.
  """
  path, _, arg = str(spec).partition(":")
  file = pathlib.Path(path).expanduser()
  if not file.is_file() and not file.is_absolute():
    file = pathlib.Path(__file__).resolve().parents[1] / path
  if not file.is_file():
    raise FileNotFoundError(f"config file {path!r} not found (from {spec!r})")
  module_spec = importlib.util.spec_from_file_location(f"_maskfeat_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  if lock:
    config.lock()
  return config


# --------------------------------------------------------------------------------------------------------
# Facts derived from the config (one copy each).

MODES = ("pretrain", "finetune", "eval", "probe", "demo")
# The model type each mode runs (probe: either; demo: per phase).
MODE_MODEL_TYPE = {"pretrain": "maskfeat", "finetune": "classifier", "eval": "classifier"}
DETECTION_MODES = ("finetune", "eval")  # modes a 'detection' model (AVA) runs in instead of a classifier


def input_key(config) -> str:
  """The batch entry holding the pixels: 'image' for image datasets, 'video' otherwise."""
  return "image" if config.data.image_mode else "video"


def step_keys(config) -> tuple[str, ...]:
  """Batch entries the train step reads."""
  key = input_key(config)
  if config.model.type == "detection":
    return (key, "boxes", "box_mask", "box_labels")
  return (key, "mask") if config.model.type == "maskfeat" else (key, "label")


def logical_rules(config) -> tuple:
  """config.mesh.rules as the tuple of (logical name, mesh axis / axes / None) flax reads."""
  return tuple((name, tuple(m) if isinstance(m, (list, tuple)) else m) for name, m in config.mesh.rules)


def batch_mesh_axes(config) -> tuple[str, ...]:
  """Mesh axes the batch is split over (data parallelism): the 'act_batch' rule."""
  for name, m in logical_rules(config):
    if name == "act_batch":
      if m is None:
        return ()
      return tuple(m) if isinstance(m, tuple) else (m,)
  return ()


def data_parallel_size(config, mesh_shape: dict) -> int:
  """Devices the batch is split over, for a mesh of this {axis: size}."""
  return math.prod(int(mesh_shape[a]) for a in batch_mesh_axes(config))


def check_batch(config, value: int, what: str, mesh_shape: dict | None, process_count: int,
                multiple: int = 1) -> int:
  """`value` (a global batch) splits evenly over processes and data-parallel devices x `multiple`.

  Returns the per-process batch. The one divisibility check of training (multiple = gradient accumulation
  steps) and evaluation batches.
  """
  value = int(value)
  if value <= 0 or value % process_count:
    raise ValueError(f"{what}={value} is not a positive multiple of the {process_count} processes; use a "
                     f"multiple of {process_count}.")
  if mesh_shape is not None:
    dp = data_parallel_size(config, mesh_shape)
    need = dp * multiple
    if value % need:
      extra = f" x config.optim.grad_accum_steps ({multiple})" if multiple > 1 else ""
      raise ValueError(
          f"{what}={value} must be divisible by the data-parallel devices ({dp}: mesh axes "
          f"{batch_mesh_axes(config)} of config.mesh.shape={tuple(mesh_shape.values())}){extra} = {need}; "
          f"use a multiple of {need} or change the mesh.")
  return value // process_count


# --------------------------------------------------------------------------------------------------------
# Checks before compilation.


def validate(config, *, mesh_shape: dict | None = None, process_count: int = 1, model_from_config: bool = True):
  """Raises ValueError naming the key to change for a config that cannot work.

  Args:
    config: the full config tree.
    mesh_shape: {axis: size} of the mesh the run uses; when given, batch divisibility is checked too.
    process_count: JAX processes of the run.
    model_from_config: the model is built from config.model (not injected): check input and mask shapes
      against it.
  """
  if config.mode not in MODES:
    raise ValueError(f"config.mode={config.mode!r}: expected one of {MODES}.")
  want = MODE_MODEL_TYPE.get(config.mode)
  if want and config.model.type != want and not (config.model.type == "detection" and config.mode in DETECTION_MODES):
    raise ValueError(f"config.mode={config.mode!r} needs config.model.type={want!r}, got "
                     f"{config.model.type!r}; use a config whose model is a {want!r} layout (models/layouts.py, e.g. "
                     f"c.model = layouts.get_model_config(...) in the config file).")
  accum = int(config.optim.grad_accum_steps)
  if accum < 1:
    raise ValueError(f"config.optim.grad_accum_steps={accum}: must be >= 1.")
  if config.mode in ("pretrain", "finetune"):
    check_batch(config, config.batch_size, "config.batch_size", mesh_shape, process_count, accum)
  if config.mode in ("finetune", "eval", "probe") or config.eval_every_steps > 0:
    check_batch(config, config.eval.batch_size, "config.eval.batch_size", mesh_shape, process_count)
  if model_from_config and config.mode != "demo":
    check_input_shapes(config)
  if config.model.type == "detection" and model_from_config:
    check_detection(config)
  check_augment(config.augment)
  check_sampling(config)


# Dataset names taken for Something-Something v2 (labels with left/right: no flip without a label-flip map).
_SSV2_NAME = re.compile(r"ssv2|something.?something", re.IGNORECASE)


def check_sampling(config) -> None:
  """Temporal sampling and flipping (data/transforms.py, data/label_flip.py) before any data worker runs."""
  d = config.data
  if d.sampling not in transforms.SAMPLINGS:
    raise ValueError(f"config.data.sampling={d.sampling!r}: expected one of {transforms.SAMPLINGS}.")
  if d.sampling == "segments":
    # slowfast/datasets/ssv2.py::Ssv2.get_seq_frames takes the middle frame of every segment for every test clip:
    # more than one clip would repeat the same view.
    views = []
    if config.mode in ("finetune", "eval"):
      views.append(("config.eval.num_clips", config.eval.num_clips))
    if config.mode == "probe" or (config.mode == "pretrain" and config.eval_every_steps > 0):
      views.append(("config.probe.num_clips", config.probe.num_clips))
    for key, value in views:
      if int(value) != 1:
        raise ValueError(f"{key}={value}: config.data.sampling='segments' has one test clip (the middle frame of "
                         f"each segment, as slowfast/datasets/ssv2.py); set {key}=1 (crops: config.eval.num_crops).")
  if d.label_flip_map:
    if d.image_mode:
      raise ValueError(f"config.data.label_flip_map={d.label_flip_map!r} is for video datasets; "
                       "config.data.image_mode=True.")
    if not d.random_flip:
      raise ValueError(f"config.data.label_flip_map={d.label_flip_map!r} but config.data.random_flip=False: "
                       "nothing is flipped; set config.data.random_flip=True or config.data.label_flip_map=''.")
    label_flip.check_flip_map(str(d.label_flip_map))
  elif config.mode == "finetune" and d.random_flip and _SSV2_NAME.search(str(d.name)):
    raise ValueError(f"config.data.random_flip=True on {d.name!r}: Something-Something labels name left/right, "
                     "so a flipped clip shows another class; set config.data.random_flip=False (the official SSv2 "
                     "recipe) or config.data.label_flip_map='left_right' (or a JSON file of class pairs).")


def check_input_shapes(config) -> arch.IOShapes:
  """Clip / crop vs the model's input, and the mask grid vs its token and prediction grids (models.arch)."""
  d = config.data
  shapes = arch.io_shapes(config)
  image = bool(d.image_mode)
  if image != shapes.image:
    raise ValueError(f"config.data.image_mode={image} but config.model.patch_2d={config.model.patch_2d} "
                     f"({config.model.name}); image data needs a 2-D patch model and video a 3-D one.")
  have = (d.crop_size, d.crop_size, 3) if image else (d.num_frames, d.crop_size, d.crop_size, 3)
  if tuple(have) != shapes.pixels:
    raise ValueError(
        f"The loader makes clips of {tuple(have[:-1])} (config.data.num_frames / crop_size) but "
        f"config.model.input_size={tuple(config.model.input_size)} ({config.model.name}) takes "
        f"{shapes.pixels[:-1]}; make them equal.")
  return arch.check_io(config, shapes)


def check_augment(a) -> None:
  """A bad augmentation setting fails here, not in a data worker after compilation."""
  if a.randaug:
    augment.parse_rand_augment_spec(str(a.randaug), int(a.randaug_num_layers), tuple(a.randaug_ops))
  if not 0.0 <= float(a.erase_prob) <= 1.0:
    raise ValueError(f"config.augment.erase_prob={a.erase_prob}: expected a probability in [0, 1].")


def check_detection(config) -> None:
  """The detector's feature stride vs config.model.roi_scale_factor, and the box settings."""
  m, d = config.model, config.detection
  spec = arch.model_spec(m)
  grid_h = spec.blocks[-1].q_thw[1]
  if int(m.roi_scale_factor) * grid_h != int(spec.input_size[1]):
    raise ValueError(f"config.model.roi_scale_factor={m.roi_scale_factor} but the last block's map is {grid_h} cells "
                     f"high for a {spec.input_size[1]}-pixel input (stride {spec.input_size[1] / grid_h:g}); set "
                     f"config.model.roi_scale_factor={spec.input_size[1] // grid_h}.")
  if int(d.max_boxes) < 1:
    raise ValueError(f"config.detection.max_boxes={d.max_boxes}: need at least 1.")
  if not 0.0 <= float(d.score_thresh) <= 1.0:
    raise ValueError(f"config.detection.score_thresh={d.score_thresh}: expected a score in [0, 1].")


def locked_copy(config) -> ml_collections.ConfigDict:
  """A deep copy with the same lock (a misspelt key stays an error; ConfigDict(to_dict()) unlocks)."""
  c = copy.deepcopy(config)
  c.lock()
  return c
