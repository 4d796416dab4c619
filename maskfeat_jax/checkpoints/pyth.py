"""Reads official SlowFast `.pyth` checkpoints (torch zip pickles) without torch.

A restricted unpickler rebuilds only tensors, storages and plain containers, and reads a tensor's bytes from
the zip only when it is materialised, so `model_state` loads while the optimizer state is never read.
`read_pyth_with_torch` is the fallback for legacy non-zip files (needs `pip install -e .[torch]`).
A file that is neither (a truncated download, random bytes) raises `ValueError` naming its size.
"""
import collections
import pathlib
import pickle
import zipfile
import zlib

import ml_dtypes
import numpy as np


def _storage_dtypes() -> dict:
  return {
      "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
      "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
      "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
  }


class LegacyFormatError(ValueError):
  """A legacy (pre-1.6, non-zip) torch.save file: a bare pickle stream that only torch can read."""


class UnsupportedObjectError(pickle.UnpicklingError):
  """The checkpoint pickles an object the restricted reader will not build (torch may read it)."""


def _corrupt(path: pathlib.Path, detail: str) -> ValueError:
  size = path.stat().st_size
  return ValueError(f"{path}: truncated or corrupt checkpoint ({size} bytes): {detail}; download or copy "
                    "it again")


def _check_format(path: pathlib.Path) -> None:
  """Raises unless `path` is a complete zip: LegacyFormatError for a legacy pickle, else a corrupt-file error."""
  if zipfile.is_zipfile(path):
    return
  with open(path, "rb") as f:
    head = f.read(4)
  if head.startswith(b"PK"):
    # A zip's directory sits at its end: a cut-off download keeps the zip header but loses the directory.
    raise _corrupt(path, "it starts like a torch zip checkpoint but its zip directory (at the end) is missing")
  if head.startswith(b"\x80"):
    # torch.save before 1.6 wrote a bare pickle stream, which starts with the pickle PROTO opcode 0x80.
    raise LegacyFormatError(f"{path}: not a torch zip checkpoint but a legacy (non-zip) torch.save file; "
                            "reading it needs torch: `pip install -e .[torch]`")
  raise _corrupt(path, f"neither a torch zip checkpoint nor a pickle (first bytes {head!r})")


class _StorageType:
  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


class _LazyTensor:
  """A tensor whose bytes are read from the zip only when materialised (skips optimizer state)."""

  def __init__(self, storage, offset, size, stride, dtype=None):
    self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)
    self.dtype = np.dtype(dtype) if dtype is not None else storage[1]

  def materialize(self, read) -> np.ndarray:
    key, _ = self.storage
    flat = np.frombuffer(read(key), dtype=self.dtype)
    if not self.size:
      return flat[self.offset].copy()
    item = self.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                           strides=tuple(s * item for s in self.stride))
    return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _LazyTensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  del requires_grad, backward_hooks, unused
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a torch checkpoint's data.pkl; only tensors, storages and plain containers are allowed."""

  def __init__(self, file, byteorder: str):
    super().__init__(file)
    self._order = "<" if byteorder == "little" else ">"
    self._dtypes = _storage_dtypes()

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils":
      fn = {"_rebuild_tensor_v2": _rebuild_tensor_v2, "_rebuild_tensor_v3": _rebuild_tensor_v3,
            "_rebuild_parameter": _rebuild_parameter}.get(name)
      if fn is not None:
        return fn
    if module == "torch" and name in self._dtypes:
      return _StorageType(np.dtype(self._dtypes[name]).newbyteorder(self._order))
    if module == "torch" and name in ("float32", "float64", "float16", "bfloat16", "int64", "int32",
                                      "int16", "int8", "uint8", "bool"):
      storage = {"float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
                 "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
                 "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage",
                 "bool": "BoolStorage"}[name]
      return _StorageType(np.dtype(self._dtypes[storage]).newbyteorder(self._order))
    raise UnsupportedObjectError(
        f"refusing to unpickle {module}.{name}: the torch-free checkpoint reader only rebuilds tensors "
        "and plain containers (install torch to read other objects)")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      raise UnsupportedObjectError(f"unsupported persistent id {pid!r} in checkpoint")
    _, storage_type, key, _location, _numel = pid
    dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.dtype(np.uint8)
    return (str(key), dtype)


def _materialize(obj, read):
  if isinstance(obj, _LazyTensor):
    return obj.materialize(read)
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v, read)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v, read) for v in obj)
  return obj


def read_pyth(path) -> dict:
  """Reads a torch-zip checkpoint without torch -> {'model_state': {key: ndarray}, 'cfg': str|None, ...}.

  Only `model_state` (or a bare state dict) is materialised; other tensors (optimizer state) are skipped.
  """
  path = pathlib.Path(path)
  _check_format(path)
  try:
    return _read_zip(path)
  except UnsupportedObjectError:
    raise
  except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, pickle.UnpicklingError) as e:
    # The zip directory is intact but a member is damaged (bad CRC, cut-off pickle, missing tensor file).
    raise _corrupt(path, f"{type(e).__name__}: {e}") from e


def _read_zip(path: pathlib.Path) -> dict:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
      raise ValueError(f"{path}: expected one data.pkl in the zip, found {pkl}")
    prefix = pkl[0][:-len("data.pkl")]
    order_name = prefix + "byteorder"
    byteorder = zf.read(order_name).decode().strip() if order_name in names else "little"
    with zf.open(pkl[0]) as f:
      obj = _RestrictedUnpickler(f, byteorder).load()

    def read(key):
      return zf.read(f"{prefix}data/{key}")

    if isinstance(obj, dict) and "model_state" in obj:
      out = {k: v for k, v in obj.items() if k not in ("model_state", "optimizer_state")}
      out["model_state"] = _materialize(obj["model_state"], read)
      return out
    if isinstance(obj, dict) and all(isinstance(v, _LazyTensor) for v in obj.values()):
      return {"model_state": _materialize(obj, read), "cfg": None}
    raise ValueError(f"{path}: no 'model_state' in the checkpoint (top-level keys: "
                     f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__})")


def read_pyth_with_torch(path) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  ckpt = torch.load(path, map_location="cpu", weights_only=False)
  state = ckpt.get("model_state", ckpt)
  return {"model_state": {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
                          for k, v in state.items()}, "cfg": ckpt.get("cfg")}
