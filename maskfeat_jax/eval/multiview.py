"""Multi-view evaluation: softmax averaged over views, top-1/top-5, per-class accuracy, confusion matrix.

Official protocol (`slowfast/utils/meters.py::TestMeter`, K400 testing): K temporal clips x S spatial crops
per video (10 x 1 centre crop at short side 256 / crop 224 for MaskFeat K400), softmax scores combined over
the views of a video (SlowFast sums them; we average: the same argmax and ranking), top-1/top-5 over videos.
Images: 1 view.

`evaluate()` iterates `data.eval_pipeline.make_eval_iterator` (one row per view: video/image, label, example_id,
view, valid; padded rows have valid = False), runs a jitted forward with the batch sharded over the mesh's
data axes and the outputs replicated (so every process aggregates the same global result), averages the
views per example_id, and, when a workdir is given, writes the reports of eval/report.py (process 0).
The pure helpers (`aggregate_views`, `topk_accuracy`) are tested on their own.
"""
import dataclasses
import time
from typing import Callable, Dict, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax.core import meta
from jax.sharding import NamedSharding, PartitionSpec as P

from maskfeat_jax import compiler
from maskfeat_jax import sharding
from maskfeat_jax.config import check_batch, input_key
from maskfeat_jax.data import eval_pipeline
from maskfeat_jax.eval import report


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


def as_variables(params) -> dict:
  """Accepts a params tree or a full variables dict ({'params': ...}), boxed or not."""
  params = meta.unbox(params)
  if isinstance(params, dict) and "params" in params:
    return dict(params)
  return {"params": params}


def make_forward(config, model, mesh, method: Optional[str] = None) -> Callable:
  """Returns fn(variables, batch) → (outputs, label, example_id, valid), all global and replicated.

  method=None: softmax probabilities of the classifier (float32); method='features': the backbone features.
  The batch rows are sharded over the mesh's batch axes; outputs are gathered to every device so that each
  process can aggregate (and, on process 0, write) the global result.
  """
  replicated = NamedSharding(mesh, P())

  def fwd(variables, x, label, example_id, valid):
    if method is None:
      logits = model.apply(variables, x, train=False)
      out = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    else:
      out = model.apply(variables, x, method=method).astype(jnp.float32)
    return out, label, example_id, valid

  jitted = compiler.jit(fwd, platform=mesh.devices.flat[0].platform, out_shardings=(replicated,) * 4)
  key = input_key(config)

  keys = (key, "label", "example_id", "valid")

  def run(variables, batch):
    shardings = sharding.batch_shardings(config, mesh, {k: np.shape(batch[k]) for k in keys})
    placed = sharding.place_batch(batch, keys, shardings)
    with sharding.config_mesh_context(config, mesh):
      outs = jitted(variables, *(placed[k] for k in keys))
    return tuple(np.asarray(o) for o in outs)
  return run


def per_process_batch(config, mesh, batch_size: int, what: str = "config.eval.batch_size") -> int:
  """The per-process eval batch; it must split evenly over processes and the mesh's data axes."""
  return check_batch(config, batch_size, what, dict(mesh.shape), jax.process_count())


def run_views(config, model, params, mesh, split: str, *, method: Optional[str] = None,
              batch_size: Optional[int] = None, iterator: Optional[Iterable] = None,
              forward: Optional[Callable] = None):
  """Runs the model over every view of `split`; returns (ViewResult, timing).

  `forward` (from `make_forward`) can be passed to reuse one compiled function across splits. timing:
  rows (valid views), num_batches, seconds (total), first_batch_seconds (includes compilation) and
  views_per_sec (after the first batch, so compilation does not count; None when no valid view came after
  the first batch, e.g. a single batch).
  """
  batch_size = config.eval.batch_size if batch_size is None else batch_size
  local = per_process_batch(config, mesh, batch_size)
  if iterator is None:
    iterator = eval_pipeline.make_eval_iterator(config, split, process_index=jax.process_index(),
                                           process_count=jax.process_count(), batch_size=local)
  forward = forward or make_forward(config, model, mesh, method)
  variables = as_variables(params)
  acc = ViewAccumulator()
  rows, rows_first, num_batches, t_first, t0 = 0, 0, 0, None, time.perf_counter()
  for batch in iterator:
    out, label, example_id, valid = forward(variables, batch)
    acc.add(out, label, example_id, valid)
    rows += int(np.sum(valid))
    num_batches += 1
    if t_first is None:
      t_first, rows_first = time.perf_counter(), rows
  t_end = time.perf_counter()
  t_first = t_end if t_first is None else t_first
  # The first batch includes compilation: with nothing after it there is no steady-state rate to report.
  views_per_sec = (rows - rows_first) / max(t_end - t_first, 1e-9) if rows > rows_first else None
  timing = dict(rows=rows, num_batches=num_batches, seconds=t_end - t0, first_batch_seconds=t_first - t0,
                views_per_sec=views_per_sec)
  return acc.result(), timing


def evaluate(config, model, params, mesh, split: str, workdir: Optional[str] = None, *,
             iterator: Optional[Iterable] = None, verbose: bool = True,
             class_names: Optional[Sequence[str]] = None) -> dict:
  """Multi-view evaluation of a classifier on `split`.

  Args:
    config: full config tree (uses eval.*, data.*, mesh.*).
    model: Flax module, `apply(variables, x, train=False)` → logits [B, C].
    params: its params (or a variables dict), already placed on the mesh or host arrays.
    mesh: the device mesh; the batch is sharded over the mesh axes of the 'act_batch' rule in config.mesh.rules.
    split: dataset split name.
    workdir: if given, writes eval_<split>/{metrics.json, confusion_matrix.json, confusion_matrix.png}.
    iterator: optional iterable of eval batches (tests / custom data); default make_eval_iterator.
    verbose: print the summary lines.
    class_names: the dataset's class names (reports use indices without them).

  Returns:
    Scalars top1, top5, mean_class_accuracy, nll (of the averaged probabilities), num_examples, num_views
    (= num_clips × num_crops), num_clips, num_crops, min_views / max_views (observed per example),
    views_per_sec (None with a single batch), eval_seconds, first_batch_seconds, num_batches; and
    non-scalars per_class_accuracy (list, NaN → None) and files (dict).
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
  cm = report.confusion_matrix(labels, probs.argmax(axis=1), num_classes)
  pca = report.per_class_accuracy(cm)
  nll = float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))
  views = report.views_label(num_clips, num_crops)
  out = dict(top1=topk[1], top5=topk[5], mean_class_accuracy=float(np.nanmean(pca)), nll=nll,
             num_examples=int(len(labels)), num_views=num_clips * num_crops, num_clips=num_clips,
             num_crops=num_crops, min_views=int(res.num_views.min()), max_views=int(res.num_views.max()),
             views_per_sec=timing["views_per_sec"], eval_seconds=timing["seconds"],
             first_batch_seconds=timing["first_batch_seconds"], num_batches=timing["num_batches"],
             per_class_accuracy=[report.json_float(v) for v in pca], files={})
  if out["min_views"] != out["num_views"] or out["max_views"] != out["num_views"]:
    logging.warning("evaluate(%s): examples have %d..%d views, expected %s.", split, out["min_views"],
                    out["max_views"], views)
  if jax.process_index() == 0 and (verbose or workdir):
    names = report.class_names_or_indices(class_names, num_classes)
    if verbose:
      print(report.format_summary(out, split, names), flush=True)
    if workdir:
      out["files"] = report.write_reports(workdir, split, out, cm, names, views)
  return out
