"""Per-frame latency of interactive play: ``PlaySession.next_clip(actions)`` (Predictor.start) with the KV cache
kept between calls, for an action-conditioned demo-preset model (random weights: the latency does not depend
on them).

    python -m benchmarks.bench_play [--hw 64 120] [--patch 8] [--threads N] [--clips 12] [--json PATH]

For every combination of clip_len, num_sample_steps, kv_cache (rolling / recompute) and precision the session
first plays until its history window is full (the steady state of a long game), then times ``--clips`` more
calls with a new random action each; it reports the median wall-clock milliseconds per call and per
generated frame, the same for the process's CPU time (with one thread: what the call takes on an idle core,
whatever else loads the machine), the thread count and the machine's load average while it ran.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

CFG = """
TASK_TYPE: predict_next_clip
backend: {{type: cpu, precision: {precision}, attention: sdpa}}
model: {{type: NextClipTransformer, preset: demo, in_channels: 3, patch_size: {patch}}}
embedder: {{type: DiscreteActions, num_actions: 6, dim: 64}}
diffusion: {{type: RectifiedFlow}}
auto_encoder: {{type: Identity}}
test_list_path: {lst}
resolution: [{h}, {w}]
context_frames: 4
max_frames: 64
clip_len: {clip_len}
window: {window}
num_sample_steps: {steps}
kv_cache: {kv}
progress: false
"""


def play_latency(tmp: Path, h: int, w: int, patch: int, clip_len: int, steps: int, kv: str, precision: str,
                 window: int, clips: int) -> dict:
    import tools
    from tools.inferences.predictor import Predictor
    from utils.config import load_config
    from utils.registry import INFER_ENGINE

    tools.load_components()
    lst = tmp / "list.txt"
    lst.write_text("x\n")
    cfg = tmp / "play.yaml"
    cfg.write_text(CFG.format(precision=precision, patch=patch, lst=lst, h=h, w=w, clip_len=clip_len,
                              window=window, steps=steps, kv=kv))
    p = Predictor(load_config(cfg, registry=INFER_ENGINE))
    g = torch.Generator().manual_seed(0)
    ctx = torch.rand(3, 4, h, w, generator=g) * 2 - 1
    session = p.start(ctx, actions=[-1, 0, 0, 0], seed=0)
    for _ in range(-(-window // clip_len) + 1):  # fill the window (steady state)
        session.next_clip(int(torch.randint(0, 6, (1,), generator=g)))
    wall, cpu = [], []
    for _ in range(clips):
        a = int(torch.randint(0, 6, (1,), generator=g))
        t0, c0 = time.perf_counter(), time.process_time()
        session.next_clip(a)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    ms, cpu_ms = 1000 * statistics.median(wall), 1000 * statistics.median(cpu)
    return {"clip_len": clip_len, "num_sample_steps": steps, "kv_cache": kv, "precision": precision,
            "window": window, "ms_per_clip": round(ms, 1), "ms_per_frame": round(ms / clip_len, 1),
            "cpu_ms_per_frame": round(cpu_ms / clip_len, 1), "tokens_per_frame": (h // patch) * (w // patch) + 1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hw", nargs=2, type=int, default=[64, 120], metavar=("H", "W"))
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--windows", nargs="+", type=int, default=[16], help="history frames attended to")
    ap.add_argument("--clip-lens", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--steps", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--kv", nargs="+", default=["rolling", "recompute"])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--clips", type=int, default=12, help="timed calls per setting")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = args.hw
    rows = []
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for prec, win, g, steps, kv in itertools.product(args.precision, args.windows, args.clip_lens, args.steps,
                                                         args.kv):
            r = play_latency(Path(tmp), h, w, args.patch, g, steps, kv, prec, win, args.clips)
            rows.append(r)
            print(json.dumps(r), flush=True)
    out = {"hw": [h, w], "patch": args.patch, "threads": torch.get_num_threads(), "load_before": load0,
           "load_after": os.getloadavg(), "rows": rows}
    print(f"threads {out['threads']}, load average before {load0}, after {out['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
