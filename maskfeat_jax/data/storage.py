"""The on-disk video format: a TFDS dataset directory in `array_record` file format.

Layout (readable with `tfds.builder_from_directory(dir).as_data_source(split)` or
`tfds.data_source(name, data_dir=...)`, without TensorFlow):

  DATA_DIR/NAME/VERSION/dataset_info.json, features.json, label.labels.txt
  DATA_DIR/NAME/VERSION/NAME-SPLIT.array_record-0000i-of-0000N

Per example: `video` = Sequence(Image(jpeg)) (frames stored as JPEG bytes, short side resized at conversion),
`label` = ClassLabel(names), `video_id` = Text, `fps` = float32 (frame rate of the stored frames).

TFDS serialises such examples without TensorFlow as long as the frames are JPEG bytes we encoded ourselves
(numpy images would make it call TensorFlow). For reading we parse the tf.train.Example proto directly and keep
the frames as JPEG bytes, so the pipeline decodes only the frames a clip needs.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np
import grain
import simplejpeg
from etils import epath
# Imported here, not on first use: Grain's read threads would race to import it, and TFDS's lazy imports
# (etils LazyModule, a functools.cached_property with one lock for all instances) then deadlock against
# the import lock (seen: a data worker hung on its first batch). TFDS imports no TensorFlow.
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from PIL import Image
from tensorflow_datasets.proto import tf_example_pb2

from maskfeat_jax import paths
from maskfeat_jax.data.splits import resolve_split

DEFAULT_VERSION = "1.0.0"
FILE_FORMAT = "array_record"
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
TMP_SUFFIX = ".incomplete"


# ----------------------------------------------------------------------------------------------- features
def video_features(class_names: Sequence[str]):
  """The TFDS FeaturesDict of a video dataset."""
  return tfds.features.FeaturesDict({
      "video": tfds.features.Sequence(tfds.features.Image(encoding_format="jpeg")),
      "label": tfds.features.ClassLabel(names=list(class_names)),
      "video_id": tfds.features.Text(),
      "fps": tfds.features.Scalar(dtype=np.float32),
  })


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
  """uint8 [H,W,3] RGB -> JPEG bytes (4:2:0, as most video codecs store chroma anyway)."""
  return simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=int(quality), colorspace="RGB",
                                colorsubsampling="420")


def decode_image(data: bytes) -> np.ndarray:
  """JPEG (fast path, simplejpeg) or any Pillow-readable image bytes -> uint8 [H,W,3] RGB."""
  if data[:2] == b"\xff\xd8":
    return simplejpeg.decode_jpeg(data, colorspace="RGB")
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


class VideoExampleSerializer:
  """Encodes one video example (JPEG frame bytes + metadata) to the bytes stored in a shard record."""

  def __init__(self, class_names: Sequence[str]):
    self.class_names = list(class_names)
    self.features = video_features(self.class_names)

  def __call__(self, frames_jpeg: Sequence[bytes], label: int, video_id: str, fps: float) -> bytes:
    if not frames_jpeg:
      raise ValueError(f"video {video_id!r} has no frames")
    if not 0 <= int(label) < len(self.class_names):
      raise ValueError(f"video {video_id!r}: label {label} outside [0, {len(self.class_names)})")
    example = {"video": list(frames_jpeg), "label": int(label), "video_id": str(video_id),
               "fps": np.float32(fps)}
    return self.features.serialize_example(self.features.encode_example(example))


# ----------------------------------------------------------------------------------------------- writing
def dataset_dir(data_dir: str | os.PathLike, name: str, version: str = DEFAULT_VERSION) -> pathlib.Path | epath.Path:
  """DATA_DIR/NAME/VERSION: a pathlib.Path locally, an epath.Path for a URL (pathlib would turn gs://b
  into gs:/b)."""
  if paths.is_remote(data_dir):
    return epath.Path(paths.resolve(data_dir)) / name / version
  return pathlib.Path(os.path.expanduser(os.fspath(data_dir))) / name / version


def shard_filename(name: str, split: str, shard: int, num_shards: int) -> str:
  return f"{name}-{split}.{FILE_FORMAT}-{shard:05d}-of-{num_shards:05d}"


class ShardWriter:
  """Writes one shard atomically: to `path + TMP_SUFFIX`, renamed to `path` by `close()`.

  A crash mid-shard leaves only the `.incomplete` file, which no reader or resumed run treats as a shard.
  Records arrive one by one (e.g. from the converter's process pool); `write_shard` writes an iterable.
  For a URL `path` (gs://...), whose object store has no rename and which the array_record writer cannot
  open, the shard is written in a local staging directory of its own and uploaded by `close()` (the object
  appears only when the upload completes); the staging directory is removed either way.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._staging = tempfile.mkdtemp(prefix="maskfeat_shard_") if paths.is_remote(self.path) else None
    local = os.path.join(self._staging, os.path.basename(self.path)) if self._staging else self.path
    self._local = local
    self._tmp = local + TMP_SUFFIX
    self._writer = array_record_module.ArrayRecordWriter(self._tmp, "group_size:1")
    self.count = 0

  def write(self, record: bytes) -> None:
    self._writer.write(record)
    self.count += 1

  def close(self) -> None:
    """Finishes the shard and makes it visible under its final name."""
    self._writer.close()
    os.replace(self._tmp, self._local)
    if self._staging:
      try:
        paths.copy(self._local, self.path)
      finally:
        shutil.rmtree(self._staging, ignore_errors=True)

  def abort(self) -> None:
    """Drops the partial shard (an interrupted run leaves nothing that looks like a shard)."""
    try:
      self._writer.close()
    finally:
      if os.path.exists(self._tmp):
        os.remove(self._tmp)
      if self._staging:
        shutil.rmtree(self._staging, ignore_errors=True)


def write_shard(path: str | os.PathLike, records: Iterable[bytes]) -> int:
  """Writes all `records` to one shard with a `ShardWriter` (atomic); returns how many were written."""
  writer = ShardWriter(path)
  try:
    for record in records:
      writer.write(record)
  except BaseException:
    writer.abort()
    raise
  writer.close()
  return writer.count


def write_dataset_info(ds_dir: str | os.PathLike, name: str, class_names: Sequence[str],
                       split_shard_lengths: dict[str, Sequence[int]], *, description: str = "",
                       version: str = DEFAULT_VERSION, image_mode: bool = False) -> None:
  """Writes dataset_info.json / features.json for shards already in `ds_dir` (TFDS `write_metadata`; a URL
  `ds_dir` is written through epath like the shards)."""
  ds_dir = epath.Path(ds_dir) if paths.is_remote(ds_dir) else pathlib.Path(ds_dir)
  features = image_features(class_names) if image_mode else video_features(class_names)
  split_infos = []
  for split, lengths in sorted(split_shard_lengths.items()):
    num_bytes = sum(paths.getsize(ds_dir / shard_filename(name, split, i, len(lengths)))
                    for i in range(len(lengths)))
    template = tfds.core.ShardedFileTemplate(data_dir=ds_dir, template=FILENAME_TEMPLATE, dataset_name=name,
                                             split=split, filetype_suffix=FILE_FORMAT)
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[int(n) for n in lengths],
                                           num_bytes=int(num_bytes), filename_template=template))
  tfds.folder_dataset.write_metadata(data_dir=ds_dir, features=features, split_infos=split_infos,
                                     version=version, check_data=False, description=description)


def image_features(class_names: Sequence[str]):
  """The TFDS FeaturesDict of an image dataset (what TFDS image datasets such as imagenet2012 use)."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(names=list(class_names)),
  })


# ----------------------------------------------------------------------------------------------- reading
@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """What the pipeline needs to know about a dataset directory."""
  name: str
  directory: str
  class_names: tuple[str, ...]
  split_files: dict[str, tuple[str, ...]]
  split_sizes: dict[str, int]
  image_mode: bool

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def files(self, split: str) -> tuple[str, ...]:
    """Shard files of a split (a sliced split 'train[:25%]' reads its base split's files)."""
    base = resolve_split(split, self.split_sizes, where=f"dataset {self.name!r} at {self.directory}")[0]
    return self.split_files[base]

  def split_range(self, split: str) -> tuple[int, int]:
    """[start, stop) record indices of `split` ('train', 'train[:100]', 'train[10%:50%]')."""
    _, start, stop = resolve_split(split, self.split_sizes,
                                   where=f"dataset {self.name!r} at {self.directory}")
    return start, stop


def find_dataset_dir(data_dir: str | os.PathLike, name: str) -> pathlib.Path | None:
  """DATA_DIR/NAME/<newest version>/ (or DATA_DIR/NAME/ or DATA_DIR itself) holding dataset_info.json.

  A gs:// DATA_DIR is read from a local copy of DATA_DIR/NAME (paths.stage_locally: ArrayRecord's reader
  needs local files).
  """
  if paths.is_remote(data_dir):
    local = paths.stage_locally(paths.join(os.fspath(data_dir), name))
    return None if local is None else find_dataset_dir(os.path.dirname(local), name)
  root = pathlib.Path(os.path.expanduser(os.fspath(data_dir)))
  base = root / name
  versions = []
  if base.is_dir():
    for child in base.iterdir():
      if (child / "dataset_info.json").is_file():
        try:
          versions.append((tuple(int(p) for p in child.name.split(".")), child))
        except ValueError:
          continue
  if versions:
    return max(versions)[1]
  for candidate in (base, root):
    if (candidate / "dataset_info.json").is_file():
      info = json.loads((candidate / "dataset_info.json").read_text())
      if candidate == base or info.get("name") == name:
        return candidate
  return None


def read_meta(ds_dir: str | os.PathLike) -> DatasetMeta:
  """Reads split files / sizes and class names of a TFDS array_record directory (no TensorFlow; a URL
  `ds_dir` through epath, e.g. the converter's check of a bucket's class names before a rerun)."""
  ds_dir = epath.Path(ds_dir) if paths.is_remote(ds_dir) else pathlib.Path(ds_dir)
  builder = tfds.builder_from_directory(os.fspath(ds_dir))
  info = builder.info
  file_format = str(getattr(info.file_format, "value", info.file_format))
  if file_format != FILE_FORMAT:
    raise ValueError(f"Dataset at {ds_dir} is stored as {file_format!r}; only {FILE_FORMAT!r} can be read "
                     "without TensorFlow (convert it with `python -m maskfeat_jax.data.build_shards` or "
                     "`tfds build --file_format=array_record`).")
  features = info.features
  keys = set(features.keys())
  if {"video", "label"} <= keys:
    image_mode = False
  elif {"image", "label"} <= keys:
    image_mode = True
  else:
    raise ValueError(f"Dataset at {ds_dir} has features {sorted(keys)}; expected `video`+`label` (video) or "
                     "`image`+`label` (image mode).")
  class_names = tuple(features["label"].names)
  split_files, split_sizes = {}, {}
  for split, split_info in info.splits.items():
    split_files[split] = tuple(os.fspath(p) for p in split_info.filepaths)
    split_sizes[split] = int(split_info.num_examples)
  return DatasetMeta(name=info.name, directory=os.fspath(ds_dir), class_names=class_names,
                     split_files=split_files, split_sizes=split_sizes, image_mode=image_mode)


def _feature_map(record: bytes):
  return tf_example_pb2.Example.FromString(record).features.feature


def _int_feature(fmap, key: str) -> int:
  values = fmap[key].int64_list.value
  if len(values) != 1:
    raise ValueError(f"feature {key!r} has {len(values)} values, expected 1")
  return int(values[0])


def parse_video_record(record: bytes) -> dict[str, Any]:
  """Record bytes -> {'frames': list of JPEG bytes, 'label': int, 'video_id': str, 'fps': float}."""
  fmap = _feature_map(record)
  for key in ("video", "label"):
    if key not in fmap:
      raise ValueError(f"record has no {key!r} feature (keys: {sorted(fmap.keys())})")
  frames = list(fmap["video"].bytes_list.value)
  if not frames:
    raise ValueError("record has no frames")
  fps_values = fmap["fps"].float_list.value if "fps" in fmap else []
  video_id = fmap["video_id"].bytes_list.value if "video_id" in fmap else []
  return {
      "frames": frames,
      "label": _int_feature(fmap, "label"),
      "video_id": video_id[0].decode("utf-8") if video_id else "",
      "fps": float(fps_values[0]) if fps_values else 0.0,
  }


def parse_image_record(record: bytes) -> dict[str, Any]:
  """Record bytes of a TFDS image dataset -> {'image': encoded bytes, 'label': int}."""
  fmap = _feature_map(record)
  for key in ("image", "label"):
    if key not in fmap:
      raise ValueError(f"record has no {key!r} feature (keys: {sorted(fmap.keys())})")
  images = fmap["image"].bytes_list.value
  if len(images) != 1:
    raise ValueError(f"record has {len(images)} images, expected 1")
  return {"image": images[0], "label": _int_feature(fmap, "label")}


def open_source(files: Sequence[str]):
  """Random-access source over the shard files of a split (Grain's ArrayRecordDataSource: raw bytes)."""
  missing = [f for f in files if not os.path.isfile(f)]
  if missing:
    raise FileNotFoundError(f"Shard files missing: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
  return grain.sources.ArrayRecordDataSource(list(files))
