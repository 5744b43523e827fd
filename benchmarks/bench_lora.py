"""Time per training step, trained parameters and optimizer state of a full fine-tune vs LoRA adapters.

    python -m benchmarks.bench_lora --cfg configs/demo/lora_gravity.yaml \
        --weights data/demo/demo_v2_latent.safetensors [--ranks 4 16] [--batch 4] [--steps 10] [--rounds 2]

Builds the config's generator stack, loads ``--weights`` and times ``--steps`` optimizer steps
(forward, backward, AdamW) on random latents of the config's ``max_frames`` (two clips), after 3
warm-up steps, for the full model and for LoRA at each of ``--ranks`` on the config's
``lora.target``. ``--rounds`` repeats the sequence in alternating order (full first, then last), so
a load that changes during the run does not favour one variant. Prints one JSON line per variant:
median seconds per step over the rounds' medians, trained parameters, AdamW state in MiB.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


def _time_steps(stack, model, cfg, batch: int, steps: int) -> float:
    from tools.autoencoders.base import latent_frames
    from tools.embedders.conditioning import embed, is_conditional
    from tools.train import loop

    opt = loop.make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(0)
    ae, F = stack.autoencoder, latent_frames(stack.autoencoder, int(cfg.max_frames))
    res = cfg.dataset.get("resolution", 64)
    x1 = torch.randn(batch, ae.latent_channels, F, res // ae.spatial_factor, res // ae.spatial_factor, generator=g)
    clip_lens = torch.tensor([[F - 1, 1]] * batch)
    cond, mask = embed(stack.embedder, ["two balls, falling down"] * batch, "cpu") \
        if is_conditional(stack.embedder) else (None, None)
    times = []
    for _ in range(steps + 3):
        t0 = time.perf_counter()
        out = stack.diffusion.training_losses(model, x1, clip_lens, cond=cond, cond_mask=mask, generator=g)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:]), sum(v.numel() * v.element_size() for s in opt.state.values()
                                             for v in s.values() if torch.is_tensor(v))


def main(argv=None) -> int:
    from tools import load_components, lora
    from tools.stack import build_stack
    from utils.checkpoint import load_weights
    from utils.config import load_config
    from utils.registry import ENGINE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 16])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    load_components()
    cfg = load_config(a.cfg, registry=ENGINE)
    stack = build_stack(cfg)
    load_weights(stack.model, a.weights)
    target = (cfg.get("lora") or {}).get("target", "default")
    variants = ["full"] + [f"lora{r}" for r in a.ranks]
    found = {v: [] for v in variants}
    info = {}
    for i in range(a.rounds):
        for v in (variants if i % 2 == 0 else variants[::-1]):
            model = copy.deepcopy(stack.model)
            if v != "full":
                r = int(v[4:])
                lora.apply_lora(model, lora.check_lora({"rank": r, "alpha": r, "target": target}), [])
            sec, state = _time_steps(stack, model, cfg, a.batch, a.steps)
            found[v].append(sec)
            info[v] = (sum(q.numel() for q in model.parameters() if q.requires_grad), state)
    for v in variants:
        print(json.dumps({"variant": v, "s_per_step": round(statistics.median(found[v]), 3), "rounds": found[v],
                          "trained_params": info[v][0], "adamw_state_mib": round(info[v][1] / 2 ** 20, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
