"""Multi-process training: 2 JAX processes x 2 CPU devices on localhost (launch/local_multiprocess.sh, gloo).

The tiny demo MaskFeat model pre-trains 12 steps (batch 8) with each process reading its own rows of every
global batch (data/pipeline.py), and:
  (a) the final params equal those of 1 process x 4 devices (same global batches, fp32 tolerance), after
      (b) a SIGKILL after the step-4 checkpoint and a resume from it, and (d);
  (c) only process 0 writes metrics.jsonl / config.json (one row per logged step, no progress lines from
      process 1), and every checkpoint holds each process's own Grain iterator state;
  (d) SIGTERM to the whole (resumed) job: all processes agree on a step (jax.distributed's preemption
      sync point), save it once and exit 0; rerunning resumes from it and finishes.
Bad input: an unreachable coordinator and a batch that the process count does not divide are one-line
errors, before any compilation.

Every process runs under `timeout -k 10 ...` (the script's TIMEOUT), so a hang fails the test instead of CI
(jax.distributed ignores SIGTERM). The runs share one persistent compilation cache, so only the first run of
each topology (1x4, 2x2) compiles.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from maskfeat_jax.checkpoints import orbax as ckpt_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "local_multiprocess.sh"
STEPS = 12
# One run may compile for minutes when the 2 cores are shared with other jobs; a hang still fails the test.
PROCESS_LIMIT_S = 900
FLAGS = ("--config.mode=pretrain", f"--config.total_steps={STEPS}", "--config.batch_size=8",
         "--config.log_every_steps=1", "--config.checkpoint_every_steps=4", "--config.keep_checkpoints=10",
         "--config.checkpoint.async_save=False")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("xla_cache")


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("MASKFEAT_", "JAX_", "XLA_FLAGS"))}
  env.update(JAX_PLATFORMS="cpu", **extra)
  return env


def _start_job(workdir, cache_dir, *flags, processes=2):
  """launch/local_multiprocess.sh with 2 devices per process; logs in WORKDIR/logs/process_<i>.log."""
  cmd = ["bash", str(SCRIPT), str(processes), "configs/demo.py:tiny", str(workdir), *FLAGS,
         f"--config.compilation_cache_dir={cache_dir}", *flags]
  # KILL_AFTER: how long a process may take to save and exit after a SIGTERM (generous: shared cores).
  env = _env(PORT=str(_free_port()), DEVICES_PER_PROCESS="2", TIMEOUT=str(PROCESS_LIMIT_S), KILL_AFTER="60")
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_tree(pid: int) -> None:
  """SIGKILL to `pid` and all its descendants (each `timeout` puts its python in a process group of its own,
  so a process-group kill would miss them)."""
  children = {}
  for d in pathlib.Path("/proc").iterdir():
    if d.name.isdigit():
      try:
        ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        continue
      children.setdefault(ppid, []).append(int(d.name))
  todo, tree = [pid], []
  while todo:
    p = todo.pop()
    tree.append(p)
    todo.extend(children.get(p, []))
  for p in tree:
    try:
      os.kill(p, signal.SIGKILL)
    except ProcessLookupError:
      pass


# Lines of the coordination service's shutdown noise: when one process ends early, the other's barrier
# timeout fills its log with these and would push the first process's own error out of the tail shown.
_NOISE = ("    @", "[Gloo]", "coordination_service", "Barrier", "barrier", "[type.googleapis.com", "# of tasks",
          "The first task at", "Some timed out task", "RPC: /xla.coordination", "This suggests that the workers")


def _logs(workdir) -> str:
  out = []
  for p in sorted((pathlib.Path(workdir) / "logs").glob("process_*.log")):
    lines = [l for l in p.read_text().splitlines() if not l.strip().startswith(_NOISE) and l.strip() != "1"]
    out.append(f"--- {p.name}\n" + "\n".join(lines)[-4000:])
  return "\n".join(out)


def _finish(proc, workdir, limit=PROCESS_LIMIT_S + 60):
  out, _ = proc.communicate(timeout=limit)
  assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{_logs(workdir)}"
  return out


def _steps(workdir) -> list[int]:
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _logged(workdir) -> list[int]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(l)["step"] for l in path.read_text().splitlines() if l.strip() and '"final"' not in l]


def _wait_for(proc, cond, workdir, limit=PROCESS_LIMIT_S):
  t0 = time.time()
  while time.time() - t0 < limit:
    if cond():
      return
    assert proc.poll() is None, f"the job ended (exit {proc.returncode}) first\n{_logs(workdir)}"
    time.sleep(0.02)
  raise AssertionError(f"timed out\n{_logs(workdir)}")


def _params(workdir):
  return jax.tree.map(np.asarray, ckpt_lib.restore_params(str(workdir)))


def _assert_params_close(got, want, rtol, atol):
  flat_got = jax.tree_util.tree_leaves_with_path(got)
  flat_want = dict((jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_leaves_with_path(want))
  assert len(flat_got) == len(flat_want) > 10
  for k, v in flat_got:
    np.testing.assert_allclose(v, flat_want[jax.tree_util.keystr(k)], rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(k))


@pytest.mark.slow
def test_two_processes_train_resume_and_preempt_like_one(tmp_path, cache_dir):
  # 1 process x 4 devices: the reference.
  ref = tmp_path / "one_by_four"
  cmd = ["timeout", "-k", "10", str(PROCESS_LIMIT_S), sys.executable, "-m", "maskfeat_jax.main",
         "--config=configs/demo.py:tiny", f"--workdir={ref}", *FLAGS, f"--config.compilation_cache_dir={cache_dir}"]
  p = subprocess.run(cmd, cwd=REPO, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                     capture_output=True, text=True)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
  assert "mesh {'data': 4, 'fsdp': 1}" in p.stdout

  # 2 processes x 2 devices: (b) SIGKILL (no chance to save) once the step-4 checkpoint is complete ...
  wd = tmp_path / "two_by_two"
  job = _start_job(wd, cache_dir)
  try:
    _wait_for(job, lambda: 4 in _steps(wd), wd)
    _kill_tree(job.pid)
  finally:
    job.wait(30)
  killed = _steps(wd)
  assert killed[-1] < STEPS, f"the run finished before the kill: {killed}"

  # (d) ... resume; SIGTERM (sent to the script, which forwards it to both processes) once a step past the
  # checkpoint is logged: the processes save at the step they agree on and exit 0 ...
  job = _start_job(wd, cache_dir)
  _wait_for(job, lambda: max(_logged(wd), default=0) > killed[-1], wd)
  before = set(_steps(wd))
  job.send_signal(signal.SIGTERM)
  _finish(job, wd)
  log0 = (wd / "logs" / "process_0.log").read_text()
  assert f"resumed from {wd / 'checkpoints'} at step {killed[-1]}" in log0, _logs(wd)
  assert log0.count("preempted at step") == 1, _logs(wd)
  preempted_at = int(log0.split("preempted at step ")[1].split(";")[0])
  assert killed[-1] < preempted_at < STEPS, (killed, preempted_at)
  assert _steps(wd)[-1] == preempted_at and preempted_at not in before
  regular = {s for s in set(_steps(wd)) - before if s != preempted_at}
  assert all(s % 4 == 0 for s in regular)  # besides the periodic checkpoints, one save: the preemption's
  for i in (0, 1):
    assert "preempted at step" in (wd / "logs" / f"process_{i}.log").read_text()

  # ... and a rerun resumes from the preemption checkpoint and finishes.
  _finish(_start_job(wd, cache_dir), wd)
  assert f"at step {preempted_at}" in (wd / "logs" / "process_0.log").read_text()
  assert _steps(wd)[-1] == STEPS

  # (a) Same global batches on the same devices as 1 x 4, through a kill and a preemption; the all-reduce
  # now crosses processes (gloo), whose summation order may differ from the in-process one: fp32 tolerance.
  _assert_params_close(_params(wd), _params(ref), rtol=1e-5, atol=1e-6)

  # (c) process 0 alone writes the run's files; each process saves its own iterator state.
  assert _logged(wd) == list(range(1, STEPS + 1))  # one row per step across the 3 runs: process 1 wrote none
  run_info = json.loads((wd / "config.json").read_text())["_run"]
  assert run_info["processes"] == 2 and run_info["devices"] == 4
  log0, log1 = ((wd / "logs" / f"process_{i}.log").read_text() for i in (0, 1))
  assert f"step {STEPS}/{STEPS}" in log0 and f"step {STEPS}/{STEPS}" not in log1
  for step in _steps(wd):
    data = sorted(f for f in os.listdir(wd / "checkpoints" / str(step) / "data") if f.startswith("process_"))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"], data
    states = [json.loads((wd / "checkpoints" / str(step) / "data" / f).read_text()) for f in data]
    assert states[0] == states[1]  # each process's position in its own stream (same count of batches)


def _one_line_error(p):
  lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
  assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
  assert len(lines) == 1, p.stderr[-3000:]
  return lines[0]


def test_unreachable_coordinator_is_one_line_naming_it(tmp_path):
  port = _free_port()  # nothing listens there
  env = _env(MASKFEAT_DISTRIBUTED="1", MASKFEAT_COORDINATOR=f"127.0.0.1:{port}", MASKFEAT_NUM_PROCESSES="2",
             MASKFEAT_PROCESS_ID="1", MASKFEAT_INIT_TIMEOUT="2")
  t0 = time.time()
  p = subprocess.run(["timeout", "-k", "10", "120", sys.executable, "-m", "maskfeat_jax.main",
                      "--config=configs/demo.py:tiny", f"--workdir={tmp_path / 'w'}"],
                     cwd=REPO, env=env, capture_output=True, text=True)
  line = _one_line_error(p)
  assert f"127.0.0.1:{port}" in line and "did not answer within 2s" in line, line
  assert time.time() - t0 < 100


@pytest.mark.slow
def test_batch_not_divisible_by_the_processes_is_one_line(tmp_path):
  wd = tmp_path / "w"
  job = _start_job(wd, tmp_path / "cache", "--config.batch_size=3")
  out, _ = job.communicate(timeout=PROCESS_LIMIT_S)
  assert job.returncode == 2, out + _logs(wd)
  for i in (0, 1):
    log = (wd / "logs" / f"process_{i}.log").read_text()
    assert "ERROR: config.batch_size=3 is not a positive multiple of the 2 processes" in log, log[-3000:]
    assert "compiled" not in log and "params |" not in log  # failed before building or compiling anything
  assert not (wd / "checkpoints").exists()
