"""PRETRAIN ModelScopeCheckpoint: released ModelScope / VGen UNet weights -> ``UNetSD_T2VBase`` / ``UNetSD_I2VGen``.

``path`` is any of:

- a ModelScope model folder (``damo/text-to-video-synthesis``: ``configuration.json``, ``text2video_pytorch_model.pth``,
  ``VQGAN_autoencoder.pth``, ``open_clip_pytorch_model.bin``); the UNet file is the one ``configuration.json`` names
  (``model.model_args.ckpt_unet``);
- a VGen folder (``config.json`` with a ``UNet`` block, beside one UNet weights file such as ``i2vgen_xl.pth``);
- one weights file: ``.pth`` / ``.pt`` / ``.bin`` (a pickle of tensors, read with ``torch.load(weights_only=True)``:
  a file that would run code when unpickled is refused with one line, nothing runs), plain or in VGen's
  ``{'state_dict': ..., 'step': ...}`` wrapping, or ``.safetensors``;
- a hub repo id already in the local ModelScope / Hugging Face cache (``damo/text-to-video-synthesis``);
  nothing is downloaded: fetch it once with ``modelscope download --model damo/text-to-video-synthesis --local_dir
  DIR`` where there is network.

Keys are converted from VGen's numbered-block layout by :func:`convert_unet_keys` (written for this project and
tested against the golden fixtures), then loaded strictly with a key report. The folder's own config fixes the
UNet's shape: :func:`model_config` reads it, and the engines merge it under the YAML's ``model`` (a value set in
both must agree; tools/pretrain/model_config.py).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from utils.checkpoint import CheckpointError, compare_state_dict, format_report, read_state_dict
from utils.hub import cached_snapshot, is_repo_id
from utils.registry import PRETRAIN

logger = logging.getLogger("nextclip")

MODELSCOPE_CONFIG, VGEN_CONFIG = "configuration.json", "config.json"
UNET_FILES = ("text2video_pytorch_model.pth", "text2video_pytorch_model.safetensors", "i2vgen_xl.pth",
              "i2vgen_xl_00854500.pth", "unet.safetensors", "model.safetensors")
NOT_UNET = ("VQGAN_autoencoder", "open_clip", "vae", "clip")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: configuration.json ``model_cfg`` key -> the UNet constructor's (VGen's) name
MODELSCOPE_FIELDS = {"unet_in_dim": "in_dim", "unet_dim": "dim", "unet_y_dim": "y_dim",
                     "unet_context_dim": "context_dim", "unet_out_dim": "out_dim", "unet_dim_mult": "dim_mult",
                     "unet_num_heads": "num_heads", "unet_head_dim": "head_dim", "unet_res_blocks": "num_res_blocks",
                     "unet_attn_scales": "attn_scales", "unet_dropout": "dropout",
                     "temporal_attention": "temporal_attention"}
#: VGen ``UNet`` block keys that fix no tensor and change no output of these UNets (checked where they could)
VGEN_IGNORED = ("type", "use_checkpoint", "upper_len", "default_fps", "use_fps_condition", "temporal_attn_times",
                "use_sim_mask", "use_image_dataset", "inpainting", "misc_dropout", "p_all_zero", "p_all_keep",
                "zero_y", "black_image_feature", "adapter_transformer_layers", "num_tokens")


# ---------------------------------------------------------------------------- finding the files
def resolve_folder(path: str) -> Path:
    """A local file or folder, or a repo id found in the local ModelScope / HF cache (never downloaded)."""
    p = Path(str(path)).expanduser()
    if p.exists():
        return p
    if is_repo_id(str(path)):
        hit, tried = cached_snapshot(str(path))
        if hit is not None:
            return hit
        raise CheckpointError(f"pretrain path {str(path)!r} is not a local folder and not in the "
                              f"{' or the '.join(tried)}; nothing is downloaded at run time: run `modelscope download "
                              f"--model {path} --local_dir DIR` where there is network and give DIR")
    raise CheckpointError(f"pretrain path {str(path)!r} does not exist; give a ModelScope / VGen model folder, a "
                          f"UNet weights file (.pth / .safetensors) or a cached repo id (damo/text-to-video-synthesis)")


def unet_file(path: str) -> Path:
    """The UNet weights file of a folder (or the file itself)."""
    p = resolve_folder(path)
    if p.is_file():
        return p
    ms = p / MODELSCOPE_CONFIG
    if ms.is_file():
        name = _read_json(ms).get("model", {}).get("model_args", {}).get("ckpt_unet", UNET_FILES[0])
        if (p / name).is_file():
            return p / name
        raise CheckpointError(f"{ms} names the UNet file {name!r} (model.model_args.ckpt_unet) but {p / name} does "
                              f"not exist; copy the model folder completely")
    for name in UNET_FILES:
        if (p / name).is_file():
            return p / name
    cands = sorted(f for f in p.iterdir() if f.suffix in (".pth", ".pt", ".safetensors")
                   and not any(f.name.startswith(n) for n in NOT_UNET))
    if len(cands) == 1:
        return cands[0]
    found = "found " + ", ".join(c.name for c in cands) if cands else "no .pth / .safetensors file"
    raise CheckpointError(f"{p}: cannot tell the UNet weights file ({found}); give the file itself as path")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from e


def model_config(path: str) -> dict:
    """The UNet constructor kwargs the folder's own config fixes ({} for a bare weights file)."""
    p = resolve_folder(path)
    folder = p if p.is_dir() else p.parent
    if (folder / MODELSCOPE_CONFIG).is_file():
        mcfg = _read_json(folder / MODELSCOPE_CONFIG).get("model", {}).get("model_cfg", {})
        out = {MODELSCOPE_FIELDS[k]: v for k, v in mcfg.items() if k in MODELSCOPE_FIELDS}
        if isinstance(out.get("temporal_attention"), str):
            out["temporal_attention"] = out["temporal_attention"].lower() == "true"
        return out
    if (folder / VGEN_CONFIG).is_file():
        unet = _read_json(folder / VGEN_CONFIG).get("UNet")
        if isinstance(unet, dict):
            if unet.get("temporal_attn_times", 1) != 1 or unet.get("use_sim_mask", False):
                raise CheckpointError(f"{folder / VGEN_CONFIG}: temporal_attn_times={unet.get('temporal_attn_times')}"
                                      f", use_sim_mask={unet.get('use_sim_mask')}: only the released settings (1, "
                                      f"false) are supported")
            return {k: v for k, v in unet.items() if k not in VGEN_IGNORED}
    return {}


# ---------------------------------------------------------------------------- reading tensors
def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or of a pickle read with ``weights_only=True`` (a pickle that needs code to
    load is refused: CheckpointError, one line; nothing runs); VGen's ``{'state_dict', 'step'}`` is unwrapped."""
    sd = read_state_dict(file)
    for pre in WRAPPER_PREFIXES:
        if sd and all(k.startswith(pre) for k in sd):
            sd = {k[len(pre):]: v for k, v in sd.items()}
    return sd


# ---------------------------------------------------------------------------- the key converter
RESBLOCK = {"in_layers.0.": "norm1.", "in_layers.2.": "conv1.", "emb_layers.1.": "time_emb_proj.",
            "out_layers.0.": "norm2.", "out_layers.3.": "conv2.", "skip_connection.": "conv_shortcut."}
TEMPORAL_CONV = "temopral_conv."  # sic: the reference's spelling
#: the top-level layers outside the numbered blocks (diffusers names); I2VGen-XL adds its own (see convert_unet_keys)
TOP_LEVEL = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
             "out.0.": "conv_norm_out.", "out.2.": "conv_out.", "input_blocks.0.0.": "conv_in."}


def block_prefixes(num_levels: int, num_res_blocks: int, has_attn: list[bool]) -> dict[str, tuple[str, str]]:
    """Reference block prefix -> (diffusers prefix, kind) with kind in res | spatial | temporal | down | up.

    The reference numbers its blocks: ``input_blocks.0`` = input conv + temporal transformer; per level and res
    block one ``input_blocks.N`` = [ResBlock (+ temporal conv), SpatialTransformer, TemporalTransformer] (the two
    transformers where the level has attention), and a Downsample ``input_blocks.N`` between levels;
    ``middle_block`` = [ResBlock, Spatial, Temporal, ResBlock]; ``output_blocks.N`` per level (deepest first) and
    res block + 1, the last of a level ending in an Upsample."""
    out: dict[str, tuple[str, str]] = {"input_blocks.0.1.": ("transformer_in.", "temporal")}
    n = 1
    for i in range(num_levels):
        for j in range(num_res_blocks):
            out[f"input_blocks.{n}.0."] = (f"down_blocks.{i}.|{j}", "res")
            if has_attn[i]:
                out[f"input_blocks.{n}.1."] = (f"down_blocks.{i}.attentions.{j}.", "spatial")
                out[f"input_blocks.{n}.2."] = (f"down_blocks.{i}.temp_attentions.{j}.", "temporal")
            n += 1
        if i != num_levels - 1:
            out[f"input_blocks.{n}.op."] = (f"down_blocks.{i}.downsamplers.0.conv.", "down")
            n += 1
    out["middle_block.0."] = ("mid_block.|0", "res")
    out["middle_block.1."] = ("mid_block.attentions.0.", "spatial")
    out["middle_block.2."] = ("mid_block.temp_attentions.0.", "temporal")
    out["middle_block.3."] = ("mid_block.|1", "res")
    n = 0
    for i, level in enumerate(reversed(range(num_levels))):
        for j in range(num_res_blocks + 1):
            out[f"output_blocks.{n}.0."] = (f"up_blocks.{i}.|{j}", "res")
            if has_attn[level]:
                out[f"output_blocks.{n}.1."] = (f"up_blocks.{i}.attentions.{j}.", "spatial")
                out[f"output_blocks.{n}.2."] = (f"up_blocks.{i}.temp_attentions.{j}.", "temporal")
            if level != 0 and j == num_res_blocks:
                out[f"output_blocks.{n}.{3 if has_attn[level] else 1}."] = (f"up_blocks.{i}.upsamplers.0.", "up")
            n += 1
    return out


def _convert_one(rest: str, target: str, kind: str, v: torch.Tensor) -> tuple[str, torch.Tensor]:
    """One key inside a block: (diffusers key, tensor reshaped where the layer type differs)."""
    if kind == "res":  # "down_blocks.0.|1": ResBlock -> resnets.1 (+ its temporal conv -> temp_convs.1)
        base, j = target.split("|")
        if rest.startswith(TEMPORAL_CONV):
            return f"{base}temp_convs.{j}.{rest[len(TEMPORAL_CONV):]}", v
        for old, new in RESBLOCK.items():
            if rest.startswith(old):
                return f"{base}resnets.{j}.{new}{rest[len(old):]}", v
        raise KeyError(rest)
    if kind == "temporal" and rest in ("proj_in.weight", "proj_out.weight") and v.dim() == 3:
        v = v[:, :, 0]  # reference 1-wide Conv1d -> diffusers Linear
    return target + rest, v


def convert_unet_keys(sd: dict[str, torch.Tensor], num_levels: int, num_res_blocks: int, has_attn: list[bool],
                      extra: dict[str, str] | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """VGen / ModelScope UNet state dict -> diffusers UNet3DConditionModel / I2VGenXLUNet keys.

    ``extra``: more top-level prefix renames (I2VGen-XL's image branch). Returns (converted, keys not converted)."""
    blocks = block_prefixes(num_levels, num_res_blocks, has_attn)
    top = {**TOP_LEVEL, **(extra or {})}
    out, left = {}, []
    for key, v in sd.items():
        hit = next((p for p in top if key.startswith(p)), None)
        if hit is not None:
            out[top[hit] + key[len(hit):]] = v
            continue
        parts = key.split(".")
        prefix = next((p for p in (".".join(parts[:3]) + ".", ".".join(parts[:2]) + ".") if p in blocks), None)
        if prefix is None:
            left.append(key)
            continue
        target, kind = blocks[prefix]
        try:
            new, v = _convert_one(key[len(prefix):], target, kind, v)
        except KeyError:
            left.append(key)
            continue
        out[new] = v
    return out, left


# ---------------------------------------------------------------------------- the loader
def load_reference_unet(model: nn.Module, path: str, strict: bool = True) -> dict[str, list[str]]:
    """Load released reference weights into ``model`` (its ``unet`` holds diffusers keys); the key report."""
    file = unet_file(path)
    sd = read_weights(file)
    converted, left = convert_unet_keys(sd, len(model.has_attn), model.config["num_res_blocks"], model.has_attn,
                                        getattr(model, "reference_extra_keys", None))
    converted = {"unet." + k: v for k, v in converted.items()}
    converted = model.adapt_reference_weights(converted) if hasattr(model, "adapt_reference_weights") else converted
    report = compare_state_dict(model, converted)
    report["unexpected"] = sorted(report["unexpected"] + left)
    if strict and any(report.values()):
        raise CheckpointError(f"{file} does not fit {type(model).__name__} {model.config} ({format_report(report, 8)})"
                              f"; the model config must be the checkpoint's (leave the model's shape keys unset to "
                              f"take them from the folder's configuration.json / config.json)")
    bad = {k.split(":")[0] for k in report["mismatched"]}
    model.load_state_dict({k: v for k, v in converted.items() if k not in bad and k in model.state_dict()},
                          strict=False)
    report["file"] = [str(file)]
    return report


@PRETRAIN.register_class()
def ModelScopeCheckpoint(model, path: str, strict: bool = True):
    """Released ModelScope / VGen UNet weights (folder, .pth via weights_only, or safetensors), keys converted."""
    report = load_reference_unet(model, path, strict=strict)
    bad = {k: report[k] for k in ("missing", "unexpected", "mismatched")}
    (logger.warning if any(bad.values()) else logger.info)("loaded %s: %s", report["file"][0], format_report(bad))
    return report


ModelScopeCheckpoint.model_config = model_config
