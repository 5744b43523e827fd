"""A per-rank memory plan of a training config, read before renting GPUs (``train_net.py --dry-run``).

The model is built on the meta device (no memory), so the 3.8B preset costs nothing here. Per rank,
with P parameters, S = world size under fsdp (1 under none / ddp):

* weights: fp32 master copy, 4 P / S bytes;
* gradients: fp32, 4 P / S (ddp adds its reduction buckets, another 4 P);
* optimizer: AdamW's two fp32 moments, 8 P / S;
* EMA: fp32, 4 P / S (when ``use_ema``);
* fsdp working set: the largest block all-gathered in the compute dtype for this block and the
  prefetched next one, and its unsharded fp32 gradient before the reduce-scatter:
  Pb * (2 * c + 4) with c = 2 bytes (bf16) or 4 (fp32);
* activations of one micro-batch: b samples of s tokens (s = 2 F N, the clean and noisy copy of F
  latent frames of N tokens), hidden h, FFN width f, depth d. One block keeps about
  ``a = b s (18 h + 6 f) c / 2`` bytes for its backward (norm outputs, q/k/v, attention output and
  projection input, the fused FFN input/output and the SwiGLU product; attention scores are never
  stored: the kernels are blockwise); without activation checkpointing d * a, with it (the model's
  ``grad_checkpointing``) every block keeps only its input (b s h * 4 bytes, the fp32 residual
  stream) and one block is recomputed at a time: d * b s h * 4 + a. Allocator slack, the
  autoencoder and the data loader are not included.

With ``lora`` set (tools/lora.py) only the A adapters and ``trainable`` tensors (Pa parameters) train:
the frozen weights are kept in the compute dtype (2 (P - Pa) / S bytes in bf16), and gradients,
AdamW moments and the EMA exist for the Pa trained parameters only (fp32); the fsdp working set
holds no gradient for frozen blocks. Activations are counted as in full training (the frozen layers
still back-propagate to the adapters below them; the adapters' own rank-r activations are negligible).
:func:`fit_table` prints what fits on 24 / 40 / 80 GB with and without LoRA.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger("nextclip")

GiB = 2 ** 30


@dataclass
class Plan:
    """Bytes per rank of each part of a training run's state."""
    parallel: str
    world: int
    precision: str
    params: int
    rows: dict[str, float]
    tokens: int
    checkpointing: bool
    trained: int | None = None  # LoRA: parameters trained (adapters + trainable); None: all

    @property
    def total(self) -> float:
        return sum(self.rows.values())

    def format(self, capacity_gib: float | None = None) -> str:
        lines = [f"# memory plan per rank: parallel={self.parallel}, world={self.world}, precision={self.precision}, "
                 f"{self.params / 1e9:.2f}B parameters, {self.tokens} tokens per sample, activation checkpointing "
                 f"{'on' if self.checkpointing else 'off'}"
                 + (f", LoRA: {self.trained / 1e6:.1f}M trained parameters, the rest frozen" if self.trained else "")]
        for name, b in self.rows.items():
            lines.append(f"#   {name:<22s} {b / GiB:8.2f} GiB")
        lines.append(f"#   {'total':<22s} {self.total / GiB:8.2f} GiB"
                     + (f"  ({'fits' if self.total / GiB <= capacity_gib else 'does NOT fit'} "
                        f"{capacity_gib:g} GiB)" if capacity_gib else ""))
        return "\n".join(lines)


def _factors(ae_cfg: dict[str, Any]) -> tuple[int, int, bool]:
    """(spatial factor, temporal factor, causal) of the autoencoder config, without loading it."""
    kind = ae_cfg.get("type", "Identity")
    if kind == "Identity":
        return 1, 1, False
    if kind == "AutoencoderKL":
        return 8, 1, False
    return int(ae_cfg.get("spatial_factor", 8)), int(ae_cfg.get("temporal_factor", 4)), True


def tokens_per_sample(cfg, model) -> int:
    """s = 2 F N: clean and noisy tokens of ``max_frames`` (as latent frames) at the dataset resolution."""
    res = (cfg.get("dataset") or {}).get("resolution", 32)
    H, W = (res, res) if isinstance(res, int) else tuple(res)
    sf, tf, causal = _factors(cfg.get("auto_encoder") or {})
    F = int(cfg.get("max_frames", 16))
    F = 1 + (F - 1) // tf if causal else F // tf
    p = int(model.patch_size)
    N = (H // sf // p) * (W // sf // p) + (2 if type(model).__name__ == "VideoGPT" else 0)  # + frame markers
    return 2 * F * N


def _shape(model) -> tuple[int, int, int]:
    hidden = int(model.hidden)
    cfg = getattr(model, "config", {})
    return hidden, int(cfg.get("ffn", 4 * hidden)), int(cfg.get("depth", 1))


def state_rows(cfg, model, parallel: str, world: int, precision: str,
               use_lora: bool = True) -> tuple[dict[str, float], int | None]:
    """(rows of weights, gradients, AdamW moments, EMA, ddp buckets and the fsdp working set; parameters
    trained under the config's ``lora``, None without it or with ``use_lora`` False)."""
    from tools import lora
    from tools.backends.parallel import block_modules

    P = sum(p.numel() for p in model.parameters())
    shard = world if parallel == "fsdp" else 1
    c = 2 if precision in ("bf16", "fp16") else 4
    settings = lora.check_lora(cfg.get("lora"), cfg.get("trainable")) if use_lora else None
    if settings is not None:
        A = lora.count_adapter_params(model, settings, cfg.get("trainable") or [])  # trained parameters
        dtype = "bf16" if c == 2 else "fp32"
        rows = {f"frozen weights ({dtype})": c * P / shard, "LoRA weights (fp32)": 4 * A / shard,
                "gradients (fp32)": 4 * A / shard, "AdamW moments (fp32)": 8 * A / shard}
    else:
        A = P
        rows = {"weights (fp32)": 4 * P / shard, "gradients (fp32)": 4 * P / shard,
                "AdamW moments (fp32)": 8 * P / shard}
    if parallel == "ddp" and world > 1:
        rows["ddp buckets"] = 4 * A
    if cfg.get("use_ema", True):
        rows["EMA (fp32)"] = 4 * A / shard
    if parallel == "fsdp":
        Pb = max((sum(p.numel() for p in b.parameters()) for b in block_modules(model)), default=0)
        rows["fsdp gathered blocks"] = Pb * (2 * c + (4 if settings is None else 0))
    return rows, (A if settings is not None else None)


def plan(cfg, model, parallel: str, world: int, precision: str, use_lora: bool = True) -> Plan:
    """The per-rank plan of ``model`` (built on the meta device) trained with ``cfg`` (its ``lora``
    counted unless ``use_lora`` is False)."""
    P = sum(p.numel() for p in model.parameters())
    c = 2 if precision in ("bf16", "fp16") else 4
    rows, trained = state_rows(cfg, model, parallel, world, precision, use_lora)
    h, f, d = _shape(model)
    s, b = tokens_per_sample(cfg, model), int(cfg.get("batch_size", 1))
    per_block = b * s * (18 * h + 6 * f) * c / 2
    ckpt = bool(getattr(model, "grad_checkpointing", False))
    rows["activations"] = d * b * s * h * 4 + per_block if ckpt else d * per_block
    return Plan(parallel, world, precision, P, rows, s, ckpt, trained)


def meta_model_cfg(cfg) -> dict[str, Any]:
    """The model config the engine would build: ``cond_dim`` from the embedder (built: a class table or a
    text encoder, read from disk), ``in_channels`` from the autoencoder's latent channels. An autoencoder
    or embedder whose weights are not on this machine (the plan is made before renting GPUs) is skipped
    and the model's own settings count."""
    from tools.stack import model_config
    from utils.registry import AUTO_ENCODER, EMBEDDER

    built = {}
    for key, registry in (("embedder", EMBEDDER), ("auto_encoder", AUTO_ENCODER)):
        sub = cfg.get(key) or {}
        if not sub:
            continue
        try:
            built[key] = registry.build(sub, key)
        except Exception as e:  # weights elsewhere: the configured model settings count
            logger.info("memory plan: %s %s not built (%s); using the model's configured settings", key,
                        sub.get("type"), str(e).splitlines()[0][:160])
    return model_config(cfg, built.get("auto_encoder"), built.get("embedder"))


def build_meta_model(cfg):
    """The config's model with every parameter on the meta device (see :func:`meta_model_cfg`)."""
    from tools.backends.parallel import meta_parameters
    from utils.registry import MODEL

    model_cfg = meta_model_cfg(cfg)
    with meta_parameters(), torch.device("meta"):
        return MODEL.build(model_cfg, "model")


def dry_run_plan(cfg, world: int, parallel: str | None = None) -> str:
    """The plan text for ``train_net.py --dry-run [--world-size N]`` (parallel from ``backend.parallel``;
    auto -> ddp for N > 1). Precision ``auto`` counts as bf16 (what GPUs / NPUs pick)."""
    from tools.backends.parallel import resolve_parallel

    backend = cfg.get("backend") or {}
    mode = resolve_parallel(parallel or backend.get("parallel", "auto"), world)
    precision = backend.get("precision", "auto")
    precision = "bf16" if precision == "auto" else precision
    if cfg.get("TASK_TYPE") == "train_video":
        return video_dry_run(cfg, mode, world, precision)
    model = build_meta_model(cfg)
    text = plan(cfg, model, mode, world, precision).format()
    if cfg.get("lora"):
        text += "\n" + fit_table(cfg, model, mode, world, precision)
    return text


#: device memory sizes (GB) of the fit tables
FIT_GB = (24, 40, 80)


def _fits(total: float, sizes=FIT_GB) -> list[str]:
    """yes / no per device size: ``total`` bytes within 92 % of it (the rest: allocator, autoencoder, data)."""
    return ["yes" if total <= 0.92 * g * 1e9 else "no" for g in sizes]


def fit_table(cfg, model, parallel: str, world: int, precision: str, sizes=FIT_GB) -> str:
    """Per-rank totals with and without the config's ``lora``, activation checkpointing off and on,
    and whether each fits in 92 % of a ``sizes`` GB device."""
    keep = model.grad_checkpointing
    lines = [f"# fits per rank ({parallel}, world {world}, {precision}; 92% of the device usable):",
             "#   training        checkpointing   total GiB  " + "  ".join(f"{g:>5d} GB" for g in sizes)]
    for use_lora in (False, True):
        for ckpt in (False, True):
            model.grad_checkpointing = ckpt
            total = plan(cfg, model, parallel, world, precision, use_lora).total
            fits = "  ".join(f"{f:>8s}" for f in _fits(total, sizes))
            lines.append(f"#   {'LoRA' if use_lora else 'full':<15s} {'on' if ckpt else 'off':<15s} "
                         f"{total / GiB:9.1f}  {fits}")
    model.grad_checkpointing = keep
    return "\n".join(lines)


# ---------------------------------------------------------------------------- whole-video models (train_video)
#: sustained throughput assumed for the time plan: 40 % of the dense bf16 peak (TFLOP/s)
DEVICES = {"A100": 312.0, "H100": 989.0}
MFU = 0.4
SAMPLE_STEPS = 50  # DDIM steps of the inference time estimate (t2v_infer.yaml's ddim_timesteps)


def build_meta_video_model(cfg):
    """The whole-video model on the meta device, shaped by the pretrain folder's config when it is on this
    machine, else by the YAML's model block (its defaults: the released model)."""
    from tools.pretrain.model_config import merged_model_config, model_folder
    from utils.registry import MODEL

    model_cfg = dict(cfg.model)
    try:
        model_cfg = merged_model_config(cfg.model, cfg.get("pretrain"), model_folder(cfg))
    except Exception as e:  # weights elsewhere: the configured model settings count
        logger.info("memory plan: the pretrain folder's config was not read (%s); using the model's settings",
                    str(e).splitlines()[0][:160])
    with torch.device("meta"):
        return MODEL.build(model_cfg, "model")


def video_activations(model, batch: int, frames: int, height: int, width: int, c: int) -> tuple[float, float, float]:
    """(bytes kept for backward, bytes of the largest activation, forward FLOPs) of one training forward on
    the meta device. Kept: the outputs of every leaf module in the compute dtype (``c`` bytes): norm, conv, linear
    and activation outputs (attention runs in blockwise kernels, no scores are stored). With the model's
    ``grad_checkpointing``, each of its ``checkpoint_units()`` keeps only its input, and one unit at a time is
    recomputed: total - inside(all units) + inputs(all units) + inside(the largest unit)."""
    from torch.utils.flop_counter import FlopCounterMode

    from utils.flops import missing_formulas

    kept, largest, inside, inputs, active = [0], [0], {}, {}, []

    def leaf_hook(_m, _inp, out):
        if isinstance(out, torch.Tensor):
            kept[0] += out.numel()
            largest[0] = max(largest[0], out.numel())
            if active:
                inside[active[-1]] = inside.get(active[-1], 0) + out.numel()

    def unit_enter(m, args, kwargs):
        x = kwargs.get("hidden_states", args[0] if args else None)
        inputs[id(m)] = x.numel() if isinstance(x, torch.Tensor) else 0
        active.append(id(m))

    def unit_exit(_m, _args, _out):
        active.pop()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(leaf_hook) for m in leaves]
    units = model.checkpoint_units() if getattr(model, "grad_checkpointing", False) else []
    for u in units:
        handles += [u.register_forward_pre_hook(unit_enter, with_kwargs=True), u.register_forward_hook(unit_exit)]
    channels = int(getattr(model, "in_channels", 4))
    args = [torch.zeros(batch, channels, frames, height, width, device="meta"),
            torch.zeros(batch, dtype=torch.long, device="meta")]
    kwargs = {}
    if getattr(model, "context_dim", None):
        kwargs["y"] = torch.zeros(batch, 77, int(model.context_dim), device="meta")
    counter = FlopCounterMode(display=False, custom_mapping=missing_formulas())  # utils/flops.py: one count
    try:
        with counter, torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    total = kept[0]
    if units:
        total = total - sum(inside.values()) + sum(inputs.values()) + max(inside.values(), default=0)
    return total * c, largest[0] * c, float(counter.get_total_flops())


def video_plan(cfg, model, parallel: str, world: int, precision: str) -> tuple[Plan, float]:
    """(per-rank memory plan, forward FLOPs per micro-batch) of training ``model`` with ``cfg``
    (``max_frames`` at the dataset resolution through the autoencoder's factors)."""
    res = (cfg.get("dataset") or {}).get("resolution", 256)
    H, W = (res, res) if isinstance(res, int) else tuple(res)
    sf, tf, causal = _factors(cfg.get("auto_encoder") or {})
    F = int(cfg.get("max_frames", 16))
    F = 1 + (F - 1) // tf if causal else F // tf
    P = sum(p.numel() for p in model.parameters())
    c = 2 if precision in ("bf16", "fp16") else 4
    rows, trained = state_rows(cfg, model, parallel, world, precision)
    b = int(cfg.get("batch_size", 1))
    kept, _, flops = video_activations(model, b, F, H // sf, W // sf, c)
    rows["activations"] = kept
    ckpt = bool(getattr(model, "grad_checkpointing", False))
    return Plan(parallel, world, precision, P, rows, F * (H // sf) * (W // sf), ckpt, trained), flops


def video_dry_run(cfg, parallel: str, world: int, precision: str) -> str:
    """The plan of ``train_video`` plus the inference memory of a guided sample and the time per step."""
    model = build_meta_video_model(cfg)
    p, flops = video_plan(cfg, model, parallel, world, precision)
    lines = [p.format().replace("tokens per sample", "latent positions per sample")]
    states = p.total - p.rows["activations"]
    lines.append("#   fits per rank (92 % usable): " + ", ".join(
        f"{gb} GB {'yes' if p.total <= 0.92 * gb * 1e9 else 'no'}" for gb in (24, 40, 80))
        + f"; states alone {states / GiB:.2f} GiB")
    if cfg.get("lora"):  # the same activations, the states of a full and of a LoRA fine-tune
        for use_lora in (False, True):
            rows, _ = state_rows(cfg, model, parallel, world, precision, use_lora)
            total = sum(rows.values()) + p.rows["activations"]
            lines.append(f"#   {'LoRA' if use_lora else 'full'} fine-tune: {total / GiB:.2f} GiB per rank; fits "
                         + ", ".join(f"{gb} GB {f}" for gb, f in zip(FIT_GB, _fits(total), strict=True)))
    res = (cfg.get("dataset") or {}).get("resolution", 256)
    H, W = (res, res) if isinstance(res, int) else tuple(res)
    sf, tf, causal = _factors(cfg.get("auto_encoder") or {})
    F = int(cfg.get("max_frames", 16))
    F = 1 + (F - 1) // tf if causal else F // tf
    _, largest, fwd2 = video_activations(model, 2, F, H // sf, W // sf, 2)  # guided inference: batch 2, bf16
    infer = 2 * p.params + 4 * largest
    lines.append(f"# inference (bf16 weights, guided batch of 2, no grad): {infer / GiB:.2f} GiB "
                 f"(weights {2 * p.params / GiB:.2f} + 4 x the largest activation {largest / GiB:.2f}); fits "
                 + ", ".join(f"{gb} GB {'yes' if infer <= 0.92 * gb * 1e9 else 'no'}" for gb in (24, 40, 80)))
    step = (4 if p.checkpointing else 3) * flops * int(cfg.get("grad_accum", 1))  # + 1 forward: recomputation
    lines.append(f"# time: {flops / 1e12:.1f} TFLOP forward per micro-batch, ~{step / 1e12:.1f} TFLOP per training "
                 f"step per rank; at {MFU:.0%} of the bf16 peak: " + ", ".join(
                     f"{name} {step / (MFU * tf_ * 1e12):.2f} s/step" for name, tf_ in DEVICES.items())
                 + f"; a {SAMPLE_STEPS}-step guided sample: " + ", ".join(
                     f"{name} {SAMPLE_STEPS * fwd2 / (MFU * tf_ * 1e12):.1f} s" for name, tf_ in DEVICES.items()))
    return "\n".join(lines)


def readme_table(cfg, setups: list[tuple[int, float]], precision: str = "bf16") -> str:
    """Markdown rows (GPUs x GB, parallel, checkpointing, states / activations / total GiB per rank, fits in
    92 % of the device memory?) for ``setups`` = [(world, GB per device)]."""
    model = build_meta_model(cfg)
    out = []
    for world, cap in setups:
        for mode in ("ddp", "fsdp"):
            for ckpt in (True, False):
                model.grad_checkpointing = ckpt
                p = plan(cfg, model, mode, world, precision)
                r = p.rows
                states = p.total - r["activations"]
                out.append(f"| {world}x{cap:g} GB | {mode} | {'on' if ckpt else 'off'} | {states / GiB:.1f} | "
                           f"{r['activations'] / GiB:.1f} | {p.total / GiB:.1f} | "
                           f"{'yes' if p.total <= 0.92 * cap * 1e9 else 'no'} |")
    return "\n".join(out)
