"""Held-out reconstruction quality and speed of a video autoencoder: PSNR / SSIM, encode / decode frames/s.

    python -m benchmarks.bench_vae --cfg configs/demo/train_vae.yaml --weights data/demo/demo_vae_v2.safetensors \
        [--num 16] [--frames 17] [--seed 777]

Builds the config's ``auto_encoder`` (with ``weights`` replaced), reads ``--num`` SyntheticPhysics
videos of ``--frames`` frames from the config's dataset settings with a held-out ``--seed`` (the
demo VAE trains on seed 0), encodes and decodes each one (posterior mean) and prints one JSON
line: mean PSNR / SSIM over frames and videos, the latent std (the ``scale_factor`` to use for
latent training is about 1 / latent_std) and the encode / decode throughput. Baseline for
reading the figures: a decoder that outputs the mean frame of the video (``mean_frame_*``) and, for
datasets with a flat ``background`` colour (SyntheticPhysics), one that outputs the empty background
(``empty_frame_*``): a VAE that draws only the background scores about the latter.
With a SyntheticPhysics dataset the round trip is also read by the scene analyser, as the
prediction evaluation reads a model's frames: ``position_error`` (px, balls matched by colour, a
missing ball counts half the side) and ``count_accuracy`` (frames with the true number of balls).
They are the floor of a latent model on this VAE: its frames are decoded by it.
"""
import argparse
import json
import time

import numpy as np
import torch

from tools import load_components
from utils.config import load_config
from utils.metrics import psnr_per_frame, ssim_per_frame
from utils.registry import AUTO_ENCODER, DATASETS, ENGINE


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", required=True, help="a config with auto_encoder and dataset blocks")
    ap.add_argument("--weights", default=None, help="autoencoder weights (.safetensors); default: the config's")
    ap.add_argument("--num", type=int, default=16, help="held-out videos")
    ap.add_argument("--frames", type=int, default=17, help="frames per video (1 + 4k for a causal VAE)")
    ap.add_argument("--seed", type=int, default=777, help="dataset seed of the held-out videos")
    args = ap.parse_args()
    load_components()
    cfg = load_config(args.cfg, registry=ENGINE)
    ae_cfg = dict(cfg.auto_encoder, **({"weights": args.weights} if args.weights else {}))
    ae = AUTO_ENCODER.build(ae_cfg, "auto_encoder").eval()
    ds = DATASETS.build({**cfg.dataset, "num_frames": args.frames, "seed": args.seed, "length": args.num}, "dataset")
    objects = cfg.dataset.get("type") == "SyntheticPhysics"
    if objects:
        from tools.inferences.evaluate_prediction import DEFAULTS as EVAL_DEFAULTS
        from tools.inferences.evaluate_prediction import object_scores
        from tools.inferences.scene import detect_objects, settings_from_dataset
        from utils.video_io import to_uint8

        settings = settings_from_dataset(dict(cfg.dataset))
    psnr, ssim, stds, pos, count = [], [], [], [], []
    base = {"mean_frame_psnr": [], "mean_frame_ssim": [], "empty_frame_psnr": [], "empty_frame_ssim": []}
    background = getattr(ds, "background", None)
    t_enc = t_dec = 0.0
    frames = 0
    with torch.no_grad():
        for i in range(args.num):
            x = ds[(i, 0)] if getattr(ds, "epoch_aware", False) else ds[i]
            x = x["video"][None].float()
            t0 = time.perf_counter()
            z = ae.encode(x)
            t1 = time.perf_counter()
            y = ae.decode(z).clamp(-1, 1)
            t2 = time.perf_counter()
            t_enc, t_dec, frames = t_enc + t1 - t0, t_dec + t2 - t1, frames + x.shape[2]
            psnr.append(psnr_per_frame(y[0], x[0]).mean().item())
            ssim.append(ssim_per_frame(y[0], x[0]).mean().item())
            refs = {"mean_frame": x[0].mean(1, keepdim=True).expand_as(x[0])}
            if background is not None:
                bg = torch.as_tensor(background / 127.5 - 1.0, dtype=x.dtype).view(3, 1, 1, 1)
                refs["empty_frame"] = bg.expand_as(x[0])
            for name, ref in refs.items():
                base[f"{name}_psnr"].append(psnr_per_frame(ref, x[0]).mean().item())
                base[f"{name}_ssim"].append(ssim_per_frame(ref, x[0]).mean().item())
            stds.append(z.std().item())
            if objects:
                o = object_scores(to_uint8(y[0]), detect_objects(to_uint8(x[0]), settings), settings,
                                  EVAL_DEFAULTS["position_miss"] * min(x.shape[-2:]))
                pos.append(float(np.nanmean(o["position_error"])))
                count.append(float(np.mean(o["count_accuracy"])))
    n = args.num
    avg = lambda xs, d: round(sum(xs) / len(xs), d)
    print(json.dumps({"videos": n, "frames_per_video": args.frames, "seed": args.seed,
                      "psnr": avg(psnr, 3), "ssim": avg(ssim, 4),
                      **{k: avg(v, 4 if k.endswith("ssim") else 3) for k, v in base.items() if v},
                      **({"position_error": avg(pos, 3), "count_accuracy": avg(count, 3)} if objects else {}),
                      "latent_std": avg(stds, 4),
                      "encode_fps": round(frames / t_enc, 1), "decode_fps": round(frames / t_dec, 1)}))


if __name__ == "__main__":
    main()
