"""Base class for video autoencoders (uint8 <-> [-1, 1] conversions live in utils.video_io).

Frame arithmetic (one place for the whole project). With ``temporal_factor`` f:

* ``causal = False`` (frame-wise image VAEs, f = 1, or plain temporal pooling): T pixel frames
  <-> T / f latent frames, T a multiple of f;
* ``causal = True`` (causal video VAEs, f = 4 in the Open-Sora Plan / WF-VAE family): the first
  frame is encoded alone, so T = 1 + f k pixel frames <-> 1 + k latent frames and an image is a
  one-frame video.

``latent_frames`` / ``pixel_frames`` / ``check_frames`` below are what engines, the predictor,
the latent cache and visuals use; nothing else divides by ``temporal_factor``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from utils.config import ConfigError


class VideoAutoencoder(nn.Module):
    """Interface of every video autoencoder: chunked encode/decode with latent scale/shift.

    ``encode(x)`` maps pixels (B, C, T, H, W) in [-1, 1] to normalized latents
    ``(raw - shift_factor) * scale_factor`` of shape
    (B, latent_channels, latent_frames(T), H / spatial_factor, W / spatial_factor);
    ``decode`` inverts it. Frames are processed ``chunk_size`` at a time (None = all at
    once) to bound memory; subclasses implement ``_encode_chunk`` / ``_decode_chunk`` on
    raw (un-normalized) latents. A variational subclass (``variational = True``) returns
    the posterior moments (mean, logvar concatenated on channels) from ``_encode_chunk``;
    ``encode`` then returns the mean, or with ``sample_posterior`` and a ``generator`` passed
    in (the training step generator) a draw whose noise comes from it; the global RNG is never
    used (no generator: the mean, e.g. for inference contexts and latent caches).
    """

    in_channels: int = 3
    latent_channels: int = 3
    spatial_factor: int = 1
    temporal_factor: int = 1
    causal: bool = False          # first frame encoded alone: T = 1 + temporal_factor * k
    variational: bool = False     # _encode_chunk returns (mean, logvar) on channels
    scale_factor: float = 1.0
    shift_factor: float = 0.0

    def __init__(self, chunk_size: Optional[int] = None, sample_posterior: bool = False):
        super().__init__()
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                       or chunk_size < 1):
            raise ValueError(f"chunk_size={chunk_size!r} must be a positive int (frames per chunk) or null.")
        self.chunk_size = chunk_size
        self.sample_posterior = bool(sample_posterior)

    # frame arithmetic (the module functions below, as methods) ----------------
    def valid_frames(self, T: int) -> bool:
        return valid_frames(self, T)

    def frames_rule(self) -> str:
        return frames_rule(self)

    def nearest_frames(self, T: int) -> int:
        return nearest_frames(self, T)

    def latent_frames(self, T: int) -> int:
        return latent_frames(self, T)

    def pixel_frames(self, t: int) -> int:
        return pixel_frames(self, t)

    def check_frames(self, T: int, what: str = "T") -> None:
        check_frames(self, T, what)

    # subclasses ------------------------------------------------------------
    def _encode_chunk(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, t, H, W) -> raw latents (or moments)
        raise NotImplementedError

    def _decode_chunk(self, z: torch.Tensor) -> torch.Tensor:  # raw latents -> (B, C, t, H, W)
        raise NotImplementedError

    def _encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        """All frames -> raw latents (or moments), ``chunk_size`` pixel frames at a time.
        Causal autoencoders carry state across chunks and override this."""
        step = self._chunk(self.chunk_size, self.temporal_factor, "chunk_size")
        return torch.cat([self._encode_chunk(c) for c in x.split(step or x.shape[2], dim=2)], dim=2)

    def _decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        step = self._chunk(self.chunk_size, self.temporal_factor, "chunk_size")
        step = step // self.temporal_factor if step else z.shape[2]
        return torch.cat([self._decode_chunk(c) for c in z.split(step, dim=2)], dim=2)

    # public ----------------------------------------------------------------
    def encode(self, x: torch.Tensor, generator: Optional[torch.Generator] = None,
               rank_slice: Tuple[int, int] = (0, 1)) -> torch.Tensor:
        """Pixels -> normalized latents. With ``sample_posterior`` the posterior noise is drawn from
        ``generator`` for the GLOBAL batch (B * world) and sliced to this rank (``rank_slice``), so
        N processes draw what one process with the global batch would."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}.encode expects (B, {self.in_channels}, T, H, W) pixels, "
                             f"got shape {tuple(x.shape)}.")
        T, H, W = x.shape[2:]
        if not self.valid_frames(T):  # each rule named only when it is broken
            raise ValueError(f"{type(self).__name__}: T={T} frames cannot be encoded: it takes {self.frames_rule()} "
                             f"(temporal_factor={self.temporal_factor}{', causal' if self.causal else ''}); "
                             f"use e.g. {self.nearest_frames(T)} frames.")
        check_resolution(self, (H, W), "the video's H, W")
        z = self._encode_frames(x)
        if self.variational:
            z = self._posterior(z, generator, rank_slice)
        return (z - self.shift_factor) * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"{type(self).__name__}.decode expects (B, {self.latent_channels}, t, h, w) "
                             f"latents, got shape {tuple(z.shape)}.")
        return self._decode_frames(z / self.scale_factor + self.shift_factor)

    def _posterior(self, moments: torch.Tensor, generator: Optional[torch.Generator],
                   rank_slice: Tuple[int, int]) -> torch.Tensor:
        mean, logvar = moments.chunk(2, dim=1)
        if not self.sample_posterior or generator is None:  # never the global RNG
            return mean
        rank, world = rank_slice
        B = mean.shape[0]
        noise = torch.randn((B * world, *mean.shape[1:]), generator=generator)[rank * B:(rank + 1) * B]
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return mean + std * noise.to(device=mean.device, dtype=mean.dtype)

    @staticmethod
    def _chunk(chunk_size, factor, name):
        if chunk_size is not None and chunk_size % factor:
            raise ValueError(f"{name}={chunk_size} must be a multiple of temporal_factor={factor}.")
        return chunk_size

    def extra_repr(self) -> str:
        return (f"latent_channels={self.latent_channels}, spatial_factor={self.spatial_factor}, "
                f"temporal_factor={self.temporal_factor}, causal={self.causal}, scale_factor={self.scale_factor}, "
                f"shift_factor={self.shift_factor}, chunk_size={self.chunk_size}")


# ---------------------------------------------------------------------------- frame arithmetic
# Functions of any AUTO_ENCODER (also one written to the registry's plain contract: only
# ``temporal_factor``, no ``causal`` attribute = not causal).
def _factor(ae) -> Tuple[int, bool]:
    return int(getattr(ae, "temporal_factor", 1) or 1), bool(getattr(ae, "causal", False))


def valid_frames(ae, T: int) -> bool:
    """True if ``T`` pixel frames can be encoded (1 + f k when causal, f k otherwise)."""
    f, causal = _factor(ae)
    return T >= 1 and ((T - 1) % f == 0 if causal else T % f == 0)


def frames_rule(ae) -> str:
    """The allowed pixel frame counts, in words (for error messages)."""
    f, causal = _factor(ae)
    if f == 1:
        return "any number >= 1"
    return f"1 + {f} k (1, {1 + f}, {1 + 2 * f}, ...)" if causal else f"a multiple of {f}"


def nearest_frames(ae, T: int) -> int:
    """The valid pixel frame count nearest to T (the smaller one on a tie; at least the smallest valid one)."""
    f, causal = _factor(ae)
    base = 1 if causal else 0
    below = base + (T - base) // f * f
    best = below if T - below <= below + f - T else below + f
    return max(best, 1 if causal else f)


def latent_frames(ae, T: int) -> int:
    """Latent frames of ``T`` pixel frames (``check_frames`` first for a user value)."""
    f, causal = _factor(ae)
    return 1 + (T - 1) // f if causal else T // f


def pixel_frames(ae, t: int) -> int:
    """Pixel frames decoded from ``t`` latent frames."""
    f, causal = _factor(ae)
    return 1 + (t - 1) * f if causal else t * f


def check_frames(ae, T: int, what: str = "T") -> None:
    """ValueError naming ``what`` unless ``T`` pixel frames can be encoded."""
    if not valid_frames(ae, int(T)):
        f, causal = _factor(ae)
        raise ValueError(f"{what}={T}: {type(ae).__name__} (temporal_factor {f}{', causal' if causal else ''}) "
                         f"encodes {frames_rule(ae)} frames; use e.g. {what}={nearest_frames(ae, int(T))}")


def check_resolution(ae, hw, what: str = "dataset.resolution", patch: int = 1) -> None:
    """ValueError naming ``what`` unless H and W of ``hw`` (an int or [H, W]) are multiples of the
    autoencoder's ``spatial_factor`` x ``patch`` (the model's patch size on the latents)."""
    sf = int(getattr(ae, "spatial_factor", 1) or 1)
    m = sf * max(1, int(patch))
    H, W = (hw, hw) if isinstance(hw, int) else (int(hw[0]), int(hw[1]))
    if H % m or W % m:
        fix = [max(m, round(x / m) * m) for x in (H, W)]
        by = f"spatial_factor={sf}" + (f" x the model's patch_size={patch}" if patch > 1 else "")
        shown = hw if isinstance(hw, int) else [H, W]
        raise ValueError(f"{what}={shown}: H and W must be multiples of {m} (the {type(ae).__name__}'s {by}); "
                         f"use e.g. {what}={fix[0] if isinstance(hw, int) and fix[0] == fix[1] else fix}")


def probe_autoencoder(ae_cfg: Optional[Mapping[str, Any]], key_path: str = "auto_encoder"):
    """The autoencoder of ``ae_cfg`` built on the meta device without its weights, for checks before a
    run starts (its factors and channels; ``--dry-run``). A bad setting raises the registry's
    BuildError naming it. None when the autoencoder needs files to know its shape (a required
    argument such as AutoencoderKL's ``path``): the engine checks it once it is built."""
    import inspect

    from utils.registry import AUTO_ENCODER

    if not ae_cfg or ae_cfg.get("type") not in AUTO_ENCODER:
        return None
    cls = AUTO_ENCODER.get(ae_cfg["type"])
    params = inspect.signature(cls).parameters.values()
    if any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
           for p in params):
        return None
    with torch.device("meta"):
        return AUTO_ENCODER.build({k: v for k, v in ae_cfg.items() if k != "weights"}, key_path)


def encode(ae, x: torch.Tensor, generator: Optional[torch.Generator] = None,
           rank_slice: Tuple[int, int] = (0, 1)) -> torch.Tensor:
    """``ae.encode`` with the step generator for a stochastic encode (VideoAutoencoder subclasses);
    an autoencoder written to the plain contract ``encode(x)`` is called as such."""
    if isinstance(ae, VideoAutoencoder):
        return ae.encode(x, generator=generator, rank_slice=rank_slice)
    return ae.encode(x)


def model_cfg_with_channels(model_cfg: Mapping[str, Any], autoencoder, ae_type: str = "") -> Dict[str, Any]:
    """The model config with ``in_channels`` = the autoencoder's ``latent_channels`` unless the config
    sets it; a set value that differs could never run: ConfigError naming both."""

    cfg = dict(model_cfg)
    have, want = cfg.get("in_channels"), int(autoencoder.latent_channels)
    if have is None:
        cfg["in_channels"] = want
    elif have != want:
        name = ae_type or type(autoencoder).__name__
        raise ConfigError(f"model.in_channels={have!r} but the auto_encoder {name} makes {want}-channel latents; "
                         f"remove model.in_channels (it follows the auto_encoder) or set it to {want}")
    return cfg
