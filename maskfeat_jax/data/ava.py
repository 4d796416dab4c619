r"""AVA v2.2 action detection data: the official files, the keyframe annotations, the record format, the metadata.

The modules around it: `ava_convert` (movies + official CSVs -> shards), `ava_pipeline` (the training and
evaluation readers), `ava_synthetic` (the AVA-like test fixture).

--ava_annotations (build_shards --mode=ava) holds the official files: ava_train_v2.2.csv, ava_val_v2.2.csv,
ava_action_list_v2.2_for_activitynet_2019.pbtxt (the 60 evaluated classes), ava_val_excluded_timestamps_v2.2.csv
and the person-detector boxes of the validation set, ava_detection_val_boxes_and_labels.csv (the file the
official SlowFast test uses; `--ava_det_csv` names another).

What a record is (one per keyframe; `slowfast/datasets/ava_dataset.py` + `ava_helper.py` define the clip):
  * keyframes are the CSV timestamps inside the valid range (official AVA_VALID_FRAMES: seconds 902-1798);
  * the clip is centred on the keyframe: NUM_FRAMES frames every SAMPLING_RATE frames of the 30 fps timeline,
    frame i at time t + (i * rate - NUM_FRAMES * rate // 2) / 30 (the official `get_sequence` around
    center_idx = (t - 900) * 30 of frames extracted at 30 fps), clamped to the movie; the frame shown at a
    time is the last one decoded at or before it (what `ffmpeg -r 30` extraction keeps);
  * `boxes` [N, 4] normalised x1, y1, x2, y2 (the ground-truth person boxes, one row per person: the CSV
    has one row per box and action) and `labels` [N, K] multi-hot over the K label-map classes (actions
    outside the label map, e.g. the 20 of the 80 AVA actions not evaluated, are dropped);
  * `det_boxes` [M, 4] / `det_scores` [M]: the person detector's boxes of that keyframe (validation; the
    test threshold config.detection.score_thresh is applied when reading, so it can change without
    reconverting); excluded timestamps are not converted.
Frames are stored as JPEG with the short side resized to --short_side (no upscaling), like every video
dataset of the project; the metadata file `ava.json` next to dataset_info.json holds the label map and the
clip parameters.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import pathlib
import re
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds  # no TensorFlow: features and protos only
from tensorflow_datasets.proto import tf_example_pb2

from maskfeat_jax.data import storage

FPS = 30
OFFICIAL_VALID_SECS = (902, 1798)
META_FILE = "ava.json"
REPORT_FILE = "conversion_report.json"
FILES = {
    "train": "ava_train_v2.2.csv",
    "val": "ava_val_v2.2.csv",
    "label_map": "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
    "exclusions": "ava_val_excluded_timestamps_v2.2.csv",
    "val_detections": "ava_detection_val_boxes_and_labels.csv",
}


# ----------------------------------------------------------------------------------------------- files
def frame_key(video_id: str, timestamp) -> str:
  """The official key of a keyframe: "%s,%04d" % (video_id, int(timestamp))."""
  return "%s,%04d" % (video_id, int(timestamp))


def read_labelmap(path: str) -> list[tuple[int, str]]:
  """The pbtxt label map (`item { name: "..." id: N }` blocks) -> [(id, name)] in file order."""
  with open(path) as f:
    text = f.read()
  items = []
  for block in re.findall(r"item\s*\{(.*?)\}", text, flags=re.S):
    name = re.search(r'name:\s*"([^"]*)"', block)
    ident = re.search(r"(?:label_)?id:\s*(\d+)", block)
    if not name or not ident:
      raise ValueError(f"{path}: label-map item without name or id: {block.strip()[:80]!r}")
    items.append((int(ident.group(1)), name.group(1)))
  if not items:
    raise ValueError(f"{path}: no `item {{ name: ... id: ... }}` entries")
  return items


def read_exclusions(path: str | None) -> set[str]:
  """ava_val_excluded_timestamps_v2.2.csv (video_id, timestamp rows) -> set of frame keys."""
  if not path:
    return set()
  out = set()
  with open(path) as f:
    for n, row in enumerate(csv.reader(f), 1):
      if not row:
        continue
      if len(row) != 2:
        raise ValueError(f"{path}:{n}: expected 2 columns (video_id, timestamp), got {len(row)}: {row}")
      out.add(frame_key(row[0], row[1]))
  return out


# ----------------------------------------------------------------------------------------------- annotations
@dataclasses.dataclass
class Keyframe:
  video_id: str
  timestamp: int
  boxes: np.ndarray  # [N, 4] float32 x1 y1 x2 y2
  labels: np.ndarray  # [N, K] uint8 multi-hot
  det_boxes: np.ndarray  # [M, 4] float32
  det_scores: np.ndarray  # [M] float32

  @property
  def key(self) -> str:
    return frame_key(self.video_id, self.timestamp)


def _rows(path: str):
  with open(path) as f:
    for n, row in enumerate(csv.reader(f), 1):
      if row:
        if len(row) not in (7, 8):
          raise ValueError(f"{path}:{n}: expected 7 or 8 columns (video_id, timestamp, x1, y1, x2, y2, "
                           f"action_id[, person_id | score]), got {len(row)}: {row}")
        yield n, row


def _box(path, n, row) -> tuple[float, float, float, float]:
  try:
    box = tuple(float(v) for v in row[2:6])
    int(row[1])
  except ValueError:
    raise ValueError(f"{path}:{n}: timestamp / box values must be numbers, got {row[1:6]}") from None
  return box


def read_annotations(gt_csv: str | None, label_map: Sequence[tuple[int, str]], *, det_csv: str | None = None,
                     exclusions: set[str] = frozenset(), valid_secs: tuple[int, int] = OFFICIAL_VALID_SECS
                     ) -> dict[str, list[Keyframe]]:
  """{video_id: [Keyframe sorted by time]} of one split (ground truth and/or detector boxes)."""
  index = {cid: i for i, (cid, _) in enumerate(label_map)}
  k = len(label_map)
  gt: dict[str, dict[tuple, np.ndarray]] = collections.defaultdict(dict)
  det: dict[str, dict[tuple, float]] = collections.defaultdict(dict)
  meta: dict[str, tuple[str, int]] = {}

  def keep(row) -> str | None:
    ts = int(row[1])
    if not valid_secs[0] <= ts <= valid_secs[1]:
      return None
    key = frame_key(row[0], ts)
    if key in exclusions:
      return None
    meta[key] = (row[0], ts)
    return key

  if gt_csv:
    for n, row in _rows(gt_csv):
      box = tuple(round(v, 3) for v in _box(gt_csv, n, row))
      key = keep(row)
      if key is None:
        continue
      labels = gt[key].setdefault(box, np.zeros((k,), np.uint8))
      if row[6] != "" and int(row[6]) in index:
        labels[index[int(row[6])]] = 1
  if det_csv:
    for n, row in _rows(det_csv):
      box = tuple(round(v, 3) for v in _box(det_csv, n, row))
      key = keep(row)
      if key is None:
        continue
      score = float(row[7]) if len(row) == 8 else 1.0
      det[key][box] = max(score, det[key].get(box, -1.0))  # one row per (box, label): keep the box once
  out: dict[str, list[Keyframe]] = collections.defaultdict(list)
  for key in sorted(set(gt) | set(det)):
    video_id, ts = meta[key]
    g, d = gt.get(key, {}), det.get(key, {})
    out[video_id].append(Keyframe(
        video_id, ts, np.asarray(list(g), np.float32).reshape(-1, 4),
        np.asarray(list(g.values()), np.uint8).reshape(-1, k), np.asarray(list(d), np.float32).reshape(-1, 4),
        np.asarray(list(d.values()), np.float32)))
  return {v: sorted(kfs, key=lambda f: f.timestamp) for v, kfs in out.items()}


# ----------------------------------------------------------------------------------------------- format
def features(num_classes: int):
  """The TFDS FeaturesDict of an AVA keyframe record."""
  return tfds.features.FeaturesDict({
      "video": tfds.features.Sequence(tfds.features.Image(encoding_format="jpeg")),
      "video_id": tfds.features.Text(),
      "timestamp": tfds.features.Scalar(dtype=np.int32),
      "fps": tfds.features.Scalar(dtype=np.float32),
      "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "labels": tfds.features.Tensor(shape=(None, num_classes), dtype=np.int64),
      "det_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "det_scores": tfds.features.Tensor(shape=(None,), dtype=np.float32),
  })


def parse_record(record: bytes, num_classes: int) -> dict[str, Any]:
  """Record bytes -> frames (JPEG bytes), video_id, timestamp, fps, boxes, labels, det_boxes, det_scores."""
  fmap = tf_example_pb2.Example.FromString(record).features.feature
  for key in ("video", "boxes", "labels"):
    if key not in fmap:
      raise ValueError(f"AVA record has no {key!r} feature (keys: {sorted(fmap.keys())}); not an AVA dataset?")

  def floats(key, width):
    return np.asarray(fmap[key].float_list.value, np.float32).reshape((-1,) + width)
  return {
      "frames": list(fmap["video"].bytes_list.value),
      "video_id": fmap["video_id"].bytes_list.value[0].decode("utf-8"),
      "timestamp": int(fmap["timestamp"].int64_list.value[0]),
      "fps": float(fmap["fps"].float_list.value[0]),
      "boxes": floats("boxes", (4,)),
      "labels": np.asarray(fmap["labels"].int64_list.value, np.uint8).reshape(-1, num_classes),
      "det_boxes": floats("det_boxes", (4,)),
      "det_scores": floats("det_scores", ()),
  }


@dataclasses.dataclass(frozen=True)
class AvaMeta:
  """What the readers need of a converted AVA directory (also what run.py's dataset info carries)."""
  name: str
  directory: str
  label_map: tuple[tuple[int, str], ...]
  num_frames: int
  sampling_rate: int
  split_files: dict[str, tuple[str, ...]]
  split_sizes: dict[str, int]
  image_mode: bool = False

  @property
  def num_classes(self) -> int:
    return len(self.label_map)

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(n for _, n in self.label_map)


def read_meta(ds_dir: str | os.PathLike) -> AvaMeta:
  ds_dir = pathlib.Path(ds_dir)
  meta_file = ds_dir / META_FILE
  if not meta_file.is_file():
    raise FileNotFoundError(f"{meta_file} missing: {ds_dir} is not an AVA dataset converted with "
                            "`python -m maskfeat_jax.data.build_shards --mode=ava`")
  m = json.loads(meta_file.read_text())
  info = tfds.builder_from_directory(os.fspath(ds_dir)).info
  files = {s: tuple(os.fspath(p) for p in i.filepaths) for s, i in info.splits.items()}
  sizes = {s: int(i.num_examples) for s, i in info.splits.items()}
  return AvaMeta(name=info.name, directory=os.fspath(ds_dir),
                 label_map=tuple((int(i), str(n)) for i, n in m["label_map"]), num_frames=int(m["num_frames"]),
                 sampling_rate=int(m["sampling_rate"]), split_files=files, split_sizes=sizes)


def load_meta(config) -> AvaMeta:
  ds_dir = storage.find_dataset_dir(config.data.data_dir, config.data.name)
  if ds_dir is None:
    raise FileNotFoundError(
        f"AVA dataset {config.data.name!r} not found under config.data.data_dir={config.data.data_dir!r}; "
        "convert it with `python -m maskfeat_jax.data.build_shards --mode=ava` (README, Downstream transfer).")
  meta = read_meta(ds_dir)
  if meta.num_frames != int(config.data.num_frames):
    raise ValueError(f"{ds_dir} holds clips of {meta.num_frames} frames (sampling rate {meta.sampling_rate}) "
                     f"but config.data.num_frames={config.data.num_frames}; reconvert with "
                     f"--num_frames={config.data.num_frames} or change the config.")
  return meta
