"""Kill / preemption behaviour of real runs (subprocesses of main.py on the tiny demo model and data).

1. A run saving a checkpoint every step is SIGKILLed at an arbitrary moment (likely mid-save).
2. The same command resumes from the newest complete checkpoint, then gets SIGTERM: it saves and exits 0.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]


def _start(workdir, log):
  cmd = [sys.executable, "-m", "maskfeat_jax.main", "--config=configs/demo.py:tiny", f"--workdir={workdir}",
         "--config.mode=pretrain", "--config.total_steps=100000", "--config.checkpoint_every_steps=1",
         "--config.keep_checkpoints=2", "--config.log_every_steps=1", "--config.batch_size=2"]
  return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=log,
                          stderr=subprocess.STDOUT, text=True)


def _logged_steps(workdir):
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(l)["step"] for l in path.read_text().splitlines() if l.strip()]


def _wait_for(proc, cond, timeout):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if cond():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.05)
  return False


def test_sigkill_anytime_then_resume_then_sigterm(tmp_path):
  wd = tmp_path / "run"
  procs = []
  try:
    with open(tmp_path / "a.log", "w") as log:
      a = _start(wd, log)
      procs.append(a)
      assert _wait_for(a, lambda: max(_logged_steps(wd), default=0) >= 4, 300), \
          (tmp_path / "a.log").read_text()[-3000:]
      a.send_signal(signal.SIGKILL)  # no chance to clean up: possibly in the middle of a save
      a.wait(30)
    killed_at = max(_logged_steps(wd))
    with open(tmp_path / "b.log", "w") as log:
      b = _start(wd, log)
      procs.append(b)
      assert _wait_for(b, lambda: max(_logged_steps(wd), default=0) > killed_at + 2, 300), \
          (tmp_path / "b.log").read_text()[-3000:]
      b.send_signal(signal.SIGTERM)
      rc = b.wait(120)
    out = (tmp_path / "b.log").read_text()
    assert rc == 0, out[-3000:]
    assert "resumed from" in out and "preempted at step" in out, out[-3000:]
    resumed = int(out.split("at step ")[1].split()[0].rstrip(":"))
    assert 1 <= resumed <= killed_at  # a complete checkpoint from before the kill
    final = int(out.split("preempted at step ")[1].split(";")[0])
    steps = sorted(int(d) for d in os.listdir(wd / "checkpoints") if d.isdigit())
    assert steps[-1] == final > killed_at
    assert not [d for d in os.listdir(wd / "checkpoints") if "tmp" in d]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait(30)
