"""Pixel-space "autoencoder": latents are the pixels themselves."""
from __future__ import annotations

from tools.autoencoders.base import VideoAutoencoder
from utils.registry import AUTO_ENCODER


@AUTO_ENCODER.register_class()
class Identity(VideoAutoencoder):
    """Pixel space: encode/decode are the identity (factors 1, scale 1, shift 0).

    ``channels``: channels of the data (3 for RGB video; e.g. 4 for precomputed latents fed as
    "pixels", or 1 for grey frames)."""

    latent_channels = 3
    spatial_factor = 1
    temporal_factor = 1
    scale_factor = 1.0
    shift_factor = 0.0

    def __init__(self, chunk_size: int | None = None, channels: int = 3):
        super().__init__(chunk_size=chunk_size)
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"channels={channels!r} must be a positive int (3 for RGB video)")
        self.in_channels = self.latent_channels = channels

    def _encode_chunk(self, x):
        return x

    def _decode_chunk(self, z):
        return z
