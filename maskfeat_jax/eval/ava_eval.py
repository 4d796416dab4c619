"""AVA evaluation of a detector: sigmoid scores of every detected person box, frame-level mAP@0.5.

As the official test (`slowfast/utils/ava_eval_helper.py::evaluate_ava` over the outputs of
`tools/test_net.py` with `DETECTION.ENABLE`): the model scores the person detector's boxes above
config.detection.score_thresh (each box in the config.eval.num_crops crop that shows most of it,
data/ava_pipeline.py::eval_example); every (box, class) pair becomes one scored detection; eval/ava_map.py computes
the per-class AP and the mean over the label map's classes. Ground truth: the boxes stored in the records
(config.detection.groundtruth_csv = '') or the official CSV; excluded timestamps from
config.detection.exclusions_csv (the converter already left them out of the records).

Every process reads the whole split and places its block of each global batch's rows on its devices (the forward
is sharded over the mesh as in training, the scores gathered to all); every process returns the same result;
process 0 writes
WORKDIR/eval_<split>/{ava_map.json, detections.csv}.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from maskfeat_jax import compiler
from maskfeat_jax import paths
from maskfeat_jax import sharding
from maskfeat_jax.data import ava
from maskfeat_jax.data import ava_pipeline
from maskfeat_jax.data import splits
from maskfeat_jax.eval import ava_map
from maskfeat_jax.eval import multiview

KEYS = ("video", "boxes")


def make_forward(config, model, mesh):
  """fn(variables, batch) -> sigmoid scores [B, N, K] (numpy, global)."""
  replicated = NamedSharding(mesh, P())

  def fwd(variables, x, boxes):
    return jax.nn.sigmoid(model.apply(variables, x, boxes, train=False).astype(jnp.float32))

  jitted = compiler.jit(fwd, platform=mesh.devices.flat[0].platform, out_shardings=replicated)

  def run(variables, batch):
    """batch: the global batch (every process reads all of it); each process places its block of rows."""
    shardings = sharding.batch_shardings(config, mesh, {k: np.shape(batch[k]) for k in KEYS})
    rows = len(batch[KEYS[0]]) // jax.process_count()
    start = jax.process_index() * rows
    placed = sharding.place_batch({k: batch[k][start:start + rows] for k in KEYS}, KEYS, shardings)
    with sharding.config_mesh_context(config, mesh):
      return np.asarray(jitted(variables, *(placed[k] for k in KEYS)))
  return run


def _groundtruth(config, items_gt, class_ids):
  """{key: (boxes, label ids)} from the records, or from config.detection.groundtruth_csv."""
  if config.detection.groundtruth_csv:
    return ava_map.read_boxes_csv(os.path.expanduser(config.detection.groundtruth_csv), class_whitelist=class_ids)
  out = {}
  for key, (boxes, labels) in items_gt.items():
    rows, ids = np.nonzero(labels)
    out[key] = (np.asarray(boxes)[rows].reshape(-1, 4), np.asarray(class_ids)[ids])
  return out


def evaluate(config, model, params, mesh, split: str, workdir: str | None = None, *, meta=None,
             verbose: bool = True, use_detections: bool = True) -> dict:
  """mAP of `params` on `split` (detected boxes; use_detections=False scores the ground-truth boxes)."""
  meta = meta or ava.load_meta(config)
  base = splits.resolve_split(split, meta.split_sizes, where=f"AVA dataset at {meta.directory}")[0]
  if base != split:
    raise ValueError(f"config.data.eval_split={split!r}: AVA evaluation reads whole splits ({base!r}).")
  class_ids = [cid for cid, _ in meta.label_map]
  names = dict(meta.label_map)
  batch = multiview.per_process_batch(config, mesh, int(config.eval.batch_size)) * jax.process_count()
  forward = make_forward(config, model, mesh)
  variables = multiview.as_variables(params)
  detections, gt = {}, {}
  t0 = time.perf_counter()
  num_boxes = dropped = 0
  crops = int(config.eval.num_crops)
  for arrays, items in ava_pipeline.eval_batches(config, split, meta, batch, use_detections):
    scores = forward(variables, arrays)  # [keyframes x crops, N, K]
    scores = scores.reshape((-1, crops) + scores.shape[1:])
    for row, item in enumerate(items):
      gt[item["key"]] = (item["gt_boxes"], item["gt_labels"])
      dropped += item["dropped"]
      n = len(item["frame_boxes"])
      if n == 0:
        continue
      num_boxes += n
      s = scores[row, item["crop_of_box"], np.arange(n)]  # each box's [K] scores from its crop
      detections[item["key"]] = (np.repeat(item["frame_boxes"], len(class_ids), axis=0),
                                 np.tile(np.asarray(class_ids), n), s.reshape(-1))
  seconds = time.perf_counter() - t0
  excluded = ava_map.read_exclusions(os.path.expanduser(config.detection.exclusions_csv)
                                     if config.detection.exclusions_csv else None)
  result = ava_map.evaluate(_groundtruth(config, gt, class_ids), detections, class_ids, excluded)
  out = {"mAP": result["mAP"], "keyframes": len(gt), "boxes_scored": num_boxes, "boxes_not_scored": dropped,
         "seconds": seconds,
         **{f"AP/{names[c]}": v for c, v in result["per_class"].items()}}
  if verbose:
    print(f"[eval {split}] AVA frame-level mAP@0.5 on {len(gt)} keyframes, {num_boxes} "
          f"{'detected' if use_detections else 'ground-truth'} boxes (score >= {config.detection.score_thresh}):\n"
          + ava_map.format_report(result, names), flush=True)
    if dropped:
      print(f"[eval {split}] WARNING: {dropped} boxes beyond config.detection.eval_max_boxes="
            f"{config.detection.eval_max_boxes} per keyframe were not scored (they count as misses); raise it.",
            flush=True)
  if workdir and jax.process_index() == 0:
    out_dir = paths.join(workdir, f"eval_{splits.split_tag(split)}")
    paths.makedirs(out_dir)
    ava_map.write_report(paths.join(out_dir, "ava_map.json"), result, names,
                         {"split": split, "boxes": "detected" if use_detections else "groundtruth",
                          "score_thresh": float(config.detection.score_thresh), "boxes_scored": num_boxes})
    ava_map.write_detections_csv(paths.join(out_dir, "detections.csv"), detections)
    out["files"] = [paths.join(out_dir, "ava_map.json"), paths.join(out_dir, "detections.csv")]
  return out
