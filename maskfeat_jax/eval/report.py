"""Reports of an evaluation: confusion matrix, per-class accuracy, the printed summary and the files.

Every printed number carries its view count. Files (process 0, WORKDIR/eval_<split>/): metrics.json,
confusion_matrix.json and confusion_matrix.png (row-normalised).
"""
import json
import textwrap
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from maskfeat_jax import paths
from maskfeat_jax.data import splits


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """int64 [C, C]: rows = true class, columns = predicted class."""
  labels = np.asarray(labels, np.int64).reshape(-1)
  predictions = np.asarray(predictions, np.int64).reshape(-1)
  for name, v in (("labels", labels), ("predictions", predictions)):
    if v.size and (v.min() < 0 or v.max() >= num_classes):
      raise ValueError(f"confusion_matrix: {name} outside [0, {num_classes}): min {v.min()}, max {v.max()}.")
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, predictions), 1)
  return cm


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
  """Recall per true class (diagonal / row sum); NaN for classes without examples."""
  rows = cm.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(rows > 0, np.diag(cm) / np.maximum(rows, 1), np.nan)


def views_label(num_clips: int, num_crops: int) -> str:
  return (f"{num_clips * num_crops} view{'s' if num_clips * num_crops != 1 else ''} "
          f"({num_clips} clip{'s' if num_clips != 1 else ''} x {num_crops} crop{'s' if num_crops != 1 else ''})")


def class_names_or_indices(names: Optional[Sequence[str]], num_classes: int) -> list:
  """The dataset's class names when there is one per class, else '0', '1', ... (names are cosmetic)."""
  names = list(names or [])
  return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def save_confusion_png(path: str, cm: np.ndarray, class_names: Sequence[str], title: str) -> None:
  """Row-normalised confusion matrix; class names as ticks when there are ≤ 40 classes.

  A bare `Figure` (no pyplot), so writing it neither needs a display nor changes a notebook's backend.
  """
  c = cm.shape[0]
  rows = np.maximum(cm.sum(axis=1, keepdims=True), 1)
  size = min(5 + 0.25 * c, 20)
  # Constrained layout makes room for the colour bar, the tick labels and a title of several lines.
  fig = Figure(figsize=(size, size), layout="constrained")
  ax = fig.subplots()
  im = ax.imshow(cm / rows, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  # The title (split, accuracies, example and view counts) is wider than a matrix of a few classes: wrap it
  # to the figure's width (about 0.6 em per character at 9 pt) and centre it on the figure.
  fig.suptitle("\n".join(textwrap.wrap(title, max(20, int(size * 72 / (0.6 * 9)) - 4))), fontsize=9)
  if c <= 40:
    ax.set_xticks(range(c), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(c), class_names, fontsize=7)
  with paths.open(path, "wb") as f:  # local or gs:// (maskfeat_jax/paths.py)
    fig.savefig(f, format="png", dpi=100)


def json_float(v):
  return None if v is None or not np.isfinite(v) else float(v)


def format_summary(m: dict, split: str, class_names: Optional[Sequence[str]] = None) -> str:
  """Human summary: the view count beside every number."""
  v = f"[{views_label(m['num_clips'], m['num_crops'])}]"
  pca = m["per_class_accuracy"]
  names = list(class_names) if class_names is not None else [str(i) for i in range(len(pca))]
  worst = np.argsort([np.inf if a is None else a for a in pca], kind="stable")[:3]
  worst_s = ", ".join(f"{names[i]} {100 * pca[i]:.1f}%" for i in worst if pca[i] is not None)
  return "\n".join([
      f"eval {split}: {m['num_examples']} examples, views per example {m['min_views']}..{m['max_views']} {v}",
      f"  top-1 {100 * m['top1']:.2f}%  {v}",
      f"  top-5 {100 * m['top5']:.2f}%  {v}",
      f"  mean per-class accuracy {100 * m['mean_class_accuracy']:.2f}%  {v}",
      f"  NLL of view-averaged softmax {m['nll']:.4f}  {v}",
      f"  lowest per-class accuracy: {worst_s}  {v}",
      "  " + _speed(m),
  ])


def _speed(m: dict) -> str:
  # The first batch includes compilation, so only the batches after it give a rate; a single batch has none.
  first = f"first batch with compilation {m['first_batch_seconds']:.1f}s"
  if m.get("views_per_sec") is None:
    n = m.get("num_batches", 1)
    why = "a single batch" if n <= 1 else f"no valid views after the first of {n} batches"
    return f"views/s after the first batch: n/a ({why}; {m['eval_seconds']:.1f}s in all, with compilation)"
  return f"{m['views_per_sec']:.1f} views/s after the first batch ({m['eval_seconds']:.1f}s in all, {first})"


def write_reports(workdir: str, split: str, m: dict, cm: np.ndarray, class_names: list, views: str) -> dict:
  d = paths.join(workdir, f"eval_{splits.split_tag(split)}")
  paths.makedirs(d)
  files = dict(metrics=paths.join(d, "metrics.json"), confusion_json=paths.join(d, "confusion_matrix.json"),
               confusion_png=paths.join(d, "confusion_matrix.png"))
  scalars = {k: v for k, v in m.items() if k not in ("per_class_accuracy", "files")}
  with paths.open(files["metrics"], "w") as f:
    json.dump(dict(split=split, views=views, **scalars,
                   per_class_accuracy=dict(zip(class_names, m["per_class_accuracy"]))), f, indent=2)
  with paths.open(files["confusion_json"], "w") as f:
    json.dump(dict(split=split, views=views, rows="true class", columns="predicted class",
                   class_names=class_names, matrix=cm.tolist(),
                   per_class_accuracy=m["per_class_accuracy"]), f)
  title = (f"{split}: top-1 {100 * m['top1']:.2f}%, top-5 {100 * m['top5']:.2f}% "
           f"({m['num_examples']} examples, {views})")
  save_confusion_png(files["confusion_png"], cm, class_names, title)
  return files
