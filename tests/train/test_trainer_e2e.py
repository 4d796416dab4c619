"""End to end with the real pieces: tiny MaskFeat MViT, the synthetic_motion Grain pipeline, HOG in the step.

- exact resume: 4 steps straight == 2 steps + restart (state and Grain iterator restored) + 2 steps, bitwise;
- fine-tuning one step from that pre-training checkpoint (convert.pretrain_to_finetune on our checkpoint).
"""

import jax
import numpy as np
import pytest

from maskfeat_jax.checkpoints import orbax as ckpt_lib
from maskfeat_jax import run as run_lib
from maskfeat_jax.config import load_config
from maskfeat_jax import demo as demo_lib
from maskfeat_jax.models import factory
from maskfeat_jax.checkpoints import init as init_lib
from maskfeat_jax.train import optim



def _phase(phase, **changes):
  c = load_config("configs/demo.py:tiny")
  c.batch_size = 2
  c.checkpoint_every_steps = 100
  c.log_every_steps = 1
  c.demo.pretrain.total_steps = 4
  c.demo.finetune.total_steps = 1
  c = demo_lib.phase_config(c, phase)
  for k, v in changes.items():
    c[k] = v
  return c


def _leaves(params):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))]


@pytest.mark.slow
def test_real_pretrain_exact_resume_then_finetune(tmp_path, monkeypatch):
  c = _phase("pretrain")
  straight = run_lib.run(c, str(tmp_path / "a"))
  assert straight.status == "done" and straight.step == 4
  half = run_lib.train(c, str(tmp_path / "b"), run_lib.Components(stop_at_step=2))
  assert half.status == "stopped" and half.step == 2
  resumed = run_lib.run(c, str(tmp_path / "b"))
  assert resumed.start_step == 2 and resumed.step == 4
  for x, y in zip(_leaves(straight.params), _leaves(resumed.params)):
    np.testing.assert_array_equal(x, y)
  assert straight.last_metrics["loss"] == resumed.last_metrics["loss"]

  # Fine-tuning from our pre-training workdir: the backbone comes from the checkpoint.
  ft = _phase("finetune", init_from=str(tmp_path / "a"))
  pt_params = ckpt_lib.restore_params(str(tmp_path / "a"))
  monkeypatch.setattr(run_lib, "evaluator_for", lambda *a, **k: lambda params, workdir: {"top1": float("nan")})
  seen = {}
  orig = init_lib.finetune_params

  def spy(config, fresh):
    seen["params"] = orig(config, fresh)
    return seen["params"]
  monkeypatch.setattr(init_lib, "finetune_params", spy)
  r = run_lib.run(ft, str(tmp_path / "ft"))
  assert r.step == 1 and np.isfinite(r.last_metrics["loss"])
  got = seen["params"]
  np.testing.assert_array_equal(np.asarray(got["patch_embed"]["proj"]["kernel"]),
                                np.asarray(pt_params["patch_embed"]["proj"]["kernel"]))
  assert "mask_token" not in got and "head" in got


@pytest.mark.slow
def test_eval_and_probe_modes_on_our_checkpoints(tmp_path):
  """mode=eval on a fine-tuning checkpoint and mode=probe on a pre-training one, through run.run."""
  pt = _phase("pretrain")
  pt.demo.pretrain.total_steps = 1
  pt.total_steps = 1
  run_lib.run(pt, str(tmp_path / "pt"))
  ft = _phase("finetune", init_from=str(tmp_path / "pt"))
  ft.eval_every_steps = 0
  ft_res = run_lib.train(ft, str(tmp_path / "ft"))  # includes the final multi-view eval
  ev_cfg = _phase("finetune", init_from=str(tmp_path / "ft"))
  ev_cfg.mode = "eval"
  ev = run_lib.run(ev_cfg, str(tmp_path / "ev"))
  # The same params evaluated again give the same numbers as the eval at the end of fine-tuning.
  assert ev["top1"] == ft_res.eval["top1"] and ev["num_examples"] == 160
  pr_cfg = _phase("pretrain", init_from=str(tmp_path / "pt"))
  pr_cfg.mode = "probe"
  pr_cfg.probe.steps = 10
  pr = run_lib.run(pr_cfg, str(tmp_path / "probe"))
  assert pr_cfg.probe.train_split == "train[:16]"  # configs/demo.py:tiny probes on a class-balanced slice
  assert 0.0 <= pr["top1"] <= 1.0 and pr["num_train"] == 16


def test_bf16_compute_keeps_fp32_params_and_optimizer_state():
  """config.model.dtype=bfloat16 changes the compute only: params and Adam moments stay float32."""
  c = _phase("pretrain")
  c.model.dtype = "bfloat16"
  model = factory.build_model(c)
  params = factory.param_shapes(c, model)
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype("float32")}
  tx = optim.make_optimizer(c, params, optim.resolve_schedule(c, None))
  opt = jax.eval_shape(tx.init, params)
  assert {x.dtype for x in jax.tree.leaves(opt) if x.ndim > 0} == {np.dtype("float32")}
