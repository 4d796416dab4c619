"""The learning-rate schedule is an argument of the compiled step, not constants inside it: a run of another
length (a longer run, a resume with a new total_steps, the demo's phases) reuses the compiled step."""
import logging

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from maskfeat_jax import run as run_lib
from maskfeat_jax.train import optim
from tests.train.test_trainer import tiny_config, tiny_hooks

@pytest.fixture
def persistent_cache(tmp_path):
  """A fresh persistent compilation cache that stores every compilation (however fast)."""
  saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                           "jax_persistent_cache_min_compile_time_secs",
                                           "jax_persistent_cache_min_entry_size_bytes")}
  compilation_cache.reset_cache()
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  yield
  compilation_cache.reset_cache()
  for k, v in saved.items():
    jax.config.update(k, v)


def _train_log(config, workdir, caplog):
  """Runs `train`; returns the compilation-cache messages JAX logged meanwhile."""
  caplog.clear()
  with caplog.at_level(logging.DEBUG, logger="jax"):
    result = run_lib.train(config, workdir, tiny_hooks(config))
  return result, [r.getMessage() for r in caplog.records if "persistent compilation cache" in r.getMessage().lower()]


def test_another_total_steps_compiles_no_new_step(tmp_path, persistent_cache, caplog):
  first, log1 = _train_log(tiny_config(total_steps=3), str(tmp_path / "a"), caplog)
  assert first.status == "done"
  assert any(m.startswith("Writing jit_step to persistent compilation cache") for m in log1), log1
  second, log2 = _train_log(tiny_config(total_steps=7), str(tmp_path / "b"), caplog)
  assert second.status == "done" and second.step == 7
  # The step (the one big program) comes from the cache; only the lr table (a few ops) is new.
  assert any(m.startswith("Persistent compilation cache hit for 'jit_step'") for m in log2), log2
  assert not any("jit_step" in m and m.startswith("Writing") for m in log2), log2


def test_lr_table_is_the_schedule():
  """The lr the step gets is lr_at of its update index, bitwise (scalar evaluations of the schedule)."""
  sched = optim.resolve_schedule(tiny_config(total_steps=37, **{"optim.warmup_steps": 5}), None)
  table = optim.lr_table(sched)
  assert table.shape == (37,) and table.dtype == np.float32
  one = jax.jit(lambda s: optim.lr_at(s, sched))
  np.testing.assert_array_equal(table, [np.asarray(one(np.int32(i))) for i in range(37)])
  assert table[5] == np.float32(sched.base_lr) and np.all(np.diff(table[5:]) < 0)
