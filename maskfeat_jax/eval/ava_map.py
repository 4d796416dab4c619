"""Frame-level AVA mAP at IoU 0.5: the official protocol, written from its definition (numpy only).

The official evaluation is `slowfast/utils/ava_eval_helper.py::evaluate_ava`, which wraps the ActivityNet
copy of the TF object-detection evaluator (`object_detection_evaluation.PascalDetectionEvaluator`,
`per_image_evaluation.PerImageEvaluation`, `metrics.compute_precision_recall` / `compute_average_precision`):

  * a frame is a (video_id, timestamp) key ("%s,%04d"); boxes are (x1, y1, x2, y2) normalised;
  * keys in the excluded-timestamps file are dropped from ground truth and detections alike;
  * only the classes of the label map (the 60 of `ava_action_list_v2.2_for_activitynet_2019.pbtxt`) count;
  * per frame and class, detections in descending score order take the ground-truth box of highest IoU;
    IoU >= 0.5 and that box not yet taken -> true positive, else false positive (one ground-truth box is
    matched at most once; a detection does not fall back to its second-best box). Detections on a frame
    without ground truth of that class are false positives;
  * per class, all scored detections of all frames are ranked by score; precision / recall from the
    cumulative true positives; AP = area under the precision-recall curve with precision made monotone
    (PASCAL VOC 2010+, every point); a class without ground truth has AP NaN and is left out of the mean.

Ties in score are ranked in input order (the official argsort leaves their order to numpy's quicksort).
"""
from __future__ import annotations

import collections
import csv
import json
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from maskfeat_jax import paths
from maskfeat_jax.data.ava import frame_key, read_exclusions, read_labelmap  # noqa: F401 (AVA file formats)

IOU_THRESHOLD = 0.5


def read_boxes_csv(path: str, class_whitelist: Iterable[int] | None = None):
  """An AVA box CSV -> {key: (boxes [N,4] x1y1x2y2, labels [N] int, scores [N])} (one row per box and label).

  Rows: video_id, timestamp, x1, y1, x2, y2, action_id[, person_id | score] (the official `read_csv`: an
  8th column is the score of a detection file; ground-truth files have the person id there, and their
  scores are not used). Labels outside `class_whitelist` are skipped.
  """
  allowed = None if class_whitelist is None else set(int(c) for c in class_whitelist)
  rows = collections.defaultdict(lambda: ([], [], []))
  with paths.open(path) as f:
    for n, row in enumerate(csv.reader(f), 1):
      if not row:
        continue
      if len(row) not in (7, 8):
        raise ValueError(f"{path}:{n}: expected 7 or 8 columns, got {len(row)}: {row}")
      if row[6] == "":
        continue  # a person box without an action (detector-only rows)
      label = int(row[6])
      if allowed is not None and label not in allowed:
        continue
      b, l, s = rows[frame_key(row[0], row[1])]
      b.append([float(v) for v in row[2:6]])
      l.append(label)
      s.append(float(row[7]) if len(row) == 8 else 1.0)
  return {k: (np.asarray(b, np.float64).reshape(-1, 4), np.asarray(l, np.int64), np.asarray(s, np.float64))
          for k, (b, l, s) in rows.items()}


def write_detections_csv(path: str, detections: Mapping[str, tuple]) -> None:
  """{key: (boxes, labels, scores)} -> the official detection CSV (video_id, ts, x1, y1, x2, y2, id, score)."""
  with paths.open(path, "w") as f:  # local or gs:// (maskfeat_jax/paths.py)
    w = csv.writer(f, lineterminator="\n")
    for key in sorted(detections):
      video_id, ts = key.rsplit(",", 1)
      boxes, labels, scores = detections[key]
      for box, label, score in zip(np.asarray(boxes), np.asarray(labels), np.asarray(scores)):
        w.writerow([video_id, ts] + ["%.3f" % v for v in box] + [int(label), "%.6f" % float(score)])


# ----------------------------------------------------------------------------------------------- metric
def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[N,4] x [M,4] (x1, y1, x2, y2) -> [N, M] IoU (areas without +1, as `np_box_ops.iou`)."""
  a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  iw = np.maximum(0.0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]))
  ih = np.maximum(0.0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]))
  inter = iw * ih
  union = area_a[:, None] + area_b[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
  """VOC AP: precision made non-increasing, summed over the recall steps (`metrics.compute_average_precision`)."""
  recall = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
  precision = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
  precision = np.maximum.accumulate(precision[::-1])[::-1]
  steps = np.where(recall[1:] != recall[:-1])[0] + 1
  return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def _frame_tp(det_boxes, det_scores, gt_boxes, threshold: float) -> np.ndarray:
  """True-positive flags of one frame and class, in the given (score-sorted) order."""
  tp = np.zeros(len(det_boxes), bool)
  if len(gt_boxes) == 0 or len(det_boxes) == 0:
    return tp
  overlaps = iou(det_boxes, gt_boxes)
  best = np.argmax(overlaps, axis=1)
  taken = np.zeros(len(gt_boxes), bool)
  for i, g in enumerate(best):
    if overlaps[i, g] >= threshold and not taken[g]:
      tp[i] = taken[g] = True
  return tp


def evaluate(groundtruth: Mapping[str, tuple], detections: Mapping[str, tuple], class_ids: Sequence[int],
             excluded: Iterable[str] = (), iou_threshold: float = IOU_THRESHOLD) -> dict:
  """Frame-level AP per class and their mean.

  Args:
    groundtruth: {key: (boxes [N,4], labels [N])} (a box with k actions appears k times), extra fields ignored.
    detections: {key: (boxes [M,4], labels [M], scores [M])}.
    class_ids: the evaluated classes (the label map's ids).
    excluded: frame keys dropped from both.
  Returns:
    {'per_class': {id: AP or NaN}, 'mAP': nanmean, 'num_gt': {id: n}, 'num_detections': {id: n},
     'num_frames': frames with ground truth}.
  """
  excluded = set(excluded)
  classes = [int(c) for c in class_ids]
  scores = {c: [] for c in classes}
  tps = {c: [] for c in classes}
  num_gt = {c: 0 for c in classes}
  gt_frames = {k: v for k, v in groundtruth.items() if k not in excluded}
  for key, (boxes, labels, *_) in gt_frames.items():
    labels = np.asarray(labels)
    for c in classes:
      num_gt[c] += int(np.sum(labels == c))
  for key, det in detections.items():
    if key in excluded:
      continue
    d_boxes, d_labels, d_scores = (np.asarray(a) for a in det[:3])
    g_boxes, g_labels = (gt_frames[key][0], np.asarray(gt_frames[key][1])) if key in gt_frames else \
        (np.zeros((0, 4)), np.zeros((0,), np.int64))
    for c in classes:
      sel = d_labels == c
      if not np.any(sel):
        continue
      cb, cs = np.asarray(d_boxes)[sel], d_scores[sel].astype(np.float64)
      order = np.argsort(-cs, kind="stable")
      cb, cs = cb[order], cs[order]
      scores[c].append(cs)
      tps[c].append(_frame_tp(cb, cs, np.asarray(g_boxes)[g_labels == c], iou_threshold))
  per_class, num_det = {}, {}
  for c in classes:
    s = np.concatenate(scores[c]) if scores[c] else np.zeros((0,))
    t = np.concatenate(tps[c]) if tps[c] else np.zeros((0,), bool)
    num_det[c] = int(len(s))
    if num_gt[c] == 0:
      per_class[c] = float("nan")
      continue
    order = np.argsort(-s, kind="stable")
    t = t[order].astype(np.float64)
    cum_tp = np.cumsum(t)
    cum_fp = np.cumsum(1.0 - t)
    precision = cum_tp / np.maximum(cum_tp + cum_fp, 1e-12)
    recall = cum_tp / num_gt[c]
    per_class[c] = average_precision(precision, recall)
  values = [v for v in per_class.values() if not np.isnan(v)]
  return {"per_class": per_class, "mAP": float(np.mean(values)) if values else float("nan"),
          "num_gt": num_gt, "num_detections": num_det, "num_frames": len(gt_frames)}


def format_report(result: dict, class_names: Mapping[int, str]) -> str:
  """Per-class AP table and the mean, one class a line."""
  lines = [f"{'id':>4}  {'AP':>7}  {'#gt':>6}  class"]
  for c, ap in result["per_class"].items():
    shown = "    n/a" if np.isnan(ap) else f"{100 * ap:7.2f}"
    lines.append(f"{c:>4}  {shown}  {result['num_gt'][c]:>6}  {class_names.get(c, '')}")
  lines.append(f"mAP@0.5IOU over {sum(1 for v in result['per_class'].values() if not np.isnan(v))} classes "
               f"with ground truth: {100 * result['mAP']:.2f}")
  return "\n".join(lines)


def write_report(path: str, result: dict, class_names: Mapping[int, str], extra: dict | None = None) -> None:
  """The result as JSON (NaN -> null): mAP, per-class AP by id and name, counts."""
  def clean(v):
    return None if isinstance(v, float) and np.isnan(v) else v
  out = {"mAP@0.5IOU": clean(result["mAP"]), "num_frames": result["num_frames"],
         "per_class": [{"id": int(c), "name": class_names.get(c, ""), "AP": clean(ap),
                        "num_gt": result["num_gt"][c], "num_detections": result["num_detections"][c]}
                       for c, ap in result["per_class"].items()]}
  out.update(extra or {})
  if os.path.dirname(path):
    paths.makedirs(os.path.dirname(path))
  with paths.open(path, "w") as f:  # local or gs:// (maskfeat_jax/paths.py)
    json.dump(out, f, indent=1)
