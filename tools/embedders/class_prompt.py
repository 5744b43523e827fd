"""Class labels through a text encoder: each class is a prompt (zero-shot class conditioning).

A text-conditional model then also generates from class labels with no class table of its
own, the way CLIP-style models turn labels into prompts: ``ClassPrompt`` maps each label to
its prompt and returns the wrapped text embedder's features of it. The demo v2 model is
trained on captions of which some leave the colours out (``SyntheticPhysics(caption_drop=)``),
so the (count, gravity) class prompts are captions it has seen.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from utils.registry import EMBEDDER

from .class_label import label_index


def read_prompts(path: str) -> tuple[list, list]:
    """A prompts file -> (class names, prompts). One class per line, in class-id order:
    ``name|prompt`` or just ``prompt`` (the name is then the prompt); ``#`` lines and blank
    lines are skipped."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"ClassPrompt prompts_file={str(path)!r} does not exist; give a text file with one "
                                f"'name|prompt' (or 'prompt') line per class, in class-id order")
    names, prompts = [], []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, prompt = line.partition("|")
        name, prompt = (name.strip(), prompt.strip()) if sep else (line, line)
        if not name or not prompt:
            raise ValueError(f"{p}:{n}: {line!r} must be 'name|prompt' with both parts non-empty")
        names.append(name)
        prompts.append(prompt)
    return names, prompts


@EMBEDDER.register_class()
class ClassPrompt(nn.Module):
    """Class label -> its prompt -> a text embedder's ``(tokens, mask)``.

    ``text``: the text EMBEDDER config (e.g. ``{type: MiniLMText, max_tokens: 32}``; it must be
    the one the model was trained with). ``prompts`` (one per class, in class-id order) or
    ``prompts_file`` (see :func:`read_prompts`); ``class_names`` (optional with ``prompts``)
    lets labels be given by name. A label is an int id, an int string, a class name or 0-d
    tensor; ``None`` is the null condition (the text embedder's, the empty caption).
    Holds no weights of its own (frozen text encoders are not in ``state_dict``).
    """

    def __init__(self, text: dict, prompts: Sequence[str] | None = None, prompts_file: str | None = None,
                 class_names: Sequence[str] | None = None):
        super().__init__()
        if (prompts is None) == (prompts_file is None):
            raise ValueError("ClassPrompt needs exactly one of prompts (a list, one per class) or prompts_file "
                             f"(got prompts={prompts!r}, prompts_file={prompts_file!r})")
        if prompts_file is not None:
            if class_names is not None:
                raise ValueError("ClassPrompt: class_names come from prompts_file ('name|prompt' lines); "
                                 "remove class_names")
            class_names, prompts = read_prompts(prompts_file)
        prompts = [str(p) for p in prompts]
        if not prompts or any(not p.strip() for p in prompts):
            raise ValueError(f"ClassPrompt prompts must be non-empty strings, got {prompts[:10]!r}")
        names = [str(c) for c in class_names] if class_names is not None else list(prompts)
        if len(names) != len(prompts) or len(set(names)) != len(names):
            raise ValueError(f"ClassPrompt: {len(prompts)} prompts need as many distinct class names, got "
                             f"{len(names)} ({len(set(names))} distinct): {names[:10]}")
        if not isinstance(text, dict) or "type" not in text:
            raise ValueError(f"ClassPrompt text={text!r} must be a text EMBEDDER config, e.g. "
                             f"{{type: MiniLMText, max_tokens: 32}}")
        self.text = EMBEDDER.build(dict(text))
        if not hasattr(self.text, "dim") or not getattr(self.text, "num_tokens", 0):
            raise ValueError(f"ClassPrompt text={text['type']!r} makes no condition tokens; use a text embedder "
                             f"(MiniLMText, OpenCLIPText)")
        self.prompts, self.class_names, self.num_classes = prompts, names, len(prompts)
        self._name_to_id = {n: i for i, n in enumerate(names)}
        self.dim, self.num_tokens = self.text.dim, self.text.num_tokens

    def label_id(self, c) -> int | None:
        """One condition -> class id (None for the null condition); ValueError naming what is allowed."""
        return None if c is None else label_index(c, self._name_to_id, self.num_classes, self._bad)

    def _bad(self, c) -> str:
        more = "..." if self.num_classes > 12 else ""
        return (f"unknown class label {c!r}: expected an int in 0..{self.num_classes - 1} or one of the names "
                f"{self.class_names[:12]}{more}; check the dataset's label_mode and ClassPrompt's prompts")

    def prompt_of(self, c) -> str | None:
        i = self.label_id(c)
        return None if i is None else self.prompts[i]

    def forward(self, conds) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_tensor(conds):
            conds = conds.reshape(-1).tolist()
        return self.text([self.prompt_of(c) for c in conds])

    def null(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text.null(batch_size)
