r"""AVA conversion: the movies + the official CSVs -> array_record shards of keyframe records (format: data/ava.py).

  python -m maskfeat_jax.data.build_shards --mode=ava --videos_dir=/data/ava/videos_15min \
      --ava_annotations=/data/ava/annotations --output_dir=~/tensorflow_datasets --name=ava_v2_2

Each movie is decoded once; broken or missing movies (and keyframes past a truncated movie's end) are
skipped, counted and listed in conversion_report.json; the conversion itself does not fail on them.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import shutil
from typing import Any, Iterator, Sequence

import av
import numpy as np
import tensorflow_datasets as tfds  # no TensorFlow: features and writing only
from absl import logging

from maskfeat_jax.data import storage
from maskfeat_jax.data import transforms
from maskfeat_jax.data import worker_pool
from maskfeat_jax.data.ava import (FILES, FPS, META_FILE, OFFICIAL_VALID_SECS, REPORT_FILE, Keyframe, features,
                                   read_annotations, read_exclusions, read_labelmap)


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
