"""Agreement with VGen's reference on the golden fixtures, loaded the way a user's run loads them.

    python -m benchmarks.bench_modelscope_parity [--fixtures ../shared/fixtures]

Builds UNetSD_T2VBase / UNetSD_I2VGen through configs/modelscope/{t2v,i2vgen_xl}_infer.yaml with
``test_model=<fixture folder>`` (ModelScopeCheckpoint, key converter), the fixture's autoencoder through
AutoencoderKL, and prints per case the largest absolute error, the largest error relative to the reference's
largest magnitude, and the wall time (fp32, CPU).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tools import load_components  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VGEN = ("diffusion={_delete_: true, type: GaussianDiffusion, schedule: cosine, zero_terminal_snr: true, prediction: v, "
        "timestep_spacing: leading, steps_offset: 1, final_alpha_cumprod: first, history_noise: null}")


def row(name: str, out: torch.Tensor, ref: torch.Tensor, seconds: float) -> str:
    err = (out - ref).abs().max().item()
    return f"| {name} | {tuple(ref.shape)} | {err:.2e} | {err / ref.abs().max().item():.2e} | {seconds:.2f} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fixtures", default=str(ROOT.parent / "shared" / "fixtures"))
    a = p.parse_args()
    load_components()
    from tools.autoencoders.kl import AutoencoderKL
    from tools.diffusions.gaussian import timestep_input
    from tools.inferences.generate_video import build_video_model, guided
    from utils.config import load_config
    from utils.registry import DIFFUSION, INFER_ENGINE

    torch.set_grad_enabled(False)
    print("| case | shape | max abs error | relative to max abs | seconds |\n|---|---|---|---|---|")
    t2v = Path(a.fixtures) / "modelscope_t2v_tiny"
    cfg = load_config(ROOT / "configs/modelscope/t2v_infer.yaml", [f"test_model={t2v}"], registry=INFER_ENGINE)
    model, c = build_video_model(cfg, cfg.test_model).eval(), load_file(str(t2v / "cases.safetensors"))
    for case in "ab":
        t0 = time.time()
        out = model(c[f"{case}.x"], c[f"{case}.t"], c[f"{case}.y"])
        print(row(f"t2v {case} (forward)", out, c[f"{case}.out"], time.time() - t0))
    for case, over in (("c", [VGEN]), ("d", [])):
        run_cfg = load_config(ROOT / "configs/modelscope/t2v_infer.yaml", [f"test_model={t2v}", *over],
                              registry=INFER_ENGINE)
        diffusion = DIFFUSION.build(run_cfg.diffusion)
        t0 = time.time()
        out = diffusion.sample(guided(model, {"y": c[f"{case}.y"]}, {"y": c[f"{case}.y_null"]}, 9.0),
                               c[f"{case}.noise"], steps=5, timestep_input=timestep_input(model))
        print(row(f"t2v {case} (5 DDIM steps, guidance 9)", out, c[f"{case}.out"], time.time() - t0))
    e = load_file(str(t2v / "vae_cases.safetensors"))
    ae = AutoencoderKL(path=str(t2v), variant="sd", chunk_size=1)
    t0 = time.time()
    mean, logvar = ae._encode_frames(e["e.x"][:, :, None]).chunk(2, dim=1)
    dec = ae.decode(ae.encode(e["e.x"][:, :, None]))
    seconds = time.time() - t0
    for name, out, ref in (("mean", mean, e["e.mean"]), ("logvar", logvar, e["e.logvar"]), ("decode", dec, e["e.dec"])):
        print(row(f"vae e.{name}", out[:, :, 0], ref, seconds))
    i2v = Path(a.fixtures) / "i2vgen_xl_tiny"
    cfg = load_config(ROOT / "configs/modelscope/i2vgen_xl_infer.yaml", [f"test_model={i2v}"], registry=INFER_ENGINE)
    model, c = build_video_model(cfg, cfg.test_model).eval(), load_file(str(i2v / "cases.safetensors"))
    t0 = time.time()
    out = model(*(c[f"a.{k}"] for k in ("x", "t", "y", "image", "local_image", "fps")))
    print(row("i2vgen-xl a (forward)", out, c["a.out"], time.time() - t0))
    cond = {k: c[f"b.{k}"] for k in ("y", "image", "local_image", "fps")}
    uncond = dict(cond, y=c["b.y_null"], image=c["b.image_null"])
    t0 = time.time()
    out = DIFFUSION.build(cfg.diffusion).sample(guided(model, cond, uncond, 9.0), c["b.noise"], steps=5,
                                                timestep_input=timestep_input(model))
    print(row("i2vgen-xl b (5 DDIM steps, guidance 9)", out, c["b.out"], time.time() - t0))


if __name__ == "__main__":
    main()
