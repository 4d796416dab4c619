"""File I/O on workdir / data paths that may be local or URLs (gs://bucket/run): the one place that knows.

Local paths go through os / open as before (abspath + expanduser). URLs go through etils.epath, whose gs://
backend is gcsfs (fsspec); Orbax writes its arrays through TensorStore's own gcs driver and its metadata
through epath, so a run writes straight to the bucket (no gcsfuse mount: behind one, Orbax falls back to
rename-based commits, which are not atomic on standard buckets).

Emulators (tests, local development): STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT is read by gcsfs and by
google-cloud-storage (tensorboardX's gs:// writer); TensorStore reads TENSORSTORE_GCS_HTTP_URL instead, which
`configure_emulator` sets from it (with a placeholder token, since an emulator takes any), so one variable
points everything at the emulator.
"""
import builtins
import logging
import os
import time
from typing import IO

from etils import epath

_PREFIXES = ("gs://", "s3://", "az://", "hf://")


class RemotePathError(ValueError):
  """A URL workdir / data_dir that cannot be used (no credentials, unreachable); the message names it."""


def is_remote(path) -> bool:
  return isinstance(path, (str, os.PathLike)) and "://" in os.fspath(path)


def resolve(path) -> str:
  """A local path made absolute (~ expanded); a URL unchanged, less a trailing '/'."""
  path = os.fspath(path)
  if is_remote(path):
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))


def join(base, *parts) -> str:
  if is_remote(base):
    return str(epath.Path(os.fspath(base)).joinpath(*parts))
  return os.path.join(base, *parts)


def exists(path) -> bool:
  return epath.Path(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
  return epath.Path(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path) -> bool:
  return epath.Path(path).is_file() if is_remote(path) else os.path.isfile(path)


def makedirs(path) -> None:
  """mkdir -p (on a bucket a no-op marker: objects need no parent)."""
  if is_remote(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def listdir(path) -> list[str]:
  if is_remote(path):
    return sorted(p.name for p in epath.Path(path).iterdir())
  return sorted(os.listdir(path))


def find_files(url: str) -> list[str]:
  """Every file under a URL, recursively, as sorted URLs: one listing request, where walking the
  "directories" of a bucket would take one per directory."""
  scheme = url.split("://", 1)[0]
  found = epath.backend.fsspec_backend.fs(url).find(url)
  return sorted(p if "://" in p else f"{scheme}://{p}" for p in found)


def refresh(path) -> None:
  """Forgets gcsfs's cached listings under a URL (no-op locally): gcsfs answers exists / listdir from
  listings it cached earlier, so a process that reads what other processes wrote (Beam workers' shards)
  must drop them first."""
  if is_remote(path):
    epath.backend.fsspec_backend.fs(os.fspath(path)).invalidate_cache()


def getsize(path) -> int:
  return epath.Path(path).stat().length if is_remote(path) else os.path.getsize(path)


def remove(path) -> None:
  """Deletes a file; a missing one is not an error."""
  if is_remote(path):
    epath.Path(path).unlink(missing_ok=True)
  elif os.path.exists(path):
    os.remove(path)


def copy(src, dst) -> None:
  """Copies one file in 16 MiB chunks (so a multi-GB shard never sits in memory); either side may be a
  URL. A bucket object appears only when its upload completes, so a reader never sees half of it."""
  with open(src, "rb") as f_in, open(dst, "wb") as f_out:
    while chunk := f_in.read(1 << 24):
      f_out.write(chunk)


def open(path, mode: str = "r") -> IO:  # pylint: disable=redefined-builtin
  """A file object; on a bucket, a written object appears when it is closed (GCS uploads are atomic)."""
  if is_remote(path):
    return epath.Path(path).open(mode)
  return builtins.open(path, mode)


def replace(src, dst) -> None:
  """Moves src over dst: atomic locally (os.replace); on a bucket a copy then delete of the object."""
  if is_remote(src) or is_remote(dst):
    epath.Path(src).rename(dst)
  else:
    os.replace(src, dst)


def configure_emulator(env=None) -> str | None:
  """Points TensorStore's gcs driver at STORAGE_EMULATOR_HOST when set; returns the emulator URL or None."""
  env = os.environ if env is None else env
  host = env.get("STORAGE_EMULATOR_HOST", "")
  if not host:
    return None
  url = host if "://" in host else f"http://{host}"
  # gcsfs >= 2026 asks Google (with Application Default Credentials) whether each bucket is hierarchical,
  # and without credentials logs a warning per file opened before falling back to the plain bucket API,
  # which is what an emulator serves: that warning is noise here.
  logging.getLogger("gcsfs").setLevel(logging.ERROR)
  env.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
  env.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # TensorStore's bearer token; emulators ignore it
  return url


def check_remote_dir(path: str, env=None) -> None:
  """Fails fast (RemotePathError, one line naming `path`) when a gs:// path can never work here.

  Without an emulator, gs:// needs Google credentials (Application Default Credentials); without them gcsfs
  would retry unauthenticated requests for about a minute before failing.
  """
  env = os.environ if env is None else env
  scheme = path.split("://", 1)[0]
  if scheme != "gs":
    return  # other fsspec schemes: their own credential lookup
  if not path[len("gs://"):].split("/", 1)[0]:
    raise RemotePathError(f"{path}: no bucket name; expected gs://BUCKET/PATH.")
  if configure_emulator(env):
    return
  import google.auth  # pylint: disable=g-import-not-at-top  (installed with gcsfs; only needed for gs://)
  from google.auth import exceptions as auth_exceptions  # pylint: disable=g-import-not-at-top
  try:
    google.auth.default()
  except auth_exceptions.DefaultCredentialsError:
    raise RemotePathError(
        f"{path}: no Google Cloud credentials found (run `gcloud auth application-default login`, set "
        "GOOGLE_APPLICATION_CREDENTIALS, or run on a GCP VM), and no emulator (STORAGE_EMULATOR_HOST) is "
        "set.") from None


class AppendFile:
  """A text file opened for appending: locally `open(path, 'a')`; on a bucket (objects cannot be appended
  to) the rows are kept in memory and the whole object is uploaded at most every `upload_every_s` seconds
  and on close, so a long run does not rewrite its metrics.jsonl at every logged step."""

  def __init__(self, path: str, upload_every_s: float = 30.0):
    self.path = path
    self._remote = is_remote(path)
    self._upload_every_s = upload_every_s
    if self._remote:
      self._text = epath.Path(path).read_text() if exists(path) else ""
      self._dirty = False
      self._last_upload = 0.0
      self._file = None
    else:
      self._file = builtins.open(path, "a")

  def write(self, text: str) -> None:
    if self._remote:
      self._text += text
      self._dirty = True
    else:
      self._file.write(text)

  def flush(self, force: bool = False) -> None:
    """Locally a flush; on a bucket an upload when `upload_every_s` has passed since the last one (or when
    `force`: e.g. before a checkpoint, so that a run killed after it has lost no row up to it)."""
    if not self._remote:
      self._file.flush()
    elif self._dirty and (force or time.monotonic() - self._last_upload >= self._upload_every_s):
      self._upload()

  def _upload(self) -> None:
    epath.Path(self.path).write_text(self._text)
    self._dirty, self._last_upload = False, time.monotonic()

  def close(self) -> None:
    if self._remote:
      if self._dirty:
        self._upload()
    elif self._file is not None:
      self._file.close()
      self._file = None


def stage_locally(url: str, cache_root: str | None = None) -> str | None:
  """A local copy of the files under `url` (recursively); None if nothing is there.

  For readers that need local files: ArrayRecord 0.8.6's reader did not open gs:// shards served by a GCS
  emulator (it hung), so a gs:// data_dir is read from this copy. Files already copied with the same size
  are kept, so only the first run on a host downloads. The copy lives under MASKFEAT_REMOTE_CACHE (default
  ~/.cache/maskfeat_jax/remote)/<scheme>/<bucket>/<path>.
  """
  cache_root = cache_root or os.environ.get("MASKFEAT_REMOTE_CACHE", "~/.cache/maskfeat_jax/remote")
  scheme, rest = url.rstrip("/").split("://", 1)
  local_dir = os.path.join(os.path.abspath(os.path.expanduser(cache_root)), scheme, rest)
  root = epath.Path(url)
  if not root.is_dir():
    return None
  todo = [root]
  while todo:
    for child in todo.pop().iterdir():
      if child.is_dir():
        todo.append(child)
        continue
      dst = os.path.join(local_dir, os.path.relpath(str(child), str(root)))
      size = child.stat().length
      if os.path.isfile(dst) and os.path.getsize(dst) == size:
        continue
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      tmp = f"{dst}.incomplete-{os.getpid()}"
      copy(os.fspath(child), tmp)
      os.replace(tmp, dst)  # a reader never sees a half-copied file
  return local_dir

