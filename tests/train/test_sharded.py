"""The sharded train step on 8 simulated CPU devices equals the single-device step (fp32 tolerance).

Runs in a subprocess: XLA_FLAGS must be set before jax is imported, and this pytest process already
imported jax with one device.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

TESTS = pathlib.Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(r"""
  import json
  import jax, numpy as np
  from tests.train import test_trainer as tt
  from maskfeat_jax import config as config_lib, sharding
  from maskfeat_jax.train import optim, state as st, step as sl, trainer

  assert jax.device_count() == 8, jax.devices()
  out = {}
  for mode in ("pretrain", "finetune"):
    c = tt.tiny_config(mode)
    model = tt.TinyMaskFeat(classes=3 if mode == "finetune" else 0)
    it = tt.ArrayIterator(c)
    batches = [next(it) for _ in range(3)]
    results = {}
    for name, shape, ndev in (("single", (1, 1), 1), ("8x1", (8, 1), 8), ("2x4", (2, 4), 8)):
      c.mesh.shape = shape
      mesh = sharding.make_mesh(c.mesh, jax.devices()[:ndev])
      rules = config_lib.logical_rules(c)
      sched = optim.resolve_schedule(c, None)
      lrs = optim.lr_table(sched)
      state, shard, tx = st.create_train_state(
          trainer.init_params_fn(c, model), lambda p: optim.make_optimizer(c, p, sched),
          jax.random.PRNGKey(0), mesh, rules)
      keys = config_lib.step_keys(c)
      bs = sharding.batch_shardings(c, mesh, {k: batches[0][k].shape for k in keys})
      loss_fn = sl.loss_fn_for(c, model)
      fn = sl.jit_step(sl.make_step_fn(loss_fn, tx), shard, bs, mesh)
      losses = []
      with sharding.mesh_context(mesh, rules):
        for b in batches:
          state, m = fn(state, sharding.place_batch(b, keys, bs), lrs[len(losses)])
          losses.append(float(m["loss"]))  # sync every step (XLA:CPU multi-device)
      specs = {jax.tree_util.keystr(p): str(x.sharding.spec)
               for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
      results[name] = (jax.tree.map(np.asarray, jax.device_get(state.params)), losses, specs)
    ref_p, ref_l, _ = results["single"]
    for name in ("8x1", "2x4"):
      p, l, specs = results[name]
      diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(ref_p), jax.tree.leaves(p)))
      scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(ref_p))
      out[f"{mode}/{name}"] = {"max_param_diff": diff, "param_scale": scale,
                               "loss_diff": max(abs(a - b) for a, b in zip(ref_l, l)), "specs": specs}
  print("RESULT " + json.dumps(out))
""")


def test_sharded_step_matches_single_device(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  # `-c` from the repository root: the script imports this test package as `tests.train`.
  proc = subprocess.run(["timeout", "-k", "10", "240", sys.executable, "-c", SCRIPT],
                        env=env, capture_output=True, text=True, cwd=str(TESTS.parents[1]))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  res = json.loads(line[len("RESULT "):])
  assert set(res) == {"pretrain/8x1", "pretrain/2x4", "finetune/8x1", "finetune/2x4"}
  for name, r in res.items():
    assert r["loss_diff"] < 1e-5, (name, r)
    assert r["max_param_diff"] < 1e-5 * max(1.0, r["param_scale"]), (name, r)
  # The 2x4 mesh really shards params over 'fsdp' (logical 'embed' -> 'fsdp') ...
  assert "'fsdp'" in res["pretrain/2x4"]["specs"]["['blocks_0_fc1']['kernel']"]
  # ... and 8x1 has an fsdp axis of size 1, so nothing is split there.
  assert res["pretrain/8x1"]["specs"]["['blocks_0_fc1']['kernel']"].count("fsdp") == 1
