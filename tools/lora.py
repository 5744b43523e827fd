"""LoRA: low-rank adapters on a model's linear layers, set in the config (``peft`` underneath).

Training (``train_next_clip``)::

    lora: {rank: 16, alpha: 16, dropout: 0.0, target: [qkv, proj, mlp]}   # or target: default
    trainable: [cond_proj]        # optional: tensors trained in full beside the adapters

``target`` is a preset name of the model class (``lora_presets``, e.g. ``default`` / ``attention``) or a
list of module-name patterns. A pattern is a dotted run of name parts (``*`` globs), matched against
any run of the parts of a module's name: ``mlp`` hits ``blocks.3.mlp.fc1``, ``blocks.0.qkv`` only
that layer. Only ``nn.Linear`` layers take adapters; ``trainable`` patterns are matched the same way
against parameter names. Everything else is frozen: only the adapters and the ``trainable`` tensors
get gradients and optimizer state.

An adapter file (safetensors) holds only those tensors, under the model's own names
(``blocks.0.qkv.lora_A.default.weight``, ``cond_proj.weight``), with metadata: ``lora`` (rank,
alpha, dropout, the targeted layer names), ``trainable`` and ``base`` (the base model's identity:
weights path, file size, hash of the model config, checksum of the weights). :func:`load_adapters`
refuses an adapter whose base differs, in one line; it adds adapters unmerged (each with its
``scale``) or merges them into the base weights (then the model is the plain base architecture again). Both agree.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.checkpoint import CheckpointError, read_state_dict
from utils.config import ConfigError

logger = logging.getLogger("nextclip")

LORA_DEFAULTS: dict[str, Any] = {"rank": 16, "alpha": None, "dropout": 0.0, "target": "default"}
FORMAT = "nextclip-lora-1"
#: model config entries that do not change what the weights mean (left out of the base hash)
RUNTIME_KEYS = ("grad_checkpointing", "attention", "empty_weights")


# ---------------------------------------------------------------------------- settings
def check_lora(lora: Any, trainable: Any = None) -> dict[str, Any] | None:
    """The training ``lora`` mapping with defaults filled (alpha: = rank), or None when unset;
    ConfigError naming the bad key otherwise."""
    if trainable not in (None, []) and not (isinstance(trainable, list) and all(isinstance(t, str) and t
                                                                                for t in trainable)):
        raise ConfigError(f"trainable={trainable!r} is not allowed: give a list of parameter-name patterns, "
                          f"e.g. trainable: [cond_proj]")
    if lora in (None, False):
        if trainable:
            raise ConfigError(f"trainable={trainable!r} names tensors trained beside LoRA adapters, but lora is not "
                              f"set; add e.g. lora: {{rank: 16, target: default}} (or remove trainable)")
        return None
    if not isinstance(lora, dict):
        raise ConfigError(f"lora={lora!r} is not allowed: give a mapping, e.g. lora: {{rank: 16, alpha: 16, "
                          f"dropout: 0.0, target: default}}")
    extra = sorted(set(lora) - set(LORA_DEFAULTS))
    if extra:
        raise ConfigError(f"lora has unknown key(s) {extra}; known: {list(LORA_DEFAULTS)}")
    out = {**LORA_DEFAULTS, **lora}
    if out["alpha"] is None:
        out["alpha"] = out["rank"]
    r, a, d, t = out["rank"], out["alpha"], out["dropout"], out["target"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"lora.rank={r!r} is not allowed: an integer >= 1; e.g. lora.rank=16")
    if isinstance(a, bool) or not isinstance(a, (int, float)) or a <= 0:
        raise ConfigError(f"lora.alpha={a!r} is not allowed: a number > 0 (the adapter is scaled by alpha / rank); "
                          f"e.g. lora.alpha=16")
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
        raise ConfigError(f"lora.dropout={d!r} is not allowed: a number in [0, 1); e.g. lora.dropout=0.0")
    if not (isinstance(t, str) and t) and not (isinstance(t, list) and t and all(isinstance(p, str) and p for p in t)):
        raise ConfigError(f"lora.target={t!r} is not allowed: a preset name of the model (e.g. default) or a list "
                          f"of module-name patterns, e.g. lora.target=[qkv,proj,mlp]")
    return out


def _matches(name: str, pattern: str) -> bool:
    parts, pat = name.split("."), pattern.split(".")
    return any(all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts[i:i + len(pat)], pat))
               for i in range(len(parts) - len(pat) + 1))


def presets_of(model: nn.Module) -> dict[str, list[str]]:
    return dict(getattr(type(model), "lora_presets", {}) or {})


def target_patterns(model: nn.Module, target: str | list[str]) -> list[str]:
    """The module-name patterns of ``target`` (a preset name of the model's class, or the patterns)."""
    if isinstance(target, list):
        return target
    presets = presets_of(model)
    if target not in presets:
        raise ConfigError(f"lora.target={target!r} is not a LoRA preset of {type(model).__name__} (presets: "
                          f"{sorted(presets) or 'none'}); use one of them or a list of module-name patterns, "
                          f"e.g. lora.target=[qkv,proj]")
    return list(presets[target])


def target_names(model: nn.Module, target: str | list[str]) -> list[str]:
    """Names of the ``nn.Linear`` layers ``target`` hits; ConfigError for a pattern that hits none."""
    patterns = target_patterns(model, target)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for p in patterns:
        if not any(_matches(n, p) for n in linears):
            raise ConfigError(f"lora.target pattern {p!r} matches no linear layer of {type(model).__name__} "
                              f"(its linear layers are e.g. {linears[:6]}); fix the pattern or use a preset "
                              f"({sorted(presets_of(model))})")
    return [n for n in linears if any(_matches(n, p) for p in patterns)]


def trainable_names(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the parameters the ``trainable`` patterns hit; ConfigError for a pattern that hits none."""
    names = [n for n, _ in model.named_parameters()]
    for p in patterns:
        if not any(_matches(n, p) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(f"trainable pattern {p!r} matches no parameter of {type(model).__name__} (its parts "
                              f"are {tops}); fix the pattern")
    return [n for n in names if any(_matches(n, p) for p in patterns)]


def count_adapter_params(model: nn.Module, lora: dict[str, Any], trainable: list[str] = ()) -> int:
    """Parameters LoRA would train (adapters + ``trainable`` tensors), without injecting (meta models too)."""
    mods = dict(model.named_modules())
    r = int(lora["rank"])
    n = sum(r * (mods[k].in_features + mods[k].out_features) for k in target_names(model, lora["target"]))
    params = dict(model.named_parameters())
    return n + sum(params[k].numel() for k in trainable_names(model, list(trainable or [])))


# ---------------------------------------------------------------------------- base identity
def config_hash(model: nn.Module) -> str:
    """Hash of the model's resolved config (runtime-only settings left out)."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, dict):
        cfg = {"type": type(model).__name__, "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}
    cfg = {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}
    text = json.dumps({"type": type(model).__name__, **cfg}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_size(path: str | Path | None) -> int:
    """Bytes of a weights file, or of the weights files in a folder (0 for none)."""
    if not path:
        return 0
    p = Path(str(path))
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.suffix in
                   (".safetensors", ".bin", ".pt", ".pth"))
    return 0


@torch.no_grad()
def weights_checksum(model: nn.Module) -> str:
    """A checksum of the loaded weights (position-weighted float64 sums), so that two bases of the
    same architecture and file size still tell apart."""
    total = torch.zeros((), dtype=torch.float64)
    for i, (_, t) in enumerate(sorted(model.state_dict().items())):
        if t.is_floating_point() and not t.is_meta:
            total += (i + 1) * t.detach().double().sum().cpu()
    return f"{float(total):.9e}"


def base_identity(model: nn.Module, path: str | Path | None) -> dict[str, Any]:
    """What an adapter records of its base: weights path, their size in bytes, the config hash and a
    checksum of the weights."""
    return {"path": str(path or ""), "bytes": weights_size(path), "config_hash": config_hash(model),
            "checksum": weights_checksum(model)}


def check_base(adapter: str, stored: dict[str, Any], current: dict[str, Any]) -> None:
    """CheckpointError in one line when the base differs (config hash, weights size or checksum); a moved
    file (same weights, other path) is only logged."""
    diff = [f"{k} {stored.get(k)!r} vs {current.get(k)!r}" for k in ("config_hash", "bytes", "checksum")
            if stored.get(k) != current.get(k)]
    if diff:
        was, now = stored.get("path") or "random init", current.get("path") or "random init"
        raise CheckpointError(f"adapter {adapter} does not fit this base model: {'; '.join(diff)} (adapter's base "
                              f"{was!r}, this base {now!r}); load it onto the base it was trained on")
    if stored.get("path") != current.get("path"):
        logger.info("adapter %s was trained on %s; loading onto %s (same size and config)", adapter,
                    stored.get("path"), current.get("path"))


# ---------------------------------------------------------------------------- inject / freeze
def _lora_layers(model: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def inject(model: nn.Module, names: list[str], rank: int, alpha: float, dropout: float,
           adapter: str = "default") -> None:
    """Add one LoRA adapter named ``adapter`` to the ``nn.Linear`` layers ``names`` (B = 0: the output
    is unchanged)."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=list(names),
                     bias="none")
    inject_adapter_in_model(cfg, model, adapter_name=adapter)


def apply_lora(model: nn.Module, lora: dict[str, Any], trainable: list[str] = ()) -> Adapters:
    """Inject the training adapters, freeze everything but them and the ``trainable`` tensors.
    ``lora`` as returned by :func:`check_lora`. Returns the :class:`Adapters` view the engine saves."""
    names = target_names(model, lora["target"])
    extra = trainable_names(model, list(trainable or []))
    inject(model, names, lora["rank"], lora["alpha"], lora["dropout"])
    model.requires_grad_(False)
    renamed = {n: n for n in extra}
    for n in extra:  # a targeted layer's own weight now lives under base_layer
        for suffix in (".weight", ".bias"):
            if n.endswith(suffix) and n[: -len(suffix)] in names:
                renamed[n] = n[: -len(suffix)] + ".base_layer" + suffix
    keys = [k for k, _ in model.named_parameters() if ".lora_" in k] + list(renamed.values())
    params = dict(model.named_parameters())
    for k in keys:
        params[k].requires_grad_(True)
    info = {"rank": lora["rank"], "alpha": lora["alpha"], "dropout": lora["dropout"], "targets": names}
    return Adapters(model, keys, info, list(trainable or []))


class Adapters:
    """The trainable tensors of a LoRA model as one state dict: what checkpoints save and load
    (``state_dict`` / ``load_state_dict`` / ``parameters`` like a module, nothing else)."""

    def __init__(self, model: nn.Module, keys: list[str], lora: dict[str, Any], trainable: list[str]):
        self.model, self.keys, self.lora, self.trainable = model, list(keys), lora, trainable

    def view(self, module: nn.Module) -> Adapters:
        """The same tensors of a copy of the model (the EMA)."""
        return Adapters(module, self.keys, self.lora, self.trainable)

    def parameters(self):
        params = dict(self.model.named_parameters())
        return iter([params[k] for k in self.keys])

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = self.model.state_dict()
        return {k: sd[k] for k in self.keys}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        missing, unexpected = sorted(set(self.keys) - set(sd)), sorted(set(sd) - set(self.keys))
        if missing or unexpected:
            raise CheckpointError(f"adapter tensors do not match this LoRA model: {len(missing)} missing (e.g. "
                                  f"{missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); check "
                                  f"lora.target / rank / trainable")
        self.model.load_state_dict(sd, strict=False)

    def metadata(self, base: dict[str, Any]) -> dict[str, str]:
        return {"lora": json.dumps(self.lora), "trainable": json.dumps(self.trainable), "base": json.dumps(base),
                "lora_format": FORMAT}


def shared_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` sharing its frozen parameters (an EMA that holds only the trainable ones)."""
    import copy

    return copy.deepcopy(model, {id(p): p for p in model.parameters() if not p.requires_grad})


# ---------------------------------------------------------------------------- inference
def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata with ``lora`` / ``trainable`` / ``base`` decoded) of an adapter file."""
    from safetensors import safe_open

    p = Path(str(path))
    if not p.is_file():
        raise CheckpointError(f"adapter {str(p)!r} does not exist; give a LoRA run's step_N.ema.safetensors "
                              f"(or step_N.safetensors)")
    with safe_open(str(p), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("lora_format") != FORMAT:
        raise CheckpointError(f"{p} is not a LoRA adapter file (no lora metadata: it holds full weights?); give "
                              f"the checkpoint of a run trained with lora: set, or load it as test_model")
    for key in ("lora", "trainable", "base"):
        meta[key] = json.loads(meta[key])
    return read_state_dict(p), meta


def check_entries(entries: Any) -> list[dict[str, Any]]:
    """Inference ``lora: [{path, scale}]`` with scale defaulting to 1; ConfigError otherwise."""
    if entries in (None, False, []):
        return []
    if not isinstance(entries, list):
        entries = [entries]
    out = []
    for i, e in enumerate(entries):
        if isinstance(e, str):
            e = {"path": e}
        if not (isinstance(e, dict) and isinstance(e.get("path"), str) and set(e) <= {"path", "scale"}):
            raise ConfigError(f"lora[{i}]={e!r} is not allowed: give {{path: ADAPTER.safetensors, scale: 1.0}} "
                              f"(keys path, scale)")
        s = e.get("scale", 1.0)
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise ConfigError(f"lora[{i}].scale={s!r} is not allowed: a number (1.0: as trained, 0: off)")
        out.append({"path": e["path"], "scale": float(s)})
    return out


def load_adapters(model: nn.Module, entries: list[dict[str, Any]], base: dict[str, Any],
                  merge: bool = False) -> list[str]:
    """Add the adapters ``entries`` ([{path, scale}]) to ``model`` (its base weights loaded), each
    checked against ``base`` (:func:`base_identity`); ``merge``: fold them into the base weights and
    remove the LoRA layers. Returns the adapter names (``lora0``, ``lora1`` ...)."""
    names, seen_extra = [], {}
    for i, e in enumerate(check_entries(entries)):
        sd, meta = read_adapter(e["path"])
        check_base(e["path"], meta["base"], base)
        name, info = f"lora{i}", meta["lora"]
        inject(model, info["targets"], info["rank"], info["alpha"], 0.0, adapter=name)
        lora_sd = {k.replace(".lora_A.default.", f".lora_A.{name}.").replace(".lora_B.default.", f".lora_B.{name}."):
                   v for k, v in sd.items() if ".lora_" in k}
        extra = {k: v for k, v in sd.items() if ".lora_" not in k}
        for k in extra:
            if k in seen_extra:
                raise CheckpointError(f"adapters {seen_extra[k]} and {e['path']} both replace {k}; use one of them")
            seen_extra[k] = e["path"]
        own = model.state_dict()
        bad = sorted(set(lora_sd) - set(own)) + sorted(k for k in extra if k not in own)
        if bad:
            raise CheckpointError(f"adapter {e['path']}: {len(bad)} tensors have no place in this model (e.g. "
                                  f"{bad[:3]}); it was trained on another architecture")
        model.load_state_dict({**lora_sd, **extra}, strict=False)
        for _, layer in _lora_layers(model):
            if name in layer.lora_A:
                layer.set_scale(name, e["scale"])
        names.append(name)
        logger.info("adapter %s: rank %d on %d layers, scale %g%s", e["path"], info["rank"], len(info["targets"]),
                    e["scale"], f", {len(extra)} full tensors" if extra else "")
    for _, layer in _lora_layers(model):
        layer.set_adapter(names)
        layer.requires_grad_(False)
    if merge and names:
        merge_adapters(model)
    return names


@torch.no_grad()
def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every active adapter into its base layer and put the plain layer back (in place)."""
    for name, layer in _lora_layers(model):
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    return model


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under the base names (``x.base_layer.weight`` -> ``x.weight``), adapters
    left out: what a plain model of the architecture loads."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}


def export_merged(base: str | Path, entries: list[dict[str, Any]], dst: str | Path,
                  dtype: str | None = "float16") -> Path:
    """Full weights of ``base`` with the adapters ``entries`` merged in, as one safetensors file
    that loads as ``test_model`` (the model is built from the first adapter's stored run config;
    ``base`` is a weights file, or a folder its ``pretrain`` loader reads)."""
    import yaml
    from easydict import EasyDict

    from tools.stack import build_stack
    from utils.checkpoint import load_weights, save_weights
    from utils.registry import PRETRAIN

    entries = check_entries(entries)
    if not entries:
        raise ConfigError("export with --lora needs at least one adapter file")
    _, meta = read_adapter(entries[0]["path"])
    cfg = EasyDict(yaml.safe_load(meta["config"]))
    model = build_stack(cfg).model.eval()
    if Path(str(base)).is_dir():
        PRETRAIN.build({**(cfg.get("pretrain") or {}), "path": str(base)}, "pretrain", model=model)
    else:
        load_weights(model, Path(str(base)), strict=True)
    load_adapters(model, entries, base_identity(model, base), merge=True)
    sd = model.state_dict()
    if dtype:
        target = getattr(torch, dtype)
        sd = {k: v.to(target) if v.is_floating_point() and k != "_extra_state" else v for k, v in sd.items()}
    info = {"config": meta["config"], "format": "nextclip-1", "exported_from": str(base),
            "merged_lora": json.dumps(entries), **({"stored_dtype": dtype} if dtype else {})}
    save_weights(Path(str(dst)), sd, info)
    return Path(str(dst))
