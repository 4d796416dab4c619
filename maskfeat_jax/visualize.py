"""Pictures of what MaskFeat learns: HOG glyphs, mask overlays, prediction vs target, training curves.

Drawing is numpy + matplotlib (`matplotlib.figure.Figure`, never pyplot: no global backend is touched) +
Pillow for the files; the model is only touched by the CLI and the training hook (`maskfeat_jax/viz/`).

  python -m maskfeat_jax.visualize --workdir=RUN [--checkpoint=STEP] \
      (--video=FILE.mp4 | [--dataset=NAME] --split=SPLIT --index=I) --out=DIR

writes DIR/hog.png, mask.png, prediction.png, curves.png (if RUN/metrics.jsonl exists) and clip.gif
(a classifier run: hog.png, curves.png, clip.gif).

HOG angle convention (targets.hog, as the official HOGLayerC): gx = left - right, gy = top - bottom (rows
grow downwards), theta = atan2(gx, gy) mod 180 deg, bin b covers [b, b + 1) * 180 / nbins. The gradient then
points along (col, row) = (sin theta, cos theta), and the edge it describes (what a glyph bar draws, as
skimage.feature.hog(visualize=True)) along (cos theta, -sin theta): bin 0 (theta ~ 0) is a horizontal bar,
theta = 90 deg a vertical one, theta = 45 deg a bar rising to the right ("/").
"""
import json
import math
import os

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from maskfeat_jax import paths

__all__ = ["hog_glyphs", "frame_hog", "token_hog_cells", "mask_overlay", "prediction_figure",
           "training_curves", "save_png", "save_gif", "main"]


def bin_angles(nbins: int) -> np.ndarray:
  """Centre angle (radians) of each orientation bin: (b + 0.5) * pi / nbins."""
  return (np.arange(nbins) + 0.5) * math.pi / nbins


def hog_glyphs(cells: np.ndarray, cell_size: int, *, scale: float = 1.0) -> np.ndarray:
  """One bar per (cell, bin) through the cell centre, along the edge of that bin (perpendicular to the
  gradient), brightness proportional to the bin value / the max over all cells.

  Args:
    cells: [hc, wc, nbins] orientation histograms (negative values, e.g. of a prediction, count as 0).
    cell_size: pixels per cell side in the output.
    scale: bar length as a fraction of the cell side (1.0: the bar spans the cell).

  Returns:
    float32 [hc * cell_size, wc * cell_size] in [0, 1].
  """
  cells = np.maximum(np.nan_to_num(np.asarray(cells, np.float32)), 0.0)
  if cells.ndim != 3:
    raise ValueError(f"hog_glyphs expects cells [hc, wc, nbins], got shape {cells.shape}")
  hc, wc, nbins = cells.shape
  out = np.zeros((hc * cell_size, wc * cell_size), np.float32)
  peak = float(cells.max()) if cells.size else 0.0
  if peak <= 0:
    return out
  values = cells / peak
  radius = max(0.5, (cell_size - 1) / 2 * scale)
  t = np.linspace(-radius, radius, max(2, int(math.ceil(8 * radius)) + 1))
  theta = bin_angles(nbins)
  d_col, d_row = np.cos(theta), -np.sin(theta)  # edge direction of each bin, (col, row)
  # Offsets from the cell centre of each bin's bar: [nbins, len(t)], rounded to pixels.
  off_r = np.rint(t[None, :] * d_row[:, None] + (cell_size - 1) / 2).astype(np.int64)
  off_c = np.rint(t[None, :] * d_col[:, None] + (cell_size - 1) / 2).astype(np.int64)
  inside = (off_r >= 0) & (off_r < cell_size) & (off_c >= 0) & (off_c < cell_size)
  for cy in range(hc):
    for cx in range(wc):
      for b in np.flatnonzero(values[cy, cx] > 0):
        r = off_r[b][inside[b]] + cy * cell_size
        c = off_c[b][inside[b]] + cx * cell_size
        out[r, c] = np.maximum(out[r, c], values[cy, cx, b])
  return out


def frame_hog(frame: np.ndarray, nbins: int = 9, cell_size: int = 8) -> np.ndarray:
  """targets.hog of a uint8 [H, W, 3] frame, summed over the colour channels -> numpy [hc, wc, nbins]."""
  from maskfeat_jax import targets  # JAX: imported only when HOG is computed
  frame = np.asarray(frame)
  if frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f"frame_hog expects one RGB frame [H, W, 3], got shape {frame.shape}")
  return np.asarray(targets.hog(frame, nbins=nbins, cell_size=cell_size)).sum(axis=-2)


def token_hog_cells(vec: np.ndarray, nbins: int = 9, channels: int = 3, cells_per_token: int = 2) -> np.ndarray:
  """One token's HOG target vector (targets.hog_token_targets order: index ((c * nbins + bin) * u + cy) * u
  + cx) -> [u, u, nbins] cells, summed over the channels."""
  vec = np.asarray(vec, np.float32)
  u = cells_per_token
  if vec.shape[-1] != channels * nbins * u * u:
    raise ValueError(f"token vector of length {vec.shape[-1]} != channels*nbins*u*u = {channels * nbins * u * u}")
  cells = vec.reshape(*vec.shape[:-1], channels, nbins, u, u).sum(axis=-4)  # [..., bin, cy, cx]
  return np.moveaxis(cells, -3, -1)


def _upsample_mask(mask: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
  """A mask [T', h, w] on the mask grid -> bool [T, H, W] (each unit covers T/T' x H/h x W/w pixels)."""
  mask = np.asarray(mask)
  if mask.ndim == 2:
    mask = mask[None]
  big_t, big_h, big_w = shape
  t, h, w = mask.shape
  if big_t % t or big_h % h or big_w % w:
    raise ValueError(f"mask grid {mask.shape} does not divide the frames' [T, H, W] = {tuple(shape)}")
  m = np.repeat(np.repeat(np.repeat(mask > 0, big_t // t, 0), big_h // h, 1), big_w // w, 2)
  return m


def mask_overlay(frames: np.ndarray, mask: np.ndarray, *, color=(255, 0, 0), alpha: float = 0.5) -> np.ndarray:
  """uint8 frames [T, H, W, 3] with the masked units (mask [T', h, w], 1 = masked) blended toward `color`;
  unmasked pixels are returned unchanged."""
  frames = np.asarray(frames)
  if frames.ndim == 3:
    frames = frames[None]
  m = _upsample_mask(mask, frames.shape[:3])
  out = frames.copy()
  blend = (1.0 - alpha) * frames[m].astype(np.float32) + alpha * np.asarray(color, np.float32)
  out[m] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
  return out


def _token_cells(vectors: np.ndarray, grid: tuple[int, int], nbins: int, u: int) -> np.ndarray:
  """[h*w, D] token vectors of one temporal slice -> cells [h*u, w*u, nbins]."""
  h, w = grid
  cells = token_hog_cells(vectors, nbins=nbins, channels=vectors.shape[-1] // (nbins * u * u),
                          cells_per_token=u)  # [h*w, u, u, nbins]
  return cells.reshape(h, w, u, u, nbins).transpose(0, 2, 1, 3, 4).reshape(h * u, w * u, nbins)


def prediction_figure(frames, mask, target, pred, token_mask, *, feature_stride: int = 16,
                      temporal_stride: int = 2, nbins: int = 9, cell_size: int = 8) -> Figure:
  """One row per temporal token: its first frame, the mask overlay, target HOG, prediction (on masked tokens;
  visible tokens show the target) and the per-token MSE.

  frames uint8 [T, H, W, 3] (an image: [H, W, 3]); mask [T', h', w'] on the mask grid; target / pred [N, D]
  and token_mask [N]: one example's MaskFeat outputs (tokens in (t, h, w) order on the last prediction grid).
  """
  frames = np.asarray(frames)
  if frames.ndim == 3:
    frames, temporal_stride = frames[None], 1
  target, pred = np.asarray(target, np.float32), np.asarray(pred, np.float32)
  token_mask = np.asarray(token_mask).astype(bool).reshape(-1)
  big_t, big_h, big_w = frames.shape[:3]
  tp, h, w = -(-big_t // temporal_stride), big_h // feature_stride, big_w // feature_stride
  if target.shape[0] != tp * h * w:
    raise ValueError(f"{target.shape[0]} tokens, but frames {frames.shape[:3]} at strides "
                     f"({temporal_stride}, {feature_stride}) give a {tp}x{h}x{w} grid")
  u = feature_stride // cell_size
  overlay = mask_overlay(frames, mask)
  shown = np.where(token_mask[:, None], pred, target)
  mse = ((pred - target) ** 2).mean(-1).reshape(tp, h, w)
  glyph_px = max(cell_size, 128 // max(1, h * u))  # display cell size: glyphs readable on small frames
  fig = Figure(figsize=(10, 2.0 * tp + 0.3), dpi=72, layout="constrained")
  axes = fig.subplots(tp, 5, squeeze=False)
  titles = ("frame", "mask", "target HOG", "prediction (masked)", "per-token MSE")
  vmax = float(mse.max()) or 1.0
  for t in range(tp):
    sl = slice(t * h * w, (t + 1) * h * w)
    f = t * temporal_stride
    tgt = hog_glyphs(_token_cells(target[sl], (h, w), nbins, u), glyph_px)
    prd = hog_glyphs(_token_cells(shown[sl], (h, w), nbins, u), glyph_px)
    row = axes[t]
    row[0].imshow(frames[f], interpolation="nearest")
    row[1].imshow(overlay[f], interpolation="nearest")
    row[2].imshow(tgt, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    row[3].imshow(prd, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    im = row[4].imshow(mse[t], cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
    tm = token_mask[sl].reshape(h, w)
    side = glyph_px * u
    for yy, xx in zip(*np.nonzero(tm)):  # outline the masked tokens on the glyphs and the MSE map
      for ax, s in ((row[3], side), (row[4], 1)):
        ax.add_patch(_rect(xx * s - 0.5, yy * s - 0.5, s))
    row[0].set_ylabel(f"token t={t}\n(frame {f})")
    for k, ax in enumerate(row):
      ax.set_xticks([])
      ax.set_yticks([])
      if t == 0:
        ax.set_title(titles[k], fontsize=10)
  fig.colorbar(im, ax=list(axes[:, 4]), shrink=0.8)
  return fig


def _rect(x, y, side):
  from matplotlib.patches import Rectangle
  return Rectangle((x, y), side, side, fill=False, edgecolor="tab:red", linewidth=1.2)


def read_metrics(metrics_jsonl: str) -> tuple[list[dict], list[dict]]:
  """(training rows, evaluation rows) of a metrics.jsonl (train/logger.py); a torn line is skipped."""
  train_rows, eval_rows = [], []
  with paths.open(metrics_jsonl) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      (eval_rows if any(k.startswith("eval/") for k in row) else train_rows).append(row)
  return train_rows, eval_rows


_PANELS = (("loss", "loss", True), ("lr", "learning rate", False), ("grad_norm", "grad norm (before clip)", True),
           ("clips_per_sec", "clips / s", False), ("train_top1", "train top-1", False))


def training_curves(metrics_jsonl: str) -> Figure:
  """Loss, lr, grad norm, clips/s, train top-1 and eval top-1 (whichever the rows have) against the step."""
  train_rows, eval_rows = read_metrics(metrics_jsonl)
  panels = [(k, label, logy) for k, label, logy in _PANELS if any(k in r for r in train_rows)]
  eval_keys = [k for k in ("eval/top1", "eval/train_top1") if any(k in r for r in eval_rows)]
  if eval_keys:
    panels.append(("eval", "eval top-1", False))
  n = max(1, len(panels))
  cols = 2 if n == 4 else min(3, n)
  fig = Figure(figsize=(4.2 * cols, 3.0 * math.ceil(n / cols)), dpi=72, layout="constrained")
  axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False).reshape(-1)
  if not panels:
    axes[0].text(0.5, 0.5, f"no metrics in\n{metrics_jsonl}", ha="center", va="center")
  for ax, (key, label, logy) in zip(axes, panels):
    if key == "eval":
      for k in eval_keys:
        pts = [(r["step"], r[k]) for r in eval_rows if k in r]
        ax.plot(*zip(*pts), "o-", label=k)
        for s, v in pts[-1:]:
          ax.annotate(f"{v:.3f}", (s, v), textcoords="offset points", xytext=(-10, 6), fontsize=9)
      ax.legend(fontsize=8)
    else:
      pts = [(r["step"], r[key]) for r in train_rows if key in r]
      ax.plot(*zip(*pts), "-", marker="." if len(pts) < 40 else None)
      if logy and all(v > 0 for _, v in pts):
        ax.set_yscale("log")
    ax.set_title(label, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  for ax in axes[len(panels) or 1:]:
    ax.set_visible(False)
  return fig


def _as_uint8(a: np.ndarray) -> np.ndarray:
  a = np.asarray(a)
  if a.dtype != np.uint8:
    a = np.clip(np.rint(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)  # floats in [0, 1]
  return a


def save_png(fig_or_array, path: str) -> str:
  """A Figure, or an image array (uint8, or float in [0, 1]; [H, W] or [H, W, 3]) -> PNG at `path`."""
  _make_parent(path)
  with paths.open(path, "wb") as f:  # local or gs:// (maskfeat_jax/paths.py)
    if isinstance(fig_or_array, Figure):
      fig_or_array.savefig(f, format="png", dpi=fig_or_array.dpi)
    else:
      Image.fromarray(_as_uint8(fig_or_array)).save(f, format="PNG", optimize=True)
  return path


def _make_parent(path: str) -> None:
  if paths.is_remote(path):
    paths.makedirs(path.rsplit("/", 1)[0])
  else:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def save_gif(frames: np.ndarray, path: str, fps: float = 8) -> str:
  """uint8 frames [T, H, W, 3] -> an animated GIF at `fps`, looping forever."""
  _make_parent(path)
  images = [Image.fromarray(_as_uint8(f)) for f in np.asarray(frames)]
  with paths.open(path, "wb") as f:
    images[0].save(f, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=max(20, int(round(1000 / fps))))
  return path


def upscale(frames: np.ndarray, min_side: int = 128) -> np.ndarray:
  """Nearest-neighbour integer upscaling of [..., H, W, C] until the short side is >= min_side."""
  k = max(1, -(-min_side // min(frames.shape[-3], frames.shape[-2])))
  return np.repeat(np.repeat(frames, k, -3), k, -2) if k > 1 else frames


def main(argv=None) -> int:
  from maskfeat_jax.viz import cli  # the model side: JAX, checkpoints, data
  return cli.main(argv)


if __name__ == "__main__":
  raise SystemExit(main())
