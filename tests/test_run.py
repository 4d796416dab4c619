"""run.py: every split a run reads is checked before anything is built or compiled."""
import re

import pytest

from maskfeat_jax import demo as demo_lib
from maskfeat_jax import run as run_lib
from maskfeat_jax.config import load_config
from maskfeat_jax.models import factory


@pytest.fixture
def no_compile(monkeypatch):
  """Fails the test if anything reaches model building (and so compilation)."""
  def boom(*a, **k):
    raise AssertionError("reached model building: the split error was not caught before compilation")
  monkeypatch.setattr(factory, "build_model", boom)


def _phase(phase):
  return demo_lib.phase_config(load_config("configs/demo.py:tiny"), phase)


@pytest.mark.parametrize("phase,mode,key,value", [
    ("finetune", "finetune", "data.eval_split", "validation"),
    ("finetune", "finetune", "data.train_split", "training"),
    ("finetune", "eval", "data.eval_split", "val[:10]"),
    ("pretrain", "probe", "probe.eval_split", "holdout"),
    ("pretrain", "probe", "probe.train_split", "unlabeled"),
])
def test_missing_split_fails_before_compilation(tmp_path, no_compile, phase, mode, key, value):
  c = _phase(phase)
  c.mode = mode
  c.init_from = str(tmp_path / "unused")
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=rf"config\.{re.escape(key)}={re.escape(repr(value))}: Split .* not in "
                                       r"dataset 'synthetic_motion'.*available: \['test', 'train'\]"):
    run_lib.run(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_splits_read_by_mode():
  c = _phase("pretrain")
  assert set(run_lib.splits_read(c)) == {"config.data.train_split"}
  c.eval_every_steps = 10  # pre-training with a probe during training reads the probe splits too
  assert set(run_lib.splits_read(c)) == {"config.data.train_split", "config.probe.train_split",
                                         "config.probe.eval_split"}


def test_demo_checks_the_finetuning_split_before_pretraining(tmp_path, no_compile):
  c = load_config("configs/demo.py:tiny")
  c.data.eval_split = "validation"
  with pytest.raises(ValueError, match=r"config\.data\.eval_split='validation'"):
    run_lib.run(c, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "pretrain").exists()
