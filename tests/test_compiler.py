"""maskfeat_jax/compiler.py: the one place of compiler options, and the kernel counts the benchmarks print."""
import jax
import jax.numpy as jnp

from maskfeat_jax import compiler


def _compiled_text(fn, n=4, shape=(8, 16)):
  args = [jax.ShapeDtypeStruct(shape, jnp.float32)] * n
  return compiler.jit(fn).lower(args).compile().as_text()


def test_kernel_counts_separate_fusions_from_distinct_kernels():
  # The same update on 4 leaves: 4 fusions, one kernel body. With a different constant per leaf: 4 bodies.
  same = _compiled_text(lambda xs: [x * 1.5 + jnp.sin(x) for x in xs])
  other = _compiled_text(lambda xs: [x * (1.5 + i) + jnp.sin(x) for i, x in enumerate(xs)])
  assert compiler.kernel_counts(same) == (4, 1)
  assert compiler.kernel_counts(other) == (4, 4)
  assert compiler.kernel_counts("") == (0, 0)
