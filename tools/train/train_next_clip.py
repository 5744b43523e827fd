"""ENGINE train_next_clip: the generic training loop, written out step by step.

Model, diffusion, dataset, embedder and autoencoder all come from the YAML. The same
command runs single-process or under ``torchrun`` (DDP; gloo on CPU, nccl / hccl from
the backend). Every random draw of a step (clip cuts, window starts, flow times, noise) is made for the
*global* batch from a generator seeded by (seed, step, micro-step) and sliced per rank,
so N processes reproduce the single-process run on the same global batch, and a resumed
run reproduces the uninterrupted one. Datasets with ``epoch_aware = True`` receive
``(index, epoch)`` (contract C3), so their random clip windows / strides / crops change per
epoch and are the same again on resume. A dataset with ``yields_batches`` (e.g.
``JointImageVideo``: whole image or video batches per step) is told the rank, world size,
first step and number of (micro-)steps and read with ``DataLoader(batch_size=None)``;
image batches are trained as one-frame clips.

Conditioning (contracts K1/K4). ``cond_key`` names the item key fed to the embedder (label |
caption); the model's ``cond_dim`` follows the embedder's token width unless the model config
sets it. Condition dropout (``cond_dropout``, for classifier-free guidance) is drawn per sample
of the global batch from the step generator and sliced per rank like every other draw: a
dropped sample's value becomes ``None``, i.e. the embedder's null condition. A per-frame embedder
(``DiscreteActions``, ``cond_key: actions``) gives one token per frame: the item's sequence is cut to
the training window (the window's frames, the same start as the latents), padded with "no action"
when shorter, and passed to the model as ``frame_cond``; ``cond_dropout`` drops an item's whole
sequence, ``frame_cond_dropout`` each frame's entry on its own (drawn after it, per frame of the
global batch), so the model also learns partially known actions. A dataset with
``write_label_map`` (e.g. LabelList) gets its label map written to ``<run dir>/label_map.json``.

Resume (``resume: auto | PATH``). The checkpoint is read and checked against the built model
before anything is written to the run dir. ``auto`` takes the newest *readable* checkpoint
(warning about corrupt newer ones). Settings that differ from the checkpoint's stored config
are all logged, and the rule is:

* model / diffusion / auto_encoder / embedder / cond_key and the data shape (``max_frames``,
  any ``dataset...resolution`` / ``num_frames``) must match: otherwise a config error;
* optimizer and schedule settings (lr, weight_decay, betas, warmup_steps, lr_schedule,
  min_lr_ratio, num_steps) TAKE EFFECT: the new base lr / weight decay / betas are set in the
  resumed optimizer and the LR schedule is rebuilt at the resumed step (Adam moments are kept);
* everything else (clip_sampling, batch_size, seed, dataset content, intervals, ema_decay,
  grad_clip, backend, ...) takes effect from the resumed step; settings that change the
  data or noise stream mean the run no longer reproduces an uninterrupted one;
* ``pretrain`` is ignored on resume (the weights come from the checkpoint).

Parallelism (``backend.parallel: auto | none | ddp | fsdp``, auto = ddp under torchrun with more than one
process): the backend wraps the model (``backend.wrap``); DDP and FSDP2 go through the same stages
(:func:`_build`, :func:`_resume`, :func:`_step`, :func:`_checkpoint`). Under fsdp every rank holds a
shard of the model, its gradients, the AdamW state and the EMA, checkpoints are sharded
(torch.distributed.checkpoint; all ranks write) and resume on any number of processes;
``python -m scripts.consolidate_checkpoint`` makes one safetensors file of them for inference.
Visual hooks are skipped under fsdp.

LoRA (``lora: {rank, alpha, dropout, target}``, ``trainable: [patterns]``; tools/lora.py): after ``pretrain``
loads the base, adapters are injected and everything else is frozen (the embedder too): only the
adapters and the ``trainable`` tensors get gradients, optimizer state and an EMA (the EMA shares the
frozen weights). Checkpoints then hold only those tensors (safetensors, with the base identity in the
metadata; under fsdp the sharded checkpoint holds the whole model); resume loads the base from
``pretrain`` again and refuses a checkpoint of another base.

Distributed: every collective waits at most ``dist_timeout`` seconds; then the run stops with
one error naming the rank(s) that stopped answering (utils.distributed.collective_guard).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tools import lora
from tools.autoencoders.base import check_frames, latent_frames, pixel_frames, valid_frames
from tools.autoencoders.base import encode as ae_encode
from tools.backends.parallel import has_meta
from tools.embedders.conditioning import condition_values, embed, is_conditional, is_per_frame
from tools.pretrain.model_config import run_pretrain
from tools.stack import build_stack, model_config
from tools.train import loop
from tools.train.clip_sampling import CLIP_MODES, sample_clip_lens
from tools.train.loop import (  # noqa: F401 (API)
    OPTIM_KEYS,
    GlobalBatchSampler,
    collate,
    ema_update,
    lr_lambda,
    param_groups,
    step_generator,
    validate_loop,
)
from tools.train.loop import is_int as _is_int
from tools.train.loop import is_num as _is_num
from tools.train.loop import require as _require
from utils import distributed as du
from utils.config import DEFAULT_COMPONENTS, ConfigError
from utils.flops import count_flops
from utils.registry import AUTO_ENCODER, DATASETS, EMBEDDER, ENGINE, VISUAL

WINDOW_STARTS = ("first", "random")

DEFAULTS: dict[str, Any] = {
    **copy.deepcopy(DEFAULT_COMPONENTS),
    "dataset": None,
    "latent_cache": None,       # dir made by `python -m scripts.encode_latents`: train on cached latents
    "visual": [],
    "cond_key": None,           # item key fed to the embedder: label | caption | null
    "cond_dropout": 0.1,        # share of samples trained with the null condition (for guidance)
    "frame_cond_dropout": 0.0,  # per-frame embedders: share of single frames trained with the null token
    "cond_lr_mult": 1.0,        # lr multiplier of the condition path (embedder, model cond_* layers)
    "log_dir": "workspace/experiments",
    "seed": 8888,
    "num_steps": 1000,
    "batch_size": 8,            # per process (VGen's meaning)
    "grad_accum": 1,
    "num_workers": 0,
    "max_frames": 16,           # PIXEL frames per training video (longer items are cut, shorter ones are an
                                # error); T / f latent frames, 1 + 4k pixel frames for a causal f=4 VAE
    "window_start": "first",    # where the max_frames window of a longer item starts: first | random
    # clip_len / min_clips / max_clips count LATENT frames (what the model sees; = pixel frames for Identity)
    "clip_sampling": {"mode": "random", "clip_len": 4, "min_clips": 2, "max_clips": None},
    "lr": 1e-4,
    "weight_decay": 0.1,
    "betas": [0.9, 0.95],
    **loop.LOOP_DEFAULTS,
    "resume": "auto",           # auto | none | path to a checkpoint
    "lora": None,               # {rank, alpha, dropout, target}: train LoRA adapters on the frozen pretrain model
    "trainable": [],            # with lora: parameter-name patterns trained in full beside the adapters
    "progress": True,
    "log_mfu": True,            # scalars.jsonl: model TFLOP/s and MFU of each logged step (utils/flops.py)
    "dist_timeout": 600,        # seconds a collective waits for a silent rank before the run stops
}


# ---------------------------------------------------------------------------- helpers
@torch.no_grad()
def latents_of(batch: dict[str, Any], autoencoder, max_frames: int, device,
               generator: torch.Generator | None = None, rank_slice: tuple[int, int] = (0, 1),
               window_start: str = "first") -> torch.Tensor:
    """Model inputs of a batch (:func:`latent_window` without the window starts)."""
    return latent_window(batch, autoencoder, max_frames, device, generator, rank_slice, window_start)[0]


@torch.no_grad()
def latent_window(batch: dict[str, Any], autoencoder, max_frames: int, device,
                  generator: torch.Generator | None = None, rank_slice: tuple[int, int] = (0, 1),
                  window_start: str = "first") -> tuple[torch.Tensor, list[int]]:
    """(latents, the latent frame where each sample's window starts). Model inputs of a batch: cached
    ``latent`` or ``video`` encoded, cut to a window of ``max_frames``
    pixel frames (``autoencoder.latent_frames(max_frames)`` latent frames: T / f, or 1 + (T - 1) / f for a
    causal VAE). Image batches (``kind: image``) are one-frame clips and are not held to
    ``max_frames``. A stochastic encode draws its noise from ``generator`` (the step generator).

    ``window_start``: ``first`` takes the first frames of every item; ``random`` encodes the whole item
    (its longest encodable prefix) and cuts the window at a start drawn per sample of the global batch
    from ``generator``, in latent frames. With a causal VAE a window then begins with a latent of f
    frames, not the first frame's own latent, as the history of a sliding-window rollout does once it
    has moved past the start of the video."""
    if batch.get("kind") == "image":
        key = "latent" if "latent" in batch else "video"
        x = batch[key][:, :, :1].to(device, non_blocking=True)
        return (x if key == "latent" else ae_encode(autoencoder, x, generator, rank_slice)), [0] * x.shape[0]
    want = latent_frames(autoencoder, max_frames)
    if "latent" in batch:
        latent = batch["latent"]
        if latent.shape[2] < want:
            raise ValueError(f"cached latents have {latent.shape[2]} frames, fewer than the {want} that "
                             f"max_frames={max_frames} needs ({type(autoencoder).__name__}, temporal_factor "
                             f"{getattr(autoencoder, 'temporal_factor', 1)}); lower max_frames or re-encode the cache "
                             f"with more frames.")
        x = latent if window_start == "random" else latent[:, :, :want]
        x = x.to(device, non_blocking=True)
    else:
        video = batch["video"]
        if video.shape[2] < max_frames:
            raise ValueError(f"dataset items have {video.shape[2]} frames, fewer than max_frames="
                             f"{max_frames}; lower max_frames or raise the dataset's num_frames.")
        T = pixel_frames(autoencoder, latent_frames(autoencoder, video.shape[2])) if window_start == "random" \
            else max_frames
        x = ae_encode(autoencoder, video[:, :, :T].to(device, non_blocking=True), generator, rank_slice)
    if window_start != "random" or x.shape[2] == want:
        return x[:, :, :want], [0] * x.shape[0]
    B, (rank, world) = x.shape[0], rank_slice
    starts = torch.randint(0, x.shape[2] - want + 1, (B * world,), generator=generator)[rank * B:(rank + 1) * B]
    return torch.stack([x[b, :, int(s):int(s) + want] for b, s in enumerate(starts)]), [int(s) for s in starts]


def drop_conditions(values: list[Any], p: float, generator: torch.Generator, rank: int = 0,
                    world: int = 1) -> list[Any]:
    """Condition dropout: each sample of the GLOBAL batch (``len(values) * world``) is dropped
    with probability ``p`` by one draw from ``generator`` (the step generator); this rank keeps
    its slice. A dropped value becomes ``None`` (the embedder's null condition)."""
    B = len(values)
    drop = (torch.rand(B * world, generator=generator) < p)[rank * B:(rank + 1) * B].tolist()
    return [None if d else v for v, d in zip(values, drop)]


def condition_parameters(model, embedder) -> list[torch.nn.Parameter]:
    """The condition path: the embedder's parameters and the model's ``cond_*`` / ``frame_cond_*`` layers."""
    return list(embedder.parameters()) + [p for n, p in model.named_parameters()
                                          if n.startswith(("cond_", "frame_cond_"))]


def build_conditioning(embedder, batch: dict[str, Any], cond_key: str | None, device,
                       dropout: float = 0.0, generator: torch.Generator | None = None,
                       rank: int = 0, world: int = 1) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(cond, cond_mask) of a batch, after condition dropout; (None, None) for unconditional models."""
    if cond_key is None or not is_conditional(embedder):
        return None, None
    values = condition_values(batch, cond_key)
    if dropout > 0:
        values = drop_conditions(values, dropout, generator, rank, world)
    return embed(embedder, values, device)


def drop_frames(values: list[Any], num_frames: int, p: float, generator: torch.Generator, rank: int = 0,
                world: int = 1) -> list[Any]:
    """Per-frame dropout: each of the ``num_frames`` entries of every sample of the GLOBAL batch becomes -1
    (no action) with probability ``p``, one draw per (sample, frame) from ``generator``; this rank keeps
    its slice. A sample dropped as a whole (None) stays None."""
    B = len(values)
    drop = (torch.rand(B * world, num_frames, generator=generator) < p)[rank * B:(rank + 1) * B].tolist()
    return [None if v is None else [-1 if d else a for a, d in zip(v, row)] for v, row in zip(values, drop)]


def build_frame_conditioning(embedder, batch: dict[str, Any], cond_key: str, device, num_frames: int,
                             starts: list[int], dropout: float = 0.0, frame_dropout: float = 0.0,
                             generator: torch.Generator | None = None, rank: int = 0,
                             world: int = 1) -> torch.Tensor:
    """Frame conditions (B, num_frames, dim) of a batch for a per-frame embedder: each item's sequence cut
    to its training window (``starts[b]`` .. + ``num_frames``: the window of the latents), after the whole-
    sequence dropout (``dropout``, like :func:`build_conditioning`) and the per-frame one (``frame_dropout``);
    a window past the end of a shorter sequence is padded with the null token (the embedder's
    ``num_frames``)."""
    values = condition_values(batch, cond_key, per_frame=True)
    values = [None if v is None else list(v)[s:s + num_frames] for v, s in zip(values, starts)]
    if dropout > 0:
        values = drop_conditions(values, dropout, generator, rank, world)
    if frame_dropout > 0:
        values = [None if v is None else v + [-1] * (num_frames - len(v)) for v in values]
        values = drop_frames(values, num_frames, frame_dropout, generator, rank, world)
    return embed(embedder, values, device, num_frames)[0]


# ---------------------------------------------------------------------------- validation
def validate(cfg) -> None:
    """Contract C1: check the engine's own settings; raises ConfigError naming the setting."""
    g = cfg.get
    validate_loop(cfg, DEFAULTS, positive=("max_frames",))
    v = g("cond_dropout", DEFAULTS["cond_dropout"])
    _require(_is_num(v) and 0 <= v < 1, "cond_dropout", v, "must be a number in [0, 1)",
             "e.g. cond_dropout=0.1 (0: never train the null condition)")
    v = g("frame_cond_dropout", DEFAULTS["frame_cond_dropout"])
    _require(_is_num(v) and 0 <= v < 1, "frame_cond_dropout", v, "must be a number in [0, 1)",
             "e.g. frame_cond_dropout=0.1 (per-frame embedders: a tenth of the frames' actions become unknown)")
    v = g("cond_lr_mult", DEFAULTS["cond_lr_mult"])
    _require(_is_num(v) and v > 0, "cond_lr_mult", v, "must be a number > 0",
             "e.g. cond_lr_mult=10 (the new condition layers of a fine-tune learn 10x faster; 1: same lr)")
    v = g("cond_key", None)
    _require(v is None or (isinstance(v, str) and v), "cond_key", v, "must be an item key (label | caption) or null",
             "e.g. cond_key=label")
    v = g("window_start", DEFAULTS["window_start"])
    _require(v in WINDOW_STARTS, "window_start", v, f"choose one of {', '.join(WINDOW_STARTS)}",
             "e.g. window_start=random (train on windows that start anywhere in longer items)")
    _validate_clip_sampling(g("clip_sampling", DEFAULTS["clip_sampling"]))
    v = g("log_mfu", DEFAULTS["log_mfu"])
    _require(isinstance(v, bool), "log_mfu", v, "must be true or false", "e.g. log_mfu=false (no FLOP count)")
    lora.check_lora(g("lora"), g("trainable", []))
    loop.validate_data_shape(cfg, _patch_size(cfg))


def _patch_size(cfg) -> int:
    """The model's patch size on the latents, when the config sets it (1 otherwise: not checked)."""
    p = (cfg.get("model") or {}).get("patch_size", 1)
    return p if _is_int(p) and p >= 1 else 1


def _validate_clip_sampling(cs: Any) -> None:
    _require(isinstance(cs, dict), "clip_sampling", cs, "must be a mapping",
             "e.g. clip_sampling: {mode: random, min_clips: 2}")
    mode = cs.get("mode", "random")
    _require(mode in CLIP_MODES, "clip_sampling.mode", mode, f"choose one of {', '.join(CLIP_MODES)}",
             "fix the spelling")
    for key, lo in (("clip_len", 1), ("min_clips", 1)):
        v = cs.get(key, DEFAULTS["clip_sampling"][key])
        _require(_is_int(v) and v >= lo, f"clip_sampling.{key}", v, f"must be an integer >= {lo}",
                 f"set clip_sampling.{key} to {lo} or more")
    v = cs.get("max_clips")
    _require(v is None or (_is_int(v) and v >= 1), "clip_sampling.max_clips", v,
             "must be an integer >= 1 or null (up to one clip per frame)", "e.g. clip_sampling.max_clips=4")
    extra = sorted(set(cs) - set(DEFAULTS["clip_sampling"]))
    _require(not extra, "clip_sampling", dict(cs), f"unknown key(s) {', '.join(extra)}; known: "
             f"{', '.join(DEFAULTS['clip_sampling'])}", "remove or rename them")


# ---------------------------------------------------------------------------- resume checks
#: settings that define what the weights mean: resuming with other values is an error
MUST_MATCH = ("model", "diffusion", "auto_encoder", "embedder", "cond_key", "max_frames", "lora", "trainable")


def _must_match(key: str) -> bool:
    top = key.split(".")[0]
    if top in MUST_MATCH:
        return True
    return top == "dataset" and key.rsplit(".", 1)[-1] in ("resolution", "num_frames")


#: settings whose change alters the data / noise stream of a resumed run
STREAM_KEYS = ("seed", "batch_size", "grad_accum", "dataset", "latent_cache", "clip_sampling", "window_start")


def _effect(key: str) -> str:
    return loop.effect(key, STREAM_KEYS)


def check_resume(ckpt: dict[str, Any], model: torch.nn.Module, config_yaml: str, log) -> None:
    """Refuse a checkpoint of another model / shape (one line), log every other changed setting."""
    loop.check_resume(ckpt, model, config_yaml, log, DEFAULTS, _must_match, _effect,
                      "Model, diffusion, autoencoder, embedder and data shape settings")


# ---------------------------------------------------------------------------- engine
@ENGINE.register_class()
def train_next_clip(cfg) -> int:
    """Generic next-clip diffusion training: AdamW, EMA, bf16 autocast, DDP, exact resume."""
    validate(cfg)
    if (cfg.backend or {}).get("parallel") == "fsdp" and du.env_rank()[1] < 2:  # before anything is written
        raise ConfigError("backend.parallel=fsdp shards the model over several processes, and this is one: start "
                          "it with torchrun --nproc_per_node N (N >= 2), or set backend.parallel=none (or auto) "
                          "for one process")
    return loop.launch(cfg, _train)


train_next_clip.validate = validate


def _build_dataset(cfg):
    if cfg.dataset is None:
        raise ValueError("dataset: is not set; add a DATASETS component (e.g. type: SyntheticPhysics).")
    if cfg.latent_cache:  # refuses a cache made with another autoencoder / dataset config
        from tools.datasets.latent_cache import cache_fingerprint

        if cfg.dataset.get("type") == "JointImageVideo":
            raise ConfigError("latent_cache is set but dataset is JointImageVideo; latent caches hold one "
                              "dataset: set latent_cache=null to train on the image/video mix.")
        return DATASETS.build({"type": "LatentCache", "cache_dir": cfg.latent_cache,
                               "expect_fingerprint": cache_fingerprint(cfg)}, "latent_cache")
    return DATASETS.build(cfg.dataset, "dataset")


def check_autoencoder_frames(autoencoder, max_frames: int, dataset) -> None:
    """ConfigError unless ``max_frames`` pixel frames can be encoded (T / f, or 1 + f k for a causal
    VAE); image batches need an autoencoder that encodes one frame (f = 1, or causal)."""
    try:
        check_frames(autoencoder, max_frames, "max_frames")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not valid_frames(autoencoder, 1) and isinstance(dataset, torch.utils.data.IterableDataset):
        raise ConfigError(f"dataset {type(dataset).__name__} mixes one-frame image batches, but the autoencoder "
                          f"{type(autoencoder).__name__} cannot encode one frame (temporal_factor "
                          f"{autoencoder.temporal_factor}, not causal); use temporal_factor 1 or a causal video VAE.")


def _check_cond_key(cfg, embedder, log) -> None:
    """A conditional embedder needs cond_key; an unconditional one ignores it (logged)."""
    if is_conditional(embedder) and not cfg.cond_key:
        raise ConfigError(f"embedder {cfg.embedder.get('type')} makes condition tokens but cond_key is null; "
                          f"set cond_key to the item key it reads (label | caption)")
    if cfg.cond_key and not is_conditional(embedder):
        log.warning("cond_key=%r is ignored: the embedder %s takes no condition (the model is unconditional)",
                    cfg.cond_key, cfg.embedder.get("type"))


def _check_frame_conditions(cfg, embedder, autoencoder) -> None:
    """A per-frame embedder needs one latent frame per pixel frame (its tokens are per pixel frame)."""
    tf = int(getattr(autoencoder, "temporal_factor", 1))
    if is_per_frame(embedder) and tf != 1:
        raise ConfigError(f"the embedder {cfg.embedder.get('type')} makes one token per frame, but the auto_encoder "
                          f"{cfg.auto_encoder.get('type')} merges {tf} frames into one latent frame (temporal_factor "
                          f"{tf}); use an auto_encoder with temporal_factor 1 (Identity or an image VAE)")


def _check_label_count(cfg, dataset, embedder) -> None:
    """ConfigError at start (not on the first batch that meets it) when a labelled dataset has more
    labels than the class embedder has classes."""
    n, k = getattr(dataset, "num_classes", None), getattr(embedder, "num_classes", None)
    if cfg.cond_key == "label" and _is_int(n) and _is_int(k) and n > k:
        names = list(getattr(dataset, "classes", []))
        raise ConfigError(f"embedder.num_classes={k} but the dataset {cfg.dataset.get('type')} has {n} labels "
                          f"({', '.join(map(str, names[:8]))}{', ...' if n > 8 else ''}): labels {k}..{n - 1} have "
                          f"no class; set embedder.num_classes={n}")


def _use_cached_text_features(dataset, embedder, log) -> None:
    """Caption features stored with a latent cache (its fingerprint matched this embedder's config)."""
    stored = dataset.text_features() if callable(getattr(dataset, "text_features", None)) else None
    if stored is None or not callable(getattr(embedder, "add_features", None)):
        return
    embedder.add_features(*stored)
    log.info("using the latent cache's features of %d captions (not re-encoded)", len(stored[0]))


@dataclass
class Run:
    """Everything one training run builds (stage 1) and the later stages use."""
    cfg: Any
    backend: Any
    rank: int
    world: int
    out_dir: Path
    log: Any
    config_yaml: str
    dataset: Any = None
    autoencoder: Any = None
    embedder: Any = None
    model: Any = None          # the model itself (its weights / state_dict)
    net: Any = None            # what is called in training: the model, DDP(model) or the FSDP-sharded model
    ema: Any = None
    diffusion: Any = None
    visuals: list[Any] = field(default_factory=list)
    trainable: Any = None
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    ckpt_dir: Path | None = None
    start: int = 0
    adapters: Any = None       # lora: the trainable tensors (tools.lora.Adapters)
    base: Any = None           # lora: the base model's identity

    @property
    def parallel(self) -> str:
        return self.backend.parallel_mode(self.world)

    @property
    def weights(self):
        """What checkpoints save and resume loads: the model, or under LoRA (unsharded) its adapters."""
        return self.adapters if self.adapters is not None and self.parallel != "fsdp" else self.model

    @property
    def ema_weights(self):
        if self.ema is None or self.weights is self.model:
            return self.ema
        return self.adapters.view(self.ema)


def _build(run: Run, model_config=model_config) -> None:
    """Stage 1: components, the model wrapped for the chosen parallelism (none | ddp | fsdp), its
    EMA (sharded like it under fsdp), optimizer, LR schedule and loss scaler. ``model_config(cfg,
    autoencoder, embedder)`` gives the model's config (the whole-video engine passes its own)."""
    cfg, backend, log, device = run.cfg, run.backend, run.log, run.backend.device
    log.info("run %s on %s, %d process(es), parallel %s", run.out_dir, backend.describe(), run.world, run.parallel)
    backend.seed_everything(cfg.seed + run.rank)
    run.dataset = _build_dataset(cfg)
    run.autoencoder = AUTO_ENCODER.build(cfg.auto_encoder, "auto_encoder").to(device).eval()
    check_autoencoder_frames(run.autoencoder, cfg.max_frames, run.dataset)  # before the (large) model is built
    loop.check_data_shape(cfg, run.autoencoder, _patch_size(cfg))
    run.embedder = embedder = EMBEDDER.build(cfg.embedder, "embedder").to(device)
    _check_cond_key(cfg, embedder, log)
    _check_frame_conditions(cfg, embedder, run.autoencoder)
    _check_label_count(cfg, run.dataset, embedder)
    _use_cached_text_features(run.dataset, embedder, log)
    # fsdp + meta_init: the model's parameters on the meta device
    stack = build_stack(cfg, embedder=embedder, autoencoder=run.autoencoder,
                        model_context=backend.init_context(run.world), model_config=model_config)
    model, run.diffusion = stack.model, stack.diffusion
    model.set_attention(*backend.attention_kernel(training=True))
    if cfg.pretrain:
        run_pretrain(cfg.pretrain, model, embedder)  # a loader that takes the embedder gets it (a class table)
        if has_meta(model):  # a loader that copies into a meta model leaves it empty: never train fresh weights
            raise ConfigError(f"pretrain {cfg.pretrain.get('type')} did not fill the meta-device model (backend."
                              f"meta_init / model empty_weights); set backend.meta_init=false, or use a loader that "
                              f"assigns every tensor (e.g. VideoGPTCheckpoint)")
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.2fM parameters", cfg.model.get("type"), n_params / 1e6)
    if cfg.lora:
        _apply_lora(run, model)
    if run.parallel == "fsdp":
        ema = copy.deepcopy(model).requires_grad_(False) if cfg.use_ema else None
        run.net = run.model = backend.wrap(model, run.world)
        run.ema = backend.shard_like(ema, run.world).eval() if ema is not None else None
        _copy_weights(run.ema, run.model)
        if cfg.visual:
            log.warning("visual hooks are skipped under backend.parallel=fsdp (rank 0 alone cannot run the "
                        "sharded model); render from a consolidated checkpoint instead")
    else:
        run.net = backend.wrap(model, run.world)
        run.model = model
        if not cfg.use_ema:
            run.ema = None
        elif run.adapters is not None:  # only the trainable tensors are copied
            run.ema = lora.shared_copy(model).eval().requires_grad_(False)
        else:
            run.ema = copy.deepcopy(model).float().eval().requires_grad_(False)
        run.visuals = [VISUAL.build(v, f"visual[{i}]") for i, v in enumerate(cfg.visual or [])]
    if run.parallel == "fsdp" and backend.compile_mode(training=True) != "off":
        log.warning("backend.compile is not applied under parallel=fsdp (blocks are sharded); training runs eagerly")
    else:  # after the EMA copy: the EMA (visuals) stays eager
        backend.compile_model(model, training=True)
    run.trainable = torch.nn.ModuleList([run.model, embedder])
    run.optimizer = loop.make_optimizer(run.trainable, cfg, fast=condition_parameters(run.model, embedder),
                                        fast_mult=float(cfg.cond_lr_mult))
    run.scheduler = loop.make_scheduler(run.optimizer, cfg)
    run.scaler = backend.grad_scaler()


def _apply_lora(run: Run, model) -> None:
    """Adapters on the (pretrained) model; the base and the embedder frozen."""
    cfg = run.cfg
    if has_meta(model):
        raise ConfigError("lora is set but the model is on the meta device (backend.meta_init / empty_weights "
                          "without a loader that fills it); LoRA needs the base weights: set backend.meta_init=false")
    if not cfg.pretrain:
        run.log.warning("lora is set but pretrain is null: the adapters train on a randomly initialised base")
    run.base = lora.base_identity(model, (cfg.pretrain or {}).get("path"))
    run.adapters = lora.apply_lora(model, lora.check_lora(cfg.lora, cfg.trainable), cfg.trainable)
    run.embedder.requires_grad_(False)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.backend.precision)
    if low is not None and run.parallel != "fsdp":  # frozen weights in the compute dtype (fsdp: its own policy)
        with torch.no_grad():
            for p in model.parameters():
                if not p.requires_grad and p.is_floating_point():
                    p.data = p.data.to(low)
    n = sum(p.numel() for p in run.adapters.parameters())
    run.log.info("lora: rank %d on %d linear layers, %d trainable tensors (%.3fM parameters, %.2f%% of the model); "
                 "base %s", cfg.lora["rank"], len(run.adapters.lora["targets"]), len(run.adapters.keys), n / 1e6,
                 100 * n / sum(p.numel() for p in model.parameters()), run.base)


@torch.no_grad()
def _copy_weights(dst, src) -> None:
    if dst is not None:
        for d, s_ in zip(dst.parameters(), src.parameters()):
            d.copy_(s_.detach())


def _resume(run: Run) -> None:
    """Stage 2: read and check the checkpoint before anything is written to the run dir, then load
    it (a sharded checkpoint reshards to this world size; every rank takes part)."""
    cfg, log = run.cfg, run.log
    run.ckpt_dir, ckpt = loop.open_run(cfg, run.out_dir, run.rank, log, run.config_yaml,
                                       lambda c: _check_resume(run, c))
    if run.rank == 0 and callable(getattr(run.dataset, "write_label_map", None)):
        log.info("label map written to %s", run.dataset.write_label_map(run.out_dir / "label_map.json"))
    if ckpt is not None:
        run.start, run.scheduler = loop.apply_resume(ckpt, cfg, run.weights, run.ema_weights, run.optimizer,
                                                     run.embedder if run.weights is run.model else None)
        log.info("resumed from %s at step %d", ckpt["stem"], run.start)


def _check_resume(run: Run, ckpt) -> None:
    """check_resume, and under LoRA the adapter's base against this run's (one line if it differs)."""
    check_resume(ckpt, run.weights, run.config_yaml, run.log)
    if run.adapters is not None and "dcp" not in ckpt:
        lora.check_base(f"{ckpt['stem'].name}.safetensors", lora.read_adapter(f"{ckpt['stem']}.safetensors")[1]["base"],
                        run.base)


def next_clip_loss(run: Run, batch: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
    """One micro-batch's loss dict: latents, clip cuts and conditions outside autocast, the loss inside."""
    cfg, rank, world, device = run.cfg, run.rank, run.world, run.backend.device
    cs = cfg.clip_sampling
    x1, starts = latent_window(batch, run.autoencoder, cfg.max_frames, device, gen, (rank, world), cfg.window_start)
    B = x1.shape[0]
    # global-batch randomness, sliced for this rank
    clip_lens = sample_clip_lens(x1.shape[2], B * world, cs.mode, cs.clip_len, cs.min_clips,
                                 cs.max_clips, generator=gen)[rank * B:(rank + 1) * B]
    cond = cond_mask = frame_cond = None
    if cfg.cond_key and is_per_frame(run.embedder):  # one token per frame of the window
        frame_cond = build_frame_conditioning(run.embedder, batch, cfg.cond_key, device, x1.shape[2], starts,
                                              cfg.cond_dropout, cfg.frame_cond_dropout, gen, rank, world)
    else:
        cond, cond_mask = build_conditioning(run.embedder, batch, cfg.cond_key, device, cfg.cond_dropout, gen,
                                             rank, world)
    with run.backend.autocast():
        return run.diffusion.training_losses(run.net, x1, clip_lens.to(device), cond=cond,
                                             cond_mask=cond_mask, generator=gen, rank_slice=(rank, world),
                                             frame_cond=frame_cond)


def _step(run: Run, batches, step: int, loss_fn=next_clip_loss) -> dict[str, Any]:
    """Stage 3: one optimizer step over ``grad_accum`` micro-batches (gradients reduced across ranks
    on the last one only), clipping, EMA update. Returns the step's figures and last batch.
    ``loss_fn(run, batch, generator)`` computes one micro-batch's loss (the whole-video engine passes its own)."""
    cfg, backend = run.cfg, run.backend
    accum = int(cfg.grad_accum)
    run.net.train()
    loss_sum, images, batch = 0.0, 0, None
    for micro in range(accum):
        batch = next(batches)
        images += batch.get("kind") == "image"
        gen = step_generator(cfg.seed, step, micro)
        with backend.grad_sync(run.net, micro == accum - 1):
            out = loss_fn(run, batch, gen)
            run.scaler.scale(out["loss"] / accum).backward()
        loss_sum += float(out["loss"].detach()) / accum
    du.all_reduce_grads(run.embedder)  # DDP / FSDP only reduce the model's gradients
    grad_norm = loop.clip_and_step(run.trainable, run.optimizer, run.scheduler, run.scaler, cfg.grad_clip)
    if run.ema is not None:
        ema_update(run.ema, run.model, cfg.ema_decay)
    return {"loss": float(du.all_reduce_mean(torch.tensor(loss_sum))), "grad_norm": float(grad_norm),
            "images": images, "batch": batch}


def _checkpoint(run: Run, done: int, loss: float) -> None:
    """Stage 4: checkpoint ``done`` when due (safetensors from rank 0, or sharded from every rank)."""
    cfg = run.cfg
    if not loop.is_due(cfg, done, "save_ckp_interval"):
        return
    adapters = run.weights is not run.model
    loop.save_step(cfg, run.ckpt_dir, done, run.rank, run.weights, run.ema_weights,
                   lambda: {"scheduler": run.scheduler.state_dict()}, run.config_yaml,
                   optimizer=run.optimizer, embedder=None if adapters else run.embedder,
                   metadata=run.adapters.metadata(run.base) if adapters else None)
    if run.rank == 0:
        run.log.info("step %d: loss %.4f, checkpoint saved", done, loss)


def _visualise(run: Run, done: int, batch) -> None:
    if not run.visuals or run.rank != 0 or not loop.is_due(run.cfg, done, "viz_interval"):
        return
    vstate = {"model": run.ema if run.ema is not None else run.model, "diffusion": run.diffusion,
              "autoencoder": run.autoencoder, "embedder": run.embedder, "batch": batch, "step": done,
              "run_dir": run.out_dir, "backend": run.backend, "cfg": run.cfg}
    for hook in run.visuals:
        for path in hook(vstate):
            run.log.info("step %d: wrote %s", done, path)


def _train(cfg, backend, rank, world, out_dir: Path, log, loss_fn=next_clip_loss, model_config=model_config) -> int:
    """Build, resume, then the step loop with its log, checkpoints and visuals; the engines' shared body
    (the whole-video engine, tools/train/train_video.py, passes its ``loss_fn`` and ``model_config``)."""
    run = Run(cfg, backend, rank, world, out_dir, log, loop.config_yaml_of(cfg))
    _build(run, model_config)
    _resume(run)
    mixed = isinstance(run.dataset, torch.utils.data.IterableDataset)
    batches = iter(loop.make_loader(cfg, run.dataset, rank, world, run.start))
    peak = backend.matmul_peak_gflops(fresh=False) if cfg.log_mfu and rank == 0 else None
    if peak:
        log.info("matmul peak %.0f GFLOP/s (2048x2048, %s operands, measured now): the MFU in scalars.jsonl is a "
                 "share of it", peak, backend.precision)
    steplog = loop.StepLog(cfg, out_dir, rank, run.start, peak_gflops=peak)
    accum = int(cfg.grad_accum)
    for step in range(run.start, cfg.num_steps):
        done = step + 1
        flops = None
        if peak and steplog.due(done):  # this step's FLOPs counted (utils/flops.py), for the MFU of the log
            got: dict = {}
            flops = count_flops(lambda step=step, got=got: got.update(res=_step(run, batches, step, loss_fn)))
            res = got["res"]
        else:
            res = _step(run, batches, step, loss_fn)
        lr_now = run.scheduler.get_last_lr()[0]
        record = loop.lazy_scalars(loss=res["loss"], lr=lr_now, grad_norm=res["grad_norm"],
                                   # share of this step's batches that were images
                                   **({"image_frac": res["images"] / accum} if mixed else {}))
        steplog.step(done, record, {"loss": f"{res['loss']:.4f}", "lr": f"{lr_now:.2e}"}, flops=flops)
        _checkpoint(run, done, res["loss"])
        _visualise(run, done, res["batch"])
    steplog.close()
    log.info("training finished at step %d; memory %s", cfg.num_steps, backend.memory_stats())
    return 0


train_next_clip.defaults = DEFAULTS
