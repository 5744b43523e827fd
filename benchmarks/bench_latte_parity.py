"""Latte against the reference's golden fixture: the error of each case, loaded the way a user runs it.

    python -m benchmarks.bench_latte_parity [--fixture ../shared/fixtures/latte_tiny]

configs/latte/ucf101_infer.yaml with the fixture's tiny shape, LatteCheckpoint on ``latte.pt`` (class table into
the ClassLabel embedder), the YAML's GaussianDiffusion. Prints case a (one forward, class 3 and the null class) as
the largest absolute error, case b (5-step guided DDIM, scale 7) and case c (one guided DDPM step: mean, learned
log variance, x0) relative to the reference's largest magnitude; fp32 on the CPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from tools import load_components
from tools.diffusions import learned_variance as lv
from tools.diffusions.gaussian import timestep_input
from tools.inferences.generate_video import build_video_model, guided
from utils.config import load_config
from utils.registry import DIFFUSION, EMBEDDER, INFER_ENGINE

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model={_delete_: true, type: Latte, input_size: 8, patch_size: 2, hidden: 64, depth: 4, heads: 4, "
        "num_frames: 4, learn_sigma: true}", "embedder.dim=64", "backend.type=cpu", "backend.precision=fp32"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", default=str(ROOT.parent / "shared" / "fixtures" / "latte_tiny"))
    args = ap.parse_args()
    fixture = Path(args.fixture)
    load_components()
    cfg = load_config(ROOT / "configs" / "latte" / "ucf101_infer.yaml", [*TINY, f"test_model={fixture / 'latte.pt'}"],
                      registry=INFER_ENGINE)
    embedder = EMBEDDER.build(cfg.embedder, "embedder").eval()
    model = build_video_model(cfg, cfg.test_model, embedder).eval()
    diffusion = DIFFUSION.build(cfg.diffusion, "diffusion")
    cases = load_file(str(fixture / "cases.safetensors"))
    ours = lambda x: x.transpose(1, 2)  # noqa: E731 - the reference's (B, F, C, H, W) <-> (B, C, F, H, W)
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max())  # noqa: E731
    pred_fn = guided(model, {"y": embedder([5])[0]}, {"y": embedder.null(1)[0]}, 7.0, diffusion.guide)
    with torch.no_grad():
        a = ours(model(ours(cases["a.x"]), cases["a.t"], y=embedder([3, None])[0]))
        print(f"a.out            max abs error {float((a - cases['a.out']).abs().max()):.2e}  (bound 1e-5)")
        b = ours(diffusion.sample(pred_fn, ours(cases["b.z"]), steps=5, sampler="ddim",
                                  timestep_input=timestep_input(model)))
        print(f"b.out            max rel error {rel(b, cases['b.out']):.2e}  (bound 1e-4)")
        tables = lv.chain_tables(diffusion.alphas_cumprod, diffusion.timesteps(5))
        j, x = cases["c.t_index"], ours(cases["c.x"])
        out = diffusion.p_mean_variance(pred_fn(x, tables["timesteps"][j]), x, j, tables)
        for key in ("mean", "log_variance", "pred_xstart"):
            print(f"c.{key:<13s} max rel error {rel(ours(out[key]), cases['c.' + key]):.2e}  (bound 1e-4)")


if __name__ == "__main__":
    main()
