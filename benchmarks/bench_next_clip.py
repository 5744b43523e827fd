"""Speed benchmark of the next-clip transformer: training, the KV-cached guided denoise step, rollouts,
compile times and block-causal attention, with MFU by one FLOP count.

    python -m benchmarks.bench_next_clip [--device cpu|cuda|auto] [--quick] [--threads N] [--rounds 3]
                                         [--profile] [--json PATH]          (from the repository root)

Every figure is the median of ``--rounds`` interleaved rounds (round r times every row once, after measuring
the matmul peak of that round), so slow phases of a shared machine hit every row alike; the load average
(``os.getloadavg``) is recorded before and after each round. Shares of the peak are per round (a row's
FLOPs / its time / that round's peak), then the median. **Peak** = the median throughput of a 2048 x 2048
matmul with both operands already in the compute dtype (``Backend.matmul_peak_gflops``: bf16 x bf16 where
the device has native bf16, else fp32). **FLOPs** = :func:`utils.flops.count_flops` (torch's FlopCounterMode
plus the CPU flash-attention kernels it misses), counted on the eager model, for every row.

Rows (the reference shape: hidden 256, 4 layers, 4 heads, FFN 1024, 4 latent channels, 16x16 latents,
patch 2, clips of 4 frames, batch 1, at 16 and 32 frames):

- ``train``: one training step (forward + backward + AdamW) in the compute dtype by autocast, eager and with
  the blocks compiled (``backend.compile: blocks``);
- ``denoise``: one guided KV-cached denoise step of the last clip (history guidance 1.5: the cached branch
  and the no-history branch batched) under autocast, with the weights cast once to bf16 (no autocast,
  ``Backend.cast_for_sampling``), and cast + compiled; ``denoise_vs_flop_limit`` = time / (FLOPs / peak);
  and the same step without a KV cache (the training forward on [history, clip]);
- ``demo``: a training step of the demo model (configs/tiny/train.yaml) at its batch: tokens/s and MFU;
- ``rollout``: a 16-clip demo rollout (window 16, 10 steps, history guidance 1.5), seconds per clip
  without a cache and with the KV cache (recompute), cast weights, eager and compiled;
- ``compile``: the first call (compile) of the compiled training step and denoise step of the reference
  shape at 16 frames in a fresh process, with an empty inductor cache (cold) and again with the cache the
  first process filled (warm);
- ``attention``: block-causal attention at a long sequence per kernel (flex / blocks / dense mask / causal
  SDPA), time and peak memory, each in its own process (CPU peak = max RSS growth).

``--json PATH`` writes every row (schema: docs/guide/backends.md#benchmarks). ``--profile`` adds the
torch.profiler table of the top ops of the compiled training step and of the cast + compiled denoise step.
``--device cuda`` runs the same rows on a GPU (``backend.type: cuda``, SDPA attention: flash kernels in
bf16/fp16); the device is picked by :func:`pick_device`.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tools.models.block_causal import BlockCausalLayout, block_causal_attention
from tools.models.next_clip_transformer import NextClipTransformer
from utils.flops import count_flops

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ("cpu", "cuda", "auto")


# ---------------------------------------------------------------------------- device and timing
def pick_device(device: str) -> str:
    """'cpu' | 'cuda' | 'auto' (CUDA if a GPU is visible, else CPU) -> the backend type to benchmark;
    ValueError naming the fix when 'cuda' is asked for without a visible GPU."""
    from tools.backends.cuda import cuda_present

    if device not in DEVICES:
        raise ValueError(f"--device {device!r} is not a benchmark device; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if cuda_present() else "cpu"
    if device == "cuda" and not cuda_present():
        raise ValueError("--device cuda: no CUDA device is visible (torch reports no available GPU, or no "
                         "device); run on a GPU machine with a CUDA build of torch, or use --device cpu")
    return device


def make_backend(device: str, threads: int = 0):
    """The backend the rows run on: its device, compute dtype (bf16 where native, else fp32 on CPU; bf16 or
    fp16 on a GPU), SDPA attention (blocks of dense SDPA calls: the CPU flash kernel, or on CUDA the flash
    kernel in bf16 / fp16) and, for the compiled rows, ``compile: blocks``."""
    from tools import load_components
    from utils.registry import BACKEND

    load_components()
    return BACKEND.build({"type": pick_device(device), "precision": "auto", "attention": "sdpa",
                          "threads": threads or None, "compile": "off"}, "backend")


def timer(backend, fn: Callable[[], object], reps: int) -> Callable[[], float]:
    """A row: the median seconds of ``reps`` calls of ``fn`` (device synchronised around each)."""
    def run() -> float:
        ts = []
        for _ in range(reps):
            backend.synchronize()
            t0 = time.perf_counter()
            fn()
            backend.synchronize()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)
    return run


def compile_blocks(backend, model) -> None:
    """``backend.compile: blocks`` applied to ``model`` (the rows compare eager and compiled on one backend)."""
    from tools.backends.compile import compile_blocks as compile_model_blocks

    compile_model_blocks(model, backend.compile_cache)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------- the reference shape
def ref_model(device) -> NextClipTransformer:
    torch.manual_seed(0)
    model = NextClipTransformer(in_channels=4, patch_size=2, hidden=256, depth=4, heads=4, ffn=1024)
    with torch.no_grad():  # non-zero gates / output layer, as after some training
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.to(device)


def train_step_fn(model, opt, batch: tuple, autocast) -> Callable[[], None]:
    xn, x1, clip_lens, t = batch

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.mse_loss(model(xn, x1, clip_lens, t).float(), x1)
        loss.backward()
        opt.step()
    return step


def ref_rows(backend, frames: int, reps: int) -> dict:
    """Rows of the reference shape at ``frames`` frames: {name: (timer, flops)} and the shape's facts."""
    dev = backend.device
    G, H, K = 4, 16, frames // 4
    g = torch.Generator().manual_seed(0)
    x1, eps = (torch.randn(1, 4, frames, H, H, generator=g).to(dev) for _ in range(2))
    clip_lens = torch.full((1, K), G)
    t = torch.rand(1, K, generator=g).to(dev)
    tf = t.repeat_interleave(G, 1)[:, None, :, None, None]
    batch = (tf * x1 + (1 - tf) * eps, x1, clip_lens.to(dev), t)
    rows, info = {}, {}
    eager, compiled = ref_model(dev), ref_model(dev)
    compile_blocks(backend, compiled)
    for name, model in (("train_eager", eager), ("train_compiled", compiled)):
        step = train_step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-4), batch, backend.autocast)
        step()  # warm-up (and the compile)
        rows[name] = (timer(backend, step, reps), None)
    info["params"] = sum(p.numel() for p in eager.parameters())
    info["tokens"] = 64 * (2 * frames - G)
    flops = count_flops(train_step_fn(eager, torch.optim.AdamW(eager.parameters(), lr=0.0), batch,
                                      backend.autocast))
    rows = {k: (v[0], flops) for k, v in rows.items()}

    # sampling: the guided KV-cached step of the last clip against the history, three ways
    hist, z = x1[:, :, :-G], eps[:, :, -G:]
    tt = torch.full((1,), 0.5, device=dev)
    models = {"autocast": eager.eval(), "cast": copy.deepcopy(eager).eval(), "cast_compiled": None}
    backend.cast_for_sampling(models["cast"])
    models["cast_compiled"] = copy.deepcopy(models["cast"])
    compile_blocks(backend, models["cast_compiled"])

    def cached_step(model):
        with torch.no_grad():
            cache = model.encode_history(hist, 0, clip_lens=[G] * (K - 1))

        @torch.no_grad()
        def step():
            full, nohist = model.denoise(z, tt, cache=cache, frame_offset=frames - G,
                                         branches=[_no_history()])
            return full + 0.5 * (full - nohist)
        return step

    for name, model in models.items():
        ctx = backend.autocast if name == "autocast" else contextlib.nullcontext
        step = cached_step(model)

        def run(step=step, ctx=ctx):
            with ctx():
                return step()
        run()
        rows[f"denoise_kv_{name}"] = (timer(backend, run, reps), None)

    @torch.no_grad()
    def nocache():  # the training forward on [history, clip] + the no-history branch
        m = models["autocast"]
        t_all = torch.cat([torch.ones(1, K - 1, device=dev), tt[:, None]], 1)
        with backend.autocast():
            full = m(torch.cat([hist, z], 2), torch.cat([hist, torch.zeros_like(z)], 2), clip_lens.to(dev),
                     t_all)[:, :, frames - G:]
            nohist = m(z, torch.zeros_like(z), torch.full((1, 1), G, device=dev), tt[:, None])
        return full + 0.5 * (full - nohist)

    nocache()
    flops_kv = count_flops(cached_step(models["autocast"]))  # the step only (the cache is built before)
    rows = {k: (v[0], flops_kv if k.startswith("denoise") else v[1]) for k, v in rows.items()}
    rows["denoise_nocache"] = (timer(backend, nocache, reps), count_flops(nocache))
    return {"rows": rows, "info": info, "models": models, "train_compiled": compiled, "batch": batch,
            "cached_step": cached_step}


def _no_history():
    from tools.models.kv_rollout import DenoiseCall

    return DenoiseCall(cache=None, frame_offset=0)


# ---------------------------------------------------------------------------- the demo model
def demo_model(device):
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
    return cfg, model.to(device), DIFFUSION.build(cfg.diffusion, "diffusion")


def demo_rows(backend, reps: int, clips: int, steps: int) -> dict:
    """The demo model's training step (eager, compiled) and a rollout without / with the KV cache."""
    from tools.inferences.rollout import RolloutSettings, rollout
    from tools.train.clip_sampling import sample_clip_lens

    dev = backend.device
    cfg, model, diffusion = demo_model(dev)
    B, Fr, R = cfg.batch_size, cfg.max_frames, cfg.dataset.resolution
    x1 = (torch.rand(B, 3, Fr, R, R, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dev)
    clip_lens = sample_clip_lens(Fr, B, cfg.clip_sampling.mode, cfg.clip_sampling.clip_len).to(dev)
    N = (R // model.patch_size) ** 2
    info = {"params": sum(p.numel() for p in model.parameters()), "batch": B,
            "tokens": B * N * (2 * Fr - int(clip_lens[0, -1]))}  # clean copies of all but the last clip + noisy

    def train_step(m, opt):
        def step():
            m.train()
            opt.zero_grad(set_to_none=True)
            with backend.autocast():
                loss = diffusion.training_losses(m, x1, clip_lens, generator=torch.Generator().manual_seed(1))["loss"]
            loss.backward()
            opt.step()
        return step

    rows = {}
    compiled = copy.deepcopy(model)
    compile_blocks(backend, compiled)
    flops = count_flops(train_step(model, torch.optim.AdamW(model.parameters(), lr=0.0)))
    for name, m in (("demo_train_eager", model), ("demo_train_compiled", compiled)):
        step = train_step(m, torch.optim.AdamW(m.parameters(), lr=1e-4))
        step()
        rows[name] = (timer(backend, step, reps), flops)

    sampler = copy.deepcopy(model).eval()
    backend.cast_for_sampling(sampler)
    sampler_c = copy.deepcopy(sampler)
    compile_blocks(backend, sampler_c)
    ctx = (torch.rand(1, 3, 4, R, R, generator=torch.Generator().manual_seed(2)) * 2 - 1).to(dev)

    def roll(m, mode, n=clips):
        def run():
            rollout(m, diffusion, ctx, RolloutSettings(num_clips=n, clip_len=4, window=16, num_sample_steps=steps,
                                                       history_guide_scale=1.5, kv_cache=mode))
        return run

    for name, m, mode in (("rollout_nocache", sampler, "off"), ("rollout_kv", sampler, "recompute"),
                          ("rollout_kv_compiled", sampler_c, "recompute")):
        roll(m, mode, 5)()  # warm-up: every history length of the window (and the compiles)
        rows[name] = (timer(backend, roll(m, mode), 1), None)
    return {"rows": rows, "info": info}


# ---------------------------------------------------------------------------- compile times (own process)
def compile_worker(device: str, threads: int) -> dict:
    """First-call times of the compiled training step and cast + compiled denoise step (16 frames), in this
    process with the inductor cache of ``TORCHINDUCTOR_CACHE_DIR``; and the steady time after."""
    backend = make_backend(device, threads)
    dev = backend.device
    out = {}
    model = ref_model(dev)
    compile_blocks(backend, model)
    G, K = 4, 4
    g = torch.Generator().manual_seed(0)
    x1, eps = (torch.randn(1, 4, 16, 16, 16, generator=g).to(dev) for _ in range(2))
    t = torch.rand(1, K, generator=g).to(dev)
    step = train_step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-4),
                         (eps, x1, torch.full((1, K), G, device=dev), t), backend.autocast)
    t0 = time.perf_counter()
    step()
    backend.synchronize()
    out["train_first_s"] = time.perf_counter() - t0
    sm = ref_model(dev).eval()
    backend.cast_for_sampling(sm)
    compile_blocks(backend, sm)
    t0 = time.perf_counter()
    with torch.no_grad():
        cache = sm.encode_history(x1[:, :, :-G], 0, clip_lens=[G] * (K - 1))
        sm.denoise(eps[:, :, -G:], torch.full((1,), 0.5, device=dev), cache=cache, branches=[_no_history()])
    backend.synchronize()
    out["denoise_first_s"] = time.perf_counter() - t0
    return out


def compile_times(device: str, threads: int, cache_dir: str | None) -> dict:
    """Cold (empty cache) and warm (the cache the cold process filled) first-call times, each in a fresh
    process. ``cache_dir`` None: a temporary directory, removed afterwards."""
    tmp = None
    if cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="nextclip_compile_")
        cache_dir = tmp.name
    res = {"cache_dir": cache_dir}
    try:
        for name in ("cold", "warm"):
            cmd = [sys.executable, "-m", "benchmarks.bench_next_clip", "--compile-worker", "--device", device]
            if threads:
                cmd += ["--threads", str(threads)]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                               env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir})
            if p.returncode:
                res[name] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
                continue
            res[name] = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        if tmp is not None:
            tmp.cleanup()
    return res


# ---------------------------------------------------------------------------- attention (own process)
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
    """One attention variant at a long sequence (CPU); run in its own process for a clean peak RSS."""
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
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return {"variant": variant, "tokens": lay.L, "time_s": statistics.median(ts), "first_call_s": first,
            "peak_rss_growth_mb": peak_mb}


def attention_rows(quick: bool, threads: int) -> dict:
    frames = 32 if quick else 128  # 128 frames -> 16128 tokens
    out = {}
    for variant in ("blocks", "flex", "dense_mask", "causal_sdpa"):
        cmd = [sys.executable, "-m", "benchmarks.bench_next_clip", "--attention-worker", variant, str(frames)]
        if quick:
            cmd.append("--quick")
        if threads:
            cmd += ["--threads", str(threads)]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode:
            out[variant] = None
            print(f"attention {variant}: failed: {p.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        out[variant] = {"tokens": r["tokens"], "ms": r["time_s"] * 1e3, "first_call_s": r["first_call_s"],
                        "peak_rss_growth_mb": r["peak_rss_growth_mb"]}
        print(f"attention {variant:11s} {r['tokens']} tokens: {r['time_s'] * 1e3:8.1f} ms "
              f"(first call {r['first_call_s']:.2f} s), peak RSS growth {r['peak_rss_growth_mb']:.0f} MB")
    return out


# ---------------------------------------------------------------------------- profile
def profile_table(backend, fn: Callable[[], object], rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if backend.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(3):
            fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# ---------------------------------------------------------------------------- main
def run_rounds(backend, rows: dict[str, tuple[Callable[[], float], int | None]], rounds: int) -> dict:
    """Every row once per round, after that round's peak; -> per row: median ms, per-round shares."""
    dtype = backend.autocast_dtype or torch.float32
    times: dict[str, list[float]] = {k: [] for k in rows}
    peaks, loads = [], []
    for r in range(rounds):
        before = load()
        peaks.append(backend.matmul_peak_gflops(dtype))
        for name, (fn, _) in rows.items():
            times[name].append(fn())
        loads.append({"before": before, "after": load()})
        print(f"round {r + 1}/{rounds}: peak {peaks[-1]:.0f} GFLOP/s, load {before} -> {loads[-1]['after']}")
    out = {"peak_gflops": {"median": statistics.median(peaks), "rounds": peaks,
                           "definition": f"2048x2048 matmul, both operands {str(dtype).replace('torch.', '')}, "
                                         f"median of 5, measured at the start of each round"},
           "load_avg": loads, "rows": {}}
    for name, (_, flops) in rows.items():
        ts = times[name]
        row = {"ms": statistics.median(ts) * 1e3, "ms_rounds": [t * 1e3 for t in ts]}
        if flops:
            shares = [flops / t / 1e9 / p for t, p in zip(ts, peaks)]
            row.update(gflop=flops / 1e9, peak_share=statistics.median(shares), peak_share_rounds=shares,
                       flop_limit_multiple=statistics.median([1 / s for s in shares]))
        out["rows"][name] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=DEVICES, help="cpu | cuda | auto (CUDA if visible)")
    ap.add_argument("--quick", action="store_true", help="one round, few repetitions, short rollouts")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are their medians")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--profile", action="store_true", help="add the top-op tables of the compiled steps")
    ap.add_argument("--no-attention", action="store_true", help="skip the long-sequence attention rows")
    ap.add_argument("--compile-cache", default=None, metavar="DIR",
                    help="inductor cache of the cold / warm compile rows (default: a fresh temporary one)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    ap.add_argument("--attention-worker", nargs=2, metavar=("VARIANT", "FRAMES"), help=argparse.SUPPRESS)
    ap.add_argument("--compile-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 3 if args.quick else 5
    if args.attention_worker:
        print(json.dumps(attention_worker(args.attention_worker[0], int(args.attention_worker[1]), reps)))
        return 0
    if args.compile_worker:
        print(json.dumps(compile_worker(args.device, args.threads)))
        return 0
    backend = make_backend(args.device, args.threads)
    rounds = 1 if args.quick else args.rounds
    out = {"torch": torch.__version__, "device": backend.device.type, "threads": torch.get_num_threads(),
           "quick": bool(args.quick), "precision": backend.precision, "load_avg_start": load(),
           **backend.device_info()}
    if backend.device.type == "cpu" and backend.precision == "fp32":
        out["bf16_note"] = "no native bf16 kernels on this CPU: every row is fp32, shares of the fp32 peak"
    print(f"torch {torch.__version__}, {backend.describe()}, threads {torch.get_num_threads()}, load {load()}")
    print("compile times (cold / warm inductor cache, fresh processes) ...")
    out["compile"] = compile_times(backend.device.type, args.threads, args.compile_cache)
    print(f"compile: {json.dumps(out['compile'])}")

    print("building rows (warm-up and compiles) ...")
    rows, infos, profiles = {}, {}, {}
    for frames in ((16,) if args.quick else (16, 32)):
        ref = ref_rows(backend, frames, reps)
        infos[f"ref_{frames}"] = ref["info"]
        rows.update({f"ref{frames}_{k}": v for k, v in ref["rows"].items()})
        if args.profile and frames == 16:
            m = ref["train_compiled"]
            opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
            profiles["train_compiled_16"] = profile_table(backend, train_step_fn(m, opt, ref["batch"],
                                                                                 backend.autocast))
            step = ref["cached_step"](ref["models"]["cast_compiled"])
            profiles["denoise_kv_cast_compiled_16"] = profile_table(backend, step)
    nclips, steps = (4, 5) if args.quick else (16, 10)
    demo = demo_rows(backend, reps, nclips, steps)
    infos["demo"] = demo["info"]
    infos["rollout"] = {"num_clips": nclips, "steps": steps, "window": 16, "history_guide_scale": 1.5}
    rows.update(demo["rows"])

    res = run_rounds(backend, rows, rounds)
    out.update(res)
    out["shapes"] = infos
    r = res["rows"]
    demo_tokens = infos["demo"]["tokens"]
    for k in ("demo_train_eager", "demo_train_compiled"):
        r[k]["tokens_per_s"] = demo_tokens / (r[k]["ms"] / 1e3)
    for k in ("rollout_nocache", "rollout_kv", "rollout_kv_compiled"):
        r[k]["s_per_clip"] = r[k]["ms"] / 1e3 / nclips
    out["goals"] = goals(r, args.quick)
    out["load_avg_end"] = load()
    if profiles:
        out["profile"] = profiles
        for k, v in profiles.items():
            print(f"--- profile: {k}\n{v}")
    if not args.no_attention and backend.device.type == "cpu":
        out["attention"] = attention_rows(args.quick, args.threads)
    print_table(out)
    if args.json:
        from utils.io import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


def goals(r: dict, quick: bool) -> dict:
    """The speed goals: training >= 60 % of the peak (16 and 32 frames, the better of eager / compiled), the
    KV-cached guided denoise step <= 2x its FLOP limit (the best variant), a KV rollout >= 4x the uncached."""
    best = lambda *ks: max((r[k] for k in ks if k in r), key=lambda x: x["peak_share"])
    out = {}
    for f in ((16,) if quick else (16, 32)):
        tr = best(f"ref{f}_train_eager", f"ref{f}_train_compiled")
        out[f"train_{f}_peak_share"] = {"value": tr["peak_share"], "goal": ">= 0.60", "met": tr["peak_share"] >= 0.6}
        dn = best(f"ref{f}_denoise_kv_autocast", f"ref{f}_denoise_kv_cast", f"ref{f}_denoise_kv_cast_compiled")
        out[f"denoise_{f}_flop_limit_multiple"] = {"value": dn["flop_limit_multiple"], "goal": "<= 2",
                                                   "met": dn["flop_limit_multiple"] <= 2}
    kv = min(r["rollout_kv"]["ms"], r["rollout_kv_compiled"]["ms"])
    sp = r["rollout_nocache"]["ms"] / kv
    out["rollout_kv_speedup"] = {"value": sp, "goal": ">= 4", "met": sp >= 4}
    return out


def print_table(out: dict) -> None:
    print(f"\npeak {out['peak_gflops']['median']:.0f} GFLOP/s ({out['peak_gflops']['definition']}); "
          f"load {out['load_avg_start']} -> {out['load_avg_end']}")
    print(f"{'row':34s} {'ms':>9s} {'GFLOP':>7s} {'peak share':>10s} {'x FLOP limit':>12s}")
    for name, row in out["rows"].items():
        extra = ""
        if "tokens_per_s" in row:
            extra = f"  {row['tokens_per_s']:.0f} tokens/s"
        if "s_per_clip" in row:
            extra = f"  {row['s_per_clip']:.3f} s/clip"
        if "gflop" in row:
            print(f"{name:34s} {row['ms']:9.1f} {row['gflop']:7.2f} {row['peak_share']:10.1%} "
                  f"{row['flop_limit_multiple']:12.2f}{extra}")
        else:
            print(f"{name:34s} {row['ms']:9.1f} {'':7s} {'':10s} {'':12s}{extra}")
    for k, g in out["goals"].items():
        print(f"goal {k}: {g['value']:.3g} (goal {g['goal']}): {'met' if g['met'] else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
