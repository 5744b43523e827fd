"""INFER_ENGINE generate_video: whole-video diffusion models (text- or image-to-video), one mp4 per list line.

Whole-video models denoise all frames at once (ModelScope / VGen UNets, video DiTs such as Latte), unlike the
next-clip rollout of ``predict_next_clip``. Contract of such a MODEL: ``forward(x, t, **conditions) -> prediction``
with x (B, C, F, H, W) and t as the model's ``timestep_input`` says (tools/diffusions/gaussian.py); its class
attribute ``conditions`` lists the inputs it takes besides x and t:

* ``y``: text tokens (B, L, D) of the ``embedder`` (the full token sequence, no mask: VGen's context), or the
  class token (B, 1, D) of a class embedder for a ``class`` list (Latte);
* ``image``: an image embedding (B, D') of the ``image_embedder``;
* ``local_image``: the first frame's latent (B, C, 1, h, w) from the ``auto_encoder``;
* ``fps``: (B,) integers, the ``fps`` setting.

Classifier-free guidance acts on the model output: the DIFFUSION's ``guide`` (``u + guide_scale * (c - u)``, on the
prediction channels only for a learned variance), where the unconditional call gets the embedder's tokens of
``negative_prompt`` ("" by default, VGen's null context) or, for a class list, the embedder's null class, the image
embedder's ``null`` (zeros, VGen's unconditional image feature) and the same first-frame latent and fps. A model
without conditions (``conditions = ()``, an unconditional Latte) is sampled without guidance; a list's lines then
only name the samples and set their seeds. Sampling is the configured DIFFUSION's ``sample`` (GaussianDiffusion:
DDIM with ``ddim_timesteps`` steps and ``ddim_eta``, or ``sampler: ddpm``).

Weights: ``test_model`` is a model folder or released file read by the ``pretrain`` loader (e.g. ModelScopeCheckpoint
on ``damo/text-to-video-synthesis``, LatteCheckpoint on a Latte ``.pt``; loaders that take ``embedder`` get it, for
a class table), or a NextClip ``.safetensors`` checkpoint of a training run (with its trained embedder beside it).
The folder's config fixes the model's shape (tools/pretrain/model_config.py). File settings left null are taken from the
folder: ``auto_encoder.path`` (the folder itself: AutoencoderKL finds ``VQGAN_autoencoder.pth``) and the
embedders' ``pretrained`` (``open_clip_pytorch_model.bin``).

The test list, results.jsonl, resume (skip items done with the same fingerprint) and rank sharding are the
next-clip engine's (tools/inferences/predict_next_clip.py).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tools import lora
from tools.autoencoders.base import latent_frames, valid_frames
from tools.diffusions.gaussian import timestep_input
from tools.embedders.conditioning import video_conditions
from tools.inferences.predict_next_clip import _predict
from tools.pretrain.model_config import merged_model_config, model_folder, run_pretrain, with_folder_files
from tools.stack import model_config
from utils import distributed as du
from utils.checkpoint import checkpoint_config, embedder_weights_for, load_weights
from utils.config import DEFAULT_COMPONENTS, ConfigError, to_yaml
from utils.io import atomic_write_text
from utils.logging import get_logger, setup_logger
from utils.registry import AUTO_ENCODER, BACKEND, DIFFUSION, EMBEDDER, INFER_ENGINE, MODEL
from utils.test_list import parse_test_list
from utils.video_io import read_image, resize_crop, to_tensor, to_uint8

logger = get_logger()

DEFAULTS: dict[str, Any] = dict(
    copy.deepcopy(DEFAULT_COMPONENTS),
    image_embedder=None,       # EMBEDDER of the image condition (image-to-video models)
    test_model=None,           # model folder (pretrain loader) or a .safetensors checkpoint of train_video
    strict=True,
    test_list_path=None,
    test_list_kind="text",     # text: 'prompt|seed' lines; image: 'path|||caption' lines; class: 'label|seed'
    log_dir="workspace/inference",
    seed=8888,
    round=1,
    resolution=[256, 256],     # [H, W] of the output (images are resized and center-cropped to it)
    max_frames=16,             # pixel frames of every video
    ddim_timesteps=50,         # sampling steps
    ddim_eta=0.0,
    sampler="ddim",            # ddim | ddpm (ancestral; with the diffusion's learned variance if it has one)
    guide_scale=9.0,           # classifier-free guidance on the model output (1 = off)
    negative_prompt="",        # the unconditional text ("" = VGen's null context)
    fps=8,                     # of the written mp4, and the fps condition of models that take one
    save_gif=False,
    save_grid=False,
    overwrite=False,
    progress=True,
    lora=None,                 # LoRA adapters on the base model: [{path, scale}] or one path (tools/lora.py)
    lora_merge=False,          # true: fold them into the base weights
)


def validate(cfg) -> None:
    """Contract C1: one-line ConfigError for settings that would fail the run or every item."""
    if not cfg.get("test_list_path") or not Path(str(cfg.test_list_path)).is_file():
        raise ConfigError(f"test_list_path={cfg.get('test_list_path')!r} is not a list file; give a text file with one "
                          f"prompt per line (test_list_kind text) or 'image|||caption' (image)")
    if cfg.get("test_list_kind") not in ("text", "image", "class"):
        raise ConfigError(f"test_list_kind={cfg.get('test_list_kind')!r}: whole-video generation reads text or image "
                          f"lists, or class lists for class-conditional models; set test_list_kind=text, image, class")
    if cfg.get("sampler") not in ("ddim", "ddpm"):
        raise ConfigError(f"sampler={cfg.get('sampler')!r}; use ddim or ddpm")
    for key, lo in (("ddim_timesteps", 1), ("max_frames", 1), ("round", 1)):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{key}={v!r} must be an integer >= {lo}; set e.g. '{key}={DEFAULTS[key]}'")
    hw = cfg.get("resolution")
    if not (isinstance(hw, list) and len(hw) == 2 and all(isinstance(x, int) and x > 0 for x in hw)):
        raise ConfigError(f"resolution={hw!r} must be [H, W] of positive ints; set e.g. 'resolution=[256,256]'")
    for key in ("guide_scale", "ddim_eta", "fps"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"{key}={v!r} must be a number >= 0; set e.g. '{key}={DEFAULTS[key]}'")
    for entry in lora.check_entries(cfg.get("lora")):
        if not Path(entry["path"]).is_file():
            raise ConfigError(f"lora path {entry['path']!r}: no such adapter file; give a LoRA run's "
                              f"checkpoints/step_N.ema.safetensors")
    tm = cfg.get("test_model")
    if tm and not Path(str(tm)).exists() and not cfg.get("pretrain"):
        raise ConfigError(f"test_model={tm!r} does not exist; give a model folder or a .safetensors checkpoint")


def guided(model: Callable, cond: dict, uncond: dict, scale: float, combine: Callable | None = None) -> Callable:
    """``pred_fn(x, t)`` of classifier-free guidance on the model output, both branches in one batch;
    ``combine(c, u, scale)`` (the diffusion's ``guide``) defaults to ``u + scale * (c - u)``."""
    if scale == 1.0 or not cond:
        return lambda x, t: model(x, t, **cond)
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}

    def pred(x, t):
        c, u = model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        return combine(c, u, scale) if combine is not None else u + scale * (c - u)

    return pred


class VideoGenerator:
    """Built once per run: backend, embedder(s), autoencoder, model (+weights), diffusion."""

    def __init__(self, cfg, local_rank: int = 0):
        self.cfg = cfg
        self.backend = BACKEND.build(cfg.backend, "backend", local_rank=local_rank)
        self.device = self.backend.device
        folder = model_folder(cfg)
        self.embedder = self._frozen(EMBEDDER, "embedder", cfg.embedder, folder)
        self.image_embedder = self._frozen(EMBEDDER, "image_embedder", cfg.image_embedder, folder) \
            if cfg.image_embedder else None
        self.autoencoder = self._frozen(AUTO_ENCODER, "auto_encoder", cfg.auto_encoder, folder)
        self.model = build_video_model(cfg, folder, self.embedder)
        self.adapters = lora.check_entries(cfg.get("lora"))
        if self.adapters:
            base = cfg.test_model or (cfg.pretrain or {}).get("path")
            lora.load_adapters(self.model, self.adapters, lora.base_identity(self.model, base),
                               merge=bool(cfg.get("lora_merge")))
        self.model.set_attention(*self.backend.attention_kernel())
        self.model.to(self.device).eval().requires_grad_(False)
        self.diffusion = DIFFUSION.build(cfg.diffusion, "diffusion")
        try:
            self.conditions = video_conditions(self.model)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.check()

    def _frozen(self, registry, key, comp, folder):
        return registry.build(with_folder_files(key, comp, folder), key).to(self.device).eval().requires_grad_(False)

    def check(self) -> None:
        cfg, ae, model = self.cfg, self.autoencoder, self.model
        if "image" in self.conditions and self.image_embedder is None:
            raise ConfigError(f"model {cfg.model['type']} takes an image embedding: set image_embedder (e.g. "
                              f"{{type: OpenCLIPImage, arch: ViT-H-14}})")
        have, want = getattr(model, "in_channels", ae.latent_channels), ae.latent_channels
        if have != want:
            raise ConfigError(f"the model takes {have}-channel latents but the auto_encoder makes {want}; use the "
                              f"model's own autoencoder (auto_encoder.path: null = the model folder's)")
        dim = getattr(model, "context_dim", None)
        if dim is not None and "y" in self.conditions and int(self.embedder.dim) != int(dim):
            raise ConfigError(f"the embedder {cfg.embedder['type']} makes {self.embedder.dim}-wide tokens but the "
                              f"model's context_dim is {dim}; use the model's text encoder (OpenCLIPText ViT-H-14)")
        if not valid_frames(ae, int(cfg.max_frames)):
            raise ConfigError(f"max_frames={cfg.max_frames} cannot be encoded by the auto_encoder")
        sf = int(ae.spatial_factor) * int(getattr(model, "spatial_multiple", 1))
        if cfg.resolution[0] % sf or cfg.resolution[1] % sf:
            raise ConfigError(f"resolution={list(cfg.resolution)} must be multiples of {sf}; use e.g. "
                              f"{[max(sf, r // sf * sf) for r in cfg.resolution]}")

    # -- conditions ----------------------------------------------------------------
    def text_tokens(self, text: str) -> torch.Tensor:
        tokens, _ = self.embedder([text])  # the whole token sequence, no mask (VGen's context)
        return tokens.to(self.device)

    def conditions_of(self, prompt: str, image=None, label=None) -> tuple[dict, dict]:
        """(conditional, unconditional) model inputs of one item (``label``: a class list's item)."""
        cond, uncond = {}, {}
        if "y" in self.conditions and label is not None:  # a class token, guided against the null class
            cond["y"] = self.embedder([label])[0].to(self.device)
            uncond["y"] = self.embedder.null(1)[0].to(self.device)
        elif "y" in self.conditions:
            cond["y"], uncond["y"] = self.text_tokens(prompt), self.text_tokens(self.cfg.negative_prompt or "")
        if "image" in self.conditions:
            emb, _ = self.image_embedder([image])
            null, _ = self.image_embedder.null(1)
            cond["image"], uncond["image"] = emb[:, 0].to(self.device), null[:, 0].to(self.device)
        if "local_image" in self.conditions:
            pixels = to_tensor(resize_crop(image[None], tuple(self.cfg.resolution)))  # (3, 1, H, W) in [-1, 1]
            cond["local_image"] = uncond["local_image"] = self.autoencoder.encode(pixels[None].to(self.device))
        if "fps" in self.conditions:
            cond["fps"] = uncond["fps"] = torch.tensor([int(self.cfg.fps)], device=self.device)
        return cond, uncond

    # -- generation ----------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: str, seed: int, image=None, label=None) -> torch.Tensor:
        """One video (C, F, H, W) in [-1, 1] for ``prompt`` (and the first frame ``image``, uint8 (H, W, 3);
        or the class ``label``)."""
        cfg, ae = self.cfg, self.autoencoder
        cond, uncond = self.conditions_of(prompt, image, label)
        H, W = cfg.resolution
        shape = (1, ae.latent_channels, latent_frames(ae, int(cfg.max_frames)), H // ae.spatial_factor,
                 W // ae.spatial_factor)
        gen = torch.Generator().manual_seed(int(seed))  # the start noise, then every sampling step's (ddpm, eta > 0)
        noise = torch.randn(shape, generator=gen).to(self.device)
        with self.backend.autocast():
            pred_fn = guided(self.model, cond, uncond, float(cfg.guide_scale), getattr(self.diffusion, "guide", None))
            z = self.diffusion.sample(pred_fn, noise, steps=int(cfg.ddim_timesteps), sampler=cfg.sampler,
                                      eta=float(cfg.ddim_eta), generator=gen, timestep_input=timestep_input(self.model))
        return ae.decode(z.float())[0].clamp(-1, 1).cpu()


def is_nextclip_checkpoint(path) -> bool:
    """A ``.safetensors`` file written by a NextClip training run (it stores the run's config)."""
    p = Path(str(path))
    return p.suffix == ".safetensors" and p.is_file() and checkpoint_config(p) is not None


def build_video_model(cfg, folder: str | None, embedder=None):
    """The MODEL of ``cfg.model`` with the shape the checkpoint fixes, and its weights (strict). A model that
    takes ``cond_dim`` gets the embedder's token width (model_cfg_for); a NextClip checkpoint's trained embedder
    weights (beside it) go into ``embedder``, and a ``pretrain`` loader that takes ``embedder`` gets it."""
    model_cfg = model_config(cfg, embedder=embedder, model_cfg=merged_model_config(cfg.model, cfg.pretrain, folder))
    model = MODEL.build(model_cfg, "model")
    tm = cfg.get("test_model")
    if tm and (is_nextclip_checkpoint(tm) or (str(tm).endswith(".safetensors") and not cfg.pretrain)):
        load_weights(model, Path(str(tm)), strict=cfg.strict)
        emb_path = embedder_weights_for(Path(str(tm)))
        if embedder is not None and embedder.state_dict() and emb_path.is_file():
            load_weights(embedder, emb_path, strict=cfg.strict)
    elif folder and cfg.pretrain:
        run_pretrain(cfg.pretrain, model, embedder, path=folder)
    else:
        logger.warning("no test_model and no pretrain: the model has random weights")
    return model


def _producer(cfg, gen: VideoGenerator):
    def produce(item) -> dict:
        t0 = time.time()
        image = read_image(item.path) if item.kind == "image" else None
        label = item.label if item.kind == "class" else None
        frames = to_uint8(gen.generate(item.caption, item.seed, image, label))
        return {"frames": frames, "grid": {"rows": [("generated", frames)], "context_frames": 0},
                "rollout_seconds": round(time.time() - t0, 3)}

    return produce


@INFER_ENGINE.register_class()
def generate_video(cfg) -> int:
    """Whole-video text/image-to-video generation for each test-list line; one mp4 per item."""
    rank, _, local_rank = du.env_rank()
    list_path = Path(cfg.test_list_path)
    items = parse_test_list(list_path, kind=cfg.test_list_kind, rounds=cfg.round, base_seed=cfg.seed)
    out_dir = Path(cfg.log_dir) / list_path.stem
    setup_logger(out_dir, rank)
    if rank == 0:
        atomic_write_text(out_dir / "config.yaml", to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")}))
    gen = VideoGenerator(cfg, local_rank)
    rank, world = du.init_distributed(gen.backend.dist_backend)
    try:
        return _predict(cfg, gen, items, out_dir, rank, world, produce=_producer(cfg, gen))
    finally:
        du.cleanup()


generate_video.defaults = DEFAULTS
generate_video.validate = validate

