"""Trainer tests on a tiny throwaway model and an in-memory batch source (fixtures defined here).

These exercise the loop, checkpoints, guards and the step itself independently of the real model and data
pipeline; test_train_e2e.py runs the real pieces.
"""
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskfeat_jax.config import base_config
from maskfeat_jax import run as run_lib
from maskfeat_jax.train import logger as metrics_lib
from maskfeat_jax.train import optim
from maskfeat_jax.train import step as step_lib

T, S, GRID = 4, 16, (2, 2, 2)  # frames, crop, mask grid (T/2 temporal tokens, 8x8-pixel mask cells)
POISON = 7


class TinyMaskFeat(nn.Module):
  """Patchify (2x4x4) -> embed -> mask-token swap -> one residual MLP block -> linear head -> masked MSE."""
  dim: int = 16
  classes: int = 0  # > 0: classifier (mean pool + head)

  @nn.compact
  def __call__(self, x, mask=None, train=False):
    poisoned = jnp.all(x == POISON)  # a batch of all-POISON pixels makes the loss NaN (guard tests)
    x = x.astype(jnp.float32) / 255.0
    b, t, h, w, c = x.shape
    tok = x.reshape(b, t // 2, 2, h // 4, 4, w // 4, 4, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    grid = tok.shape[1:4]
    tok = tok.reshape(b, -1, 2 * 4 * 4 * c)
    target = jax.lax.stop_gradient(tok - tok.mean(-1, keepdims=True))
    kinit = nn.initializers.normal(0.2)
    emb = self.param("patch_embed", nn.with_logical_partitioning(kinit, (None, "embed")),
                     (tok.shape[-1], self.dim))
    z = tok @ emb
    if mask is not None:
      m = mask.astype(bool)
      m = jnp.repeat(jnp.repeat(m, grid[1] // m.shape[2], 2), grid[2] // m.shape[3], 3).reshape(b, -1)
      mt = self.param("mask_token", nn.with_logical_partitioning(kinit, (None, None, "embed")),
                      (1, 1, self.dim))
      z = jnp.where(m[..., None], mt, z)
    z = nn.with_logical_constraint(z, ("batch", "tokens", "embed"))
    dense = lambda f, axes, name: nn.Dense(
        f, name=name, kernel_init=nn.with_logical_partitioning(kinit, axes))
    y = dense(4 * self.dim, ("embed", "mlp"), "blocks_0_fc1")(nn.LayerNorm(name="blocks_0_norm")(z))
    y = nn.Dropout(0.1, deterministic=not train)(nn.gelu(y))
    z = z + dense(self.dim, ("mlp", "embed"), "blocks_0_fc2")(y)
    z = nn.LayerNorm(name="norm")(z)
    if self.classes:
      logits = dense(self.classes, ("embed", "classes"), "head")(z.mean(1))
      return logits + jnp.where(poisoned, jnp.nan, 0.0)
    pred = dense(target.shape[-1], ("embed", None), "head")(z)
    err = ((pred - target) ** 2).mean(-1)
    loss = (err * m).sum() / jnp.maximum(m.sum(), 1) + jnp.where(poisoned, jnp.nan, 0.0)
    return {"pred": pred, "target": target, "token_mask": m, "loss": loss}


class ArrayIterator:
  """Deterministic infinite batches (a function of the batch index) with Grain-style get/set_state."""

  def __init__(self, config, *, process_index=0, process_count=1, nan_at=None):
    self.b = config.batch_size // process_count
    self.offset = process_index * self.b
    self.pretrain = config.model.type == "maskfeat"
    self.index = 0
    self.nan_at = nan_at

  def __next__(self):
    rng = np.random.default_rng(1000 + self.index)
    rows = [np.random.default_rng((self.index, self.offset + i)) for i in range(self.b)]
    label = np.array([r.integers(0, 3) for r in rows], np.int32)
    # Class-dependent brightness so the classifier has something to learn.
    video = np.stack([np.clip(r.normal(60 + 60 * l, 30, (T, S, S, 3)), 0, 255)
                      for r, l in zip(rows, label)]).astype(np.uint8)
    batch = {"video": video, "label": label}
    if self.nan_at is not None and self.index + 1 == self.nan_at:
      batch["video"] = np.full(video.shape, POISON, np.uint8)
    if self.pretrain:
      batch["mask"] = (np.stack([r.random(GRID) for r in rows]) < 0.5).astype(np.uint8)
    del rng
    self.index += 1
    return batch

  def get_state(self):
    return {"index": self.index}

  def set_state(self, state):
    self.index = int(state["index"])


class Info:
  num_classes = 3
  class_names = ["a", "b", "c"]
  split_sizes = {"train": 64, "test": 12}


def tiny_config(mode="pretrain", **kw):
  c = base_config()
  c.mode = mode
  c.model.type = "maskfeat" if mode == "pretrain" else "classifier"
  c.model.num_classes = 0 if mode == "pretrain" else Info.num_classes
  c.model.input_size = (T, S, S)  # what the example batch is shaped from (the data's clips)
  c.batch_size = 8
  c.total_steps = 6
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  c.keep_checkpoints = 5
  c.data.num_frames = T
  c.data.crop_size = S
  c.mask.grid = GRID
  c.optim.base_lr = 1e-2
  c.optim.warmup_steps = 2
  c.optim.clip_grad_norm = 1.0
  c.log.tensorboard = True
  for k, v in kw.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def tiny_hooks(config, nan_at=None, stop_at_step=None):
  model = TinyMaskFeat(classes=3 if config.model.type == "classifier" else 0)
  make = lambda cfg, **kw: ArrayIterator(cfg, nan_at=nan_at, **kw)
  return run_lib.Components(model=model, make_train_iterator=make, dataset_info=Info(), stop_at_step=stop_at_step)


def _params_np(result):
  return jax.tree.map(np.asarray, jax.device_get(result.params))


def test_pretrain_runs_logs_and_checkpoints(tmp_path):
  c = tiny_config()
  r = run_lib.run(c, str(tmp_path), tiny_hooks(c))
  assert r.status == "done" and r.step == 6
  assert np.isfinite(r.last_metrics["loss"])
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [2, 4, 6]
  recs = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in recs] == [2, 4, 6]
  assert {"loss", "lr", "grad_norm"} <= set(recs[-1])
  # lr logged at step 6 is the lr of the 6th update (schedule step 5), in the cosine part.
  sched = optim.resolve_schedule(c, None)
  assert recs[-1]["lr"] == pytest.approx(float(optim.lr_at(5, sched)), rel=1e-5)
  assert sched.end_lr < recs[-1]["lr"] < sched.base_lr
  cfg = json.load(open(tmp_path / "config.json"))
  assert cfg["_run"]["param_count"] > 0 and cfg["mode"] == "pretrain"
  assert os.path.exists(tmp_path / "config.yaml")
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))


def test_pretrain_loss_decreases(tmp_path):
  c = tiny_config(total_steps=30, log_every_steps=5, checkpoint_every_steps=100)
  run_lib.run(c, str(tmp_path), tiny_hooks(c))
  recs = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert len(recs) == 6
  assert recs[-1]["loss"] < 0.9 * recs[0]["loss"], [r["loss"] for r in recs]


def test_finetune_from_scratch_one_step(tmp_path, monkeypatch):
  c = tiny_config("finetune", total_steps=1)
  monkeypatch.setattr(run_lib, "evaluator_for", lambda *a, **k: lambda params, workdir: {"top1": 0.5})
  r = run_lib.run(c, str(tmp_path), tiny_hooks(c))
  assert r.step == 1 and np.isfinite(r.last_metrics["loss"])
  # Cross-entropy of a near-uniform 3-way classifier starts near ln 3.
  assert abs(r.last_metrics["loss"] - np.log(3)) < 1.0
  assert r.eval == {"top1": 0.5}


def test_exact_resume_is_bitwise(tmp_path):
  """2N steps straight == N steps, restart (new process state, restored iterator), N more steps."""
  c = tiny_config(total_steps=8, checkpoint_every_steps=100)
  straight = run_lib.run(c, str(tmp_path / "a"), tiny_hooks(c))
  first = run_lib.run(c, str(tmp_path / "b"), tiny_hooks(c, stop_at_step=4))
  assert first.status == "stopped" and first.step == 4
  resumed = run_lib.run(c, str(tmp_path / "b"), tiny_hooks(c))
  assert resumed.step == 8 and resumed.start_step == 4
  a, b = _params_np(straight), _params_np(resumed)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # And the checkpoint resumed from really changed something (not a fresh run of 8 steps).
  mid = jax.tree.leaves(_params_np(first))
  assert any(not np.array_equal(x, y) for x, y in zip(mid, jax.tree.leaves(a)))


def test_incomplete_and_damaged_checkpoints_are_skipped(tmp_path):
  c = tiny_config(total_steps=4)
  run_lib.run(c, str(tmp_path), tiny_hooks(c))
  ck = tmp_path / "checkpoints"
  # A save killed midway leaves Orbax's temporary directory; a damaged step directory fails to load.
  shutil.copytree(ck / "4", ck / "6.orbax-checkpoint-tmp-1234567")
  shutil.copytree(ck / "4", ck / "8")
  for root, _, files in os.walk(ck / "8" / "state"):
    for f in files:
      open(os.path.join(root, f), "wb").close()
  c2 = tiny_config(total_steps=10)
  r = run_lib.run(c2, str(tmp_path), tiny_hooks(c2, stop_at_step=5))
  # Resumed from 4 (the newest complete, loadable checkpoint), not 6, 8 or a fresh start.
  assert r.start_step == 4 and r.step == 5
  assert json.load(open(tmp_path / "config.json"))["_run"]["resumed_from_step"] == 4


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  c = tiny_config(total_steps=8)
  with pytest.raises(metrics_lib.TrainingDiverged, match="step 3"):
    run_lib.run(c, str(tmp_path), tiny_hooks(c, nan_at=3))
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [2]


def test_exploding_loss_stops():
  with pytest.raises(metrics_lib.TrainingDiverged, match="step 7"):
    metrics_lib.check_losses([(6, 1.0), (7, 50.0)], reference=2.0, explode_factor=10)
  metrics_lib.check_losses([(6, 1.0), (7, 50.0)], reference=2.0, explode_factor=0)


def test_batch_not_divisible_fails_before_compile(tmp_path):
  c = tiny_config(batch_size=6, **{"optim.grad_accum_steps": 4})
  with pytest.raises(ValueError, match="grad_accum_steps"):
    run_lib.run(c, str(tmp_path), tiny_hooks(c))
  assert not (tmp_path / "checkpoints").exists()


def test_wrong_model_type_for_mode(tmp_path):
  c = tiny_config("finetune", **{"model.type": "maskfeat"})
  with pytest.raises(ValueError, match="model.type='classifier'"):
    run_lib.run(c, str(tmp_path), tiny_hooks(c))


@pytest.mark.parametrize("key,value,match", [
    ("augment.randaug", "rand-m7-zz3", "unknown section"),
    ("augment.randaug_ops", ("Rotate", "Zoom"), "unknown op"),
    ("augment.erase_prob", 1.5, "erase_prob=1.5"),
])
def test_bad_augmentation_fails_before_compile(tmp_path, key, value, match):
  extra = {"augment.randaug": "rand-m7-mstd0.5-inc1"} if key == "augment.randaug_ops" else {}
  c = tiny_config("finetune", **extra, **{key: value})
  with pytest.raises(ValueError, match=match):
    run_lib.run(c, str(tmp_path), tiny_hooks(c))
  assert not (tmp_path / "checkpoints").exists()


def test_grad_accumulation_matches_full_batch():
  """2 micro-batches of 4 give the same loss and gradients as one batch of 8 (mean of equal-size means)."""
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  batch = {"x": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)}

  def loss_fn(p, b, key):
    del key
    return jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2), {"n": jnp.float32(b["x"].shape[0])}
  key = jax.random.PRNGKey(0)
  (l1, a1), g1 = step_lib.value_and_grad(loss_fn, params, batch, key, 1)
  (l2, a2), g2 = step_lib.value_and_grad(loss_fn, params, batch, key, 2)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  np.testing.assert_allclose(g1["w"], g2["w"], rtol=1e-5, atol=1e-7)
  assert float(a2["n"]) == 4.0  # aux is averaged over micro-batches of 4
