"""VGen I2VGen-XL UNet against its golden fixture through configs/modelscope/i2vgen_xl_infer.yaml's loader, the
OpenCLIP image embedder (open_clip's own preprocessing), and image-to-video generation end to end."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tools.diffusions.gaussian import timestep_input
from tools.inferences.generate_video import build_video_model, guided
from utils.config import load_config
from utils.registry import DIFFUSION, INFER_ENGINE

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "i2vgen_xl_tiny"
T2V_FIXTURE = ROOT.parent / "shared" / "fixtures" / "modelscope_t2v_tiny"
CONFIG = ROOT / "configs" / "modelscope" / "i2vgen_xl_infer.yaml"
TINY_CLIP = {"embed_dim": 1024, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16,
                                                "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def user_config(*overrides):
    return load_config(CONFIG, [f"test_model={FIXTURE}", *overrides], registry=INFER_ENGINE)


@pytest.fixture(scope="module")
def cases():
    return load_file(str(FIXTURE / "cases.safetensors"))


@pytest.fixture(scope="module")
def model():
    cfg = user_config()
    return build_video_model(cfg, cfg.test_model).eval()


def test_forward_case_a(model, cases):
    with torch.no_grad():
        out = model(*(cases[f"a.{k}"] for k in ("x", "t", "y", "image", "local_image", "fps")))
    assert (out - cases["a.out"]).abs().max() < 1e-4


@pytest.mark.slow
def test_guided_ddim_case_b(model, cases):
    c = {k: cases[f"b.{k}"] for k in ("y", "image", "local_image", "fps")}
    u = dict(c, y=cases["b.y_null"], image=cases["b.image_null"])  # the first-frame latent and fps stay
    diffusion = DIFFUSION.build(user_config().diffusion, "diffusion")
    with torch.no_grad():
        out = diffusion.sample(guided(model, c, u, 9.0), cases["b.noise"], steps=5,
                               timestep_input=timestep_input(model))
    assert (out - cases["b.out"]).abs().max() / cases["b.out"].abs().max() < 1e-4


@pytest.mark.slow
def test_image_branch_is_doubled_and_a_single_branch_fails(cases, monkeypatch):
    """Without doubling the concat channels (diffusers' once), case a is not reproduced: the quirk matters."""
    from tools.models.i2vgen_unet import UNetSD_I2VGen

    monkeypatch.setattr(UNetSD_I2VGen, "adapt_reference_weights",
                        lambda self, sd: {**_split_qkv(sd)})
    cfg = user_config()
    once = build_video_model(cfg, cfg.test_model).eval()
    with torch.no_grad():
        out = once(*(cases[f"a.{k}"] for k in ("x", "t", "y", "image", "local_image", "fps")))
    assert (out - cases["a.out"]).abs().max() > 1e-3


def _split_qkv(sd):
    sd = dict(sd)
    qkv = sd.pop("unet.image_latents_temporal_encoder.attn1.to_qkv.weight")
    for name, w in zip("qkv", qkv.chunk(3, dim=0)):
        sd[f"unet.image_latents_temporal_encoder.attn1.to_{name}.weight"] = w
    return sd


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("clip")
    cfg_file = d / "TinyClip1024.json"
    cfg_file.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(cfg_file))
    torch.manual_seed(0)
    model = open_clip.create_model("TinyClip1024", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    return model.eval(), d / "open_clip_model.safetensors", str(cfg_file)


def test_image_embedder_matches_open_clip(tiny_clip):
    import open_clip
    from PIL import Image

    from utils.registry import EMBEDDER

    ref, weights, cfg_file = tiny_clip
    emb = EMBEDDER.build({"type": "OpenCLIPImage", "arch": "TinyClip1024", "pretrained": str(weights),
                          "config_file": cfg_file})
    assert emb.dim == 1024 and emb.num_tokens == 1 and not list(emb.state_dict())  # frozen, never saved
    img = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    tokens, mask = emb([img])
    pre = open_clip.image_transform(32, is_train=False)(Image.fromarray(img))[None]
    with torch.no_grad():
        want = ref.encode_image(pre)
    assert tokens.shape == (1, 1, 1024) and mask.all()
    assert torch.allclose(tokens[:, 0], want, atol=1e-5)
    null, _ = emb.null(2)
    assert null.shape == (2, 1, 1024) and not null.any()  # VGen's unconditional image feature: zeros


class TinyText1024(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dim, self.num_tokens = 1024, 77

    def forward(self, values):
        g = torch.Generator().manual_seed(len(values[0] or ""))
        return torch.randn(len(values), 77, 1024, generator=g), torch.ones(len(values), 77, dtype=torch.bool)

    def null(self, n):
        return self([""] * n)


@pytest.mark.slow
def test_i2vgen_xl_infer_yaml_writes_one_mp4_per_image(tmp_path, tiny_clip):
    from utils.cli import main
    from utils.registry import EMBEDDER

    if "TinyText1024" not in EMBEDDER:
        EMBEDDER.register_class()(TinyText1024)
    _, weights, cfg_file = tiny_clip
    from PIL import Image

    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(tmp_path / "first.png")
    (tmp_path / "images.txt").write_text("first.png|||a grey wall\n")
    code = main("infer", ["--cfg", str(CONFIG), f"test_model={FIXTURE}", f"test_list_path={tmp_path / 'images.txt'}",
                          f"log_dir={tmp_path / 'out'}", "embedder={_delete_: true, type: TinyText1024}",
                          "image_embedder.arch=TinyClip1024", f"image_embedder.pretrained={weights}",
                          f"+image_embedder.config_file={cfg_file}", f"auto_encoder.path={T2V_FIXTURE}",
                          "resolution=[16,16]", "max_frames=4", "ddim_timesteps=2", "backend.type=cpu",
                          "backend.precision=fp32", "progress=false"])
    assert code == 0
    assert len(list((tmp_path / "out" / "images").glob("*.mp4"))) == 1
