"""Official DIGAN PyTorch state_dicts -> our Flax variables (names, layouts, configs).

The input is a flat mapping `<net>/<torch name> -> array` (nets: G, G_ema, D), e.g. an `.npz`
exported from a `network-snapshot-*.pkl` (README, "Importing official weights"). Layouts: torch
linear [out, in] -> ours [in, out]; FMM / ToRGB [out, in, 1, 1] -> [out, in]; conv
[out, in, kh, kw] -> HWIO. `resample_filter` buffers are constants here and are dropped.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import numpy as np

from digan_jax.models.discriminator import DiscriminatorConfig
from digan_jax.models.generator import GeneratorConfig

Arrays = Mapping[str, np.ndarray]


def _set(tree: dict, path: list[str], value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  if path[-1] in tree:
    raise ValueError(f"duplicate parameter {'/'.join(path)}")
  tree[path[-1]] = value


def _fc(weight):
  return np.ascontiguousarray(np.asarray(weight, np.float32).T)


def _generator_path(name: str) -> list[str] | None:
  """Torch generator name -> our path (without the 'params'/'stats' root), None for buffers."""
  if name.endswith("resample_filter"):
    return None
  name = name.replace("input.input.coord_fuser", "coord_fuser")
  name = re.sub(r"extra_convs\.(\d+)", r"extra\1", name)
  name = re.sub(r"motion_mlp\.(\d+)", r"motion_mlp\1", name)
  parts = name.split(".")
  if parts[0] == "mapping":
    return parts
  if parts[0] != "synthesis":
    raise ValueError(f"unexpected generator tensor {name!r}")
  block, layer, rest = parts[1], parts[2], parts[3:]
  return ["synthesis", f"{block}_{layer}"] + rest


def convert_generator(sd: Arrays) -> dict[str, Any]:
  """Generator state_dict (torch names, no prefix) -> {'params': ..., 'stats': {'mapping': w_avg}}."""
  params: dict = {}
  stats: dict = {}
  for name, value in sd.items():
    path = _generator_path(name)
    if path is None:
      continue
    value = np.asarray(value, np.float32)
    if path[-1] == "w_avg":
      _set(stats, path, value)
      continue
    leaf = path[-1]
    is_affine_or_fc = any(
      p in ("affine", "xyaffine") or p.startswith(("fc", "motion_mlp", "embed")) for p in path[:-1]
    )
    if leaf == "weight" and value.ndim == 4:  # FMM / ToRGB shared weight [out, in, 1, 1]
      value = value[:, :, 0, 0]
    elif leaf == "weight" and is_affine_or_fc:
      value = _fc(value)
    _set(params, path, value)
  return {"params": params, "stats": stats}


def _discriminator_path(name: str) -> list[str] | None:
  if name.endswith("resample_filter"):
    return None
  parts = name.split(".")
  if parts[0] == "mapping":
    return parts
  if parts[0] == "b4":
    return [f"b4_{parts[1]}"] + parts[2:]
  if parts[1] == "fromrgb":
    return [f"{parts[0]}_fromrgb"] + parts[2:]
  return parts


def convert_discriminator(sd: Arrays) -> dict[str, Any]:
  """One StyleGAN2 resnet D state_dict (torch names) -> {'params': ...}."""
  params: dict = {}
  for name, value in sd.items():
    path = _discriminator_path(name)
    if path is None:
      continue
    value = np.asarray(value, np.float32)
    if path[-1] == "weight":
      value = np.ascontiguousarray(value.transpose(2, 3, 1, 0)) if value.ndim == 4 else _fc(value)
    _set(params, path, value)
  return {"params": params}


def convert_dual_discriminator(sd: Arrays) -> dict[str, Any]:
  """DIGAN `OurDiscriminator` state_dict (videoD.*, imageD.*) -> DualDiscriminator variables."""
  split = {"videoD": {}, "imageD": {}}
  for name, value in sd.items():
    head, _, rest = name.partition(".")
    if head not in split:
      raise ValueError(f"unexpected discriminator tensor {name!r} (expected videoD.* or imageD.*)")
    split[head][rest] = value
  return {
    "params": {
      "motion_d": convert_discriminator(split["videoD"])["params"],
      "image_d": convert_discriminator(split["imageD"])["params"],
    }
  }


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
  for key, value in tree.items():
    if isinstance(value, Mapping):
      yield from _flatten(value, prefix + (key,))
    else:
      yield prefix + (key,), np.asarray(value, np.float32)


def _torch_generator_name(path: tuple[str, ...]) -> str:
  """Inverse of `_generator_path`."""
  if path[0] == "mapping":
    return ".".join(path)
  block, layer = path[1].split("_", 1)
  rest = [re.sub(r"^motion_mlp(\d+)$", r"motion_mlp.\1", p) for p in path[2:]]
  layer = re.sub(r"^extra(\d+)$", r"extra_convs.\1", layer)
  if layer == "coord_fuser" and block == "b4":  # the input block's fuser sits in its input layer
    layer = "input.input.coord_fuser"
  return ".".join(["synthesis", block, layer] + rest)


def export_generator(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Generator variables -> official state_dict arrays (torch names and layouts).

  The inverse of `convert_generator` (the constant `resample_filter` buffers are not written;
  load the result into the official network with `strict=False`).
  """
  out = {}
  for path, value in _flatten(variables["params"]):
    name = _torch_generator_name(path)
    if path[-1] == "weight":
      is_affine_or_fc = any(
        p in ("affine", "xyaffine") or p.startswith(("fc", "motion_mlp", "embed"))
        for p in path[:-1]
      )
      value = _fc(value) if is_affine_or_fc else value[:, :, None, None]
    out[name] = value
  for path, value in _flatten(variables.get("stats", {})):
    out[".".join(path)] = value
  return out


def export_dual_discriminator(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """DualDiscriminator variables -> official `OurDiscriminator` state_dict arrays (inverse of
  `convert_dual_discriminator`)."""
  out = {}
  for ours, head in (("motion_d", "videoD"), ("image_d", "imageD")):
    for path, value in _flatten(variables["params"][ours]):
      first = path[0]
      if first.endswith("_fromrgb"):
        first = first.replace("_", ".")
      elif first.startswith("b4_"):
        first = "b4." + first[3:]
      name = ".".join((head, first) + path[1:])
      if path[-1] == "weight":
        value = np.ascontiguousarray(value.transpose(3, 2, 0, 1)) if value.ndim == 4 else _fc(value)
      out[name] = value
  return out


def split_networks(arrays: Arrays) -> dict[str, dict[str, np.ndarray]]:
  """{'G/x': a, 'D/y': b} -> {'G': {'x': a}, 'D': {'y': b}}."""
  nets: dict[str, dict[str, np.ndarray]] = {}
  for key, value in arrays.items():
    net, sep, name = key.partition("/")
    if not sep or net not in ("G", "G_ema", "D"):
      continue
    nets.setdefault(net, {})[name] = np.asarray(value)
  if "G" not in nets and "G_ema" not in nets:
    raise ValueError(
      "no generator tensors found: expected keys 'G/<name>' or 'G_ema/<name>' "
      "(see README, 'Importing official weights')"
    )
  return nets


def configs_from_meta(meta: Mapping[str, Any]) -> tuple[GeneratorConfig, DiscriminatorConfig]:
  """Configs from a parity fixture's `meta_json` (official config names)."""
  gcfg = meta.get("generator_cfg", {})
  fuser = gcfg.get("input", {}).get("coord_fuser_cfg", gcfg.get("coords", {}))
  res_cfgs = fuser.get("res_configs", {})
  emb = {int(v.get("predictable_emb_size", 128)) for v in res_cfgs.values()} or {128}
  if len(emb) != 1:
    raise ValueError(f"per-resolution embedding sizes differ ({sorted(emb)}); not supported")
  extra = gcfg.get("num_extra_convs", {"128": 1, "256": 1})
  g = GeneratorConfig(
    resolution=int(meta["res"]),
    input_resolution=int(gcfg.get("input", {}).get("resolution", 32)),
    z_dim=int(meta.get("z_dim", 512)),
    w_dim=int(meta.get("w_dim", 512)),
    c_dim=int(meta.get("c_dim", 0)),
    mapping_layers=int(meta.get("mapping_layers", 2)),
    channel_base=int(meta["channel_base"]),
    channel_max=int(meta["channel_max"]),
    fmm_rank=int(gcfg.get("fmm", {}).get("rank", 10)),
    emb_size=emb.pop(),
    motion_sigma=float(fuser.get("motion_sigma", 0.25)),
    extra_convs=tuple(sorted((int(k), int(v)) for k, v in extra.items())),
  )
  clamp = meta.get("d_conv_clamp", 256)
  d = DiscriminatorConfig(
    resolution=int(meta["res"]),
    channel_base=int(meta["channel_base"]),
    channel_max=int(meta["channel_max"]),
    c_dim=int(meta.get("c_dim", 0)),
    conv_clamp=None if clamp is None else float(clamp),
    mbstd_group_size=int(meta.get("mbstd_group_size", 4)),
  )
  return g, d


def infer_configs(
  nets: Mapping[str, Arrays],
  motion_sigma: float = 0.25,
  mbstd_group_size: int = 4,
  conv_clamp: float | None = 256.0,
) -> tuple[GeneratorConfig, DiscriminatorConfig | None]:
  """Configs from tensor shapes alone (what an official pickle does not state is a flag)."""
  g = nets.get("G_ema") or nets["G"]
  blocks = sorted({int(m.group(1)) for k in g if (m := re.match(r"synthesis\.b(\d+)\.", k))})
  res = blocks[-1]
  ch = {r: g[f"synthesis.b{r}.torgb.weight"].shape[1] for r in blocks}
  channel_max = max(ch.values())
  below = [r * c for r, c in ch.items() if c < channel_max]
  channel_base = min(below) if below else channel_max * res
  fused = [r for r in blocks if f"synthesis.b{r}.coord_fuser.xyaffine.weight" in g]
  input_res = min(fused) // 2 if fused else res
  extra = {
    r: len(
      {
        k
        for k in g
        if k.startswith(f"synthesis.b{r}.extra_convs.")
        and k.endswith(".weight")
        and "affine" not in k
      }
    )
    for r in blocks
  }
  emb = g["synthesis.b4.input.input.coord_fuser.affine.weight"].shape[0]
  mapping_layers = len({k for k in g if re.match(r"mapping\.fc\d+\.weight$", k)})
  embed = g.get("mapping.embed.weight")
  c_dim = 0 if embed is None else embed.shape[1]
  # Keep the official default entries (128 and 256) so the config round-trips unchanged.
  extra_convs = {128: 1, 256: 1}
  extra_convs.update({r: n for r, n in extra.items() if n or r in extra_convs})
  z_dim = g["mapping.fc0.weight"].shape[1] - (g["mapping.fc0.weight"].shape[0] if c_dim else 0)
  gcfg = GeneratorConfig(
    resolution=res,
    input_resolution=input_res,
    z_dim=z_dim,
    w_dim=g["mapping.fc0.weight"].shape[0],
    c_dim=c_dim,
    mapping_layers=mapping_layers,
    channel_base=channel_base,
    channel_max=channel_max,
    fmm_rank=g["synthesis.b8.conv1.affine.weight"].shape[0] // (2 * ch[8]) if 8 in ch else 10,
    emb_size=emb,
    motion_sigma=motion_sigma,
    extra_convs=tuple(sorted(extra_convs.items())),
  )
  dcfg = None
  if "D" in nets:
    d = nets["D"]
    dch = {
      int(m.group(1)): v.shape[0]
      for k, v in d.items()
      if (m := re.match(r"imageD\.b(\d+)\.conv0\.weight$", k))
    }
    dmax = max(dch.values())
    dbelow = [r * c for r, c in dch.items() if c < dmax]
    dcfg = DiscriminatorConfig(
      resolution=max(dch),
      channel_base=min(dbelow) if dbelow else dmax * max(dch),
      channel_max=dmax,
      c_dim=c_dim,
      conv_clamp=conv_clamp,
      mbstd_group_size=mbstd_group_size,
    )
  return gcfg, dcfg


def load_npz(path) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
  """Arrays and the optional `meta_json` of an exported `.npz`."""
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files if k != "meta_json"}
    meta = json.loads(str(data["meta_json"])) if "meta_json" in data.files else None
  return arrays, meta
