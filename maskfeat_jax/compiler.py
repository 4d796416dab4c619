"""The one place that decides XLA compiler options: `jit` (a drop-in for `jax.jit`) and `compiler_options`.

Every jitted entry point of the package (the train step, the eval forward, the HOG target called on its own,
the benchmarks) goes through here, so a figure measured by a benchmark is the figure of the train step.

Why there are options at all: XLA:CPU (jaxlib 0.10) hands float reductions to a YNNPACK "reduce fusion",
which cannot absorb the HOG target's one-hot compare: it materialises the 9x-expanded [..., H, W, 9] tensor
instead of fusing compare-and-sum as XLA's own reductions do, and is several times slower (figures in
BENCHMARKS.md, "HOG target on CPU"). The option exists only on CPU; GPU and TPU get none.
"""
import functools
import re
from typing import Any, Callable, Optional

import jax

# Per platform; a platform missing here compiles with XLA's defaults.
_OPTIONS = {
    "cpu": {"xla_cpu_experimental_ynn_fusion_type": ""},
}


def compiler_options(platform: Optional[str] = None) -> Optional[dict]:
  """The options for `platform` (default: JAX's default backend), or None where there are none."""
  platform = platform or jax.default_backend()
  options = _OPTIONS.get(platform)
  return dict(options) if options else None


class _Jit:
  """`jax.jit(fun, **kwargs)` with the compiler options of the backend it first runs on.

  The backend is looked up at the first call (or `.lower`), not at decoration time: a module-level
  `@compiler.jit` must not initialise JAX's backends on import (jax.distributed.initialize comes first).
  """

  def __init__(self, fun: Callable, platform: Optional[str], kwargs: dict):
    functools.update_wrapper(self, fun)
    self._fun, self._platform, self._kwargs = fun, platform, kwargs
    self._jitted = None
    self._nested = None

  def _get(self):
    if self._jitted is None:
      self._jitted = jax.jit(self._fun, compiler_options=compiler_options(self._platform), **self._kwargs)
    return self._jitted

  def __call__(self, *args, **kwargs):
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs))):
      # Called inside another trace: JAX accepts compiler options only on the outermost jit, whose
      # options (ours too, when it came through here) then apply.
      if self._nested is None:
        self._nested = jax.jit(self._fun, **self._kwargs)
      return self._nested(*args, **kwargs)
    return self._get()(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self._get().lower(*args, **kwargs)

  def eval_shape(self, *args, **kwargs):
    return self._get().eval_shape(*args, **kwargs)

  def trace(self, *args, **kwargs):
    return self._get().trace(*args, **kwargs)


def jit(fun: Optional[Callable] = None, *, platform: Optional[str] = None, **kwargs: Any):
  """`jax.jit` plus `compiler_options(platform)`; usable as `@jit`, `@functools.partial(jit, ...)` or a call.

  `platform`: where the program will run when that is not the default backend (e.g. a mesh's devices).
  """
  if "compiler_options" in kwargs:
    raise TypeError("maskfeat_jax.compiler.jit decides compiler_options itself; edit compiler._OPTIONS")
  if fun is None:
    return functools.partial(jit, platform=platform, **kwargs)
  return _Jit(fun, platform, kwargs)


_COMPUTATION = re.compile(r"^(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", re.M | re.S)
_FUSION_CALL = re.compile(r" fusion\([^\n]*?calls=(%[\w.\-]+)([^\n]*)")
_NAME = re.compile(r"%[\w.\-]+")
_METADATA = re.compile(r"metadata=\{[^}]*\}")
_BACKEND_CONFIG = re.compile(r"backend_config=(\{.*\})")


def kernel_counts(hlo_text: str) -> tuple[int, int]:
  """(fusions, distinct fused kernels) of a compiled program's optimised HLO (`compiled.as_text()`).

  Why both: XLA:CPU emits one kernel per distinct fused computation (same body up to names, same backend
  config) and reuses it for every identical fusion, so the distinct count, not the fusion count, is what
  code generation pays for (BENCHMARKS.md, "Model step on CPU", fourth session).
  """
  bodies = {m.group(1): _METADATA.sub("", _NAME.sub("%", m.group(2)))
            for m in _COMPUTATION.finditer(hlo_text)}
  calls = _FUSION_CALL.findall(hlo_text)
  distinct = set()
  for name, rest in calls:
    config = _BACKEND_CONFIG.search(rest)
    distinct.add((bodies.get(name, name), config.group(1) if config else ""))
  return len(calls), len(distinct)
