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
from typing import Any, Dict, List, Optional, Tuple

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
    rows: Dict[str, float]
    tokens: int
    checkpointing: bool
    trained: Optional[int] = None  # LoRA: parameters trained (adapters + trainable); None: all

    @property
    def total(self) -> float:
        return sum(self.rows.values())

    def format(self, capacity_gib: Optional[float] = None) -> str:
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


def _factors(ae_cfg: Dict[str, Any]) -> Tuple[int, int, bool]:
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


def _shape(model) -> Tuple[int, int, int]:
    hidden = int(getattr(model, "hidden"))
    cfg = getattr(model, "config", {})
    return hidden, int(cfg.get("ffn", 4 * hidden)), int(cfg.get("depth", 1))


def plan(cfg, model, parallel: str, world: int, precision: str, use_lora: bool = True) -> Plan:
    """The per-rank plan of ``model`` (built on the meta device) trained with ``cfg`` (its ``lora``
    counted unless ``use_lora`` is False)."""
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
    h, f, d = _shape(model)
    s, b = tokens_per_sample(cfg, model), int(cfg.get("batch_size", 1))
    per_block = b * s * (18 * h + 6 * f) * c / 2
    ckpt = bool(getattr(model, "grad_checkpointing", False))
    rows["activations"] = d * b * s * h * 4 + per_block if ckpt else d * per_block
    return Plan(parallel, world, precision, P, rows, s, ckpt, A if settings is not None else None)


def meta_model_cfg(cfg) -> Dict[str, Any]:
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
        except Exception as e:  # noqa: BLE001 - weights elsewhere: the configured model settings count
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


def dry_run_plan(cfg, world: int, parallel: Optional[str] = None) -> str:
    """The plan text for ``train_net.py --dry-run [--world-size N]`` (parallel from ``backend.parallel``;
    auto -> ddp for N > 1). Precision ``auto`` counts as bf16 (what GPUs / NPUs pick)."""
    from tools.backends.parallel import resolve_parallel

    backend = cfg.get("backend") or {}
    mode = resolve_parallel(parallel or backend.get("parallel", "auto"), world)
    precision = backend.get("precision", "auto")
    precision = "bf16" if precision == "auto" else precision
    model = build_meta_model(cfg)
    text = plan(cfg, model, mode, world, precision).format()
    if cfg.get("lora"):
        text += "\n" + fit_table(cfg, model, mode, world, precision)
    return text


#: device memory sizes (GB) of the fit table
FIT_GB = (24, 40, 80)


def fit_table(cfg, model, parallel: str, world: int, precision: str, sizes=FIT_GB) -> str:
    """Per-rank totals with and without the config's ``lora``, activation checkpointing off and on,
    and whether each fits in 92 % of a ``sizes`` GB device (the rest: allocator, autoencoder, data)."""
    keep = model.grad_checkpointing
    lines = [f"# fits per rank ({parallel}, world {world}, {precision}; 92% of the device usable):",
             "#   training        checkpointing   total GiB  " + "  ".join(f"{g:>5d} GB" for g in sizes)]
    for use_lora in (False, True):
        for ckpt in (False, True):
            model.grad_checkpointing = ckpt
            total = plan(cfg, model, parallel, world, precision, use_lora).total
            fits = "  ".join(f"{'yes' if total <= 0.92 * g * 1e9 else 'no':>8s}" for g in sizes)
            lines.append(f"#   {'LoRA' if use_lora else 'full':<15s} {'on' if ckpt else 'off':<15s} "
                         f"{total / GiB:9.1f}  {fits}")
    model.grad_checkpointing = keep
    return "\n".join(lines)


def readme_table(cfg, setups: List[Tuple[int, float]], precision: str = "bf16") -> str:
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
