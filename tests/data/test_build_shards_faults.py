"""Converter faults: SIGKILL of the converter must not leave its worker processes behind."""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_VIDEOS = 120  # enough work that the converter is still running when it is killed


def _make_video(path, shade: int, num_frames: int = 40, width: int = 128, height: int = 96) -> None:
  import av  # pylint: disable=g-import-not-at-top
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for t in range(num_frames):
      frame = np.full((height, width, 3), shade, np.uint8)
      frame[:, :3 * t] = 255
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def _is_gone(proc: psutil.Process) -> bool:
  # A killed orphan may stay a zombie if PID 1 of this container does not reap: it runs no code any more.
  try:
    return proc.status() == psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return True


@pytest.mark.slow
def test_sigkill_of_converter_leaves_no_worker_processes(tmp_path):
  videos = tmp_path / "videos"
  videos.mkdir()
  _make_video(videos / "a.mp4", 40)
  _make_video(videos / "b.mp4", 200)
  lines = ["path,label"]
  for i in range(NUM_VIDEOS):
    src = "a.mp4" if i % 2 else "b.mp4"
    shutil.copy(videos / src, videos / f"v{i:03d}.mp4")
    lines.append(f"v{i:03d}.mp4,{src[0]}")
  (videos / "list.csv").write_text("\n".join(lines) + "\n")
  out = tmp_path / "out"
  cmd = ["timeout", "-k", "5", "180", sys.executable, "-m", "maskfeat_jax.data.build_shards",
         f"--videos_dir={videos}", f"--labels={videos / 'list.csv'}", f"--output_dir={out}", "--name=toy",
         "--num_workers=2", "--examples_per_shard=2", "--short_side=0", "--noprogress"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True)
  children = []
  try:
    # `timeout` forks the converter; wait until the converter's workers have finished a first shard
    # (so they are past start-up and busy), while it still has most of the work ahead.
    deadline = time.monotonic() + 150
    converter = None
    while time.monotonic() < deadline and proc.poll() is None:
      kids = psutil.Process(proc.pid).children()
      converter = kids[0] if kids else None
      if converter is not None and list(out.glob("toy/*/.convert/*.json")):
        break
      time.sleep(0.05)
    assert proc.poll() is None and converter is not None, "converter ended before it could be killed"
    children = converter.children()
    workers = [c for c in children if "--multiprocessing-fork" in " ".join(c.cmdline())]
    assert len(workers) == 2, [c.cmdline() for c in children]
    converter.send_signal(signal.SIGKILL)
    converter.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(_is_gone(c) for c in children):
      time.sleep(0.1)
    left = [(c.pid, c.cmdline()) for c in children if not _is_gone(c)]
    assert not left, f"processes of the killed converter still running: {left}"
  finally:
    for c in children:  # only the processes this test started
      if not _is_gone(c):
        c.kill()
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# A parent that starts one worker which, like a converter worker, calls `_exit_with_parent`; with
# `no_prctl` the worker takes the path of systems without prctl (the thread watching os.getppid()).
_PARENT_SCRIPT = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from maskfeat_jax.data import worker_pool

    def work(parent_pid, no_prctl):
      if no_prctl:
        sys.platform = "darwin"
      worker_pool._exit_with_parent(parent_pid)
      time.sleep(300)

    if __name__ == "__main__":
      child = multiprocessing.get_context("spawn").Process(target=work, args=(os.getpid(), sys.argv[1] == "1"))
      child.start()
      time.sleep(2)  # the child is past its start-up (and in its sleep)
      print(child.pid, flush=True)
      time.sleep(300)
""")


@pytest.mark.parametrize("no_prctl", [False, True], ids=["prctl", "getppid_thread"])
def test_worker_exits_when_its_parent_is_killed(tmp_path, no_prctl):
  script = tmp_path / "parent.py"
  script.write_text(_PARENT_SCRIPT)
  proc = subprocess.Popen(["timeout", "-k", "5", "120", sys.executable, str(script), str(int(no_prctl))],
                          cwd=REPO, stdout=subprocess.PIPE,
                          text=True, start_new_session=True)
  worker = None
  try:
    worker = psutil.Process(int(proc.stdout.readline()))
    parent = psutil.Process(proc.pid).children()[0]
    assert not _is_gone(worker) and worker.ppid() == parent.pid, "the worker did not start"
    parent.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _is_gone(worker):
      time.sleep(0.1)
    assert _is_gone(worker), "the worker outlived its killed parent"
  finally:
    if worker is not None and not _is_gone(worker):
      worker.kill()
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
