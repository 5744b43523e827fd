"""AUTO_ENCODER ``AutoencoderKL``: diffusers' image VAE (SD 1.x/2.x, SDXL, SD3, FLUX) applied frame by frame.

Weights are read from disk only, never downloaded (``path``):

* a directory with ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or a pipeline
  directory with them under ``vae/``);
* a single ``.safetensors`` file: diffusers key layout, or the original LDM layout of SD/SDXL
  single-file VAEs (converted with diffusers' converter). The architecture comes from a
  ``<name>.json`` / ``config.json`` beside the file, else it is read off the tensor shapes
  (norm groups are then 32, as in every released SD-family VAE);
* a pickled LDM checkpoint (``.pth`` / ``.pt`` / ``.ckpt``), read with ``torch.load(weights_only=True)``
  (a pickle that would run code is refused with one line): ModelScope's ``VQGAN_autoencoder.pth`` is
  ``{'state_dict': ...}`` whose autoencoder keys carry the ``first_stage_model.`` prefix (other keys
  are ignored); a ModelScope model folder (``damo/text-to-video-synthesis``) stands for that file;
* a hub repo id (``stabilityai/sdxl-vae``) resolved in the local Hugging Face cache
  (``HF_HUB_CACHE`` / ``HF_HOME``, ``local_files_only``) or the ModelScope cache
  (``MODELSCOPE_CACHE``, default ``~/.cache/modelscope/hub``). Not cached: FileNotFoundError
  at once, saying where it looked and how to fetch it on a machine with network.

Latent normalization ``(z - shift) * scale``: ``scale_factor`` / ``shift_factor`` if given, else
the checkpoint config's ``scaling_factor`` / ``shift_factor``; ``variant`` only fills what the
config lacks (SD 0.18215, SDXL 0.13025, SD3 1.5305 / 0.0609, FLUX 0.3611 / 0.1159) and is
checked against the latent channels (4 for sd/sdxl, 16 for sd3/flux).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from tools.autoencoders.base import VideoAutoencoder
from utils.hub import cached_snapshot, is_repo_id
from utils.registry import AUTO_ENCODER

#: what a variant fills in when the checkpoint config lacks it
VARIANTS: Dict[str, Dict[str, float]] = {
    "sd": {"latent_channels": 4, "scaling_factor": 0.18215, "shift_factor": 0.0},
    "sdxl": {"latent_channels": 4, "scaling_factor": 0.13025, "shift_factor": 0.0},
    "sd3": {"latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609},
    "flux": {"latent_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159},
}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
WEIGHTS = "diffusion_pytorch_model.safetensors"
LDM_PREFIXES = ("first_stage_model.", "vae.")  # a VAE inside a whole SD checkpoint
PICKLES = (".pth", ".pt", ".ckpt")  # read with weights_only=True
FOLDER_FILES = ("VQGAN_autoencoder.pth", "v2-1_512-ema-pruned.ckpt")  # a ModelScope / VGen folder's VAE


@AUTO_ENCODER.register_class()
class AutoencoderKL(VideoAutoencoder):
    """diffusers AutoencoderKL frame by frame (SD/SDXL 4 ch, SD3/FLUX 16 ch); local files only."""

    spatial_factor = 8
    temporal_factor = 1
    variational = True

    def __init__(self, path: str, variant: str = "auto", scale_factor: Optional[float] = None,
                 shift_factor: Optional[float] = None, chunk_size: Optional[int] = 8, dtype: Optional[str] = None,
                 sample_posterior: bool = False):
        super().__init__(chunk_size=chunk_size, sample_posterior=sample_posterior)
        if variant not in ("auto", *VARIANTS):
            raise ValueError(f"variant={variant!r}: choose auto, {', '.join(VARIANTS)}.")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)} or null (float32).")
        self.path, self.variant, self.dtype = str(path), variant, DTYPES[dtype or "float32"]
        self.vae, raw_config = load_vae(self.path, self.dtype)
        self.vae.eval().requires_grad_(False)
        cfg = self.vae.config
        self.in_channels, self.latent_channels = int(cfg.in_channels), int(cfg.latent_channels)
        self.spatial_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.scale_factor, self.shift_factor = self._normalization(raw_config, scale_factor, shift_factor)

    def _normalization(self, raw: Dict[str, Any], scale: Optional[float], shift: Optional[float]) -> Tuple[float, float]:
        """(scale, shift): explicit kwargs, else the checkpoint config, else the variant."""
        fill = VARIANTS.get(self.variant)
        if fill is not None and fill["latent_channels"] != self.latent_channels:
            raise ValueError(f"variant={self.variant!r} has {fill['latent_channels']}-channel latents but {self.path} "
                             f"has {self.latent_channels}; use variant=auto or a variant with {self.latent_channels} "
                             f"channels ({', '.join(k for k, v in VARIANTS.items() if v['latent_channels'] == self.latent_channels) or 'none'}).")
        out = []
        for key, given in (("scaling_factor", scale), ("shift_factor", shift)):
            value = given if given is not None else raw.get(key)
            if value is None and fill is not None:
                value = fill[key]
            if value is None and key == "shift_factor":
                value = 0.0
            if value is None:
                raise ValueError(f"{self.path} does not say its latent scaling_factor (no config with it); set "
                                 f"variant (sd | sdxl | sd3 | flux) or scale_factor.")
            out.append(float(value))
        return out[0], out[1]

    def _encode_chunk(self, x: torch.Tensor) -> torch.Tensor:
        B, C, t, H, W = x.shape  # (B, C, t, H, W) -> moments (B, 2L, t, h, w)
        frames = x.permute(0, 2, 1, 3, 4).reshape(B * t, C, H, W).to(self.dtype)
        dist = self.vae.encode(frames).latent_dist
        moments = torch.cat([dist.mean, dist.logvar], dim=1).float()
        return moments.reshape(B, t, *moments.shape[1:]).permute(0, 2, 1, 3, 4)

    def _decode_chunk(self, z: torch.Tensor) -> torch.Tensor:
        B, L, t, h, w = z.shape
        frames = z.permute(0, 2, 1, 3, 4).reshape(B * t, L, h, w).to(self.dtype)
        x = self.vae.decode(frames).sample.float()
        return x.reshape(B, t, *x.shape[1:]).permute(0, 2, 1, 3, 4)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, variant={self.variant!r}, " + super().extra_repr()


# ---------------------------------------------------------------------------- loading
def load_vae(path: str, dtype: torch.dtype = torch.float32):
    """(diffusers AutoencoderKL, the raw config dict) from a dir, a .safetensors file or a cached repo id."""
    where = resolve_path(path)  # before importing diffusers (seconds): a missing VAE fails at once
    from diffusers import AutoencoderKL as DiffusersKL

    if where.is_dir():
        raw = json.loads((where / "config.json").read_text(encoding="utf-8"))
        vae = DiffusersKL.from_pretrained(str(where), local_files_only=True, use_safetensors=True, torch_dtype=dtype)
        return vae, raw
    return _load_single_file(where, dtype)


def resolve_path(path: str) -> Path:
    """The VAE directory or safetensors file ``path`` names; FileNotFoundError saying what is missing."""
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        for d in (p, p / "vae"):
            if (d / "config.json").is_file():
                return d
        for name in FOLDER_FILES:
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"auto_encoder.path={path!r} is a directory without config.json (nor vae/config.json); "
                                f"give a diffusers VAE directory (config.json + {WEIGHTS}) or a .safetensors file.")
    if p.is_file():
        if p.suffix != ".safetensors" and p.suffix not in PICKLES:
            raise ValueError(f"auto_encoder.path={path!r}: read are .safetensors files and {', '.join(PICKLES)} "
                             f"tensor pickles (weights_only); convert it to safetensors first.")
        return p
    if is_repo_id(path):
        return _from_caches(path)
    raise FileNotFoundError(f"auto_encoder.path={path!r} does not exist; give a VAE directory, a .safetensors file, "
                            f"or a hub repo id (org/name) that is in the local Hugging Face or ModelScope cache.")


def _from_caches(repo_id: str) -> Path:
    """A cached snapshot of ``repo_id`` (Hugging Face, then ModelScope); never the network."""
    snap, tried = cached_snapshot(repo_id)
    if snap is not None:
        return resolve_path(str(snap))
    raise FileNotFoundError(
        f"auto_encoder.path={repo_id!r} is not a local path and is not in the {' or the '.join(tried)}; weights are "
        f"never downloaded at run time. Fetch it once where there is network (`huggingface-cli download {repo_id}` "
        f"or `modelscope download {repo_id}`), or set auto_encoder.path to a local VAE directory or .safetensors file.")


def _load_single_file(path: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKL as DiffusersKL

    from utils.checkpoint import read_state_dict

    sd = read_state_dict(path)  # safetensors, or a tensor pickle with weights_only=True (one-line refusal)
    for prefix in LDM_PREFIXES:
        if any(k.startswith(prefix + "encoder.") for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    ldm = "encoder.down.0.block.0.conv1.weight" in sd
    raw = _sidecar_config(path) if path.suffix == ".safetensors" else {}
    config = dict(raw) if raw else infer_config(sd, ldm)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    if ldm:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        sd = convert_ldm_vae_checkpoint(sd, config)
    vae = DiffusersKL(**config)
    missing, unexpected = vae.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: the weights do not fit an AutoencoderKL of config {config} ({len(missing)} missing "
                         f"keys, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); put the "
                         f"VAE's config.json beside the file as {path.stem}.json.")
    return (vae if dtype == torch.float32 else vae.to(dtype)), raw  # .to(float32) only warns


def _sidecar_config(path: Path) -> Dict[str, Any]:
    for cand in (path.with_suffix(".json"), path.parent / "config.json"):
        if cand.is_file():
            return json.loads(cand.read_text(encoding="utf-8"))
    return {}


def infer_config(sd: Dict[str, torch.Tensor], ldm: bool) -> Dict[str, Any]:
    """An AutoencoderKL config read off the tensor shapes (diffusers or LDM key layout)."""
    down, res = ("encoder.down.{i}.block.{j}.conv1.weight" if ldm else
                 "encoder.down_blocks.{i}.resnets.{j}.conv1.weight"), []
    while down.format(i=len(res), j=0) in sd:
        res.append(sd[down.format(i=len(res), j=0)].shape[0])
    if not res:
        raise ValueError("the safetensors file holds no AutoencoderKL encoder (no encoder.down_blocks.0 / "
                         "encoder.down.0 weights); is it a VAE?")
    layers = 0
    while down.format(i=0, j=layers) in sd:
        layers += 1
    attn = "encoder.mid.attn_1." if ldm else "encoder.mid_block.attentions."
    return {"in_channels": int(sd["encoder.conv_in.weight"].shape[1]),
            "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
            "down_block_types": ["DownEncoderBlock2D"] * len(res), "up_block_types": ["UpDecoderBlock2D"] * len(res),
            "block_out_channels": [int(c) for c in res], "layers_per_block": layers,
            "latent_channels": int(sd["encoder.conv_out.weight"].shape[0]) // 2, "norm_num_groups": 32,
            "use_quant_conv": "quant_conv.weight" in sd, "use_post_quant_conv": "post_quant_conv.weight" in sd,
            "mid_block_add_attention": any(k.startswith(attn) for k in sd)}
