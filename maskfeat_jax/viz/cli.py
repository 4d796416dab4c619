"""The model side of `python -m maskfeat_jax.visualize`: a run's config and params, one clip, one forward.

  python -m maskfeat_jax.visualize --workdir=RUN [--checkpoint=STEP] \
      (--video=FILE.mp4 | [--dataset=NAME] --split=SPLIT --index=I) --out=DIR
"""
import argparse
import json
import os

import numpy as np

from maskfeat_jax import paths
from maskfeat_jax import visualize as vis


class VizError(RuntimeError):
  """A one-line problem with the CLI's inputs (missing workdir, config, checkpoint, video)."""


def load_run(workdir: str, checkpoint: int | None = None):
  """(config, host params) of a run directory: RUN/config.json and its newest (or `checkpoint`) step."""
  from maskfeat_jax.checkpoints import orbax as ckpt_lib
  from maskfeat_jax.checkpoints import slowfast
  if not paths.isdir(workdir):  # local or gs:// (maskfeat_jax/paths.py)
    raise VizError(f"--workdir={workdir}: no such directory")
  path = paths.join(workdir, "config.json")
  if not paths.isfile(path):
    raise VizError(f"{path}: not found (is --workdir a training run's directory?)")
  with paths.open(path) as f:
    d = json.load(f)
  d.pop("_run", None)
  config = slowfast.config_from_json(d)
  where = workdir
  if checkpoint is not None:
    where = paths.join(ckpt_lib.checkpoint_dir(workdir), str(checkpoint))
    if not paths.isdir(where):
      raise VizError(f"--checkpoint={checkpoint}: {where} does not exist")
  try:
    params = ckpt_lib.restore_params(where)
  except (FileNotFoundError, RuntimeError) as e:
    raise VizError(" ".join(str(e).split())) from None
  return config, params


def video_clip(config, path: str, hog_size: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
  """(one model-sized clip [T, H, W, 3] (an image [H, W, 3]) from a video file: the middle clip, centre crop;
  its first frame as a hog_size x hog_size centre crop, or None when hog_size is 0)."""
  from maskfeat_jax.data import build_shards
  from maskfeat_jax.data import transforms
  if not os.path.isfile(path):
    raise VizError(f"--video={path}: no such file")
  frames, fps = build_shards.decode_video(path, build_shards.Options(short_side=0))
  d = config.data
  n = 1 if d.image_mode else int(d.num_frames)
  idx = transforms.temporal_indices(len(frames), fps or 30.0, n, int(d.sampling_rate), float(d.target_fps),
                                    clip_idx=0, num_clips=1)
  clip = transforms.test_spatial(np.stack([frames[i] for i in idx]), short_side=int(d.test_short_side),
                                 crop_size=int(d.crop_size), spatial_idx=1)
  big = None
  if hog_size > 0:
    big = transforms.test_spatial(frames[idx[0]], short_side=hog_size, crop_size=hog_size, spatial_idx=1)
  return (clip[0] if d.image_mode else clip), big


def dataset_clip(config, split: str, index: int) -> np.ndarray:
  """The first eval view of example `index` of `split` (data.eval_pipeline); only that example is decoded
  when `split` is a plain split name (it becomes the slice 'split[index:index+1]')."""
  from maskfeat_jax.config import input_key
  from maskfeat_jax.data import eval_pipeline
  from maskfeat_jax.data import pipeline
  from maskfeat_jax.data import splits
  info = pipeline.prepare_dataset(config)
  if "[" not in split:
    split, index = f"{split}[{index}:{index + 1}]", 0
  want = splits.resolve_split(split, info.split_sizes)[1] + index  # example ids count from the base split
  for batch in eval_pipeline.make_eval_iterator(config, split, batch_size=1):
    if batch["valid"][0] and int(batch["example_id"][0]) == want and int(batch["view"][0]) == 0:
      return batch[input_key(config)][0]
  raise VizError(f"--split={split} --index={index}: no such example in dataset {config.data.name!r}")


def fixed_mask(config) -> np.ndarray:
  """The run's mask generator, drawn once from np.random.default_rng(config.seed)."""
  from maskfeat_jax.data import masking
  return masking.build_mask_generator(config.mask)(np.random.default_rng(int(config.seed)))


def forward(config, model, params, x: np.ndarray, mask: np.ndarray) -> dict:
  """MaskFeat outputs of one example as numpy (batch dim dropped): pred, target, token_mask."""
  from maskfeat_jax import compiler  # jax only when a model is run
  out = compiler.jit(lambda p, a, m: model.apply({"params": p}, a, m))(params, x[None], mask[None])
  return {k: np.asarray(out[k])[0] for k in ("pred", "target", "token_mask")}


def prediction_picture(config, frames, mask, out):
  """prediction_figure with the strides of the run's last prediction depth (models.arch)."""
  from maskfeat_jax.models import arch
  t = config.target
  ts, fs, _ = arch.model_spec(config.model).feature_stride(arch.pretrain_depths(config.model)[-1])
  return vis.prediction_figure(frames, mask, out["target"], out["pred"], out["token_mask"],
                               feature_stride=int(fs), temporal_stride=int(ts), nbins=int(t.nbins),
                               cell_size=int(t.cell_size))


def hog_figure(frame: np.ndarray, nbins: int, cell_size: int):
  cells = vis.frame_hog(frame, nbins=nbins, cell_size=cell_size)
  glyph_px = max(cell_size, 256 // max(cells.shape[:2]))
  fig = vis.Figure(figsize=(8, 4.4), dpi=72, layout="constrained")
  a, b = fig.subplots(1, 2)
  a.imshow(frame, interpolation="nearest")
  a.set_title(f"frame {frame.shape[1]}x{frame.shape[0]}")
  b.imshow(vis.hog_glyphs(cells, glyph_px), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
  b.set_title(f"HOG: {cells.shape[1]}x{cells.shape[0]} cells of {cell_size} px, {nbins} bins")
  for ax in (a, b):
    ax.set_xticks([])
    ax.set_yticks([])
  return fig


def mask_figure(frames: np.ndarray, mask: np.ndarray):
  over = vis.mask_overlay(frames, mask)
  n = len(over)
  fig = vis.Figure(figsize=(1.5 * n, 2.0), dpi=72, layout="constrained")
  axes = fig.subplots(1, n, squeeze=False)[0]
  ratio = float(np.mean(mask))
  for k, ax in enumerate(axes):
    ax.imshow(over[k], interpolation="nearest")
    ax.set_title(f"frame {k}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(f"mask {tuple(mask.shape)} (red: masked, {ratio:.0%} of the units)", fontsize=10)
  return fig


def write_pictures(config, model, params, clip: np.ndarray, out_dir: str, workdir: str | None = None,
                   hog_frame: np.ndarray | None = None) -> list[str]:
  """Every picture that makes sense for the run's model type; returns the paths written.

  hog.png shows `hog_frame` when given (e.g. a larger crop of the clip's first frame), else the first frame.
  """
  paths.makedirs(out_dir)
  frames = clip[None] if clip.ndim == 3 else clip
  t = config.target
  hog_frame = frames[0] if hog_frame is None else hog_frame
  written = [vis.save_png(hog_figure(hog_frame, int(t.nbins), int(t.cell_size)), paths.join(out_dir, "hog.png"))]
  if config.model.type == "maskfeat":
    mask = fixed_mask(config)
    written.append(vis.save_png(mask_figure(frames, mask), paths.join(out_dir, "mask.png")))
    if t.type == "hog":  # glyphs draw HOG targets only (a pixel-target run gets no prediction.png)
      out = forward(config, model, params, clip, mask)
      written.append(vis.save_png(prediction_picture(config, clip, mask, out),
                                  paths.join(out_dir, "prediction.png")))
  metrics = paths.join(workdir, "metrics.jsonl") if workdir else ""
  if metrics and paths.isfile(metrics):
    written.append(vis.save_png(vis.training_curves(metrics), paths.join(out_dir, "curves.png")))
  written.append(vis.save_gif(vis.upscale(frames), paths.join(out_dir, "clip.gif")))
  return written


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog="python -m maskfeat_jax.visualize", description=vis.__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a training run's directory (config.json, checkpoints/)")
  p.add_argument("--checkpoint", type=int, default=None, help="step to load (default: the newest)")
  p.add_argument("--video", default="", help="a video file to take the clip from")
  p.add_argument("--dataset", default="", help="dataset name (default: the run's config.data.name)")
  p.add_argument("--split", default="", help="split to take example --index from (e.g. test)")
  p.add_argument("--index", type=int, default=0)
  p.add_argument("--hog_size", type=int, default=0,
                 help="with --video: draw hog.png from a centre crop of this size of the first frame (at the "
                      "video's resolution) instead of the model-sized frame")
  p.add_argument("--out", required=True, help="directory for the pictures")
  args = p.parse_args(argv)
  if bool(args.video) == bool(args.split):
    p.error("give exactly one of --video=FILE or --split=SPLIT (with --index, optionally --dataset)")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    config, params = load_run(args.workdir, args.checkpoint)
    if args.dataset:
      config.data.name = args.dataset
    config.data.num_workers = 0
    hog_frame = None
    if args.video:
      clip, hog_frame = video_clip(config, args.video, args.hog_size)
    else:
      clip = dataset_clip(config, args.split, args.index)
  except (VizError, FileNotFoundError, ValueError) as e:
    raise SystemExit(f"ERROR: {e}") from None
  from maskfeat_jax.models import factory
  model = factory.build_model(config)
  for path in write_pictures(config, model, params, clip, args.out, args.workdir, hog_frame):
    print(path)
  return 0
