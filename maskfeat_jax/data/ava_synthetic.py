"""An AVA-like fixture for tests and smoke runs: short movies with people-boxes, the official annotation files."""
from __future__ import annotations

import csv
import os
import pathlib

import av
import numpy as np

from maskfeat_jax.data.ava import FILES, FPS

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
