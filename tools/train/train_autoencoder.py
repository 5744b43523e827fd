"""ENGINE train_autoencoder: trains a video VAE (an AUTO_ENCODER with ``trainable = True``, e.g. CausalVAE).

One step, written out:

1. a global batch of videos (``max_frames`` pixel frames each; 1 + 4k for a causal f=4 VAE) is
   read by the same sampler as train_next_clip; every random draw (the posterior noise) comes
   from the step generator for the GLOBAL batch and is sliced per rank;
2. ``recon, mean, logvar = vae(x, generator, rank_slice)``; the loss is
   ``l1 * |recon - x| + mse * (recon - x)^2 + ssim * (1 - SSIM) + kl * KL(q || N(0, 1))`` (+
   ``gan.weight`` times the generator's hinge loss once ``step >= gan.start_step``). Keep an ``mse``
   term on sparse content such as small objects on a flat background: L1 alone is minimised by
   the per-pixel median, the background, and a VAE trained on L1 alone stays in that
   background-only solution for hundreds of steps (measured: 2 videos, 100 steps at lr 1e-4, 14.2 dB
   = the empty frame with L1; 19.5 dB by step 75 with ``mse: 10``);
3. AdamW step (clip, LR schedule), then, with the GAN on, one step of a per-frame PatchGAN
   discriminator on (x, recon.detach()); EMA of the VAE.

``freeze: [encoder]`` trains the decoder alone (the encoder runs without gradients and its weights,
hence the latents, stay bit-identical): a decoder fine-tune of a VAE whose latents a model was
already trained on (start it from the VAE with ``auto_encoder.weights``), as Stable Diffusion's
fine-tuned decoders keep the latent space. The names are the VAE's top-level submodules.

The launch, data stream, optimizer, resume, scalars / progress bar and checkpoints are the shared
plumbing of :mod:`tools.train.loop` (as in train_next_clip). Checkpoints hold the VAE (and its
EMA) as ``step_N.safetensors`` / ``step_N.ema.safetensors``, loadable with
``auto_encoder: {type: CausalVAE, weights: ...}``; the discriminator and its optimizer are in the
state file. Scalars: loss, l1, ssim, kl, psnr (dB of this batch), latent_std (the std of the
posterior means: use ``scale_factor = 1 / latent_std`` when training a model on the latents),
g_loss / d_loss with the GAN on, lr, grad_norm, steps_per_s.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from tools.train import loop
from utils import distributed as du
from utils.config import DEFAULT_COMPONENTS, ConfigError
from utils.metrics import psnr_per_frame, ssim_per_frame
from utils.registry import AUTO_ENCODER, DATASETS, ENGINE

DEFAULTS: Dict[str, Any] = {
    "backend": copy.deepcopy(DEFAULT_COMPONENTS["backend"]),
    "auto_encoder": {"type": "CausalVAE"},
    "dataset": None,
    "log_dir": "workspace/experiments",
    "seed": 8888,
    "num_steps": 1000,
    "batch_size": 4,            # per process
    "grad_accum": 1,
    "num_workers": 0,
    "max_frames": 17,           # PIXEL frames per training video (1 + 4k for a causal f=4 VAE)
    "loss": {"l1": 1.0, "mse": 10.0, "ssim": 0.2, "kl": 1.0e-6},
    "gan": {"weight": 0.0, "start_step": 2000, "channels": 32, "lr": None},  # weight 0: no GAN
    "lr": 1e-4,                 # measured on the demo CausalVAE: 5e-4 trails it (README "Latent space")
    "weight_decay": 0.0,
    "betas": [0.9, 0.99],
    "freeze": [],               # top-level VAE submodules kept fixed, e.g. [encoder] (a decoder fine-tune)
    **loop.LOOP_DEFAULTS,
    "viz_interval": 500,        # a truth | reconstruction mp4 under <run>/visuals/
    "resume": "auto",           # auto | none | path to a checkpoint
    "progress": True,
    "dist_timeout": 600,
}
#: settings that define what the weights mean: resuming with other values is an error
MUST_MATCH = ("auto_encoder", "max_frames", "gan.channels", "freeze")
STREAM_KEYS = ("seed", "batch_size", "grad_accum", "dataset")


# ---------------------------------------------------------------------------- losses
class PatchDiscriminator(nn.Module):
    """Per-frame PatchGAN: (B, 3, T, H, W) in [-1, 1] -> logits (B*T, 1, H/4, W/4)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.GroupNorm(min(32, 2 * c), 2 * c), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(1, 2).flatten(0, 1))


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), averaged over latent elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def ssim_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 - SSIM (utils.metrics, differentiable) over every frame of the batch."""
    to_frames = lambda v: v.transpose(0, 1).flatten(1, 2)  # (B, C, T, H, W) -> (C, B*T, H, W)  # noqa: E731
    return 1.0 - ssim_per_frame(to_frames(recon), to_frames(x)).mean().float()


def recon_losses(recon: torch.Tensor, x: torch.Tensor, mean, logvar, weights: Dict[str, float]) -> Dict[str, torch.Tensor]:
    """The weighted reconstruction + KL loss and its terms (SSIM only computed when weighted)."""
    recon = recon.float()
    diff = recon - x
    out = {"l1": diff.abs().mean(), "mse": diff.pow(2).mean(), "kl": kl_loss(mean.float(), logvar.float())}
    out["ssim"] = ssim_loss(recon, x) if weights["ssim"] > 0 else torch.zeros(())
    out["loss"] = sum(weights[k] * out[k] for k in ("l1", "mse", "ssim", "kl"))
    return out


# ---------------------------------------------------------------------------- validation
def validate(cfg) -> None:
    """Contract C1: one-line ConfigError naming the first bad setting."""
    loop.validate_loop(cfg, DEFAULTS, positive=("max_frames",))
    lw = cfg.get("loss", DEFAULTS["loss"])
    loop.require(isinstance(lw, dict) and set(lw) <= set(DEFAULTS["loss"]), "loss", lw,
                 f"must be a mapping with keys among {', '.join(DEFAULTS['loss'])}", "e.g. loss: {l1: 1.0, mse: 10.0, kl: 1.0e-6}")
    for k, v in lw.items():
        loop.require(loop.is_num(v) and v >= 0, f"loss.{k}", v, "must be a number >= 0", f"e.g. loss.{k}=0.1")
    gan = cfg.get("gan", DEFAULTS["gan"])
    loop.require(isinstance(gan, dict) and set(gan) <= set(DEFAULTS["gan"]), "gan", gan,
                 f"must be a mapping with keys among {', '.join(DEFAULTS['gan'])}", "e.g. gan: {weight: 0.1}")
    g = {**DEFAULTS["gan"], **gan}
    loop.require(loop.is_num(g["weight"]) and g["weight"] >= 0, "gan.weight", g["weight"], "must be a number >= 0",
                 "0 turns the GAN off")
    loop.require(loop.is_int(g["start_step"]) and g["start_step"] >= 0, "gan.start_step", g["start_step"],
                 "must be an integer >= 0", "e.g. gan.start_step=2000")
    loop.require(loop.is_int(g["channels"]) and g["channels"] >= 1, "gan.channels", g["channels"],
                 "must be an integer >= 1", "e.g. gan.channels=32")
    loop.require(g["lr"] is None or (loop.is_num(g["lr"]) and g["lr"] > 0), "gan.lr", g["lr"],
                 "must be a number > 0 or null (= lr)", "e.g. gan.lr=1e-4")
    fr = cfg.get("freeze", [])
    loop.require(isinstance(fr, (list, tuple)) and all(isinstance(n, str) for n in fr), "freeze", fr,
                 "must be a list of the VAE's submodule names", "e.g. freeze: [encoder] (train the decoder only)")
    loop.validate_data_shape(cfg)


def freeze_parts(vae: nn.Module, names) -> None:
    """Fix the named top-level submodules of ``vae`` (no gradients, eval mode is the caller's); a
    ConfigError names the valid ones. Freezing everything leaves nothing to train: also an error."""
    parts = dict(vae.named_children())
    for n in names:
        if n not in parts:
            raise ConfigError(f"freeze: {n!r} is not a submodule of the auto_encoder; it has "
                              f"{', '.join(parts) or 'none'}; e.g. freeze: [encoder] trains the decoder only.")
        parts[n].requires_grad_(False)
    if not any(p.requires_grad for p in vae.parameters()):
        raise ConfigError(f"freeze: {list(names)} fixes every parameter of the auto_encoder: nothing to train; "
                          f"remove a name.")


def _must_match(key: str) -> bool:
    top = key.split(".")[0]
    return top in MUST_MATCH or key in MUST_MATCH or (top == "dataset" and key.rsplit(".", 1)[-1] in
                                                      ("resolution", "num_frames"))


# ---------------------------------------------------------------------------- engine
@ENGINE.register_class()
def train_autoencoder(cfg) -> int:
    """Video VAE training: L1 + MSE + SSIM + KL (+ PatchGAN after a warm-up), EMA, DDP, exact resume."""
    validate(cfg)
    return loop.launch(cfg, _train)


train_autoencoder.validate = validate
train_autoencoder.defaults = DEFAULTS


def _build(cfg, device):
    if cfg.dataset is None:
        raise ConfigError("dataset: is not set; add a DATASETS component (e.g. type: SyntheticPhysics).")
    dataset = DATASETS.build(cfg.dataset, "dataset")
    vae = AUTO_ENCODER.build(cfg.auto_encoder, "auto_encoder")
    if not getattr(vae, "trainable", False):
        raise ConfigError(f"auto_encoder {cfg.auto_encoder.get('type')} cannot be trained by train_autoencoder (it "
                          f"needs trainable = True and forward(x, generator, rank_slice) -> (recon, mean, logvar)); "
                          f"use e.g. type: CausalVAE.")
    loop.check_data_shape(cfg, vae)
    freeze_parts(vae, cfg.get("freeze", []))
    return dataset, vae.to(device)


def _train(cfg, backend, rank, world, out_dir: Path, log) -> int:
    device = backend.device
    config_yaml = loop.config_yaml_of(cfg)
    log.info("run %s on %s, %d process(es)", out_dir, backend.describe(), world)
    backend.seed_everything(cfg.seed + rank)
    weights, gan = {**DEFAULTS["loss"], **cfg.loss}, {**DEFAULTS["gan"], **cfg.gan}

    loop.require_parallel(backend, world, "train_autoencoder", "its VAEs fit one device and its checkpoints are whole files")
    dataset, vae = _build(cfg, device)
    ema = copy.deepcopy(vae).float().eval().requires_grad_(False) if cfg.use_ema else None
    disc = PatchDiscriminator(gan["channels"]).to(device) if gan["weight"] > 0 else None
    log.info("auto_encoder %s: %.2fM parameters%s", cfg.auto_encoder.get("type"),
             sum(p.numel() for p in vae.parameters()) / 1e6, ", PatchGAN on" if disc is not None else "")
    optimizer, scheduler = loop.make_optimizer(vae, cfg), None
    scheduler = loop.make_scheduler(optimizer, cfg)
    d_opt = loop.make_optimizer(disc, cfg, lr=gan["lr"] or cfg.lr) if disc is not None else None
    scaler = backend.grad_scaler()

    ckpt_dir, start, scheduler, ckpt = loop.resume_run(
        cfg, out_dir, rank, log, config_yaml, vae, ema, optimizer, scheduler, DEFAULTS, _must_match, STREAM_KEYS,
        "The auto_encoder, max_frames, gan.channels and data shape settings")
    if ckpt is not None and disc is not None and "discriminator" in ckpt["state"]:
        disc.load_state_dict(ckpt["state"]["discriminator"])
        d_opt.load_state_dict(ckpt["state"]["disc_optimizer"])
        loop.reset_optimizer_settings(d_opt, cfg, lr=gan["lr"] or cfg.lr)
    del ckpt

    net, d_net = backend.wrap(vae, world), (backend.wrap(disc, world) if disc is not None else None)
    accum = int(cfg.grad_accum)
    batches = iter(loop.make_loader(cfg, dataset, rank, world, start))
    steplog = loop.StepLog(cfg, out_dir, rank, start, desc="train_vae")

    for step in range(start, cfg.num_steps):
        net.train()
        use_gan = d_net is not None and step >= gan["start_step"]
        sums: Dict[str, float] = {}
        pairs = []  # (x, recon) of each micro-step, for the discriminator
        for micro in range(accum):
            x = _video(next(batches), cfg.max_frames, device)
            gen = loop.step_generator(cfg.seed, step, micro)
            sync = micro == accum - 1 or world == 1
            with backend.grad_sync(net, sync):
                with backend.autocast():
                    recon, mean, logvar = net(x, generator=gen, rank_slice=(rank, world))
                out = recon_losses(recon, x, mean, logvar, weights)
                if use_gan:
                    out["g_loss"] = -d_net(recon.float()).mean()
                    out["loss"] = out["loss"] + gan["weight"] * out["g_loss"]
                scaler.scale(out["loss"] / accum).backward()
            out["psnr"] = psnr_per_frame(recon.detach().transpose(0, 1).flatten(1, 2),
                                         x.transpose(0, 1).flatten(1, 2)).mean()
            out["latent_std"] = mean.detach().float().std()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
            if use_gan:
                pairs.append((x, recon.detach().float()))
        grad_norm = loop.clip_and_step(vae, optimizer, scheduler, scaler, cfg.grad_clip)
        if use_gan:
            sums["d_loss"] = _disc_step(d_net, d_opt, pairs)
        if ema is not None:
            loop.ema_update(ema, vae, cfg.ema_decay)

        done = step + 1
        means = {k: float(du.all_reduce_mean(torch.tensor(v))) for k, v in sums.items()}
        lr_now = scheduler.get_last_lr()[0]
        steplog.step(done, lambda: {**means, "lr": lr_now, "grad_norm": float(grad_norm)},
                     {"l1": f"{means['l1']:.4f}", "psnr": f"{means['psnr']:.1f}"})
        if loop.is_due(cfg, done, "save_ckp_interval"):
            loop.save_step(cfg, ckpt_dir, done, rank, vae, ema, lambda: _state(optimizer, scheduler, disc, d_opt),
                           config_yaml)
            if rank == 0:
                log.info("step %d: l1 %.4f, psnr %.2f dB, checkpoint saved", done, means["l1"], means["psnr"])
        if rank == 0 and loop.is_due(cfg, done, "viz_interval"):
            log.info("step %d: wrote %s", done, _write_visual(ema if ema is not None else vae, x, out_dir, done))
    steplog.close()
    log.info("training finished at step %d; memory %s", cfg.num_steps, backend.memory_stats())
    return 0


def _video(batch: Dict[str, Any], max_frames: int, device) -> torch.Tensor:
    video = batch["video"]
    if video.shape[2] < max_frames:
        raise ValueError(f"dataset items have {video.shape[2]} frames, fewer than max_frames={max_frames}; "
                         f"lower max_frames or raise the dataset's num_frames.")
    return video[:, :, :max_frames].to(device, non_blocking=True)


def _disc_step(d_net, d_opt, pairs) -> float:
    """One hinge-loss step of the discriminator on real videos vs reconstructions; the mean loss."""
    total = 0.0
    for x, recon in pairs:
        loss = 0.5 * (F.relu(1.0 - d_net(x)).mean() + F.relu(1.0 + d_net(recon)).mean())
        (loss / len(pairs)).backward()
        total += float(loss.detach()) / len(pairs)
    d_opt.step()
    d_opt.zero_grad(set_to_none=True)
    return total


def _state(optimizer, scheduler, disc, d_opt) -> Dict[str, Any]:
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    if disc is not None:
        state.update(discriminator=disc.state_dict(), disc_optimizer=d_opt.state_dict())
    return state


@torch.no_grad()
def _write_visual(vae, x: torch.Tensor, out_dir: Path, step: int) -> str:
    """truth | reconstruction of the batch's first two videos -> <run>/visuals/vae_step_N.mp4."""
    import numpy as np

    from utils.video_io import side_by_side, write_video

    was = vae.training
    vae.eval()
    try:
        recon = vae.decode(vae.encode(x[:2])).clamp(-1, 1).cpu()
    finally:
        vae.train(was)
    rows = [side_by_side(x[i].cpu(), recon[i]) for i in range(recon.shape[0])]
    return write_video(Path(out_dir) / "visuals" / f"vae_step_{step:08d}.mp4", np.concatenate(rows, axis=1))
