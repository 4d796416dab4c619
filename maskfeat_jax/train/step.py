"""Pure train steps (pre-training and fine-tuning) and their jitted, sharded form.

A step does one optimizer update on the global batch. With `optim.grad_accum_steps = a > 1` the batch is
split into `a` micro-batches that are scanned over (gradients averaged), so memory holds one micro-batch of
activations. The learning rate is an argument of the step (see `make_step_fn`). The step RNG is
`fold_in(state.rng, state.step)`: a resumed run draws the same dropout / drop path randomness as a straight
one.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from maskfeat_jax import compiler
from maskfeat_jax.config import input_key
from maskfeat_jax.train import losses
from maskfeat_jax.train import mixup
from maskfeat_jax.train import optim
from maskfeat_jax.train import state as state_lib

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


def pretrain_loss_fn(model, key: str) -> LossFn:
  """MaskFeat loss: the model computes the HOG target from the raw pixels and the masked MSE."""

  def loss_fn(params, batch, rng):
    out = model.apply({"params": params}, batch[key], batch["mask"], train=True, rngs={"dropout": rng})
    return out["loss"], {}
  return loss_fn


def finetune_loss_fn(model, key: str, num_classes: int, augment) -> LossFn:
  """Soft-target cross-entropy on label-smoothed one-hot targets, or on mixup/cutmix targets."""
  uses_mixup = augment.mixup_alpha > 0 or augment.cutmix_alpha > 0
  smoothing = float(augment.label_smoothing)

  def loss_fn(params, batch, rng):
    x = batch[key]
    mix_rng, drop_rng = jax.random.split(rng)
    if uses_mixup:
      x, targets = mixup.mixup_cutmix(mix_rng, x, batch["label"], num_classes, augment)
    else:
      targets = losses.smooth_labels(batch["label"], num_classes, smoothing)
    logits = model.apply({"params": params}, x, train=True, rngs={"dropout": drop_rng})
    loss = losses.soft_cross_entropy(logits, targets)
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, {"train_top1": acc}
  return loss_fn


def detection_loss_fn(model, key: str) -> LossFn:
  """AVA: BCE of the RoI head's sigmoid outputs on the ground-truth boxes (losses.masked_sigmoid_bce)."""

  def loss_fn(params, batch, rng):
    logits = model.apply({"params": params}, batch[key], batch["boxes"], train=True, rngs={"dropout": rng})
    loss = losses.masked_sigmoid_bce(logits, batch["box_labels"], batch["box_mask"])
    return loss, {"boxes_per_clip": jnp.mean(jnp.sum(batch["box_mask"].astype(jnp.float32), axis=-1))}
  return loss_fn


def loss_fn_for(config, model) -> LossFn:
  """The loss of config.model.type: 'maskfeat' -> pre-training, 'classifier' -> fine-tuning, 'detection' -> AVA."""
  if config.model.type == "maskfeat":
    return pretrain_loss_fn(model, input_key(config))
  if config.model.type == "detection":
    return detection_loss_fn(model, input_key(config))
  return finetune_loss_fn(model, input_key(config), int(config.model.num_classes), config.augment)


def _split_micro(batch: dict, n: int) -> dict:
  """[B, ...] -> [n, B/n, ...] keeping each device's rows on it: example i goes to micro-batch i % n."""
  def split(x):
    b = x.shape[0]
    return jnp.swapaxes(x.reshape((b // n, n) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def value_and_grad(loss_fn: LossFn, params, batch: dict, rng: jax.Array, accum: int):
  """(loss, aux), grads, averaged over `accum` micro-batches (a scan) when accum > 1."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum == 1:
    return grad_fn(params, batch, rng)
  micro = _split_micro(batch, accum)

  def body(carry, inputs):
    i, mb = inputs
    (loss, aux), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
    acc_loss, acc_aux, acc_g = carry
    return (acc_loss + loss, jax.tree.map(jnp.add, acc_aux, aux), jax.tree.map(jnp.add, acc_g, g)), None

  (_, aux0), _ = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux0),
           jax.tree.map(jnp.zeros_like, params))
  (loss, aux, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
  scale = 1.0 / accum
  return (loss * scale, jax.tree.map(lambda a: a * scale, aux)), jax.tree.map(lambda g: g * scale, grads)


def make_step_fn(loss_fn: LossFn, tx: optax.GradientTransformation, accum: int = 1):
  """The pure step: (TrainState, batch, lr) -> (TrainState, metrics).

  The learning rate of this update comes in as an argument (an entry of `optim.lr_table`), not as the
  schedule's constants, so runs of another length reuse the compiled step; `tx` is `optim.make_optimizer`'s.
  """

  def step(state: state_lib.TrainState, batch: dict, lr: jax.Array):
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = value_and_grad(loss_fn, state.params, batch, rng, accum)
    grad_norm = optim.global_norm(grads)  # before clipping (what the official logs show)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, learning_rate=lr)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, **aux}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
  return step


def jit_step(step_fn, state_shardings, batch_shard: dict, mesh):
  """jit with explicit in/out shardings and the state donated (updated in place)."""
  replicated = NamedSharding(mesh, P())
  # compiler.jit adds the platform's compiler options (on CPU the ones that make the HOG target fast).
  return compiler.jit(step_fn, platform=mesh.devices.flat[0].platform,
                      in_shardings=(state_shardings, batch_shard, replicated),
                      out_shardings=(state_shardings, replicated), donate_argnums=(0,))
