"""Official SlowFast MaskFeat / MViT checkpoints <-> our Flax params, and the converter CLI.

- `load_official_checkpoint(path, config=None) -> (config, {'params': ...})` reads a `.pyth` checkpoint
  (checkpoints/pyth.py, no torch) or a state-dict `.npz`, builds the full config tree from the `cfg` YAML
  stored in the checkpoint (or a sibling `<name>_config.yaml`), and maps every key
  (`slowfast/models/video_model_builder.py::MViT` / `slowfast/models/masked.py::MaskMViT` names); an
  unmatched, missing or mis-shaped key is an error that lists them.
- `export_official(config, params) -> {key: np.ndarray}`: back to the official state-dict layout.
- CLI: `python -m maskfeat_jax.checkpoints.slowfast --input X.pyth --output DIR [--finetune_layout]` writes
  DIR in the layout training writes (checkpoints/orbax.py: DIR/checkpoints/0 holding the params, and
  DIR/config.json), so `--config.init_from=DIR` fine-tunes, evaluates or probes it.
"""
import argparse
import json
import os
import pathlib
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import yaml

from maskfeat_jax.checkpoints import orbax as ckpt_lib
from maskfeat_jax.checkpoints import pyth
from maskfeat_jax.checkpoints import transfer
from maskfeat_jax.config import base_config
from maskfeat_jax.models import arch
from maskfeat_jax.models import factory
from maskfeat_jax.models import layouts

# State-dict entries that are buffers of the official model, not parameters (HOGLayerC's Sobel kernels).
IGNORED_KEYS = re.compile(r"^hogs\.\d+\.weight_[xy]$")
_SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)


# ----------------------------------------------------------------------------------------------------------
# cfg YAML -> our config tree.
# ----------------------------------------------------------------------------------------------------------
def _get(cfg: dict, dotted: str, default: Any = None) -> Any:
  node = cfg
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return default
    node = node[part]
  return node


def _tuples(entries) -> tuple:
  return tuple(tuple(int(v) for v in e) for e in (entries or ()))


def config_from_cfg(cfg: dict, name: str = "official") -> ml_collections.ConfigDict:
  """The full config tree (base_config with model / target / mask / data from an official cfg dict)."""
  unsupported = {
      "MVIT.POOL_FIRST": (_get(cfg, "MVIT.POOL_FIRST", False), False),
      "MVIT.SEPARATE_QKV": (_get(cfg, "MVIT.SEPARATE_QKV", False), False),
      "MVIT.NORM": (_get(cfg, "MVIT.NORM", "layernorm"), "layernorm"),
      "MVIT.NORM_STEM": (_get(cfg, "MVIT.NORM_STEM", False), False),
      "MVIT.USE_FIXED_SINCOS_POS": (_get(cfg, "MVIT.USE_FIXED_SINCOS_POS", False), False),
      "MVIT.REV.ENABLE": (_get(cfg, "MVIT.REV.ENABLE", False), False),
      "MVIT.DROPOUT_RATE": (float(_get(cfg, "MVIT.DROPOUT_RATE", 0.0) or 0.0), 0.0),
      "MASK.MAE_ON": (_get(cfg, "MASK.MAE_ON", False), False),
      "DETECTION.ENABLE": (_get(cfg, "DETECTION.ENABLE", False), False),
      "DATA.INPUT_CHANNEL_NUM": (list(_get(cfg, "DATA.INPUT_CHANNEL_NUM", [3])), [3]),
  }
  bad = {k: v for k, (v, ok) in unsupported.items() if v != ok}
  model_name = _get(cfg, "MODEL.MODEL_NAME", "MViT")
  if model_name not in ("MViT", "MaskMViT"):
    bad["MODEL.MODEL_NAME"] = model_name
  masked = model_name == "MaskMViT"
  if masked and _get(cfg, "MASK.HEAD_TYPE", "separate") != "separate":
    bad["MASK.HEAD_TYPE"] = _get(cfg, "MASK.HEAD_TYPE")
  if bad:
    raise ValueError(f"checkpoint cfg uses settings this port does not implement: {bad}")

  mv = cfg["MVIT"]
  patch_2d = bool(mv.get("PATCH_2D", False))
  crop = int(_get(cfg, "DATA.TRAIN_CROP_SIZE", 224))
  frames = 1 if patch_2d else int(_get(cfg, "DATA.NUM_FRAMES", 16))

  def three(v, pad):
    v = tuple(int(x) for x in v)
    return (pad,) + v if patch_2d and len(v) == 2 else v

  m = layouts.model_schema()
  m.name = name
  m.type = "maskfeat" if masked else "classifier"
  m.num_classes = 0 if masked else int(_get(cfg, "MODEL.NUM_CLASSES", 400))
  m.drop_path_rate = float(mv.get("DROPPATH_RATE", 0.0))
  m.dropout_rate = float(_get(cfg, "MODEL.DROPOUT_RATE", 0.0))
  m.pixel_mean = tuple(float(v) for v in _get(cfg, "DATA.MEAN", layouts.KINETICS_MEAN))
  m.pixel_std = tuple(float(v) for v in _get(cfg, "DATA.STD", layouts.KINETICS_STD))
  m.input_size = (frames, crop, crop)
  m.patch_2d = patch_2d
  m.patch_kernel = three(mv["PATCH_KERNEL"], 1)
  m.patch_stride = three(mv["PATCH_STRIDE"], 1)
  m.patch_padding = three(mv["PATCH_PADDING"], 0)
  m.embed_dim = int(mv["EMBED_DIM"])
  m.num_heads = int(mv["NUM_HEADS"])
  m.depth = int(mv["DEPTH"])
  m.mlp_ratio = float(mv.get("MLP_RATIO", 4.0))
  m.qkv_bias = bool(mv.get("QKV_BIAS", True))
  m.dim_mul = tuple((int(b), float(v)) for b, v in (mv.get("DIM_MUL") or ()))
  m.head_mul = tuple((int(b), float(v)) for b, v in (mv.get("HEAD_MUL") or ()))
  m.pool_mode = str(mv.get("MODE", "conv"))
  m.pool_kvq_kernel = tuple(int(v) for v in (mv.get("POOL_KVQ_KERNEL") or ()))
  m.pool_q_stride = _tuples(mv.get("POOL_Q_STRIDE"))
  adaptive = mv.get("POOL_KV_STRIDE_ADAPTIVE")
  m.pool_kv_stride_adaptive = tuple(int(v) for v in (adaptive or ()))
  # With an adaptive stride the stored POOL_KV_STRIDE is the list MViT.__init__ wrote back; recompute it.
  m.pool_kv_stride = () if adaptive else _tuples(mv.get("POOL_KV_STRIDE"))
  m.cls_embed = bool(mv.get("CLS_EMBED_ON", True))
  m.use_abs_pos = bool(mv.get("USE_ABS_POS", False))
  m.sep_pos_embed = bool(mv.get("SEP_POS_EMBED", False))
  m.rel_pos_spatial = bool(mv.get("REL_POS_SPATIAL", False))
  m.rel_pos_temporal = bool(mv.get("REL_POS_TEMPORAL", False))
  m.rel_pos_zero_init = bool(mv.get("REL_POS_ZERO_INIT", False))
  m.residual_pooling = bool(mv.get("RESIDUAL_POOLING", False))
  m.dim_mul_in_att = bool(mv.get("DIM_MUL_IN_ATT", False))
  m.use_mean_pooling = bool(mv.get("USE_MEAN_POOLING", False))
  m.head_init_scale = float(mv.get("HEAD_INIT_SCALE", 1.0))
  m.pretrain_depth = (tuple(int(d) for d in _get(cfg, "MASK.PRETRAIN_DEPTH", [m.depth - 1]))
                      if masked else (m.depth - 1,))

  c = base_config()
  c.model = m
  if masked:
    c.target.type = "hog" if _get(cfg, "MASK.PRED_HOG", True) else "pixel"
    c.target.nbins, c.target.cell_size, c.target.gaussian_window = 9, 8, 0
    if patch_2d:
      # Image masks live on the prediction grid (BEiT block masking, as `MaskMViT` for 2-D patches).
      c.mask.type = "block"
      c.mask.grid = tuple(arch.model_spec(m).blocks[-1].out_thw[1:])
    else:
      c.mask.type = ("tube" if _get(cfg, "AUG.MASK_TUBE", False)
                     else "frame" if _get(cfg, "AUG.MASK_FRAMES", False) else "cube")
      c.mask.grid = tuple(int(v) for v in _get(cfg, "AUG.MASK_WINDOW_SIZE", (8, 7, 7)))
    c.mask.ratio = float(_get(cfg, "AUG.MASK_RATIO", 0.4))
  c.data.image_mode = patch_2d
  c.data.crop_size = crop
  if not patch_2d:
    c.data.num_frames = frames
    c.data.sampling_rate = int(_get(cfg, "DATA.SAMPLING_RATE", c.data.sampling_rate))
  return c


# ----------------------------------------------------------------------------------------------------------
# Key mapping.
# ----------------------------------------------------------------------------------------------------------
def _flatten(tree, prefix=()) -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: dict) -> dict:
  tree = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def _module_path(key: str) -> tuple[tuple[str, ...], str]:
  """'blocks.3.attn.qkv.weight' -> (('blocks_3', 'attn', 'qkv'), 'weight')."""
  parts = key.split(".")
  out, i = [], 0
  while i < len(parts) - 1:
    p = parts[i]
    if p in ("blocks", "projections") and parts[i + 1].isdigit():
      out.append(f"{p}_{parts[i + 1]}")
      i += 2
    elif p == "transforms" and parts[i + 1].isdigit():
      out.append(f"transforms_{parts[i + 1]}")
      i += 3 if i + 2 < len(parts) - 1 and parts[i + 2] == "0" else 2  # nn.Sequential(LayerNorm) index
    else:
      out.append(p)
      i += 1
  return tuple(out), parts[-1]


def _to_flax(array: np.ndarray) -> np.ndarray:
  """Linear [out,in] -> [in,out]; Conv [O,I,(kt,)kh,kw] -> [(kt,)kh,kw,I,O]; others unchanged."""
  if array.ndim == 2:
    return array.T
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 5:
    return array.transpose(2, 3, 4, 1, 0)
  return array


def _from_flax(array: np.ndarray) -> np.ndarray:
  if array.ndim == 2:
    return array.T
  if array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  if array.ndim == 5:
    return array.transpose(4, 3, 0, 1, 2)
  return array


def convert_state_dict(state: dict, config: Any) -> dict:
  """Official state dict -> our params tree for `config` (every key mapped; errors list the problems)."""
  expected = _flatten(factory.param_shapes(config))
  params, unmatched, mismatched = {}, [], []
  for key, value in state.items():
    key = key[len("module."):] if key.startswith("module.") else key
    if IGNORED_KEYS.match(key):
      continue
    value = np.asarray(value)
    mod, leaf = _module_path(key)
    if leaf == "weight":
      cands = [mod + ("scale",), mod + ("kernel",)]
      path = next((c for c in cands if c in expected), None)
      value = _to_flax(value) if path and path[-1] == "kernel" else value
    elif leaf == "bias":
      path = mod + ("bias",) if mod + ("bias",) in expected else None
    else:
      path = mod + (leaf,) if mod + (leaf,) in expected else None
    if path is None:
      unmatched.append(f"{key} {tuple(value.shape)}")
      continue
    want = tuple(expected[path].shape)
    if tuple(value.shape) != want:
      params[path] = None  # present, but mis-shaped: reported below, not as missing
      mismatched.append(f"{key} {tuple(np.shape(state[key]))} -> {'/'.join(path)} is {tuple(value.shape)}, "
                        f"model expects {want}")
      continue
    params[path] = np.ascontiguousarray(value, dtype=np.float32)
  missing = [f"{'/'.join(p)} {tuple(s.shape)}" for p, s in expected.items() if p not in params]
  if unmatched or missing or mismatched:
    lines = []
    if unmatched:
      lines.append(f"{len(unmatched)} checkpoint key(s) match no model parameter: " + ", ".join(unmatched))
    if missing:
      lines.append(f"{len(missing)} model parameter(s) missing from the checkpoint: " + ", ".join(missing))
    if mismatched:
      lines.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched))
    raise ValueError(f"checkpoint does not fit model {config.model.name!r} ({config.model.type}):\n  "
                     + "\n  ".join(lines))
  return _unflatten(params)


def export_official(config: Any, params: Any) -> dict:
  """Our params -> the official state dict {key: float32 ndarray} (MaskMViT gets its HOG buffers back)."""
  flat = _flatten(nn.unbox(params))
  out = {}
  for path, value in flat.items():
    value = np.asarray(value, np.float32)
    parts = []
    for p in path[:-1]:
      m = re.fullmatch(r"(blocks|projections|transforms)_(\d+)", p)
      if m:
        parts += [m.group(1), m.group(2)] + (["0"] if m.group(1) == "transforms" else [])
      else:
        parts.append(p)
    leaf = path[-1]
    if leaf in ("kernel", "scale"):
      parts.append("weight")
      value = _from_flax(value) if leaf == "kernel" else value
    else:
      parts.append(leaf)
    out[".".join(parts)] = np.ascontiguousarray(value)
  if config.model.type == "maskfeat":
    out["hogs.0.weight_x"] = np.tile(_SOBEL_X[None, None], (3, 1, 1, 1))
    out["hogs.0.weight_y"] = np.tile(_SOBEL_X.T[None, None], (3, 1, 1, 1))
  return out


# ----------------------------------------------------------------------------------------------------------
# Public entry points.
# ----------------------------------------------------------------------------------------------------------
def _sibling_config(path: pathlib.Path) -> Optional[pathlib.Path]:
  stem = path.name[:-len(path.suffix)]
  bases = [stem, re.sub(r"_state_dict$", "", stem)]
  for base in bases:
    for cand in (f"{base}_config.yaml", f"{base}.yaml"):
      if (path.parent / cand).is_file():
        return path.parent / cand
  return None


def load_official_checkpoint(path, config: Any = None) -> tuple[ml_collections.ConfigDict, dict]:
  """Reads an official `.pyth` or state-dict `.npz` -> (full config tree, {'params': numpy tree}).

  Args:
    path: the checkpoint file.
    config: optional; a full config tree, a cfg dict, or a path to the cfg YAML. Default: the `cfg`
      stored in a `.pyth`, else `<name>_config.yaml` beside the file.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint {path} not found")
  stored_cfg = None
  if path.suffix == ".npz":
    with np.load(path) as npz:
      state = {k: npz[k] for k in npz.files}
  else:
    try:
      ckpt = pyth.read_pyth(path)
    except (pyth.LegacyFormatError, pyth.UnsupportedObjectError) as err:
      # Only these need torch itself; a truncated or corrupt file keeps its own message (torch can't help).
      try:
        ckpt = pyth.read_pyth_with_torch(path)
      except ImportError:
        raise err from None
    state, stored_cfg = ckpt["model_state"], ckpt.get("cfg")
  name = re.sub(r"_state_dict$", "", path.stem)
  if config is None:
    if stored_cfg is None:
      sibling = _sibling_config(path)
      if sibling is None:
        raise ValueError(f"{path}: no cfg stored in the checkpoint and no {name}_config.yaml beside it; "
                         "pass config=")
      config = sibling
  if isinstance(config, (str, os.PathLike)):
    config = pathlib.Path(config).read_text()
  if config is None:
    config = stored_cfg
  if isinstance(config, str):
    config = yaml.safe_load(config)
  if isinstance(config, dict):
    config = config_from_cfg(config, name)
  params = convert_state_dict(state, config)
  return config, {"params": params}


def save_converted(directory, config: Any, variables: dict) -> pathlib.Path:
  """Writes DIR/config.json and DIR/checkpoints/0/state ({'params': ...}): a workdir like a training run's,
  so DIR is a valid `config.init_from` for fine-tuning, eval and probe."""
  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  ckpt_lib.save_params(str(directory), variables["params"])
  (directory / "config.json").write_text(config.to_json_best_effort(indent=2))
  return directory


def restore_converted(directory) -> tuple[ml_collections.ConfigDict, dict]:
  """Reads what `save_converted` wrote -> (config, {'params': ...})."""
  directory = pathlib.Path(directory).absolute()
  config = config_from_json(json.loads((directory / "config.json").read_text()))
  return config, {"params": ckpt_lib.restore_params(str(directory))}


def _as_tuples(v):
  if isinstance(v, list):
    return tuple(_as_tuples(x) for x in v)
  return v


def config_from_json(d: dict) -> ml_collections.ConfigDict:
  """A config tree from its JSON dump (JSON lists back to tuples, as the config tree uses)."""
  def conv(node):
    if isinstance(node, dict):
      return ml_collections.ConfigDict({k: conv(v) for k, v in node.items()})
    return _as_tuples(node)
  return conv(d)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--input", required=True, help="official .pyth or state-dict .npz")
  parser.add_argument("--output", required=True, help="output directory (Orbax checkpoint + config.json)")
  parser.add_argument("--config", default=None, help="cfg YAML (default: stored / sibling _config.yaml)")
  parser.add_argument("--finetune_layout", action="store_true",
                      help="convert a pre-training checkpoint into the fine-tuning layout (rel-pos "
                           "interpolation, fresh norm/head)")
  parser.add_argument("--num_classes", type=int, default=400, help="classes of the fine-tuning head")
  parser.add_argument("--seed", type=int, default=0, help="init seed of the fresh fine-tuning head")
  parser.add_argument("--export_npz", default=None,
                      help="also write the (converted) params back in the official layout to this .npz")
  args = parser.parse_args(argv)
  config, variables = load_official_checkpoint(args.input, args.config)
  if args.finetune_layout:
    if config.model.type != "maskfeat":
      raise SystemExit(f"--finetune_layout needs a pre-training checkpoint; {args.input} is a "
                       f"{config.model.type}")
    config = transfer.finetune_config(config, args.num_classes)
    model = factory.build_model(config)
    ft = nn.unbox(jax.jit(lambda: model.init(jax.random.key(args.seed), *factory.example_inputs(config)))())
    variables = {"params": transfer.pretrain_to_finetune(variables["params"], ft["params"])}
  out = save_converted(args.output, config, variables)
  if args.export_npz:
    np.savez(args.export_npz, **export_official(config, variables["params"]))
  n = sum(np.size(v) for v in _flatten(variables["params"]).values())
  print(f"wrote {out}/checkpoints/0 ({n:,} params, model {config.model.type}) and {out}/config.json; "
        f"use it as --config.init_from={out}")


if __name__ == "__main__":
  main()
