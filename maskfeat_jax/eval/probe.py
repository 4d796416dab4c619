"""Linear probe: a cheap quality signal of a (pre-training) checkpoint.

Frozen backbone features (`model.apply(variables, x, method="features")` → [B, D], the mean of the last
block's non-cls tokens) are extracted once for a train and an eval split with the deterministic eval views
(config.probe.num_clips × num_crops per example, no augmentation) and averaged over each example's views.
Features are standardised with the train split's mean / std (what MAE's probe does with a BatchNorm without
affine parameters), and a linear softmax classifier is trained on the cached features with AdamW and a
cosine lr decay (config.probe.steps / lr / weight_decay; full batch or minibatches of probe.batch_size), all
inside one jitted `lax.scan`. Reported: top-1/top-5 on the eval split (and train top-1), with the view count.

Runs on any checkpoint with the `features` method (MaskFeat pre-training or a classifier): during
pre-training (the training loop calls it at eval time) or afterwards (`--config.mode=probe`).
"""
import json
import time
from typing import Iterable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from maskfeat_jax import compiler
from maskfeat_jax import paths
from maskfeat_jax.config import locked_copy
from maskfeat_jax.data import splits
from maskfeat_jax.eval import multiview as ev
from maskfeat_jax.eval import report


def standardize(train: np.ndarray, *others: np.ndarray, eps: float = 1e-6):
  """(x − mean) / std with the train statistics; returns the standardised train array and the others."""
  mean = train.mean(axis=0, keepdims=True)
  std = train.std(axis=0, keepdims=True) + eps
  return tuple((a - mean) / std for a in (train,) + others)


def train_linear_classifier(features: np.ndarray, labels: np.ndarray, num_classes: int, *, steps: int,
                            lr: float, weight_decay: float = 0.0, batch_size: int = 0, seed: int = 0):
  """Softmax regression on fixed features (jitted scan). Returns (params {'w','b'}, final loss).

  batch_size 0 = full-batch steps; otherwise each step draws `batch_size` rows uniformly with replacement.
  """
  if steps <= 0:
    raise ValueError(f"config.probe.steps={steps}: must be positive.")
  x = jnp.asarray(features, jnp.float32)
  y = jnp.asarray(labels, jnp.int32)
  n, d = x.shape
  params = {"w": jnp.zeros((d, num_classes), jnp.float32), "b": jnp.zeros((num_classes,), jnp.float32)}
  tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)

  def loss_fn(p, xb, yb):
    logits = xb @ p["w"] + p["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  @compiler.jit
  def run(params, key):
    def step(carry, k):
      p, opt = carry
      if batch_size and batch_size < n:
        idx = jax.random.randint(k, (batch_size,), 0, n)
        xb, yb = x[idx], y[idx]
      else:
        xb, yb = x, y
      loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
      updates, opt = tx.update(g, opt, p)
      return (optax.apply_updates(p, updates), opt), loss
    (p, _), losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, steps))
    return p, losses[-1]

  p, last = run(params, jax.random.key(seed))
  return jax.tree.map(np.asarray, p), float(last)


def predict_scores(params, features: np.ndarray) -> np.ndarray:
  return np.asarray(features, np.float32) @ params["w"] + params["b"]


def probe_config(config) -> ml_collections.ConfigDict:
  """A copy of config whose eval views are the probe's (the eval iterator reads config.eval.*)."""
  c = locked_copy(config)
  c.eval.num_clips = int(config.probe.num_clips)
  c.eval.num_crops = int(config.probe.num_crops)
  return c


def _num_views(config) -> int:
  return 1 if config.data.image_mode else int(config.eval.num_clips) * int(config.eval.num_crops)


def linear_probe(config, model, params, mesh, workdir: Optional[str] = None, *,
                 train_iterator: Optional[Iterable] = None, eval_iterator: Optional[Iterable] = None,
                 verbose: bool = True) -> dict:
  """Linear probe of `params` (see module docstring).

  Args:
    config: full config tree (probe.*, eval.batch_size, data.*, mesh.*).
    model: Flax module with a `features` method ([B, D]).
    params: params tree or variables dict.
    mesh: device mesh (batch sharded over the 'act_batch' rule's mesh axes).
    workdir: if given, writes probe_<eval split>.json there (process 0).
    train_iterator, eval_iterator: optional batch iterables (tests); default make_eval_iterator on
      probe.train_split / probe.eval_split ('' = data.train_split / data.eval_split).

  Returns:
    Scalars top1, top5, train_top1, final_loss, num_train, num_eval, num_views, num_clips, num_crops,
    feature_dim, probe_seconds.
  """
  t0 = time.perf_counter()
  c = probe_config(config)
  train_split = config.probe.train_split or config.data.train_split
  eval_split = config.probe.eval_split or config.data.eval_split
  forward = ev.make_forward(c, model, mesh, method="features")  # one compiled function for both splits
  train, _ = ev.run_views(c, model, params, mesh, train_split, iterator=train_iterator, forward=forward)
  test, _ = ev.run_views(c, model, params, mesh, eval_split, iterator=eval_iterator, forward=forward)
  if train.example_ids.size == 0 or test.example_ids.size == 0:
    raise ValueError(f"linear_probe: no valid rows in split {train_split!r} or {eval_split!r}.")
  num_classes = int(max(train.labels.max(), test.labels.max()) + 1)
  if config.model.num_classes:
    num_classes = max(num_classes, int(config.model.num_classes))
  x_train, x_test = standardize(train.values, test.values)
  w, loss = train_linear_classifier(x_train, train.labels, num_classes, steps=int(config.probe.steps),
                                    lr=float(config.probe.lr), weight_decay=float(config.probe.weight_decay),
                                    batch_size=int(config.probe.batch_size), seed=int(config.seed))
  topk = ev.topk_accuracy(predict_scores(w, x_test), test.labels, (1, 5))
  train_top1 = ev.topk_accuracy(predict_scores(w, x_train), train.labels, (1,))[1]
  out = dict(top1=topk[1], top5=topk[5], train_top1=train_top1, final_loss=loss,
             num_train=int(train.labels.size), num_eval=int(test.labels.size), num_views=_num_views(c),
             num_clips=int(c.eval.num_clips), num_crops=int(c.eval.num_crops),
             feature_dim=int(train.values.shape[1]), probe_seconds=time.perf_counter() - t0)
  if jax.process_index() == 0:
    views = "[1 view (image)]" if c.data.image_mode else f"[{report.views_label(out['num_clips'], out['num_crops'])}]"
    if verbose:
      print(f"linear probe ({train_split} {out['num_train']} → {eval_split} {out['num_eval']} examples, "
            f"{out['feature_dim']}-d features, {config.probe.steps} steps):\n"
            f"  top-1 {100 * out['top1']:.2f}%  {views}\n  top-5 {100 * out['top5']:.2f}%  {views}\n"
            f"  train top-1 {100 * out['train_top1']:.2f}%  {views}", flush=True)
    if workdir:
      paths.makedirs(workdir)
      with paths.open(paths.join(workdir, f"probe_{splits.split_tag(eval_split)}.json"), "w") as f:
        json.dump(dict(train_split=train_split, eval_split=eval_split, views=views, **out), f, indent=2)
  return out
