"""models/depthwise.py's and models/maxpool.py's hand-written backwards and models/layers.py's folded
attention, against JAX autodiff of reference formulations."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from maskfeat_jax.models import depthwise, layers, maxpool


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
  y = depthwise.depthwise_conv3d(x, kernel, stride)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  weights = jnp.asarray(rng.standard_normal(y_ref.shape, np.float32))

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k, stride)) * weights)

  gx, gk = jax.jit(jax.grad(loss(depthwise.depthwise_conv3d), argnums=(0, 1)))(x, kernel)
  gx_ref, gk_ref = jax.grad(loss(_grouped_conv), argnums=(0, 1))(x, kernel)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(gx_ref).max()))
  np.testing.assert_allclose(gk, gk_ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(gk_ref).max()))


def test_depthwise_conv_bf16_gradients_keep_dtypes():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 4, 8, 8, 4), np.float32)).astype(jnp.bfloat16)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 1, 4), np.float32)).astype(jnp.bfloat16)
  gx, gk = jax.grad(lambda a, b: jnp.sum(depthwise.depthwise_conv3d(a, b, (1, 2, 2)).astype(jnp.float32)),
                    argnums=(0, 1))(x, kernel)
  assert gx.dtype == jnp.bfloat16 and gk.dtype == jnp.bfloat16
  gk32 = jax.grad(lambda b: jnp.sum(_grouped_conv(x.astype(jnp.float32), b, (1, 2, 2))))(kernel.astype(jnp.float32))
  np.testing.assert_allclose(gk.astype(jnp.float32), gk32, rtol=2e-2, atol=2e-2 * float(jnp.abs(gk32).max()))


@pytest.mark.parametrize("shape,kernel_size,stride", [
    ((2, 4, 9, 9, 5), (1, 3, 3), (1, 2, 2)),    # MViT's skip pooling at a stage transition
    ((1, 5, 7, 9, 3), (3, 3, 3), (1, 1, 1)),
    ((1, 6, 9, 10, 3), (3, 3, 3), (2, 2, 2)),   # sizes the stride does not divide
    ((2, 4, 7, 7, 4), (1, 3, 3), (1, 4, 4)),    # stride larger than the kernel
    ((1, 2, 5, 5, 2), (1, 1, 1), (1, 1, 1)),
])
def test_max_pool_forward_and_gradient_match_flax(shape, kernel_size, stride):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal(shape, np.float32))  # continuous values: no ties
  pads = tuple((k // 2, k // 2) for k in kernel_size)
  ref = lambda a: nn.max_pool(a, kernel_size, stride, padding=pads)
  ours = lambda a: maxpool.max_pool3d(a, kernel_size, stride)
  np.testing.assert_array_equal(jax.jit(ours)(x), ref(x))
  weights = jnp.asarray(rng.standard_normal(ref(x).shape, np.float32))
  g = jax.jit(jax.grad(lambda a: jnp.sum(jnp.sin(ours(a)) * weights)))(x)
  g_ref = jax.grad(lambda a: jnp.sum(jnp.sin(ref(a)) * weights))(x)
  np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)


def test_max_pool_ties_go_to_the_first_tap_as_torch():
  # A constant input: every window ties. Each output's gradient goes to its first tap in (t, h, w) order
  # (PyTorch's max_pool3d backward), i.e. the window's top-left in-bounds input; the rest get none.
  x = jnp.ones((1, 1, 4, 4, 1), jnp.float32)
  g = jax.grad(lambda a: jnp.sum(maxpool.max_pool3d(a, (1, 3, 3), (1, 2, 2))))(x)
  want = np.zeros((4, 4), np.float32)
  for oh in range(2):
    for ow in range(2):  # window rows/cols 2*o-1 .. 2*o+1, clipped to the image
      want[max(2 * oh - 1, 0), max(2 * ow - 1, 0)] += 1
  np.testing.assert_array_equal(np.asarray(g)[0, 0, :, :, 0], want)
  assert jax.grad(lambda a: jnp.sum(maxpool.max_pool3d(a, (1, 3, 3), (1, 2, 2)).astype(jnp.float32)))(
      x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def _official_rel_pos(attn, q, has_cls, q_shape, k_shape, rel_pos_h, rel_pos_w, rel_pos_t=None):
  """The official form (`slowfast/models/attention.py::cal_rel_pos_spatial`, `cal_rel_pos_temporal`): the
  per-query terms broadcast over the key grid and added to the non-cls block, spatial first."""
  sp = 1 if has_cls else 0
  (qt, qh, qw), (kt, kh, kw) = q_shape, k_shape
  b, nh, _, d = q.shape
  r_q = q[:, :, sp:].reshape(b, nh, qt, qh, qw, d)
  a = attn[:, :, sp:, sp:].reshape(b, nh, qt, qh, qw, kt, kh, kw)
  r_h = layers.resize_rel_pos(rel_pos_h, 2 * max(qh, kh) - 1)[layers.rel_pos_distance(qh, kh)]
  r_w = layers.resize_rel_pos(rel_pos_w, 2 * max(qw, kw) - 1)[layers.rel_pos_distance(qw, kw)]
  rel_h = jnp.einsum("bythwc,hkc->bythwk", r_q, r_h)
  rel_w = jnp.einsum("bythwc,wkc->bythwk", r_q, r_w)
  a = a + rel_h[:, :, :, :, :, None, :, None] + rel_w[:, :, :, :, :, None, None, :]
  if rel_pos_t is not None:
    r_t = layers.resize_rel_pos(rel_pos_t, 2 * max(qt, kt) - 1)[layers.rel_pos_distance(qt, kt)]
    a = a + jnp.einsum("bythwc,tkc->bythwk", r_q, r_t)[:, :, :, :, :, :, None, None]
  return attn.at[:, :, sp:, sp:].set(a.reshape(b, nh, qt * qh * qw, kt * kh * kw))


def _reference_attention(q, k, v, scale, has_cls, q_shape, k_shape, **tables):
  attn = _official_rel_pos(jnp.einsum("bhqd,bhkd->bhqk", q * scale, k), q, has_cls, q_shape, k_shape, **tables)
  return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(attn, axis=-1), v)


def _xla_attention(q, k, v, scale, has_cls, q_shape, k_shape, **tables):
  attn = layers.add_rel_pos(jnp.einsum("bhqd,bhkd->bhqk", q * scale, k), q, has_cls, q_shape, k_shape, **tables)
  return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(attn, axis=-1), v)


@pytest.mark.parametrize("has_cls,q_shape,k_shape,temporal", [
    (True, (2, 4, 4), (2, 2, 2), True),
    (False, (2, 4, 4), (2, 4, 4), True),
    (True, (1, 3, 3), (1, 3, 3), False),
])
@pytest.mark.parametrize("impl", ["xla", "flash"])
def test_rel_pos_attention_equals_the_official_broadcast_form(impl, has_cls, q_shape, k_shape, temporal):
  """Both attention paths (`add_rel_pos`'s one-hot matmul; the folded q·k of 'flash') against the official
  broadcast-and-add, outputs and the gradients of q, k, v and the tables."""
  fn = _xla_attention if impl == "xla" else layers.folded_attention
  rng = np.random.default_rng(2)
  b, heads, d = 2, 2, 8
  sp = 1 if has_cls else 0
  nq, nk = sp + int(np.prod(q_shape)), sp + int(np.prod(k_shape))
  q, k, v = (jnp.asarray(rng.standard_normal((b, heads, n, d), np.float32)) for n in (nq, nk, nk))
  tables = {"rel_pos_h": jnp.asarray(rng.standard_normal((2 * q_shape[1] - 1, d), np.float32)),
            "rel_pos_w": jnp.asarray(rng.standard_normal((2 * q_shape[2] - 1, d), np.float32))}
  if temporal:
    tables["rel_pos_t"] = jnp.asarray(rng.standard_normal((2 * q_shape[0] - 1, d), np.float32))
  args = (d ** -0.5, has_cls, q_shape, k_shape)
  out = fn(q, k, v, *args, **tables)
  ref = _reference_attention(q, k, v, *args, **tables)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  w = jnp.asarray(rng.standard_normal(ref.shape, np.float32))

  def loss(fn):
    return lambda q, k, v, t: jnp.sum(fn(q, k, v, *args, **t) * w)

  grads = jax.grad(loss(fn), argnums=(0, 1, 2, 3))(q, k, v, tables)
  grads_ref = jax.grad(loss(_reference_attention), argnums=(0, 1, 2, 3))(q, k, v, tables)
  jax.tree.map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5), grads, grads_ref)
