"""Speed / memory benchmark of the next-clip transformer, its KV cache and block-causal attention.

    python -m benchmarks.bench_next_clip [--quick] [--threads N] [--json PATH]   (from the repository root)

Reports (CPU unless a GPU is visible): matmul peak (fp32, bf16 autocast); for the reference
shape (hidden 256, 4 layers, 4 heads, FFN 1024, 4 latent channels, 16x16 latents, patch 2,
clips of 4 frames, batch 1) at 16 and 32 frames the median time of a training step (fp32 /
bf16 autocast) and of one guided denoising step of the last clip with and without KV cache;
and block-causal attention at a long sequence (flex / blocks / dense mask / plain causal SDPA):
time and peak memory (each variant in a subprocess; CPU peak = max RSS growth); for the
demo model (configs/_base_/tiny.yaml) training tokens/s and model FLOP utilisation against the
measured bf16 peak; and a 16-clip rollout: seconds per generated clip with and without KV cache.

``--json PATH`` also writes the figures machine-readably: ``matmul_gflops {fp32, bf16}``;
``ref_shape {"16": {...}, "32": {...}}`` with ``tokens``, ``params``, ``train_ms {fp32, bf16}``,
``train_gflop`` (one training step, forward + backward, counted by torch's FlopCounterMode with
the CPU flash-attention kernels added, which it does not count by itself),
``denoise_ms {kv, nocache}``, ``denoise_gflop`` (one guided KV-cached denoise step), and the
step times as fractions of the measured peak (``train_peak_frac``, ``denoise_vs_flop_limit``);
``demo {mfu, tokens_per_s}``; ``rollout {nocache_s_per_clip, kv_s_per_clip, kv_speedup}``; ``attention``
per variant with its one-off first-call (compile) time. bf16 is timed only on CPUs with native
bf16 kernels (``tools.backends.cpu.native_bf16``): emulated bf16 is ~600x slower than fp32 and
its figures would say nothing; those entries are null with ``bf16_note``.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tools.models.block_causal import BlockCausalLayout, block_causal_attention
from tools.models.next_clip_transformer import NextClipTransformer

ROOT = Path(__file__).resolve().parents[1]


def median_time(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def matmul_peak(n: int, reps: int, bf16_ok: bool = True) -> dict:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {"bf16": None}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        if bf16 and not bf16_ok:
            continue
        with autocast(bf16):
            t = median_time(lambda: a @ b, reps)
        out[name] = 2 * n ** 3 / t / 1e9
    return out


def _cpu_attention_flops() -> dict:
    """FlopCounterMode formulas for the CPU flash-attention kernels, which torch does not count
    (without them every attention FLOP of a CPU run is missing): the formulas of the CUDA kernels."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}

    def fwd(query, key, value, *args, **kwargs):
        return fc.sdpa_flop_count(query, key, value)  # shapes (FlopCounterMode passes shapes)

    def bwd(grad_out, query, key, value, *args, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    return {aten._scaled_dot_product_flash_attention_for_cpu: fwd,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd}


def gflop_of(fn) -> float:
    """GFLOPs of one call of ``fn`` (matmuls / convolutions / attention, CPU flash attention
    included), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def model_bench(frames: int, reps: int, bf16: bool = True) -> dict:
    torch.manual_seed(0)
    model = NextClipTransformer(in_channels=4, patch_size=2, hidden=256, depth=4, heads=4, ffn=1024)
    with torch.no_grad():  # non-zero gates / output layer, as after some training
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    G, H = 4, 16
    K = frames // G
    x1, eps = torch.randn(1, 4, frames, H, H), torch.randn(1, 4, frames, H, H)
    clip_lens = torch.full((1, K), G)
    t = torch.rand(1, K)
    tf = t.repeat_interleave(G, 1)[:, None, :, None, None]
    xn = tf * x1 + (1 - tf) * eps
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    res = {"params": sum(p.numel() for p in model.parameters()),
           "tokens": 64 * (2 * frames - G)}

    def train_step(bf16):
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast(bf16):
            loss = F.mse_loss(model(xn, x1, clip_lens, t).float(), x1)
        loss.backward()
        opt.step()

    res["train_gflop"] = gflop_of(lambda: train_step(False))
    res["train_fp32_s"] = median_time(lambda: train_step(False), reps)
    res["train_bf16_s"] = median_time(lambda: train_step(True), reps) if bf16 else None
    model.eval()
    hist, z = x1[:, :, :-G], eps[:, :, -G:]
    Fh = frames - G
    tt = torch.full((1,), 0.5)
    hist_lens = [G] * (K - 1)

    @torch.no_grad()
    def step_nocache():  # full forward on [history, clip] + the no-history branch (CFG 1.5)
        t_all = torch.cat([torch.ones(1, K - 1), tt[:, None]], 1)
        full = model(torch.cat([hist, z], 2), torch.cat([hist, torch.zeros_like(z)], 2), clip_lens, t_all)[:, :, Fh:]
        nohist = model(z, torch.zeros_like(z), torch.full((1, 1), G), tt[:, None])
        return full + 0.5 * (full - nohist)

    with torch.no_grad():
        cache = model.encode_history(hist, 0, clip_lens=hist_lens)

    @torch.no_grad()
    def step_cache():
        full = model.denoise(z, tt, cache=cache, frame_offset=Fh)
        return full + 0.5 * (full - model.denoise(z, tt))

    res["denoise_gflop"] = gflop_of(step_cache)
    res["denoise_step_nocache_s"] = median_time(step_nocache, reps)
    res["denoise_step_kvcache_s"] = median_time(step_cache, reps)
    with torch.no_grad():
        res["encode_history_s"] = median_time(lambda: model.encode_history(hist, 0, clip_lens=hist_lens), reps)
    return res


def demo_model():
    from tools import load_components
    from utils.config import load_config
    from utils.registry import DIFFUSION, MODEL

    load_components()
    cfg = load_config(ROOT / "configs/tiny/train.yaml")
    torch.manual_seed(0)
    model = MODEL.build(cfg.model, "model")
    with torch.no_grad():  # non-zero gates / output layer, as after some training
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return cfg, model, DIFFUSION.build(cfg.diffusion, "diffusion")


def demo_train_bench(reps: int, peak_gflops: float, bf16: bool = True) -> dict:
    """Tokens/s of a training step (bf16 autocast, or fp32) of the demo model at its training batch, and
    MFU against ``peak_gflops`` (the matmul peak of the same precision)."""
    from tools.train.clip_sampling import sample_clip_lens

    cfg, model, diffusion = demo_model()
    B, Fr, R = cfg.batch_size, cfg.max_frames, cfg.dataset.resolution
    x1 = torch.rand(B, 3, Fr, R, R) * 2 - 1
    clip_lens = sample_clip_lens(Fr, B, cfg.clip_sampling.mode, cfg.clip_sampling.clip_len)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    N = (R // model.patch_size) ** 2
    tokens = B * N * (2 * Fr - int(clip_lens[0, -1]))  # clean copies of all but the last clip + noisy
    params = sum(p.numel() for p in model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(bf16):
            loss = diffusion.training_losses(model, x1, clip_lens)["loss"]
        loss.backward()
        opt.step()

    t = median_time(step, reps)
    # model FLOPs: 6 * params per token (matmuls, fwd + bwd) + attention 12 * L_keys * hidden per token
    # layer, with the mean number of keys a token sees under the block-causal mask
    G, K = int(clip_lens[0, 0]), clip_lens.shape[1]
    keys_noisy = sum((k * G + G) * N for k in range(K)) / K
    keys_clean = sum((k + 1) * G * N for k in range(K - 1)) / max(1, K - 1)
    mean_keys = (keys_noisy * K + keys_clean * (K - 1)) / (2 * K - 1)
    flops = tokens * (6 * params + 12 * len(model.blocks) * model.hidden * mean_keys)
    return {"params": params, "batch": B, "tokens": tokens, "step_s": t, "tokens_per_s": tokens / t,
            "tflops": flops / t / 1e12, "mfu": flops / t / 1e9 / peak_gflops, "precision": "bf16" if bf16 else "fp32"}


def demo_rollout_bench(num_clips: int, steps: int, bf16: bool = True) -> dict:
    """Seconds per generated clip over a long rollout (window 16) with and without KV cache."""
    from tools.inferences.rollout import RolloutSettings, rollout

    cfg, model, diffusion = demo_model()
    model.eval()
    R = cfg.dataset.resolution
    ctx = torch.rand(1, 3, 4, R, R) * 2 - 1
    out = {}
    for mode in ("off", "recompute", "rolling"):
        t0 = time.perf_counter()
        with torch.no_grad(), autocast(bf16):
            rollout(model, diffusion, ctx, RolloutSettings(num_clips=num_clips, clip_len=4, window=16,
                                                           num_sample_steps=steps, history_guide_scale=1.5,
                                                           kv_cache=mode))
        out[mode] = (time.perf_counter() - t0) / num_clips
    return out


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss_kb() -> int:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS in kB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmRSS")
    except OSError:  # not Linux: fall back to the lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_kb() -> int:
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def attention_worker(variant: str, frames: int, reps: int) -> dict:
    """One attention variant at a long sequence; run in its own process for a clean peak RSS."""
    torch.manual_seed(0)
    N, G, Hh, D = 64, 4, 4, 64
    clip_lens = torch.full((1, frames // G), G)
    lay = BlockCausalLayout(clip_lens, N)
    q, k, v = (torch.randn(1, Hh, lay.L, D) for _ in range(3))
    base = _reset_peak_rss_kb()
    if variant == "causal_sdpa":
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        impl = {"flex": "flex", "blocks": "blocks", "dense_mask": "math"}[variant]

        def fn():
            lay._meta = None  # rebuild per call (once per forward in the model)
            return block_causal_attention(q, k, v, lay, impl)
    with torch.no_grad():
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        peak_mb = (_peak_rss_kb() - base) / 1024
        t = median_time(fn, reps, warmup=0)
    return {"variant": variant, "tokens": lay.L, "time_s": t, "first_call_s": first, "peak_rss_growth_mb": peak_mb}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and few repetitions")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="also write the figures as JSON (schema in the docstring)")
    ap.add_argument("--attention-worker", nargs=2, metavar=("VARIANT", "FRAMES"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 3 if args.quick else 10
    if args.attention_worker:
        print(json.dumps(attention_worker(args.attention_worker[0], int(args.attention_worker[1]), reps)))
        return 0
    from tools.backends.cpu import native_bf16

    bf16 = native_bf16()  # the benchmark runs on the CPU (autocast "cpu")
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "quick": bool(args.quick),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not bf16:
        out["bf16_note"] = ("no native bf16 kernels on this CPU (emulated bf16 matmuls are ~600x slower than fp32): "
                            "bf16 entries are null; MFU is against the fp32 peak")
        print("note: " + out["bf16_note"])
    peak = matmul_peak(512 if args.quick else 2048, reps, bf16)
    out["matmul_gflops"] = peak
    print(f"matmul peak: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 autocast "
          + (f"{peak['bf16']:.1f} GFLOP/s" if peak["bf16"] else "not measured"))
    top = peak["bf16"] or peak["fp32"]
    out["ref_shape"] = {}
    for frames in (16, 32):
        r = model_bench(frames, reps, bf16)
        train_s = r["train_bf16_s"] or r["train_fp32_s"]
        out["ref_shape"][str(frames)] = {
            "tokens": r["tokens"], "params": r["params"],
            "train_ms": {"fp32": r["train_fp32_s"] * 1e3, "bf16": r["train_bf16_s"] and r["train_bf16_s"] * 1e3},
            "train_gflop": r["train_gflop"], "train_peak_frac": r["train_gflop"] / train_s / top,
            "denoise_ms": {"kv": r["denoise_step_kvcache_s"] * 1e3, "nocache": r["denoise_step_nocache_s"] * 1e3},
            "denoise_gflop": r["denoise_gflop"],
            # how many times its FLOP-limit time (GFLOP / peak) the KV-cached guided step takes
            "denoise_vs_flop_limit": r["denoise_step_kvcache_s"] / (r["denoise_gflop"] / top),
            "encode_history_ms": r["encode_history_s"] * 1e3}
        bf = f"{r['train_bf16_s'] * 1e3:.0f} ms" if r["train_bf16_s"] else "n/a"
        print(f"[{frames} frames, {r['tokens']} tokens, {r['params'] / 1e6:.2f}M params] "
              f"train step ({r['train_gflop']:.1f} GFLOP) fp32 {r['train_fp32_s'] * 1e3:.0f} ms, bf16 {bf} | "
              f"guided denoise step (last clip, {r['denoise_gflop']:.2f} GFLOP): no cache "
              f"{r['denoise_step_nocache_s'] * 1e3:.1f} ms, KV cache {r['denoise_step_kvcache_s'] * 1e3:.1f} ms "
              f"(+ encode_history {r['encode_history_s'] * 1e3:.1f} ms once per clip)")
    d = demo_train_bench(reps, top, bf16)
    out["demo"] = {"mfu": d["mfu"], "tokens_per_s": d["tokens_per_s"], "precision": d["precision"],
                   "step_s": d["step_s"]}
    print(f"demo model ({d['params'] / 1e6:.2f}M params, batch {d['batch']}, {d['tokens']} tokens/step): "
          f"{d['precision']} train step {d['step_s']:.2f} s = {d['tokens_per_s']:.0f} tokens/s, "
          f"{d['tflops'] * 1e3:.0f} GFLOP/s = MFU {d['mfu'] * 100:.1f}% of the {d['precision']} matmul peak")
    nclips, steps = (4, 5) if args.quick else (16, 10)
    r = demo_rollout_bench(nclips, steps, bf16)
    out["rollout"] = {"num_clips": nclips, "steps": steps, "nocache_s_per_clip": r["off"],
                      "kv_s_per_clip": r["recompute"], "kv_rolling_s_per_clip": r["rolling"],
                      "kv_speedup": r["off"] / r["recompute"]}
    print(f"demo rollout ({nclips} clips of 4, window 16, {steps} steps, history CFG 1.5): s per clip: "
          f"no cache {r['off']:.2f}, KV cache (recompute) {r['recompute']:.2f}, KV cache (rolling) {r['rolling']:.2f}")
    frames = 32 if args.quick else 128  # 128 frames -> 16128 tokens
    out["attention"] = {}
    for variant in ("blocks", "flex", "dense_mask", "causal_sdpa"):
        cmd = [sys.executable, "-m", "benchmarks.bench_next_clip", "--attention-worker", variant, str(frames)]
        if args.quick:
            cmd.append("--quick")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode:
            print(f"attention {variant}: failed: {p.stderr.strip().splitlines()[-1:]}")
            out["attention"][variant] = None
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        out["attention"][variant] = {"tokens": r["tokens"], "ms": r["time_s"] * 1e3, "first_call_s": r["first_call_s"],
                                     "peak_rss_growth_mb": r["peak_rss_growth_mb"]}
        print(f"attention {variant:11s} {r['tokens']} tokens: {r['time_s'] * 1e3:8.1f} ms "
              f"(first call {r['first_call_s']:.2f} s), peak RSS growth {r['peak_rss_growth_mb']:.0f} MB")
    if args.json:
        from utils.io import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
