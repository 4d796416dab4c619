"""torchvision's `mvit_v2_s` state dict <-> our `mvitv2_s_16x4` params, and its converter CLI.

`torchvision.models.video.mvit_v2_s` (torchvision/models/video/mvit.py) is an independent PyTorch MViTv2-S
whose released K400 weights (`MViT_V2_S_Weights.KINETICS400_V1`) were ported from SlowFast's
`configs/Kinetics/MVITv2_S_16x4.yaml` model. Its keys differ from SlowFast's; `TORCHVISION_TO_OFFICIAL`
renames them to the official SlowFast keys, and the SlowFast converter (checkpoints/slowfast.py) does the
rest (layouts, shapes, errors), so both formats go through one key mapping into our params.

The two implementations compute the same function with our `mvitv2_s_16x4` layout (models/layouts.py),
checked item by item against torchvision/models/video/mvit.py and by tests/checkpoints/test_torchvision.py
(logits of random weights equal to 1e-4):
- widening inside attention (`proj_after_attn=True` = MVIT.DIM_MUL_IN_ATT True, `blocks.N.project` applied
  to norm1's output), heads 1/2/4/8 at blocks 1/3/14 (HEAD_MUL), widths 96/192/384/768;
- Q pooled in every block (kernel 3, stride 2 at blocks 1/3/14, else 1), K/V pooled with kernel 3 and the
  adaptive stride 8/4/2/1 (POOL_KV_STRIDE_ADAPTIVE (1,8,8)); depthwise conv over the head dim shared by the
  heads, padding k//2, no bias; LayerNorm after pooling, on the cls row too (MultiScaleAttention's
  `norm_q/k/v`); the cls token bypasses the pool;
- skip connection max-pooled (kernel s+1, stride s, padding k//2) where Q is strided;
- residual pooling without the cls row (`residual_pool=True, residual_with_cls_embed=False` =
  MVIT.RESIDUAL_POOLING with the official `x[:, :, 1:] += q[:, :, 1:]`);
- decomposed rel-pos h/w/t on the pooled, normed, unscaled q, tables sized from the integer-divided grid
  (`size // stride`), indices `q*q_ratio - (k + 1 - k_size)*k_ratio` = the official
  `q*q_ratio - k*k_ratio + (k_size - 1)*k_ratio` (both exact for the integer and power-of-two ratios of
  these layouts); no absolute position embedding (`rel_pos_embed=True` keeps only the class token);
- every LayerNorm eps 1e-6, GELU exact, MLP ratio 4, qkv bias;
- head: LayerNorm of all tokens, cls token, Dropout, Linear (`use_mean_pooling=False` with a cls token).
Differences that are settings, not weights: torchvision's head Dropout defaults to 0.5 (the layout's
`dropout_rate` is SlowFast's MODEL.DROPOUT_RATE; it acts only in training), and torchvision sizes the
spatial rel-pos tables from max(H, W) where the official code uses H (the same for square inputs, the only
ones its weights were trained on); torchvision's input is normalised NCTHW, ours raw 0-255 pixels NTHWC that
the model normalises with the layout's K400 mean/std (torchvision's transforms use the same values).

- `convert_torchvision_state_dict(state, config)`, `load_torchvision_checkpoint(path)`,
  `export_torchvision(config, params)` (back to torchvision's keys), `torchvision_config(state)`.
- `import_torchvision()`: imports torchvision also where its compiled ops do not load (see there).
- CLI: `python -m maskfeat_jax.checkpoints.torchvision --input mvit_v2_s-ae3be167.pth --output DIR` writes
  the layout training writes (DIR/config.json, DIR/checkpoints/0), usable as `--config.init_from=DIR`.
"""
import argparse
import importlib.machinery
import importlib.util
import pathlib
import re
import sys
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from maskfeat_jax.checkpoints import pyth
from maskfeat_jax.checkpoints import slowfast
from maskfeat_jax.config import base_config
from maskfeat_jax.models import factory
from maskfeat_jax.models import layouts

LAYOUT = "mvitv2_s_16x4"

# torchvision key -> official SlowFast key (slowfast/models/video_model_builder.py::MViT names). Fields:
# {n} block index, {p} weight|bias, {x} q|k|v, {a} h|w|t. Keys not listed keep their name (norm1, norm2,
# attn.qkv, attn.rel_pos_*, norm).
TORCHVISION_TO_OFFICIAL = (
    ("conv_proj.{p}", "patch_embed.proj.{p}"),
    ("pos_encoding.class_token", "cls_token"),  # [C] in torchvision, [1, 1, C] officially
    ("blocks.{n}.norm1.{p}", "blocks.{n}.norm1.{p}"),
    ("blocks.{n}.norm2.{p}", "blocks.{n}.norm2.{p}"),
    ("blocks.{n}.attn.qkv.{p}", "blocks.{n}.attn.qkv.{p}"),
    ("blocks.{n}.attn.project.0.{p}", "blocks.{n}.attn.proj.{p}"),  # nn.Sequential(Linear[, Dropout])
    ("blocks.{n}.attn.pool_{x}.pool.weight", "blocks.{n}.attn.pool_{x}.weight"),
    ("blocks.{n}.attn.pool_{x}.norm_act.0.{p}", "blocks.{n}.attn.norm_{x}.{p}"),
    ("blocks.{n}.attn.rel_pos_{a}", "blocks.{n}.attn.rel_pos_{a}"),
    ("blocks.{n}.mlp.0.{p}", "blocks.{n}.mlp.fc1.{p}"),  # ops.MLP: Linear, GELU, Dropout, Linear, Dropout
    ("blocks.{n}.mlp.3.{p}", "blocks.{n}.mlp.fc2.{p}"),
    ("blocks.{n}.project.{p}", "blocks.{n}.proj.{p}"),
    ("norm.{p}", "norm.{p}"),
    ("head.1.{p}", "head.projection.{p}"),  # nn.Sequential(Dropout, Linear)
)
_FIELDS = {"n": r"\d+", "p": "weight|bias", "x": "[qkv]", "a": "[hwt]"}
_CLS = ("pos_encoding.class_token", "cls_token")


def _regex(template: str) -> re.Pattern:
  out = re.escape(template)
  for name, pattern in _FIELDS.items():
    out = out.replace(re.escape("{" + name + "}"), f"(?P<{name}>{pattern})")
  return re.compile(out + "$")


_FORWARD = tuple((_regex(tv), off) for tv, off in TORCHVISION_TO_OFFICIAL)
_BACKWARD = tuple((_regex(off), tv) for tv, off in TORCHVISION_TO_OFFICIAL)


def _rename(key: str, rules) -> Optional[str]:
  for pattern, template in rules:
    m = pattern.match(key)
    if m:
      return template.format(**m.groupdict())
  return None


def official_key(key: str) -> Optional[str]:
  """torchvision key -> official SlowFast key (None for a key torchvision's MViTv2 does not have)."""
  return _rename(key, _FORWARD)


def torchvision_key(key: str) -> Optional[str]:
  """Official SlowFast key -> torchvision key (None where torchvision's MViTv2 has no such parameter)."""
  return _rename(key, _BACKWARD)


# ----------------------------------------------------------------------------------------------------------
# Config.
# ----------------------------------------------------------------------------------------------------------
def _shape(state: dict, key: str) -> Optional[tuple]:
  return tuple(np.shape(state[key])) if key in state else None


def torchvision_config(state: Optional[dict] = None, input_size=None,
                       num_classes: Optional[int] = None) -> ml_collections.ConfigDict:
  """The full config tree of our `mvitv2_s_16x4` for a torchvision `mvit_v2_s` state dict.

  The input size the model was built for is read from block 0's rel-pos tables when not given (torchvision's
  `MultiscaleAttention`: 2*T'-1 temporal and 2*H'-1 spatial entries, T' = T // 2 and H' = H // 4 after the
  patch conv; Q is not strided in block 0), the classes from `head.1.weight`.
  """
  m = layouts.get_model_config(LAYOUT)
  st, sh, sw = m.patch_stride
  if input_size is None:
    lt, lh = _shape(state or {}, "blocks.0.attn.rel_pos_t"), _shape(state or {}, "blocks.0.attn.rel_pos_h")
    if lt is not None and lh is not None:
      hw = (lh[0] + 1) // 2 * sh
      input_size = ((lt[0] + 1) // 2 * st, hw, hw)
  if input_size is not None:
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 3:
      raise ValueError(f"input_size={input_size} must be (T, H, W)")
    m.input_size = input_size
  head = _shape(state or {}, "head.1.weight")
  if num_classes is None and head is not None:
    num_classes = head[0]
  if num_classes is not None:
    m.num_classes = int(num_classes)
  c = base_config()
  c.model = m
  c.data.num_frames, c.data.crop_size = m.input_size[0], m.input_size[1]
  return c


# ----------------------------------------------------------------------------------------------------------
# Conversion.
# ----------------------------------------------------------------------------------------------------------
def expected_state_shapes(config: Any) -> dict:
  """{torchvision key: shape} of the state dict torchvision's `mvit_v2_s` has for `config`'s model."""
  # export_official only transposes and copies, so zero arrays of the parameter shapes give its layout.
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), factory.param_shapes(config))
  out = {}
  for key, value in slowfast.export_official(config, zeros).items():
    tv = torchvision_key(key)
    out[tv if tv is not None else key] = value.shape[-1:] if key == _CLS[1] else value.shape
  return out


def _mismatch(state: dict, config: Any) -> str:
  """One line naming every missing, unknown and mis-shaped key of `state` (empty if it fits)."""
  want = expected_state_shapes(config)
  problems = [f"missing {k} {want[k]}" for k in want if k not in state]
  problems += [f"unknown key {k} {_shape(state, k)}" for k in state if k not in want]
  problems += [f"{k} has shape {_shape(state, k)}, the model expects {want[k]}" for k in state
               if k in want and _shape(state, k) != tuple(want[k])]
  if len(problems) > 12:
    problems = problems[:12] + [f"... {len(problems) - 12} more"]
  return "; ".join(problems)


def convert_torchvision_state_dict(state: dict, config: Any) -> dict:
  """torchvision `mvit_v2_s` state dict -> our params tree for `config` (see `torchvision_config`).

  Raises ValueError (one line) naming each missing, unknown or mis-shaped key with its shape.
  """
  state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
  renamed = {}
  for key, value in state.items():
    off = official_key(key)
    if off is None:
      renamed = None  # a key the table does not know: reported below with the rest
      break
    value = np.asarray(value)
    renamed[off] = value.reshape(1, 1, -1) if off == _CLS[1] and value.ndim == 1 else value
  if renamed is not None:
    try:
      return slowfast.convert_state_dict(renamed, config)
    except ValueError:
      # The SlowFast converter names official keys over several lines; name torchvision's, on one.
      problems = _mismatch(state, config)
      if not problems:
        raise
  else:
    problems = _mismatch(state, config)
  raise ValueError(f"torchvision state dict does not fit our {config.model.name} (input "
                   f"{tuple(config.model.input_size)}, {config.model.num_classes} classes): {problems}")


def export_torchvision(config: Any, params: Any) -> dict:
  """Our params -> torchvision's `mvit_v2_s` state dict {key: float32 ndarray} (load with strict=True)."""
  out = {}
  for key, value in slowfast.export_official(config, params).items():
    tv = torchvision_key(key)
    if tv is None:
      raise ValueError(f"parameter {key} {value.shape} has no torchvision mvit_v2_s counterpart "
                       f"(model {config.model.name!r} is not the MViTv2-S layout)")
    out[tv] = value.reshape(-1) if key == _CLS[1] else value
  return out


def read_state_dict(path) -> dict:
  """{key: ndarray} of a `torch.save(model.state_dict())` file (torch-free reader) or a state-dict .npz."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint {path} not found")
  if path.suffix == ".npz":
    with np.load(path) as npz:
      return {k: npz[k] for k in npz.files}
  try:
    return pyth.read_pyth(path)["model_state"]
  except (pyth.LegacyFormatError, pyth.UnsupportedObjectError) as err:
    try:
      return pyth.read_pyth_with_torch(path)["model_state"]
    except ImportError:
      raise err from None


def load_torchvision_checkpoint(path, input_size=None) -> tuple[ml_collections.ConfigDict, dict]:
  """A torchvision `mvit_v2_s` state-dict file -> (full config tree, {'params': numpy tree})."""
  state = read_state_dict(path)
  config = torchvision_config(state, input_size)
  try:
    params = convert_torchvision_state_dict(state, config)
  except ValueError as err:
    raise ValueError(f"{path}: {err}") from None
  return config, {"params": params}


# ----------------------------------------------------------------------------------------------------------
# torchvision on a torch build its compiled ops were not built for.
# ----------------------------------------------------------------------------------------------------------
_STAND_IN_OPS = None  # the torch.library.Library defining the stand-in op names; kept alive while loaded


def import_torchvision():
  """`import torchvision`, also with a torch build its compiled ops (`torchvision/_C*.so`) do not load.

  The index's torchvision 0.28.0 is built against the CUDA torch 2.13.0; with the CPU build of torch its
  `_C` library fails to load, and `torchvision/_meta_registrations.py` then fails at import registering
  fake kernels for `torchvision::nms` and `torchvision::qnms`, which only `_C` defines. Defining those two
  names first (no kernels: calling them still fails) lets the pure-PyTorch parts import, `mvit_v2_s`
  among them. Where `_C` loads, nothing is defined (defining the names first would clash with it).
  """
  global _STAND_IN_OPS
  if "torchvision" in sys.modules:
    return sys.modules["torchvision"]
  import torch  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("torchvision")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("torchvision is not installed: pip install -e '.[torch]' (README)")
  package = pathlib.Path(list(spec.submodule_search_locations)[0])
  libs = [package / f"_C{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
  lib = next((p for p in libs if p.is_file()), None)
  loaded = False
  if lib is not None:
    try:
      torch.ops.load_library(str(lib))
      loaded = True
    except OSError:
      pass
  if not loaded and _STAND_IN_OPS is None and not hasattr(torch.ops.torchvision, "nms"):
    _STAND_IN_OPS = torch.library.Library("torchvision", "DEF")  # pylint: disable=no-member
    _STAND_IN_OPS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _STAND_IN_OPS.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  import torchvision  # pylint: disable=g-import-not-at-top
  return torchvision


# ----------------------------------------------------------------------------------------------------------
# CLI.
# ----------------------------------------------------------------------------------------------------------
def _ints(text: str) -> tuple:
  return tuple(int(v) for v in text.split(","))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--input", required=True,
                      help="torchvision mvit_v2_s state dict (torch.save(model.state_dict()), e.g. the "
                           "released mvit_v2_s-ae3be167.pth) or a state-dict .npz")
  parser.add_argument("--output", required=True, help="output directory (Orbax checkpoint + config.json)")
  parser.add_argument("--input_size", type=_ints, default=None,
                      help="T,H,W the model was built for (default: read from the rel-pos tables)")
  args = parser.parse_args(argv)
  try:
    config, variables = load_torchvision_checkpoint(args.input, args.input_size)
  except (ValueError, FileNotFoundError) as err:
    raise SystemExit(f"error: {err}") from None
  out = slowfast.save_converted(args.output, config, variables)
  n = factory.count_params(variables["params"])
  print(f"wrote {out}/checkpoints/0 ({n:,} params, {config.model.name} input "
        f"{tuple(config.model.input_size)}, {config.model.num_classes} classes) and {out}/config.json; "
        f"use it as --config.init_from={out}")


if __name__ == "__main__":
  main()
