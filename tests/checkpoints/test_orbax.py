"""Damaged checkpoints: a resumed run saves the damaged step again; init_from falls back to a complete step.

Runs of the trainer's tiny model (tests/train/test_trainer.py helpers): 6 steps, a checkpoint every 2.
"""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import logging

from maskfeat_jax import run as run_lib
from maskfeat_jax.checkpoints import orbax as ckpt_lib
from tests.train.test_trainer import tiny_config, tiny_hooks

# Orbax leaves the reads of a failed restore's other arrays unawaited: expected noise here.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _damage(step_dir):
  """Deletes the data files of the step's state (what a lost file on a damaged file system looks like)."""
  d = step_dir / "state" / "ocdbt.process_0" / "d"
  files = os.listdir(d)
  assert files
  for f in files:
    os.remove(d / f)


def _steps(ck):
  return sorted(int(d) for d in os.listdir(ck) if d.isdigit())


def _plain_restore(step_dir):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(step_dir / "state")


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.fixture
def warnings_seen(monkeypatch):
  seen = []
  real = logging.warning

  def capture(msg, *args, **kw):
    seen.append(msg % args if args else msg)
    real(msg, *args, **kw)
  monkeypatch.setattr(logging, "warning", capture)
  return seen


def test_damaged_newest_step_is_set_aside_and_saved_again(tmp_path, warnings_seen):
  c = tiny_config()
  first = run_lib.run(c, str(tmp_path), tiny_hooks(c))
  ck = tmp_path / "checkpoints"
  assert _steps(ck) == [2, 4, 6]
  _damage(ck / "6")
  with pytest.raises(Exception):
    _plain_restore(ck / "6")

  second = run_lib.run(c, str(tmp_path), tiny_hooks(c))
  assert second.status == "done" and second.start_step == 4 and second.step == 6
  # Step 6 was written again (restorable by plain Orbax); the damaged copy is kept beside it, out of the way.
  restored = _plain_restore(ck / "6")
  for x, y in zip(_leaves(restored["params"]), _leaves(first.params)):
    np.testing.assert_array_equal(x, y)  # the resume from 4 is exact, so it is the lost step 6
  assert _steps(ck) == [2, 4, 6]
  assert os.path.isdir(ck / "6.damaged-1")
  moved = [w for w in warnings_seen if "is damaged" in w]
  assert len(moved) == 1 and "Checkpoint 6" in moved[0] and "6.damaged-1" in moved[0], warnings_seen

  # The workdir is as if never damaged: the next rerun resumes at 6 with nothing to redo or warn about.
  warnings_seen.clear()
  third = run_lib.run(c, str(tmp_path), tiny_hooks(c))
  assert third.start_step == 6 and third.step == 6
  assert not [w for w in warnings_seen if "could not be restored" in w or "is damaged" in w]
  np.testing.assert_array_equal(_leaves(ckpt_lib.restore_params(str(tmp_path)))[0], _leaves(first.params)[0])


def test_restore_params_falls_back_to_newest_complete_step(tmp_path, warnings_seen):
  c = tiny_config(total_steps=4)
  run_lib.run(c, str(tmp_path), tiny_hooks(c))
  ck = tmp_path / "checkpoints"
  step2 = _leaves(_plain_restore(ck / "2")["params"])
  _damage(ck / "4")
  for path in (tmp_path, ck):  # a workdir or its checkpoints/ directory
    warnings_seen.clear()
    params = ckpt_lib.restore_params(str(path))
    for x, y in zip(_leaves(params), step2):
      np.testing.assert_array_equal(x, y)
    assert any("checkpoint 4 is damaged" in w and "using step 2" in w for w in warnings_seen), warnings_seen
  assert _steps(ck) == [2, 4]  # init_from only reads: another run's workdir is left as it is


def test_restore_params_names_every_step_when_none_restores(tmp_path):
  c = tiny_config(total_steps=4)
  run_lib.run(c, str(tmp_path), tiny_hooks(c))
  ck = tmp_path / "checkpoints"
  _damage(ck / "2")
  _damage(ck / "4")
  with pytest.raises(RuntimeError, match="no checkpoint there could be restored") as e:
    ckpt_lib.restore_params(str(tmp_path))
  msg = str(e.value)
  assert str(ck) in msg and "step 4:" in msg and "step 2:" in msg
  with pytest.raises(RuntimeError, match="the checkpoint could not be restored"):
    ckpt_lib.restore_params(str(ck / "4"))  # a step directory: no fallback, but the same clear error
