"""Pixel-space "autoencoder": latents are the pixels themselves."""
from __future__ import annotations

from typing import Optional

from tools.autoencoders.base import VideoAutoencoder
from utils.registry import AUTO_ENCODER


@AUTO_ENCODER.register_class()
class Identity(VideoAutoencoder):
    """Pixel space: encode/decode are the identity (3 channels, factors 1, scale 1, shift 0)."""

    latent_channels = 3
    spatial_factor = 1
    temporal_factor = 1
    scale_factor = 1.0
    shift_factor = 0.0

    def __init__(self, chunk_size: Optional[int] = None):
        super().__init__(chunk_size=chunk_size)

    def _encode_chunk(self, x):
        return x

    def _decode_chunk(self, z):
        return z
