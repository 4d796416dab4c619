"""Multi-view evaluation: softmax averaged over views, top-1/top-5, per-class accuracy, confusion matrix.

Official protocol (spec §5.4, §6): K temporal clips × S spatial crops per video (K400 README numbers:
10 clips × 1 centre crop at short side 256 / crop 224), softmax scores combined over the views of a video
(SlowFast sums them; we average — the same argmax and ranking), top-1/top-5 over videos. Images: 1 view.

`evaluate()` iterates `data.pipeline.make_eval_iterator` (one row per view: video/image, label, example_id,
view, valid; padded rows have valid = False), runs a jitted forward with the batch sharded over the mesh's
data axes and the outputs replicated (so every process aggregates the same global result), averages the
views per example_id, and — when a workdir is given — writes `eval_<split>/metrics.json`,
`confusion_matrix.json` and `confusion_matrix.png` (process 0 only). Every printed number carries the view
count. The pure helpers (`aggregate_views`, `topk_accuracy`, `confusion_matrix`, `per_class_accuracy`) are
tested on their own.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Dict, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from maskfeat_jax.data import tfds_video


# --------------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ViewResult:
  """Per-example aggregate over views, examples in order of first appearance."""
  example_ids: np.ndarray  # int64 [N]
  values: np.ndarray  # float64 [N, D]: mean over the example's views
  labels: np.ndarray  # int64 [N]
  num_views: np.ndarray  # int64 [N]: how many valid views each example had


class ViewAccumulator:
  """Streams (values, labels, example_ids, valid) batches into per-example sums (memory O(examples × D))."""

  def __init__(self):
    self._slot: Dict[int, int] = {}
    self._sums: Optional[np.ndarray] = None
    self._labels = np.zeros((0,), np.int64)
    self._counts = np.zeros((0,), np.int64)
    self._ids = np.zeros((0,), np.int64)
    self._n = 0

  def _grow(self, need: int, dim: int) -> None:
    cap = 0 if self._sums is None else self._sums.shape[0]
    if need <= cap:
      return
    new_cap = max(need, 2 * cap, 64)
    sums = np.zeros((new_cap, dim), np.float64)
    labels = np.full((new_cap,), -1, np.int64)
    counts = np.zeros((new_cap,), np.int64)
    ids = np.zeros((new_cap,), np.int64)
    if self._sums is not None:
      sums[:cap], labels[:cap], counts[:cap], ids[:cap] = self._sums, self._labels, self._counts, self._ids
    self._sums, self._labels, self._counts, self._ids = sums, labels, counts, ids

  def add(self, values, labels, example_ids, valid) -> None:
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
      raise ValueError(f"ViewAccumulator.add: values must be [B, D], got {values.shape}.")
    keep = np.asarray(valid, bool).reshape(-1)
    values = values[keep]
    labels = np.asarray(labels, np.int64).reshape(-1)[keep]
    example_ids = np.asarray(example_ids, np.int64).reshape(-1)[keep]
    slots = np.empty(len(example_ids), np.int64)
    for i, eid in enumerate(example_ids.tolist()):
      s = self._slot.get(eid)
      if s is None:
        s = self._slot[eid] = self._n
        self._n += 1
      slots[i] = s
    self._grow(self._n, values.shape[1])
    if self._sums is not None and self._sums.shape[1] != values.shape[1]:
      raise ValueError(f"ViewAccumulator.add: width {values.shape[1]} differs from earlier {self._sums.shape[1]}.")
    np.add.at(self._sums, slots, values)
    np.add.at(self._counts, slots, 1)
    seen = self._labels[slots]
    self._labels[slots] = np.where(seen >= 0, seen, labels)  # first label seen wins; then check all agree
    clash = self._labels[slots] != labels
    if clash.any():
      i = int(np.argmax(clash))
      raise ValueError(f"example_id {example_ids[i]} has views with different labels "
                       f"({self._labels[slots][i]} and {labels[i]}); the eval iterator must give every view of "
                       "an example the same label.")
    self._ids[slots] = example_ids

  def result(self) -> ViewResult:
    n = self._n
    if n == 0:
      return ViewResult(np.zeros((0,), np.int64), np.zeros((0, 0)), np.zeros((0,), np.int64),
                        np.zeros((0,), np.int64))
    return ViewResult(self._ids[:n].copy(), self._sums[:n] / self._counts[:n, None],
                      self._labels[:n].copy(), self._counts[:n].copy())


def aggregate_views(values, labels, example_ids, valid=None) -> ViewResult:
  """Averages the rows of `values` [B, D] per example_id, ignoring rows with valid = False."""
  values = np.asarray(values)
  valid = np.ones(values.shape[0], bool) if valid is None else valid
  acc = ViewAccumulator()
  acc.add(values, labels, example_ids, valid)
  return acc.result()


def topk_accuracy(scores, labels, ks: Sequence[int] = (1, 5)) -> Dict[int, float]:
  """Fraction of rows whose label is among the k highest scores (k capped at the class count).

  Ties are broken by class index (stable sort), so the result is deterministic.
  """
  scores = np.asarray(scores)
  labels = np.asarray(labels).reshape(-1)
  if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
    raise ValueError(f"topk_accuracy: scores {scores.shape} and labels {labels.shape} do not match.")
  if scores.shape[0] == 0:
    return {k: float("nan") for k in ks}
  order = np.argsort(-scores, axis=1, kind="stable")
  rank = np.argmax(order == labels[:, None], axis=1)  # position of the true class in the ranking
  return {k: float(np.mean(rank < min(k, scores.shape[1]))) for k in ks}


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


# --------------------------------------------------------------------------------------------------------
# Device side
# --------------------------------------------------------------------------------------------------------
def as_variables(params) -> dict:
  """Accepts a params tree or a full variables dict ({'params': ...}), boxed or not."""
  from flax.core import meta
  params = meta.unbox(params)
  if isinstance(params, dict) and "params" in params:
    return dict(params)
  return {"params": params}


def input_key(config) -> str:
  return "image" if config.data.image_mode else "video"


def _batch_axes(config) -> tuple:
  for name, m in config.mesh.rules:
    if name == "batch":
      if m is None:
        return ()
      return tuple(m) if isinstance(m, (list, tuple)) else (m,)
  return ()


def _mesh_context(config, mesh):
  """Mesh + logical-axis rules while tracing (the models' logical constraints need both)."""
  from maskfeat_jax.train import state as state_lib
  return state_lib.mesh_context(mesh, state_lib.logical_rules(config))


def make_forward(config, model, mesh, method: Optional[str] = None) -> Callable:
  """Returns fn(variables, batch) → (outputs, label, example_id, valid), all global and replicated.

  method=None: softmax probabilities of the classifier (float32); method='features': the backbone features.
  The batch rows are sharded over the mesh's batch axes; outputs are gathered to every device so that each
  process can aggregate (and, on process 0, write) the global result.
  """
  axes = _batch_axes(config)
  replicated = NamedSharding(mesh, P())

  def fwd(variables, x, label, example_id, valid):
    if method is None:
      logits = model.apply(variables, x, train=False)
      out = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    else:
      out = model.apply(variables, x, method=method).astype(jnp.float32)
    return out, label, example_id, valid

  jitted = jax.jit(fwd, out_shardings=(replicated,) * 4)
  key = input_key(config)

  def run(variables, batch):
    def place(v):
      v = np.asarray(v)
      sharding = NamedSharding(mesh, P(axes if axes else None, *([None] * (v.ndim - 1))))
      return jax.make_array_from_process_local_data(sharding, v)
    args = [place(batch[k]) for k in (key, "label", "example_id", "valid")]
    with _mesh_context(config, mesh):
      outs = jitted(variables, *args)
    return tuple(np.asarray(o) for o in outs)
  return run


def per_process_batch(config, mesh, batch_size: int, what: str = "config.eval.batch_size") -> int:
  """The per-process eval batch; it must split evenly over processes and the mesh's data axes."""
  dp = int(np.prod([mesh.shape[a] for a in _batch_axes(config)])) if _batch_axes(config) else 1
  pc = jax.process_count()
  if batch_size <= 0 or batch_size % pc or batch_size % dp:
    raise ValueError(f"{what}={batch_size}: must be a positive multiple of the process count ({pc}) and of "
                     f"the data-parallel mesh size ({dp}, mesh axes {_batch_axes(config)}).")
  return batch_size // pc


def run_views(config, model, params, mesh, split: str, *, method: Optional[str] = None,
              batch_size: Optional[int] = None, iterator: Optional[Iterable] = None,
              forward: Optional[Callable] = None):
  """Runs the model over every view of `split`; returns (ViewResult, timing).

  `forward` (from `make_forward`) can be passed to reuse one compiled function across splits. timing:
  rows (valid views), seconds (total), first_batch_seconds (includes compilation) and views_per_sec (after
  the first batch when there are several, so compilation does not count).
  """
  from maskfeat_jax.data import pipeline
  batch_size = config.eval.batch_size if batch_size is None else batch_size
  local = per_process_batch(config, mesh, batch_size)
  if iterator is None:
    iterator = pipeline.make_eval_iterator(config, split, process_index=jax.process_index(),
                                           process_count=jax.process_count(), batch_size=local)
  forward = forward or make_forward(config, model, mesh, method)
  variables = as_variables(params)
  acc = ViewAccumulator()
  rows, rows_first, t_first, t0 = 0, 0, None, time.perf_counter()
  for batch in iterator:
    out, label, example_id, valid = forward(variables, batch)
    acc.add(out, label, example_id, valid)
    rows += int(np.sum(valid))
    if t_first is None:
      t_first, rows_first = time.perf_counter(), rows
  t_end = time.perf_counter()
  t_first = t_end if t_first is None else t_first
  steady_rows, steady_s = (rows - rows_first, t_end - t_first) if rows > rows_first else (rows, t_end - t0)
  timing = dict(rows=rows, seconds=t_end - t0, first_batch_seconds=t_first - t0,
                views_per_sec=steady_rows / max(steady_s, 1e-9))
  return acc.result(), timing


# --------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------
def _class_names(config, num_classes: int) -> list:
  try:
    from maskfeat_jax.data import pipeline
    names = list(getattr(pipeline.prepare_dataset(config), "class_names", None) or [])
  except Exception as e:  # names are cosmetic: numbers stand in (the metrics do not depend on them)
    logging.warning("evaluate: no class names from the dataset (%s); using indices.", e)
    names = []
  return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def save_confusion_png(path: str, cm: np.ndarray, class_names: Sequence[str], title: str) -> None:
  """Row-normalised confusion matrix (matplotlib Agg); class names as ticks when there are ≤ 40 classes."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  c = cm.shape[0]
  rows = np.maximum(cm.sum(axis=1, keepdims=True), 1)
  size = min(4 + 0.25 * c, 20)
  fig, ax = plt.subplots(figsize=(size, size))
  im = ax.imshow(cm / rows, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(title, fontsize=9)
  if c <= 40:
    ax.set_xticks(range(c), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(c), class_names, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _json_float(v):
  return None if v is None or not np.isfinite(v) else float(v)


def evaluate(config, model, params, mesh, split: str, workdir: Optional[str] = None, *,
             iterator: Optional[Iterable] = None, verbose: bool = True) -> dict:
  """Multi-view evaluation of a classifier on `split`.

  Args:
    config: full config tree (uses eval.*, data.*, mesh.*).
    model: Flax module, `apply(variables, x, train=False)` → logits [B, C].
    params: its params (or a variables dict), already placed on the mesh or host arrays.
    mesh: the device mesh; the batch is sharded over the mesh axes of the 'batch' rule in config.mesh.rules.
    split: dataset split name.
    workdir: if given, writes eval_<split>/{metrics.json, confusion_matrix.json, confusion_matrix.png}.
    iterator: optional iterable of eval batches (tests / custom data); default make_eval_iterator.
    verbose: print the summary lines.

  Returns:
    Scalars top1, top5, mean_class_accuracy, nll (of the averaged probabilities), num_examples, num_views
    (= num_clips × num_crops), num_clips, num_crops, min_views / max_views (observed per example),
    views_per_sec, eval_seconds; and non-scalars per_class_accuracy (list, NaN → None) and files (dict).
  """
  # Images have one view whatever eval.num_clips / num_crops say (the eval iterator ignores them).
  num_clips, num_crops = ((1, 1) if config.data.image_mode
                          else (int(config.eval.num_clips), int(config.eval.num_crops)))
  res, timing = run_views(config, model, params, mesh, split, iterator=iterator)
  if res.example_ids.size == 0:
    raise ValueError(f"evaluate: split {split!r} gave no valid rows (check config.data.eval_split and the data).")
  probs, labels = res.values, res.labels
  num_classes = probs.shape[1]
  topk = topk_accuracy(probs, labels, (1, 5))
  cm = confusion_matrix(labels, probs.argmax(axis=1), num_classes)
  pca = per_class_accuracy(cm)
  nll = float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))
  views = views_label(num_clips, num_crops)
  out = dict(top1=topk[1], top5=topk[5], mean_class_accuracy=float(np.nanmean(pca)), nll=nll,
             num_examples=int(len(labels)), num_views=num_clips * num_crops, num_clips=num_clips,
             num_crops=num_crops, min_views=int(res.num_views.min()), max_views=int(res.num_views.max()),
             views_per_sec=timing["views_per_sec"], eval_seconds=timing["seconds"],
             first_batch_seconds=timing["first_batch_seconds"],
             per_class_accuracy=[_json_float(v) for v in pca], files={})
  if out["min_views"] != out["num_views"] or out["max_views"] != out["num_views"]:
    logging.warning("evaluate(%s): examples have %d..%d views, expected %s.", split, out["min_views"],
                    out["max_views"], views)
  if jax.process_index() == 0 and (verbose or workdir):
    names = _class_names(config, num_classes)
    if verbose:
      print(format_summary(out, split, names), flush=True)
    if workdir:
      out["files"] = _write_reports(workdir, split, out, cm, names, views)
  return out


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
      f"  {m['views_per_sec']:.1f} views/s after the first batch ({m['eval_seconds']:.1f}s in all, first batch "
      f"with compilation {m['first_batch_seconds']:.1f}s)",
  ])


def _write_reports(workdir: str, split: str, m: dict, cm: np.ndarray, class_names: list, views: str) -> dict:
  d = os.path.join(workdir, f"eval_{tfds_video.split_tag(split)}")
  os.makedirs(d, exist_ok=True)
  files = dict(metrics=os.path.join(d, "metrics.json"), confusion_json=os.path.join(d, "confusion_matrix.json"),
               confusion_png=os.path.join(d, "confusion_matrix.png"))
  scalars = {k: v for k, v in m.items() if k not in ("per_class_accuracy", "files")}
  with open(files["metrics"], "w") as f:
    json.dump(dict(split=split, views=views, **scalars,
                   per_class_accuracy=dict(zip(class_names, m["per_class_accuracy"]))), f, indent=2)
  with open(files["confusion_json"], "w") as f:
    json.dump(dict(split=split, views=views, rows="true class", columns="predicted class",
                   class_names=class_names, matrix=cm.tolist(),
                   per_class_accuracy=m["per_class_accuracy"]), f)
  title = (f"{split}: top-1 {100 * m['top1']:.2f}%, top-5 {100 * m['top5']:.2f}% "
           f"({m['num_examples']} examples, {views})")
  save_confusion_png(files["confusion_png"], cm, class_names, title)
  return files
