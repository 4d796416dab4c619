"""AVA conversion (data/ava_convert.py) of a generated AVA-like fixture, and the train / eval readers."""
import json
import pathlib

import ml_collections
import numpy as np
import pytest

from maskfeat_jax.data import ava
from maskfeat_jax.data import ava_convert
from maskfeat_jax.data import ava_pipeline
from maskfeat_jax.data import ava_synthetic
from maskfeat_jax.data import pipeline
from maskfeat_jax.eval import ava_map

NUM_FRAMES, RATE = 4, 8


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("ava")
  paths = ava_synthetic.write_synthetic(root / "raw", seconds=(2, 5))
  splits = {"train": {"gt": paths["train"], "det": None},
            "val": {"gt": paths["val"], "det": paths["val_detections"]}}
  report = ava_convert.convert(paths["videos_dir"], splits, paths["label_map"], str(root / "out"), "ava_tiny",
                       exclusions_file=paths["exclusions"], num_frames=NUM_FRAMES, sampling_rate=RATE,
                       short_side=80, valid_secs=(2, 5))
  return paths, report, ava.read_meta(report["dataset_dir"])


def test_clip_times_are_centred_on_the_keyframe():
  t = ava_convert.clip_times(902, 16, 4)
  assert len(t) == 16 and t[8] == 902 and np.allclose(np.diff(t), 4 / 30)
  assert t[0] == pytest.approx(902 - 32 / 30)


def test_read_annotations_merges_rows_per_box_and_keeps_label_map_classes(converted):
  paths, _, _ = converted
  label_map = ava_map.read_labelmap(paths["label_map"])
  per_movie = ava.read_annotations(paths["train"], label_map, valid_secs=(2, 5))
  kf = per_movie["train_a"][0]
  assert kf.timestamp == 2 and kf.boxes.shape == (3, 4) and kf.labels.shape == (3, 3)
  # one colour per person, id 4 (not in the label map) dropped
  assert np.all(kf.labels[:, :2].sum(1) == 1)
  assert [f.timestamp for f in per_movie["train_a"]] == [2, 3, 4, 5]


def test_conversion_report_and_splits(converted):
  _, report, meta = converted
  assert meta.split_sizes == {"train": 8, "val": 3}  # val: 4 keyframes minus the excluded one
  reasons = {m["video_id"]: m["reason"] for m in report["skipped_movies"]}
  assert reasons["val_missing"].startswith("missing") and reasons["train_broken"].startswith("broken")
  on_disk = json.loads(open(f"{report['dataset_dir']}/{ava.REPORT_FILE}").read())
  assert on_disk["splits"]["train"]["skipped"] == 1 and meta.num_classes == 3 and meta.num_frames == NUM_FRAMES


def test_keyframe_clip_shows_the_boxes(converted):
  """The clip's middle frame is the keyframe: the ground-truth boxes cover the coloured people there."""
  _, _, meta = converted
  source = ava.storage.open_source(meta.split_files["val"])
  p = ava.parse_record(source[0], meta.num_classes)
  assert p["video_id"] == "val_a" and p["timestamp"] == 2 and len(p["frames"]) == NUM_FRAMES
  frame = pipeline.decode_frames(p["frames"], np.asarray([NUM_FRAMES // 2]))[0].astype(int)
  h, w = frame.shape[:2]
  coloured = (np.abs(frame[..., 0] - frame[..., 1]) > 80)
  inside = np.zeros((h, w), bool)
  for x1, y1, x2, y2 in p["boxes"]:
    inside[int(y1 * h):int(np.ceil(y2 * h)), int(x1 * w):int(np.ceil(x2 * w))] = True
  assert coloured.sum() > 100 and coloured[inside].mean() > 0.9 and coloured[~inside].mean() < 0.02
  assert len(p["det_boxes"]) >= 4 and np.any(p["det_scores"] < 0.8)


def _config(meta, **detection):
  c = ml_collections.ConfigDict({
      "seed": 0, "batch_size": 2, "data": {"num_frames": NUM_FRAMES, "crop_size": 64, "train_jitter_scales": (64, 80),
                                           "random_flip": True, "shuffle": True, "num_workers": 0,
                                           "train_split": "train", "data_dir": str(meta.directory), "name": meta.name},
      "detection": {"max_boxes": 4, "eval_max_boxes": 6, "train_box_jitter": 0.0, "score_thresh": 0.8,
                    **detection}})
  return c


def test_train_batches_move_boxes_with_the_crop(converted):
  _, _, meta = converted
  spec = ava_pipeline.spec_for(_config(meta), meta)
  record = ava.storage.open_source(meta.split_files["train"])[0]
  ex = ava_pipeline.train_example(spec, record, np.random.default_rng(0))
  assert ex["video"].shape == (1, NUM_FRAMES, 64, 64, 3) and ex["boxes"].shape == (1, 4, 4)
  assert ex["box_mask"][0].tolist() == [True, True, True, False] and ex["box_labels"].shape == (1, 4, 3)
  # The middle frame's coloured pixels lie inside the transformed boxes.
  frame = ex["video"][0, NUM_FRAMES // 2].astype(int)
  coloured = np.abs(frame[..., 0] - frame[..., 1]) > 80
  inside = np.zeros(coloured.shape, bool)
  for x1, y1, x2, y2 in ex["boxes"][0][ex["box_mask"][0]] * 64:
    inside[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = True
  assert coloured[~inside].mean() < 0.03


def test_crop_boxes_round_trip():
  boxes = np.asarray([[0.1, 0.2, 0.5, 0.9]], np.float32)
  c = ava_pipeline.crop_boxes(boxes, (80, 107), (80, 107), (8, 20), 64, False)
  np.testing.assert_allclose(ava_pipeline.uncrop_boxes(c, (80, 107), (8, 20), 64), [[0.1869, 0.2, 0.5, 0.9]], atol=1e-3)
  flipped = ava_pipeline.crop_boxes(boxes, (80, 107), (80, 107), (8, 20), 64, True)
  np.testing.assert_allclose(flipped[0, [0, 2]], 1 - c[0, [2, 0]], atol=1e-6)


def test_eval_example_uses_detections_above_the_threshold(converted):
  _, _, meta = converted
  record = ava.storage.open_source(meta.split_files["val"])[0]
  spec = ava_pipeline.spec_for(_config(meta), meta)
  ex = ava_pipeline.eval_example(spec, record, num_crops=3)
  p = ava.parse_record(record, meta.num_classes)
  n = int(np.sum(p["det_scores"] >= 0.8))
  assert len(ex["frame_boxes"]) == n and ex["box_mask"].shape == (3, 6) and int(ex["box_mask"][0].sum()) == n
  assert ex["video"].shape == (3, NUM_FRAMES, 64, 64, 3) and ex["key"] == "val_a,0002"
  # Each box's crop shows at least as much of it as any other crop; the crops' order is centre, left, right.
  # 80 x 107 stored frames at short side 64 -> 64 x 85: crops at x = 11 (centre), 0 (left), 21 (right)
  for i, (x1, _, x2, _) in enumerate(ex["frame_boxes"]):
    shown = [ava_pipeline.visible_fraction(ex["frame_boxes"][i:i + 1], (64, 85), (0, x0), 64)[0] for x0 in (11, 0, 21)]
    assert shown[ex["crop_of_box"][i]] == pytest.approx(max(shown))
  assert set(ex["crop_of_box"]) <= {0, 1, 2}


def test_side_crops_cover_what_the_centre_crop_cuts():
  boxes = np.asarray([[0.0, 0.1, 0.1, 0.9], [0.45, 0.1, 0.55, 0.9], [0.9, 0.1, 1.0, 0.9]])
  fractions = [ava_pipeline.visible_fraction(boxes, (64, 114), (0, x0), 64) for x0 in (25, 0, 50)]  # centre, left, right
  np.testing.assert_allclose(np.argmax(np.stack(fractions), axis=0), [1, 0, 2])
  assert fractions[0][0] == 0.0 and fractions[0][2] == 0.0  # the centre crop alone would miss both edge people


def test_missing_annotation_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="ava_train_v2.2.csv"):
    ava_convert.convert_from_annotation_dir(str(tmp_path), str(tmp_path), str(tmp_path / "o"), "x")


def test_time_offset_reads_cut_movies_on_the_movie_timeline(converted):
  """A keyframe at movie time t in a file starting at movie time o is read at file time t - o."""
  paths, _, _ = converted
  movie = f"{paths['videos_dir']}/train_a.mp4"
  empty = np.zeros((0, 4), np.float32)

  def frames(ts, offset):
    kf = ava.Keyframe("train_a", ts, empty, np.zeros((0, 3), np.uint8), empty, np.zeros((0,), np.float32))
    (status, got), = ava_convert.movie_records(movie, [kf], lambda _, f: f, num_frames=NUM_FRAMES, sampling_rate=RATE,
                                      short_side=80, time_offset=offset)
    assert status == "ok"
    return got
  assert frames(903, 900.0) == frames(3, 0.0) != frames(4, 0.0)


def test_rerun_reuses_finished_movies(converted, tmp_path):
  paths, report, meta = converted
  splits = {"train": {"gt": paths["train"], "det": None},
            "val": {"gt": paths["val"], "det": paths["val_detections"]}}
  before = [bytes(ava.storage.open_source(meta.split_files["train"])[i]) for i in range(meta.split_sizes["train"])]
  again = ava_convert.convert(paths["videos_dir"], splits, paths["label_map"], str(pathlib.Path(report["dataset_dir"]).parents[1]),
                      "ava_tiny", exclusions_file=paths["exclusions"], num_frames=NUM_FRAMES, sampling_rate=RATE,
                      short_side=80, valid_secs=(2, 5))
  assert again["reused_movies"] == 3 and again["splits"] == report["splits"]
  meta2 = ava.read_meta(again["dataset_dir"])
  after = [bytes(ava.storage.open_source(meta2.split_files["train"])[i]) for i in range(meta2.split_sizes["train"])]
  assert after == before


def test_eval_boxes_beyond_the_static_count_are_counted(converted):
  _, _, meta = converted
  record = ava.storage.open_source(meta.split_files["val"])[0]
  ex = ava_pipeline.eval_example(ava_pipeline.spec_for(_config(meta, eval_max_boxes=2), meta), record, num_crops=1)
  p = ava.parse_record(record, meta.num_classes)
  assert len(ex["frame_boxes"]) == 2 and ex["dropped"] == int(np.sum(p["det_scores"] >= 0.8)) - 2 > 0
