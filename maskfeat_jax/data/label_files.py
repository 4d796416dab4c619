"""Label files of video datasets -> `Item`s (one per video): Kinetics CSV, `path,label` lists, SSv2 JSON.

Formats (see data/build_shards.py for the CLI that reads them):
  * Kinetics CSV with header `label,youtube_id,time_start,time_end,split`: files are found by name
    (`{youtube_id}_{time_start:06d}_{time_end:06d}.*` or `{youtube_id}.*`) anywhere under the videos dir.
  * A `path,label` (or `path label`) list, optional header: paths relative to the videos dir; labels are
    class names or integer indices.
  * SSv2-style JSON (a list of {"id", "template" | "label"}): `{id}.*`; class = template without brackets.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import re
from typing import Any, Sequence

from maskfeat_jax import paths

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")


@dataclasses.dataclass(frozen=True)
class Item:
  """One row of the label file."""
  video_id: str
  # The video file; when it was not found, what was looked for (a `**` pattern for the formats found by name),
  # so the conversion report names it. The converter checks existence itself.
  path: str
  label: str
  split: str
  time_start: float = -1.0
  time_end: float = -1.0


def index_videos(videos_dir: str) -> dict[str, str]:
  """Maps file stem -> path for every video file under videos_dir (sorted walk: deterministic on duplicates).

  A URL videos_dir (gs://...) is listed in one request; on duplicate stems the first URL in sorted order wins.
  """
  files = paths.find_files(videos_dir) if paths.is_remote(videos_dir) else _walk_files(videos_dir)
  index = {}
  for path in files:
    stem, ext = os.path.splitext(path.rsplit("/", 1)[-1])
    if ext.lower() in VIDEO_EXTENSIONS or ext == "":
      index.setdefault(stem, path)
  return index


def _walk_files(directory: str):
  """Every file under a local directory, directories and names in sorted order."""
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    for name in sorted(files):
      yield os.path.join(root, name)


def _pattern(videos_dir: str, stem: str) -> str:
  """The files `index_videos` would match for `stem`: the path reported when none exists."""
  return paths.join(videos_dir, "**", f"{stem}.*")


def _read_kinetics(rows: list[dict[str, str]], videos_dir: str, label_file: str) -> list[Item]:
  index = index_videos(videos_dir)
  items = []
  for line, row in enumerate(rows, start=2):
    try:
      start, end = float(row["time_start"]), float(row["time_end"])
      yid = row["youtube_id"].strip()
      label = row["label"].strip()
    except (KeyError, ValueError, AttributeError) as e:
      raise ValueError(f"{label_file}:{line}: malformed Kinetics row {row}: {e}") from e
    video_id = f"{yid}_{int(start):06d}_{int(end):06d}"
    path = index.get(video_id) or index.get(yid) or f"{_pattern(videos_dir, video_id)} or {yid}.*"
    split = (row.get("split") or "train").strip()
    items.append(Item(video_id, path, label, split, start, end))
  return items


def _read_path_list(lines: list[str], videos_dir: str, split: str, label_file: str) -> list[Item]:
  items = []
  for line_no, line in enumerate(lines, start=1):
    line = line.strip()
    if not line:
      continue
    parts = [p.strip() for p in (line.rsplit(",", 1) if "," in line else line.rsplit(None, 1))]
    if len(parts) != 2 or not parts[0] or not parts[1]:
      raise ValueError(f"{label_file}:{line_no}: expected `path,label` (or `path label`), got {line!r}")
    rel, label = parts
    if line_no == 1 and rel.lower() in ("path", "video", "filename", "file") and label.lower() in ("label", "class"):
      continue  # header
    path = rel if os.path.isabs(rel) or paths.is_remote(rel) else paths.join(videos_dir, rel)
    video_id = os.path.splitext(rel)[0]
    items.append(Item(video_id, path, label, split))
  return items


def _read_ssv2(entries: list[dict[str, Any]], videos_dir: str, split: str, label_file: str) -> list[Item]:
  index = index_videos(videos_dir)
  items = []
  for n, entry in enumerate(entries):
    if "id" not in entry or not ("template" in entry or "label" in entry):
      raise ValueError(f"{label_file}: entry {n} has no `id` and `template`/`label`: {entry}")
    label = str(entry.get("template", entry.get("label"))).replace("[", "").replace("]", "")
    video_id = str(entry["id"])
    items.append(Item(video_id, index.get(video_id) or _pattern(videos_dir, video_id), label, split))
  return items


def read_label_file(label_file: str, videos_dir: str, split: str) -> list[Item]:
  """Reads any supported label file into Items (file order)."""
  if not os.path.isfile(label_file):
    raise FileNotFoundError(f"--labels file not found: {label_file}")
  if label_file.endswith(".json"):
    with open(label_file) as f:
      entries = json.load(f)
    if not isinstance(entries, list):
      raise ValueError(f"{label_file}: expected a JSON list of {{id, template}} entries (SSv2 format)")
    return _read_ssv2(entries, videos_dir, split, label_file)
  with open(label_file, newline="") as f:
    text = f.read()
  first = text.splitlines()[0] if text.strip() else ""
  header = [h.strip() for h in first.split(",")]
  if {"label", "youtube_id", "time_start", "time_end"} <= set(header):
    return _read_kinetics(list(csv.DictReader(text.splitlines())), videos_dir, label_file)
  return _read_path_list(text.splitlines(), videos_dir, split, label_file)


def class_names_for(items: Sequence[Item], class_names_file: str = "", label_map_file: str = "",
                    existing: Sequence[str] | None = None) -> list[str]:
  """Class order: --class_names file, else the SSv2 label map, else an existing dataset's, else sorted labels."""
  if class_names_file:
    names = [l.strip() for l in pathlib.Path(class_names_file).read_text().splitlines() if l.strip()]
  elif label_map_file:
    mapping = json.loads(pathlib.Path(label_map_file).read_text())
    names = [name for name, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]
  elif existing:
    names = list(existing)
  else:
    labels = sorted({it.label for it in items})
    if labels and all(re.fullmatch(r"\d+", l) for l in labels):
      names = [str(i) for i in range(max(int(l) for l in labels) + 1)]
    else:
      names = labels
  if len(set(names)) != len(names):
    raise ValueError("class names are not unique")
  return names


def label_index(item: Item, names: Sequence[str], lookup: dict[str, int]) -> int:
  if item.label in lookup:
    return lookup[item.label]
  if re.fullmatch(r"\d+", item.label) and int(item.label) < len(names):
    return int(item.label)
  raise ValueError(f"label {item.label!r} of video {item.video_id!r} is not one of the {len(names)} classes")
