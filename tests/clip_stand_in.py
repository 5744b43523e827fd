"""A tiny OpenCLIP model, trained for a few steps to pair red frames with "a red ball" and blue
ones with "a blue ball": the test stand-in for local CLIP weights (nothing is downloaded)."""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
ARCH = "tiny-test-clip"
PROMPTS = ["a red ball", "a blue ball"]
COLORS = [(1.0, -0.8, -0.8), (-0.8, -0.8, 1.0)]


def frames(color, n=4, seed=0) -> torch.Tensor:
    """(n, 3, 32, 32) frames of one colour with a little noise, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(color).view(1, 3, 1, 1).expand(n, 3, 32, 32)
    return (base + 0.1 * torch.randn(n, 3, 32, 32, generator=g)).clamp(-1, 1)


def tiny_clip(folder, prompts=PROMPTS, colors=COLORS, steps: int = 40) -> dict:
    """Train the tiny model on (colour frames, prompt) pairs; write its weights (.safetensors) and
    config (tiny-test-clip.json) to ``folder``: {arch, pretrained, config_file, model}."""
    import open_clip
    from safetensors.torch import save_file

    cfg = folder / f"{ARCH}.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None)
    tok = open_clip.get_tokenizer(ARCH)(list(prompts))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    target = torch.arange(len(colors)).repeat_interleave(2)
    for step in range(steps):
        imgs = torch.cat([frames(c, 2, seed=step) for c in colors])  # 2 per colour
        img = F.normalize(model.encode_image(((imgs + 1) / 2 - mean) / std), dim=-1)
        txt = F.normalize(model.encode_text(tok), dim=-1)
        loss = F.cross_entropy(10 * img @ txt.T, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = folder / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return {"arch": ARCH, "pretrained": str(path), "config_file": str(cfg), "model": model.eval()}
