"""How much does a conditional checkpoint use its condition? First-clip denoising loss per noise level.

    python -m benchmarks.bench_condition_signal --cfg configs/experiments/conditioning/train_class.yaml \
        --ckpt workspace/experiments/demo_class/checkpoints/step_00001000.ema.safetensors [--num 64] [--seed 4242]

Takes the training config (dataset, model, embedder, cond_key), draws ``--num`` held-out items
(dataset seed ``--seed``), noises their first clip at fixed t (0 = pure noise, 1 = clean) with
one fixed noise draw, and reports the model's loss (its training target: x1 or velocity, per
the config's diffusion) with the right condition, a shuffled one (each item gets another item's
condition) and the null condition. A model that follows its condition has right < shuffled
where the condition decides what appears (large noise); right == shuffled == null means the
condition is ignored. The embedder's trained weights are read from beside the checkpoint.

``--swap ATTR`` (captions of SyntheticPhysics: num_balls, colors, gravity, speed) adds a column
whose caption is the item's own with only that attribute taken from the next item that differs
in it (e.g. "falling down" -> "falling to the left"): does the model read that part of the
caption? ``--frames N`` scores the first N frames as one clip (default: the config's clip_len).
"""
import argparse
from pathlib import Path

import torch

from tools import load_components
from tools.datasets.synthetic_physics import CAPTION_PARTS, caption
from tools.embedders.conditioning import embed
from tools.stack import build_stack
from utils.checkpoint import embedder_weights_for, load_weights
from utils.config import load_config
from utils.registry import DATASETS, EMBEDDER, ENGINE


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", required=True, help="the training config of the checkpoint")
    ap.add_argument("--ckpt", required=True, help="model weights (.safetensors); the embedder's sit beside it")
    ap.add_argument("--num", type=int, default=64, help="held-out items")
    ap.add_argument("--seed", type=int, default=4242, help="dataset seed of the held-out items")
    ap.add_argument("--ts", default="0,0.1,0.2,0.3,0.5,0.7", help="noise levels t (comma separated)")
    ap.add_argument("--swap", choices=CAPTION_PARTS, help="also score captions with this attribute swapped")
    ap.add_argument("--frames", type=int, help="score the first N frames as one clip (default clip_len)")
    args = ap.parse_args()
    load_components()
    torch.manual_seed(0)
    cfg = load_config(args.cfg, registry=ENGINE)
    embedder = EMBEDDER.build(cfg.embedder, "embedder")
    if embedder.state_dict():
        load_weights(embedder, embedder_weights_for(Path(args.ckpt)))
    stack = build_stack(cfg, embedder=embedder)
    model, diffusion = stack.model, stack.diffusion
    load_weights(model, Path(args.ckpt))
    model.eval()
    ds = DATASETS.build({**cfg.dataset, "seed": args.seed}, "dataset")
    items = [ds[(i, 0)] if getattr(ds, "epoch_aware", False) else ds[i] for i in range(args.num)]
    clip = int(args.frames or cfg.clip_sampling.clip_len)
    x1 = torch.stack([it["video"] for it in items])[:, :, :clip].float()
    if x1.abs().max() > 1.5:  # uint8 frames -> [-1, 1]
        x1 = x1 / 127.5 - 1
    values = [it[cfg.cond_key] for it in items]
    B = len(values)
    conds = {"right": values, "shuffled": values[1:] + values[:1], "null": [None] * B}
    if args.swap:
        conds[f"{args.swap}_swap"] = swapped_captions([it["meta"]["attributes"] for it in items], args.swap)
    eps = torch.randn(x1.shape, generator=torch.Generator().manual_seed(1))
    print(f"{args.ckpt}: first {clip} frames of {B} items (dataset seed {args.seed}), loss per noise level t")
    print("t      " + "  ".join(f"{k:>9}" for k in conds) + "   shuffled/right")
    with torch.no_grad():
        embedded = {k: embed(embedder, v, torch.device("cpu")) for k, v in conds.items()}
        for t in (float(x) for x in args.ts.split(",")):
            xt = t * x1 + (1 - t) * eps
            tt = torch.full((B,), t)
            losses = {}
            for k, (c, m) in embedded.items():
                pred = model.denoise(xt, tt, cond=c, cond_mask=m)
                losses[k] = float((pred - diffusion.target(x1, eps)).square().mean())
            print(f"{t:<6} " + "  ".join(f"{v:9.5f}" for v in losses.values())
                  + f"   {losses['shuffled'] / max(losses['right'], 1e-12):.3f}")


def swapped_captions(attrs, key: str):
    """Each item's caption with ``attrs[key]`` replaced by that of the next item that differs in it."""
    out = []
    for i, a in enumerate(attrs):
        other = next((b for b in attrs[i + 1:] + attrs[:i] if b[key] != a[key]), None)
        if other is None:
            raise ValueError(f"every item has the same {key}={a[key]!r}: nothing to swap; draw more items (--num)")
        out.append(caption({**a, key: other[key]}))
    return out


if __name__ == "__main__":
    main()
