r"""AVA v2.2 action detection data: conversion of the movies + official CSVs into shards, and the readers.

  python -m maskfeat_jax.data.build_shards --mode=ava --videos_dir=/data/ava/videos_15min \
      --ava_annotations=/data/ava/annotations --output_dir=~/tensorflow_datasets --name=ava_v2_2

--ava_annotations holds the official files: ava_train_v2.2.csv, ava_val_v2.2.csv,
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

Broken or missing movies (and keyframes past a truncated movie's end) are skipped, counted and listed in
conversion_report.json; the conversion itself does not fail on them.

Readers: `make_train_iterator(config, ...)` (Grain, checkpointable; ground-truth boxes, short-side jitter +
crop + flip with the boxes, optional box jitter) and `eval_batches(config, split)` (detected boxes above the
score threshold, centre crop; the ground truth and the boxes in frame coordinates for the evaluation).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import re
import shutil
from typing import Any, Iterator, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds  # no TensorFlow: features and protos only
from absl import logging
from tensorflow_datasets.proto import tf_example_pb2

from maskfeat_jax.data import pipeline
from maskfeat_jax.data import storage
from maskfeat_jax.data import transforms
from maskfeat_jax.data import worker_pool

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


# ----------------------------------------------------------------------------------------------- conversion
def clip_times(timestamp: float, num_frames: int, sampling_rate: int, fps: float = FPS) -> np.ndarray:
  """Times of the clip's frames: t + (i * rate - num_frames * rate // 2) / fps (official `get_sequence`)."""
  half = num_frames * sampling_rate // 2
  return timestamp + (np.arange(num_frames) * sampling_rate - half) / fps


def movie_records(path: str, keyframes: Sequence[Keyframe], serialize, *, num_frames: int, sampling_rate: int,
                  short_side: int, jpeg_quality: int = 90, time_offset: float = 0.0) -> Iterator[tuple[str, Any]]:
  """Decodes one movie once (from just before its first clip) and yields ('ok', record) per keyframe in time
  order, ('skip', (key, reason)) for keyframes past the decoded end. Raises for an unreadable movie.

  time_offset: movie time of the file's start (0 for the full movies; 900 for the official 15-minute cuts
  `ffmpeg -ss 900 -t 901`), subtracted from the CSV timestamps.
  """
  import av  # pylint: disable=g-import-not-at-top
  targets = []  # (time, keyframe index, slot)
  for k, kf in enumerate(keyframes):
    for slot, t in enumerate(clip_times(kf.timestamp - time_offset, num_frames, sampling_rate)):
      targets.append((float(t), k, slot))
  targets.sort()
  slots: dict[int, list] = collections.defaultdict(lambda: [None] * num_frames)
  done = [0] * len(keyframes)
  emitted = set()

  def fill(k, slot, data):
    buf = slots[k]
    if buf[slot] is None:
      buf[slot] = data
      done[k] += 1

  def ready():
    for k in sorted(slots):
      if done[k] == num_frames and k not in emitted:
        kf = keyframes[k]
        emitted.add(k)
        yield "ok", serialize(kf, slots.pop(k))

  def jpeg(entry):
    """The JPEG of a decoded frame, encoded once and only if a clip uses it."""
    if entry[2] is None:
      entry[2] = storage.encode_jpeg(entry[1].to_ndarray(width=size[0], height=size[1], format="rgb24",
                                                         interpolation="AREA"), jpeg_quality)
    return entry[2]

  size = None
  with av.open(path) as container:
    if not container.streams.video:
      raise ValueError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    start = targets[0][0]
    if start > 2.0:  # seek to a key frame before the first clip (decoding 15 min from 0 is wasted work)
      container.seek(int((start - 2.0) * 1_000_000), backward=True, any_frame=False)
    prev = None  # [time, frame, jpeg]: the frame on screen
    pos = 0
    for frame in container.decode(stream):
      cur = [float(frame.time) if frame.time is not None else 0.0, frame, None]
      if size is None:
        size = transforms.downscaled_size(frame.width, frame.height, short_side)
      # Targets before this frame's start show the previous frame (before the first frame: this one).
      while pos < len(targets) and targets[pos][0] < cur[0] - 1e-6:
        fill(targets[pos][1], targets[pos][2], jpeg(prev if prev is not None else cur))
        pos += 1
      prev = cur
      yield from ready()
      if pos >= len(targets):
        break
    if prev is None:
      raise ValueError("no decodable video frames")
    last_t = prev[0]
    # Targets after the last frame: the last frame (the official clamp to the movie), unless the clip's
    # keyframe itself lies beyond the decoded end (a truncated movie): that keyframe is skipped.
    for _, k, slot in targets[pos:]:
      if keyframes[k].timestamp - time_offset <= last_t + 1.0:
        fill(k, slot, jpeg(prev))
  yield from ready()
  for k, kf in enumerate(keyframes):
    if k not in emitted:
      yield "skip", (kf.key, f"keyframe at {kf.timestamp}s is past the decoded end of the movie ({last_t:.1f}s)")


def find_movies(videos_dir: str) -> dict[str, str]:
  """{video_id: path}: files named `<video_id>.<ext>` anywhere under videos_dir (AVA ids contain '-' / '_')."""
  out = {}
  for root, _, names in os.walk(videos_dir):
    for name in sorted(names):
      stem, ext = os.path.splitext(name)
      if ext.lower() in (".mp4", ".mkv", ".webm", ".avi", ".mov") and stem not in out:
        out[stem] = os.path.join(root, name)
  return out


STATE_DIR = ".convert_ava"


def _serializer(num_classes: int, sampling_rate: int):
  feats = features(num_classes)

  def serialize(kf: Keyframe, frames):
    return feats.serialize_example(feats.encode_example({
        "video": frames, "video_id": kf.video_id, "timestamp": np.int32(kf.timestamp),
        "fps": np.float32(FPS / sampling_rate), "boxes": kf.boxes, "labels": kf.labels.astype(np.int64),
        "det_boxes": kf.det_boxes, "det_scores": kf.det_scores}))
  return serialize


@dataclasses.dataclass(frozen=True)
class _MovieJob:
  split: str
  video_id: str
  path: str
  keyframes: tuple
  out: str  # the movie's finished shard in STATE_DIR (written atomically)


def _convert_movie(job: _MovieJob, opts: dict) -> tuple[str, Any]:
  """One movie -> its shard of keyframe records: ('ok', {'count', 'skipped'}) or ('skip', reason); never raises
  for a bad movie (runs in a converter worker process, data/worker_pool.py)."""
  serialize = _serializer(opts["num_classes"], opts["sampling_rate"])
  writer = storage.ShardWriter(job.out)
  skipped = []
  try:
    for status, payload in movie_records(job.path, job.keyframes, serialize, num_frames=opts["num_frames"],
                                         sampling_rate=opts["sampling_rate"], short_side=opts["short_side"],
                                         jpeg_quality=opts["jpeg_quality"], time_offset=opts["time_offset"]):
      if status == "ok":
        writer.write(payload)
      else:
        skipped.append({"split": job.split, "key": payload[0], "reason": payload[1]})
  except Exception as e:  # pylint: disable=broad-except  (a broken movie is reported, never fatal)
    writer.abort()
    return "skip", f"broken: {job.path}: {type(e).__name__}: {e}"
  if writer.count == 0:
    writer.abort()
  else:
    writer.close()
  return "ok", {"count": writer.count, "skipped": skipped}


def _fingerprint(job: _MovieJob, opts: dict) -> str:
  # what the shard depends on: the options, the movie file (path and size) and every keyframe's annotations
  h = hashlib.sha256(json.dumps({**opts, "movie": job.path, "bytes": os.path.getsize(job.path)},
                                sort_keys=True).encode())
  for kf in job.keyframes:
    h.update(f"{kf.key}|{kf.boxes.tobytes().hex()}|{kf.labels.tobytes().hex()}|{kf.det_boxes.tobytes().hex()}|"
             f"{kf.det_scores.tobytes().hex()}".encode())
  return h.hexdigest()


def convert(videos_dir: str, split_annotations: dict[str, dict[str, str | None]], label_map_file: str,
            output_dir: str, name: str, *, exclusions_file: str | None = None, num_frames: int = 16,
            sampling_rate: int = 4, short_side: int = 320, jpeg_quality: int = 90,
            valid_secs: tuple[int, int] = OFFICIAL_VALID_SECS, version: str = storage.DEFAULT_VERSION,
            progress: bool = False, time_offset: float = 0.0, num_workers: int = 0) -> dict:
  """Converts the splits ({split: {'gt': csv, 'det': csv or None}}) into OUTPUT_DIR/NAME/VERSION.

  Movies convert in `num_workers` processes (0 = this one; a worker that crashes skips only its movie); each
  movie's finished shard is kept in DS_DIR/.convert_ava/ with a sidecar naming what it holds, so a rerun
  (after a crash, or with more movies) converts only what is missing. The split's shards are then linked to
  their final names. Returns (and writes as conversion_report.json) what was converted and skipped.
  """
  label_map = read_labelmap(label_map_file)
  exclusions = read_exclusions(exclusions_file)
  ds_dir = storage.dataset_dir(output_dir, name, version)
  ds_dir.mkdir(parents=True, exist_ok=True)
  movies = find_movies(videos_dir)
  opts = {"num_classes": len(label_map), "num_frames": num_frames, "sampling_rate": sampling_rate,
          "short_side": short_side, "jpeg_quality": jpeg_quality, "time_offset": float(time_offset)}
  report = {"dataset_dir": os.fspath(ds_dir), "splits": {}, "skipped_movies": [], "skipped_keyframes": [],
            "reused_movies": 0}
  split_infos = []
  for split, files in sorted(split_annotations.items()):
    per_movie = read_annotations(files.get("gt"), label_map, det_csv=files.get("det"), exclusions=exclusions,
                                 valid_secs=valid_secs)
    state = ds_dir / STATE_DIR / split
    state.mkdir(parents=True, exist_ok=True)
    jobs, results, skipped = [], {}, 0
    for video_id in sorted(per_movie):
      kfs = tuple(per_movie[video_id])
      path = movies.get(video_id)
      if path is None:
        report["skipped_movies"].append({"split": split, "video_id": video_id, "keyframes": len(kfs),
                                         "reason": f"missing: no {video_id}.<mp4|mkv|webm|...> under {videos_dir}"})
        skipped += len(kfs)
        continue
      job = _MovieJob(split, video_id, path, kfs, os.fspath(state / f"{video_id}.array_record"))
      sidecar = state / f"{video_id}.json"
      if sidecar.is_file():
        done = json.loads(sidecar.read_text())
        if done.get("fingerprint") == _fingerprint(job, opts) and (done["count"] == 0 or os.path.isfile(job.out)):
          results[video_id] = ("ok", done)
          report["reused_movies"] += 1
          continue
      jobs.append(job)

    def finished(job, result):
      status, payload = result
      if status == "ok":
        (state / f"{job.video_id}.json").write_text(json.dumps({**payload, "fingerprint": _fingerprint(job, opts)}))
      results[job.video_id] = result

    if num_workers > 0 and len(jobs) > 1:
      pool = worker_pool.CrashSafePool(functools.partial(_convert_movie, opts=opts), jobs, num_workers,
                                       describe=lambda j: j.path)
      for job, result in zip(jobs, pool):
        finished(job, result)
        if progress:
          print(f"[ava {split}] {job.video_id}: {result[0]}", flush=True)
    else:
      for job in jobs:
        finished(job, _convert_movie(job, opts))
        if progress:
          print(f"[ava {split}] {job.video_id}: {results[job.video_id][0]}", flush=True)
    done_shards = []
    for video_id in sorted(results):
      status, payload = results[video_id]
      if status != "ok":
        logging.warning("AVA: skipping movie %s (%s)", movies[video_id], payload)
        report["skipped_movies"].append({"split": split, "video_id": video_id,
                                         "keyframes": len(per_movie[video_id]), "reason": payload})
        skipped += len(per_movie[video_id])
        continue
      report["skipped_keyframes"] += payload["skipped"]
      skipped += len(payload["skipped"])
      if payload["count"]:
        done_shards.append((state / f"{video_id}.array_record", payload["count"]))
    n = len(done_shards)
    for old in ds_dir.glob(f"{name}-{split}.{storage.FILE_FORMAT}-*"):
      old.unlink()  # shards of an earlier run (their count may differ)
    for k, (src, _) in enumerate(done_shards):
      dst = ds_dir / storage.shard_filename(name, split, k, n)
      try:
        os.link(src, dst)  # the state copy stays for the next rerun
      except OSError:
        shutil.copyfile(src, dst)
    report["splits"][split] = {"keyframes": sum(c for _, c in done_shards), "shards": n, "skipped": skipped}
    if n:
      template = tfds.core.ShardedFileTemplate(data_dir=ds_dir, template=storage.FILENAME_TEMPLATE,
                                               dataset_name=name, split=split, filetype_suffix=storage.FILE_FORMAT)
      split_infos.append(tfds.core.SplitInfo(
          name=split, shard_lengths=[c for _, c in done_shards],
          num_bytes=sum((ds_dir / storage.shard_filename(name, split, k, n)).stat().st_size for k in range(n)),
          filename_template=template))
  if not split_infos:
    raise ValueError(f"AVA conversion produced no keyframe: {json.dumps(report['skipped_movies'][:3])}")
  tfds.folder_dataset.write_metadata(data_dir=ds_dir, features=features(len(label_map)), split_infos=split_infos,
                                     version=version, check_data=False,
                                     description="AVA v2.2 keyframe clips (maskfeat_jax)")
  (ds_dir / META_FILE).write_text(json.dumps({
      "label_map": label_map, "num_frames": num_frames, "sampling_rate": sampling_rate, "fps": FPS,
      "short_side": short_side, "valid_secs": list(valid_secs), "time_offset": time_offset}, indent=1))
  (ds_dir / REPORT_FILE).write_text(json.dumps(report, indent=1))
  report["converted"] = sum(s["keyframes"] for s in report["splits"].values())
  report["skipped"] = sum(s["skipped"] for s in report["splits"].values())
  return report


def convert_from_annotation_dir(videos_dir: str, annotations_dir: str, output_dir: str, name: str, *,
                                det_csv: str = "", **kwargs) -> dict:
  """The official file names under annotations_dir (FILES); a missing file is an error naming it."""
  def need(key, path=None):
    path = path or os.path.join(annotations_dir, FILES[key])
    if not os.path.isfile(path):
      raise FileNotFoundError(f"AVA annotation file {path} not found (--ava_annotations / --ava_det_csv)")
    return path
  splits = {"train": {"gt": need("train"), "det": None},
            "val": {"gt": need("val"), "det": need("val_detections", det_csv or None)}}
  return convert(videos_dir, splits, need("label_map"), output_dir, name, exclusions_file=need("exclusions"),
                 **kwargs)


# ----------------------------------------------------------------------------------------------- reading
def _pad(boxes: np.ndarray, n: int, fill=0.0) -> tuple[np.ndarray, np.ndarray]:
  out = np.full((n,) + boxes.shape[1:], fill, boxes.dtype)
  m = min(n, len(boxes))
  out[:m] = boxes[:m]
  mask = np.zeros((n,), bool)
  mask[:m] = True
  return out, mask


def crop_boxes(boxes: np.ndarray, frame_hw: tuple[int, int], resized_hw: tuple[int, int],
               offset: tuple[int, int], crop: int, flip: bool) -> np.ndarray:
  """Normalised frame boxes -> normalised boxes of the crop (clipped to it; flipped with it)."""
  rh, rw = resized_hw
  b = boxes.astype(np.float64) * np.asarray([rw, rh, rw, rh])
  b = b - np.asarray([offset[1], offset[0], offset[1], offset[0]])
  b = np.clip(b, 0.0, crop)
  if flip:
    b = np.stack([crop - b[:, 2], b[:, 1], crop - b[:, 0], b[:, 3]], axis=1)
  return (b / crop).astype(np.float32)


def uncrop_boxes(boxes: np.ndarray, resized_hw, offset, crop: int) -> np.ndarray:
  """Inverse of crop_boxes without flip (boxes of the crop -> normalised frame boxes)."""
  rh, rw = resized_hw
  b = boxes.astype(np.float64) * crop + np.asarray([offset[1], offset[0], offset[1], offset[0]])
  return (b / np.asarray([rw, rh, rw, rh])).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Spec:
  """The plain config values the map functions need (picklable for worker processes)."""
  seed: int
  num_classes: int
  num_frames: int
  crop_size: int
  jitter_scales: tuple[int, int]
  random_flip: bool
  max_boxes: int
  eval_max_boxes: int
  box_jitter: float
  score_thresh: float


def spec_for(config, meta: AvaMeta) -> Spec:
  d = config.detection
  return Spec(seed=int(config.seed), num_classes=meta.num_classes, num_frames=int(config.data.num_frames),
              crop_size=int(config.data.crop_size),
              jitter_scales=tuple(int(x) for x in config.data.train_jitter_scales),
              random_flip=bool(config.data.random_flip), max_boxes=int(d.max_boxes),
              eval_max_boxes=int(d.eval_max_boxes),
              box_jitter=float(d.train_box_jitter), score_thresh=float(d.score_thresh))


def train_example(spec: Spec, record: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """One training clip: short-side jitter, random crop, flip, boxes moved with them (official AVA train)."""
  p = parse_record(record, spec.num_classes)
  frames = pipeline.decode_frames(p["frames"], np.arange(len(p["frames"])))
  h, w = frames.shape[1:3]
  short = int(round(rng.uniform(spec.jitter_scales[0], spec.jitter_scales[1])))
  rh, rw = transforms.short_side_size(h, w, max(short, spec.crop_size))
  y = int(rng.integers(0, rh - spec.crop_size + 1))
  x = int(rng.integers(0, rw - spec.crop_size + 1))
  flip = bool(spec.random_flip and rng.random() < 0.5)
  clip = transforms.resize_crop(frames, (rh, rw), (y, x), spec.crop_size, flip)
  boxes = p["boxes"]
  if spec.box_jitter > 0 and len(boxes):
    # Box jitter (optional, not in the official loader): each coordinate moves by N(0, j * box size).
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    boxes = np.clip(boxes + rng.normal(0.0, spec.box_jitter, boxes.shape) * size, 0.0, 1.0).astype(np.float32)
  boxes = crop_boxes(boxes, (h, w), (rh, rw), (y, x), spec.crop_size, flip)
  if len(boxes) > spec.max_boxes:
    logging.log_first_n(logging.WARNING, "AVA keyframe %s,%s has %d boxes; keeping the first %d "
                        "(config.detection.max_boxes)", 5, p["video_id"], p["timestamp"], len(boxes), spec.max_boxes)
  boxes, mask = _pad(boxes, spec.max_boxes)
  labels, _ = _pad(p["labels"], spec.max_boxes)
  return {"video": clip[None], "boxes": boxes[None], "box_mask": mask[None], "box_labels": labels[None]}


class _TrainMap:
  def __init__(self, spec: Spec, files: tuple[str, ...], num_examples: int, shuffle: bool, process_index: int,
               process_count: int, per_batch: int):
    self.spec, self.files, self.num_examples, self.shuffle = spec, files, num_examples, shuffle
    self.process_index, self.process_count, self.per_batch = process_index, process_count, per_batch
    self._source = None

  def __call__(self, step_index: int, _):
    batch, row = divmod(step_index, self.per_batch)
    position = (batch * self.process_count + self.process_index) * self.per_batch + row
    epoch, position = divmod(position, self.num_examples)
    order = (np.random.default_rng([self.spec.seed, epoch, self.num_examples, 0xA7A]).permutation(self.num_examples)
             if self.shuffle else np.arange(self.num_examples))
    example = int(order[position])
    if self._source is None:
      self._source = storage.open_source(self.files)
    rng = np.random.default_rng([self.spec.seed, epoch, example])
    return train_example(self.spec, self._source[example], rng)

  def __getstate__(self):
    return {**self.__dict__, "_source": None}


def _concat(elements):
  return {k: np.concatenate([e[k] for e in elements]) for k in elements[0]}


def make_train_iterator(config, *, process_index: int = 0, process_count: int = 1):
  """Infinite, checkpointable iterator of {'video', 'boxes', 'box_mask', 'box_labels'} training batches."""
  meta = load_meta(config)
  split = config.data.train_split
  if split not in meta.split_files:
    raise ValueError(f"config.data.train_split={split!r}: {meta.directory} has splits {sorted(meta.split_files)}")
  if config.batch_size % process_count:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the {process_count} processes")
  local = config.batch_size // process_count
  n = meta.split_sizes[split]
  fn = _TrainMap(spec_for(config, meta), meta.split_files[split], n, bool(config.data.shuffle), process_index,
                 process_count, local)
  ds = grain.MapDataset.range(n).repeat().map_with_index(fn)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(1, 2 * local)))
  it = it.batch(local, drop_remainder=True, batch_fn=_concat)
  if config.data.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(config.data.num_workers)))
  return iter(it)


def visible_fraction(boxes: np.ndarray, resized_hw: tuple[int, int], offset: tuple[int, int], crop: int) -> np.ndarray:
  """Share of each normalised frame box's area inside the crop (0 for a degenerate box)."""
  rh, rw = resized_hw
  b = boxes.astype(np.float64) * np.asarray([rw, rh, rw, rh])
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  y0, x0 = offset
  iw = np.clip(np.minimum(b[:, 2], x0 + crop) - np.maximum(b[:, 0], x0), 0.0, None)
  ih = np.clip(np.minimum(b[:, 3], y0 + crop) - np.maximum(b[:, 1], y0), 0.0, None)
  return np.where(area > 0, iw * ih / np.where(area > 0, area, 1.0), 0.0)


def eval_example(spec: Spec, record: bytes, use_detections: bool = True, num_crops: int = 3) -> dict[str, Any]:
  """One test keyframe: short side = crop size, `num_crops` crops (1: centre; 3: the official left / centre /
  right `uniform_crop`s, which together cover a 16:9 frame); the detector's boxes above the score threshold (or
  the ground-truth boxes), in every crop's coordinates, each box assigned to the crop that shows the largest
  share of it (its scores are read from that crop: the model needs a fixed input size, so the whole frame is
  covered by crops instead of being fed at once as the official test does)."""
  p = parse_record(record, spec.num_classes)
  frames = pipeline.decode_frames(p["frames"], np.arange(len(p["frames"])))
  h, w = frames.shape[1:3]
  rh, rw = transforms.short_side_size(h, w, spec.crop_size)
  if use_detections:
    frame_boxes = p["det_boxes"][p["det_scores"] >= spec.score_thresh]
  else:
    frame_boxes = p["boxes"]
  dropped = max(0, len(frame_boxes) - spec.eval_max_boxes)
  frame_boxes = frame_boxes[:spec.eval_max_boxes]
  # Centre first so that a tie (a box fully inside two crops) goes to the centre crop.
  order = sorted(transforms.spatial_indices(num_crops), key=lambda i: (i != 1, i))
  clips, boxes, masks, fractions = [], [], [], []
  for idx in order:
    offset = transforms.uniform_crop_offset(rh, rw, spec.crop_size, idx)
    clips.append(transforms.resize_crop(frames, (rh, rw), offset, spec.crop_size))
    b, m = _pad(crop_boxes(frame_boxes, (h, w), (rh, rw), offset, spec.crop_size, False), spec.eval_max_boxes)
    boxes.append(b)
    masks.append(m)
    fractions.append(visible_fraction(frame_boxes, (rh, rw), offset, spec.crop_size))
  assign = np.argmax(np.stack(fractions), axis=0) if len(frame_boxes) else np.zeros((0,), np.int64)
  return {"video": np.stack(clips), "boxes": np.stack(boxes), "box_mask": np.stack(masks), "crop_of_box": assign,
          "frame_boxes": frame_boxes, "key": frame_key(p["video_id"], p["timestamp"]), "gt_boxes": p["boxes"],
          "gt_labels": p["labels"], "dropped": dropped}


def eval_batches(config, split: str, meta: AvaMeta, batch_size: int, use_detections: bool = True):
  """Every keyframe of `split` in order: batches of batch_size rows = keyframes x crops (config.eval.num_crops),
  padded (pad rows have an all-False box_mask); yields (arrays, per-keyframe items)."""
  spec = spec_for(config, meta)
  crops = int(config.eval.num_crops)
  if batch_size % crops:
    raise ValueError(f"config.eval.batch_size={batch_size} must be a multiple of config.eval.num_crops={crops} "
                     "(every keyframe's crops go in one batch).")
  if split not in meta.split_files:
    raise ValueError(f"config.data.eval_split={split!r}: {meta.directory} has splits {sorted(meta.split_files)}")
  source = storage.open_source(meta.split_files[split])
  n, per_batch = len(source), batch_size // crops
  for start in range(0, n, per_batch):
    items = [eval_example(spec, source[i], use_detections, crops) for i in range(start, min(n, start + per_batch))]
    pad = per_batch - len(items)

    def stack(key):
      return np.concatenate([e[key] for e in items] + [np.zeros_like(items[0][key])] * pad)
    yield {"video": stack("video"), "boxes": stack("boxes"), "box_mask": stack("box_mask")}, items


# ----------------------------------------------------------------------------------------------- fixture
SYNTHETIC_LABEL_MAP = ((1, "red person"), (2, "green person"), (3, "moving"))


def write_synthetic(root: str | os.PathLike, *, seed: int = 0, seconds: tuple[int, int] = (2, 9),
                    width: int = 128, height: int = 96) -> dict[str, str]:
  """An AVA-like fixture: short 30 fps "movies" with moving people-boxes and their actions, the official
  annotation files in the official formats, a person-detector CSV, a broken and a missing movie.

  Each movie has 3 people (coloured rectangles on a noisy background); actions per keyframe: the colour
  (1 red / 2 green) and 3 'moving' when the person moves at that second (multi-label); id 4 appears in the
  ground truth but not in the label map (as the 20 non-evaluated AVA actions). Movies train_a, train_b ->
  train; val_a -> val, whose CSV also names a movie that does not exist; train_broken is not a video.
  Keyframes at seconds `seconds` (inclusive). Returns the paths (videos_dir, train, val, label_map,
  exclusions, val_detections).
  """
  import av  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(root)
  videos, ann = root / "videos", root / "annotations"
  videos.mkdir(parents=True, exist_ok=True)
  ann.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng([seed, 0xA7A])
  duration = seconds[1] + 2.0
  colours = {1: (220, 40, 40), 2: (40, 200, 60)}
  rows = {"train": [], "val": []}
  det_rows = []
  for movie, split in (("train_a", "train"), ("train_b", "train"), ("val_a", "val")):
    people = []
    for p in range(3):
      people.append({"colour": int(rng.integers(1, 3)), "w": rng.uniform(0.15, 0.25), "h": rng.uniform(0.4, 0.6),
                     "x0": rng.uniform(0.1, 0.7), "y": rng.uniform(0.05, 0.35), "speed": rng.uniform(0.04, 0.08),
                     "moving": rng.random(int(duration) + 1) < 0.5})

    def box_at(person, t):
      # moving seconds advance the x position; stationary ones hold it (piecewise-linear path, bounced)
      sec = int(t)
      x = person["x0"] + person["speed"] * (np.sum(person["moving"][:sec]) + person["moving"][sec] * (t - sec))
      x = 0.05 + abs((x - 0.05) % (2 * (0.9 - person["w"])) - (0.9 - person["w"]))
      return np.asarray([x, person["y"], x + person["w"], person["y"] + person["h"]])

    with av.open(str(videos / f"{movie}.mp4"), "w") as container:
      stream = container.add_stream("libx264", rate=FPS)
      stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
      for n in range(int(duration * FPS)):
        t = n / FPS
        frame = rng.integers(100, 140, (height, width, 3)).astype(np.uint8)
        for person in people:
          x1, y1, x2, y2 = box_at(person, t) * [width, height, width, height]
          frame[int(y1):int(y2), int(x1):int(x2)] = colours[person["colour"]]
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)
    for ts in range(seconds[0], seconds[1] + 1):
      for pid, person in enumerate(people):
        b = box_at(person, float(ts))
        actions = [person["colour"]] + ([3] if person["moving"][ts] else []) + ([4] if pid == 0 else [])
        for a in actions:
          rows[split].append([movie, f"{ts:04d}"] + [f"{v:.3f}" for v in b] + [a, pid])
        if split == "val":
          jit = np.clip(b + rng.normal(0, 0.01, 4), 0, 1)
          det_rows.append([movie, f"{ts:04d}"] + [f"{v:.3f}" for v in jit] + ["", f"{rng.uniform(0.85, 1):.3f}"])
      if split == "val":  # a low-score box (below the test threshold) and a confident false positive
        det_rows.append([movie, f"{ts:04d}", "0.000", "0.700", "0.200", "0.990", "", "0.300"])
        if ts % 3 == 0:
          det_rows.append([movie, f"{ts:04d}", "0.700", "0.600", "0.950", "0.990", "", "0.900"])
  rows["val"].append(["val_missing", f"{seconds[0]:04d}", "0.1", "0.1", "0.3", "0.5", 1, 0])
  rows["train"].append(["train_broken", f"{seconds[0]:04d}", "0.1", "0.1", "0.3", "0.5", 1, 0])
  (videos / "train_broken.mp4").write_bytes(b"not a video" * 100)
  paths = {"videos_dir": str(videos), "train": str(ann / FILES["train"]), "val": str(ann / FILES["val"]),
           "label_map": str(ann / FILES["label_map"]), "exclusions": str(ann / FILES["exclusions"]),
           "val_detections": str(ann / FILES["val_detections"])}
  for split in ("train", "val"):
    with open(paths[split], "w", newline="") as f:
      csv.writer(f).writerows(rows[split])
  with open(paths["val_detections"], "w", newline="") as f:
    csv.writer(f).writerows(det_rows)
  with open(paths["exclusions"], "w", newline="") as f:
    csv.writer(f).writerow(["val_a", f"{seconds[1]:04d}"])
  with open(paths["label_map"], "w") as f:
    for cid, name in SYNTHETIC_LABEL_MAP:
      f.write(f'item {{\n  name: "{name}"\n  id: {cid}\n}}\n')
  return paths
