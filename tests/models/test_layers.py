"""The hand-written backward passes of models/layers.py against JAX autodiff of reference formulations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskfeat_jax.models import layers


def _grouped_conv(x, kernel, stride):
  """The official Conv3d(groups=C, padding=k//2) as XLA's grouped convolution (independent reference)."""
  pads = [(k // 2, k // 2) for k in kernel.shape[:3]]
  return jax.lax.conv_general_dilated(x, kernel, stride, pads, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                      feature_group_count=x.shape[-1],
                                      precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("shape,kernel_size,stride", [
    ((2, 4, 8, 8, 5), (3, 3, 3), (1, 1, 1)),
    ((2, 4, 8, 8, 5), (3, 3, 3), (1, 2, 2)),
    ((1, 5, 7, 9, 3), (3, 3, 3), (2, 2, 2)),    # sizes the stride does not divide
    ((2, 4, 16, 16, 4), (3, 3, 3), (1, 8, 8)),  # the MViT kv stride
    ((1, 3, 6, 6, 4), (1, 3, 3), (1, 2, 2)),
])
def test_depthwise_conv_forward_and_gradients_match_grouped_conv(shape, kernel_size, stride):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape, np.float32))
  kernel = jnp.asarray(rng.standard_normal(kernel_size + (1, shape[-1]), np.float32))
  y_ref = _grouped_conv(x, kernel, stride)
  y = layers.depthwise_conv3d(x, kernel, stride)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  weights = jnp.asarray(rng.standard_normal(y_ref.shape, np.float32))

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k, stride)) * weights)

  gx, gk = jax.jit(jax.grad(loss(layers.depthwise_conv3d), argnums=(0, 1)))(x, kernel)
  gx_ref, gk_ref = jax.grad(loss(_grouped_conv), argnums=(0, 1))(x, kernel)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(gx_ref).max()))
  np.testing.assert_allclose(gk, gk_ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(gk_ref).max()))


def test_depthwise_conv_bf16_gradients_keep_dtypes():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 4, 8, 8, 4), np.float32)).astype(jnp.bfloat16)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 1, 4), np.float32)).astype(jnp.bfloat16)
  gx, gk = jax.grad(lambda a, b: jnp.sum(layers.depthwise_conv3d(a, b, (1, 2, 2)).astype(jnp.float32)),
                    argnums=(0, 1))(x, kernel)
  assert gx.dtype == jnp.bfloat16 and gk.dtype == jnp.bfloat16
  gk32 = jax.grad(lambda b: jnp.sum(_grouped_conv(x.astype(jnp.float32), b, (1, 2, 2))))(kernel.astype(jnp.float32))
  np.testing.assert_allclose(gk.astype(jnp.float32), gk32, rtol=2e-2, atol=2e-2 * float(jnp.abs(gk32).max()))
