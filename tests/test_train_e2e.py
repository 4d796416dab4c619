"""End to end with the real pieces: tiny MaskFeat MViT, the synthetic_motion Grain pipeline, HOG in the step.

- exact resume: 4 steps straight == 2 steps + restart (state and Grain iterator restored) + 2 steps, bitwise;
- fine-tuning one step from that pre-training checkpoint (convert.pretrain_to_finetune on our checkpoint).
"""
import pathlib
import sys

import jax
import numpy as np

from maskfeat_jax.train import checkpoint as ckpt_lib
from maskfeat_jax.train import loop

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import demo  # pylint: disable=g-import-not-at-top,wrong-import-position


def _phase(phase, **changes):
  c = demo.get_config("tiny")
  c.batch_size = 2
  c.checkpoint_every_steps = 100
  c.log_every_steps = 1
  c.demo.pretrain.total_steps = 4
  c.demo.finetune.total_steps = 1
  c = loop.phase_config(c, phase)
  for k, v in changes.items():
    c[k] = v
  return c


def _leaves(params):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))]


def test_real_pretrain_exact_resume_then_finetune(tmp_path, monkeypatch):
  c = _phase("pretrain")
  straight = loop.run(c, str(tmp_path / "a"))
  assert straight.status == "done" and straight.step == 4
  half = loop.train(c, str(tmp_path / "b"), loop.Hooks(stop_at_step=2))
  assert half.status == "stopped" and half.step == 2
  resumed = loop.run(c, str(tmp_path / "b"))
  assert resumed.start_step == 2 and resumed.step == 4
  for x, y in zip(_leaves(straight.params), _leaves(resumed.params)):
    np.testing.assert_array_equal(x, y)
  assert straight.last_metrics["loss"] == resumed.last_metrics["loss"]

  # Fine-tuning from our pre-training workdir: the backbone comes from the checkpoint.
  ft = _phase("finetune", init_from=str(tmp_path / "a"))
  pt_params = ckpt_lib.restore_params(str(tmp_path / "a"))
  monkeypatch.setattr(loop, "_final_eval", lambda *a, **k: {"top1": float("nan")})
  seen = {}
  orig = loop.load_init_params

  def spy(config, fresh):
    seen["params"] = orig(config, fresh)
    return seen["params"]
  monkeypatch.setattr(loop, "load_init_params", spy)
  r = loop.run(ft, str(tmp_path / "ft"))
  assert r.step == 1 and np.isfinite(r.last_metrics["loss"])
  got = seen["params"]
  np.testing.assert_array_equal(np.asarray(got["patch_embed"]["proj"]["kernel"]),
                                np.asarray(pt_params["patch_embed"]["proj"]["kernel"]))
  assert "mask_token" not in got and "head" in got
