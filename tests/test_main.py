"""main.py: config errors, workdir errors, distributed detection, and the demo smoke run (a subprocess)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from maskfeat_jax import main as main_lib
from maskfeat_jax import run as run_lib
from maskfeat_jax.config import load_config
from maskfeat_jax.models import factory
from maskfeat_jax import demo as demo_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
_ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _main(*args, timeout=120):
  cmd = ["timeout", "-k", "10", str(timeout), sys.executable, "-m", "maskfeat_jax.main", *args]
  return subprocess.run(cmd, cwd=REPO, env=_ENV, capture_output=True, text=True)


def test_unknown_config_key_is_an_error(tmp_path):
  p = _main("--config=configs/demo.py:tiny", f"--workdir={tmp_path / 'w'}", "--config.optim.no_such_key=1")
  assert p.returncode != 0
  assert "no_such_key" in p.stderr
  assert not (tmp_path / "w").exists()


def test_missing_workdir_parent_is_an_error(tmp_path):
  p = _main("--config=configs/demo.py:tiny", f"--workdir={tmp_path / 'missing' / 'w'}")
  assert p.returncode != 0
  assert "parent directory" in p.stderr and "does not exist" in p.stderr


def test_distributed_detection():
  assert not main_lib.wants_distributed({})
  assert main_lib.wants_distributed({"MASKFEAT_DISTRIBUTED": "1"})
  assert not main_lib.wants_distributed({"MASKFEAT_DISTRIBUTED": "0"})
  assert main_lib.wants_distributed({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})
  assert not main_lib.wants_distributed({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"})
  assert main_lib.wants_distributed({"TPU_WORKER_HOSTNAMES": "h0,h1"})
  assert not main_lib.wants_distributed({"TPU_WORKER_HOSTNAMES": "h0"})


def _pretrain_config(**changes):
  c = demo_lib.phase_config(load_config("configs/demo.py:tiny"), "pretrain")
  for k, v in changes.items():
    node = c
    *path, last = k.split(".")
    for q in path:
      node = node[q]
    node[last] = v
  return c


@pytest.fixture
def no_compile(monkeypatch):
  """Fails the test if anything reaches model building / compilation."""
  def boom(*a, **k):
    raise AssertionError("reached model building: the config error was not caught before compilation")
  monkeypatch.setattr(factory, "build_model", boom)


@pytest.mark.parametrize("changes,match", [
    ({"mask.grid": (4, 3, 3)}, r"config.mask.grid=\(4, 3, 3\)"),
    ({"mask.grid": (2, 2, 2)}, "temporal"),
    ({"data.num_frames": 16}, "config.model.input_size"),
    ({"batch_size": 3, "optim.grad_accum_steps": 2}, "multiple of 2"),
    ({"data.name": "no_such_dataset"}, "no_such_dataset"),
    ({"model.type": "classifier"}, "model.type='maskfeat'"),
])
def test_config_errors_before_compilation(tmp_path, no_compile, changes, match):
  c = _pretrain_config(**changes)
  if "data.name" in changes:
    c.data.data_dir = str(tmp_path / "data")
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    run_lib.run(c, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_demo_checks_the_finetuning_phase_before_pretraining(tmp_path, no_compile):
  """A bad fine-tuning setting of the demo fails at once, not after minutes of pre-training."""
  c = load_config("configs/demo.py:tiny")
  c.demo.finetune.augment.randaug_ops = ("Rotate", "Zoom")
  with pytest.raises(ValueError, match="unknown op"):
    run_lib.run(c, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "pretrain").exists()


@pytest.mark.slow
def test_demo_tiny_smoke(tmp_path):
  """The README command on the :tiny variant: pre-train, fine-tune + eval, scratch + eval, the table."""
  wd = tmp_path / "demo"
  p = _main("--config=configs/demo.py:tiny", f"--workdir={wd}", timeout=420)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
  res = json.load(open(wd / "demo_results.json"))
  for phase in ("finetune", "scratch"):
    ev = res[phase]["eval"]
    assert 0.0 <= ev["top1"] <= ev["top5"] <= 1.0 and ev["num_examples"] == 160
  assert "MaskFeat pre-training" in p.stdout and "scratch (same budget)" in p.stdout
  assert "initialised from" in p.stdout  # fine-tuning really started from the pre-training checkpoint
  for init in ("hog", "random_init"):  # linear probes of the pre-trained and of the random-init features
    pr = res["probe"][init]
    assert 0.0 <= pr["top1"] <= 1.0 and (pr["num_train"], pr["num_eval"]) == (16, 160)
    assert (wd / "probe" / init / "probe_test.json").exists()
  assert res["probe"]["hog"]["top1"] != res["probe"]["random_init"]["top1"] or \
      res["probe"]["hog"]["final_loss"] != res["probe"]["random_init"]["final_loss"]  # two different models
  for phase in ("pretrain", "finetune", "scratch"):
    assert (wd / phase / "metrics.jsonl").exists() and (wd / phase / "config.json").exists()
    assert any(d.isdigit() for d in os.listdir(wd / phase / "checkpoints"))
