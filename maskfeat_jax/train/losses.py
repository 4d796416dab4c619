"""Loss functions of fine-tuning: label smoothing and timm's `SoftTargetCrossEntropy` (float32).

The MaskFeat loss (MSE of the predicted HOG / pixel targets over masked tokens) is computed inside the model
(models/maskfeat.py, as `slowfast/models/masked.py::MaskMViT.forward`); train/step.py builds both steps'
loss functions from these pieces.
"""
import jax
import jax.numpy as jnp


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
  """Integer labels [B] → label-smoothed one-hot [B, K] (off = s/K, on = 1 − s + s/K), float32."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def soft_cross_entropy(logits: jax.Array, soft_targets: jax.Array, reduction: str = "mean") -> jax.Array:
  """Cross-entropy with soft targets, computed in float32: −Σ_k t_k log softmax(logits)_k.

  Args:
    logits: [B, K].
    soft_targets: [B, K] (rows sum to 1).
    reduction: 'mean' (a scalar, as timm's SoftTargetCrossEntropy) or 'none' ([B]).
  """
  if logits.shape != soft_targets.shape:
    raise ValueError(f"soft_cross_entropy: logits {logits.shape} and targets {soft_targets.shape} differ.")
  losses = -jnp.sum(soft_targets.astype(jnp.float32) * jax.nn.log_softmax(logits.astype(jnp.float32)), -1)
  if reduction == "mean":
    return jnp.mean(losses)
  if reduction == "none":
    return losses
  raise ValueError(f"soft_cross_entropy: reduction={reduction!r}, expected 'mean' or 'none'.")


def masked_sigmoid_bce(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """AVA detection loss: binary cross-entropy of sigmoid(logits) [B, N, K] against multi-hot targets, averaged
  over the classes and the valid boxes (mask [B, N]; padded boxes count nothing), float32.

  The official `LOSS_FUNC: bce` (torch BCELoss, mean) on the head's sigmoid over the boxes of a batch, which
  has no padding: the mean over valid boxes is the same number.
  """
  if logits.shape != targets.shape or logits.shape[:2] != mask.shape:
    raise ValueError(f"masked_sigmoid_bce: logits {logits.shape}, targets {targets.shape}, mask {mask.shape} "
                     "must be [B, N, K], [B, N, K], [B, N].")
  x, z = logits.astype(jnp.float32), targets.astype(jnp.float32)
  per_box = jnp.mean(jnp.maximum(x, 0.0) - x * z + jnp.log1p(jnp.exp(-jnp.abs(x))), axis=-1)  # stable BCE
  m = mask.astype(jnp.float32)
  return jnp.sum(per_box * m) / jnp.maximum(jnp.sum(m), 1.0)
