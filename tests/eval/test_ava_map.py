"""AVA frame-level mAP (eval/ava_map.py) against cases computed by hand."""
import json
import math

import numpy as np
import pytest

from maskfeat_jax.eval import ava_map

BOX = [0.1, 0.1, 0.5, 0.9]
OTHER = [0.6, 0.2, 0.9, 0.8]


def _gt(*rows):
  """rows of (key, box, label) -> groundtruth dict."""
  out = {}
  for key, box, label in rows:
    b, l = out.get(key, ([], []))
    out[key] = (b + [box], l + [label])
  return {k: (np.asarray(b), np.asarray(l)) for k, (b, l) in out.items()}


def _det(*rows):
  """rows of (key, box, label, score) -> detections dict."""
  out = {}
  for key, box, label, score in rows:
    b, l, s = out.get(key, ([], [], []))
    out[key] = (b + [box], l + [label], s + [score])
  return {k: (np.asarray(b), np.asarray(l), np.asarray(s)) for k, (b, l, s) in out.items()}


def test_perfect_detections_give_ap_one():
  gt = _gt(("v,0902", BOX, 1), ("v,0902", OTHER, 2), ("v,0903", BOX, 1))
  det = _det(("v,0902", BOX, 1, 0.9), ("v,0902", OTHER, 2, 0.8), ("v,0903", BOX, 1, 0.7))
  r = ava_map.evaluate(gt, det, [1, 2, 3])
  assert r["per_class"][1] == 1.0 and r["per_class"][2] == 1.0
  assert math.isnan(r["per_class"][3])  # no ground truth: left out of the mean
  assert r["mAP"] == 1.0


def test_no_detections_give_ap_zero():
  gt = _gt(("v,0902", BOX, 1), ("v,0903", OTHER, 2))
  r = ava_map.evaluate(gt, {}, [1, 2])
  assert r["per_class"] == {1: 0.0, 2: 0.0} and r["mAP"] == 0.0


def test_duplicate_detection_is_a_false_positive():
  # Ranking: TP (0.9), duplicate of it FP (0.8), TP on the other frame (0.7); 2 ground-truth boxes.
  # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> monotone 1, 2/3, 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3.
  gt = _gt(("a,0902", BOX, 1), ("b,0902", BOX, 1))
  det = _det(("a,0902", BOX, 1, 0.9), ("a,0902", BOX, 1, 0.8), ("b,0902", BOX, 1, 0.7))
  assert ava_map.evaluate(gt, det, [1])["per_class"][1] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_hand_computed_ranking():
  # TP FP TP FP TP over 4 ground-truth boxes: precision 1, .5, 2/3, .5, .6 at recall .25, .25, .5, .5, .75
  # -> monotone 1, 2/3, 2/3, .6, .6 -> AP = .25 * (1 + 2/3 + .6).
  keys = [f"v,{t:04d}" for t in range(902, 906)]
  gt = _gt(*[(k, BOX, 7) for k in keys])
  det = _det((keys[0], BOX, 7, 0.9), (keys[0], OTHER, 7, 0.8), (keys[1], BOX, 7, 0.7),
             (keys[1], OTHER, 7, 0.6), (keys[2], BOX, 7, 0.5))
  assert ava_map.evaluate(gt, det, [7])["per_class"][7] == pytest.approx(0.25 * (1 + 2 / 3 + 0.6))


def test_shuffled_order_gives_the_same_ap():
  rng = np.random.default_rng(0)
  keys = [f"m{v},{t:04d}" for v in range(3) for t in range(902, 907)]
  gt_rows, det_rows = [], []
  for k in keys:
    for c in (1, 2):
      if rng.random() < 0.7:
        x = float(rng.random()) * 0.6
        box = [x, 0.1, x + 0.3, 0.8]
        gt_rows.append((k, box, c))
        jitter = rng.normal(0, 0.05, 4)
        det_rows.append((k, list(np.asarray(box) + jitter), c, float(rng.random())))
      det_rows.append((k, [0.5, 0.5, 0.9, 0.9], c, float(rng.random())))
  gt = _gt(*gt_rows)
  a = ava_map.evaluate(gt, _det(*det_rows), [1, 2])
  perm = rng.permutation(len(det_rows))
  b = ava_map.evaluate(gt, _det(*[det_rows[i] for i in perm]), [1, 2])
  assert a["per_class"] == b["per_class"]
  assert 0.0 < a["mAP"] < 1.0  # a mix of hits and misses, not a trivial case


def test_below_iou_threshold_is_a_miss():
  gt = _gt(("v,0902", [0.0, 0.0, 1.0, 1.0], 1))
  below = ava_map.evaluate(gt, _det(("v,0902", [0.0, 0.0, 0.49, 1.0], 1, 0.9)), [1])
  at = ava_map.evaluate(gt, _det(("v,0902", [0.0, 0.0, 0.5, 1.0], 1, 0.9)), [1])
  assert below["per_class"][1] == 0.0
  assert at["per_class"][1] == 1.0  # IoU exactly 0.5 counts (>=)


def test_wrong_class_does_not_match():
  gt = _gt(("v,0902", BOX, 1))
  r = ava_map.evaluate(gt, _det(("v,0902", BOX, 2, 0.9)), [1, 2])
  assert r["per_class"][1] == 0.0 and math.isnan(r["per_class"][2])


def test_ground_truth_box_matched_at_most_once_without_fallback():
  # Both detections overlap gt A best; the second also overlaps gt B by >= 0.5 but does not fall back to it.
  gt = _gt(("v,0902", [0.0, 0.0, 0.4, 1.0], 1), ("v,0902", [0.1, 0.0, 0.5, 1.0], 1))
  det = _det(("v,0902", [0.0, 0.0, 0.4, 1.0], 1, 0.9), ("v,0902", [0.02, 0.0, 0.42, 1.0], 1, 0.8))
  ious = ava_map.iou(np.asarray([[0.02, 0.0, 0.42, 1.0]]), np.asarray([[0.0, 0.0, 0.4, 1.0], [0.1, 0.0, 0.5, 1.0]]))
  assert ious[0, 0] > ious[0, 1] >= 0.5
  # TP, FP over 2 gt: precision 1, .5 at recall .5, .5 -> AP .5
  assert ava_map.evaluate(gt, det, [1])["per_class"][1] == pytest.approx(0.5)


def test_detections_on_frames_without_ground_truth_are_false_positives():
  gt = _gt(("v,0902", BOX, 1))
  det = _det(("v,0999", BOX, 1, 0.95), ("v,0902", BOX, 1, 0.9))
  # FP then TP: precision 0, .5 at recall 0, 1 -> AP .5
  assert ava_map.evaluate(gt, det, [1])["per_class"][1] == pytest.approx(0.5)


def test_excluded_timestamps_are_skipped_in_both():
  gt = _gt(("v,0902", BOX, 1), ("v,0903", BOX, 1))
  det = _det(("v,0902", BOX, 1, 0.9), ("v,0904", BOX, 1, 0.95))
  r = ava_map.evaluate(gt, det, [1])
  assert r["per_class"][1] == pytest.approx(0.25)  # FP, TP over 2 gt: precision .5 at recall .5
  r = ava_map.evaluate(gt, det, [1], excluded={"v,0903", "v,0904"})
  assert r["per_class"][1] == 1.0 and r["num_frames"] == 1


def test_csv_files_round_trip(tmp_path):
  (tmp_path / "labels.pbtxt").write_text('item {\n  name: "bend/bow (at the waist)"\n  id: 1\n}\n'
                                         'item {\n  name: "stand"\n  id: 12\n}\n')
  assert ava_map.read_labelmap(str(tmp_path / "labels.pbtxt")) == [(1, "bend/bow (at the waist)"), (12, "stand")]
  (tmp_path / "gt.csv").write_text("vid_a,0902,0.1,0.1,0.5,0.9,12,3\nvid_a,0902,0.1,0.1,0.5,0.9,1,3\n"
                                   "vid_a,0903,0.2,0.1,0.5,0.9,80,3\n")
  gt = ava_map.read_boxes_csv(str(tmp_path / "gt.csv"), class_whitelist=[1, 12])
  assert sorted(gt) == ["vid_a,0902"] and list(gt["vid_a,0902"][1]) == [12, 1]
  det = _det(("vid_a,0902", BOX, 12, 0.5))
  ava_map.write_detections_csv(str(tmp_path / "det.csv"), det)
  back = ava_map.read_boxes_csv(str(tmp_path / "det.csv"))
  np.testing.assert_allclose(back["vid_a,0902"][0], [BOX])
  np.testing.assert_allclose(back["vid_a,0902"][2], [0.5])
  (tmp_path / "ex.csv").write_text("vid_a,903\n")
  assert ava_map.read_exclusions(str(tmp_path / "ex.csv")) == {"vid_a,0903"}
  (tmp_path / "bad.csv").write_text("vid_a,0902,0.1\n")
  with pytest.raises(ValueError, match=r"bad.csv:1: expected 7 or 8 columns"):
    ava_map.read_boxes_csv(str(tmp_path / "bad.csv"))


def test_report_json(tmp_path):
  gt = _gt(("v,0902", BOX, 1))
  r = ava_map.evaluate(gt, _det(("v,0902", BOX, 1, 0.9)), [1, 2])
  ava_map.write_report(str(tmp_path / "m.json"), r, {1: "bend", 2: "crawl"})
  out = json.loads((tmp_path / "m.json").read_text())
  assert out["mAP@0.5IOU"] == 1.0 and out["per_class"][1] == {"id": 2, "name": "crawl", "AP": None,
                                                               "num_gt": 0, "num_detections": 0}
  assert "bend" in ava_map.format_report(r, {1: "bend"})
