"""Base class for video autoencoders (uint8 <-> [-1, 1] conversions live in utils.video_io)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class VideoAutoencoder(nn.Module):
    """Interface of every video autoencoder: chunked encode/decode with latent scale/shift.

    ``encode(x)`` maps pixels (B, C, T, H, W) in [-1, 1] to normalized latents
    ``(raw - shift_factor) * scale_factor`` of shape
    (B, latent_channels, T / temporal_factor, H / spatial_factor, W / spatial_factor);
    ``decode`` inverts it. Frames are processed ``chunk_size`` at a time (None = all at
    once) to bound memory; subclasses implement ``_encode_chunk`` / ``_decode_chunk`` on
    raw (un-normalized) latents.
    """

    in_channels: int = 3
    latent_channels: int = 3
    spatial_factor: int = 1
    temporal_factor: int = 1
    scale_factor: float = 1.0
    shift_factor: float = 0.0

    def __init__(self, chunk_size: Optional[int] = None):
        super().__init__()
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size={chunk_size!r} must be a positive int (frames per chunk) or null.")
        self.chunk_size = chunk_size

    # subclasses ------------------------------------------------------------
    def _encode_chunk(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, t, H, W) -> raw latents
        raise NotImplementedError

    def _decode_chunk(self, z: torch.Tensor) -> torch.Tensor:  # raw latents -> (B, C, t, H, W)
        raise NotImplementedError

    # public ----------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}.encode expects (B, {self.in_channels}, T, H, W) pixels, "
                             f"got shape {tuple(x.shape)}.")
        T, H, W = x.shape[2:]
        if T % self.temporal_factor or H % self.spatial_factor or W % self.spatial_factor:
            raise ValueError(f"{type(self).__name__}: T={T} must be a multiple of temporal_factor="
                             f"{self.temporal_factor} and H, W={H}, {W} multiples of spatial_factor="
                             f"{self.spatial_factor}; crop or resize the video.")
        step = self._chunk(self.chunk_size, self.temporal_factor, "chunk_size")
        chunks = [self._encode_chunk(c) for c in x.split(step or T, dim=2)]
        z = torch.cat(chunks, dim=2)
        return (z - self.shift_factor) * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"{type(self).__name__}.decode expects (B, {self.latent_channels}, t, h, w) "
                             f"latents, got shape {tuple(z.shape)}.")
        step = self._chunk(self.chunk_size, self.temporal_factor, "chunk_size")
        step = step // self.temporal_factor if step else z.shape[2]
        z = z / self.scale_factor + self.shift_factor
        return torch.cat([self._decode_chunk(c) for c in z.split(step, dim=2)], dim=2)

    @staticmethod
    def _chunk(chunk_size, factor, name):
        if chunk_size is not None and chunk_size % factor:
            raise ValueError(f"{name}={chunk_size} must be a multiple of temporal_factor={factor}.")
        return chunk_size

    def extra_repr(self) -> str:
        return (f"latent_channels={self.latent_channels}, spatial_factor={self.spatial_factor}, "
                f"temporal_factor={self.temporal_factor}, scale_factor={self.scale_factor}, "
                f"shift_factor={self.shift_factor}, chunk_size={self.chunk_size}")
