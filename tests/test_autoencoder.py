import numpy as np
import pytest
import torch

from tools.autoencoders.base import VideoAutoencoder
from tools.autoencoders.identity import Identity
from utils.registry import AUTO_ENCODER


def test_identity_round_trip_and_attributes():
    ae = AUTO_ENCODER.build({"type": "Identity", "chunk_size": 3})
    attrs = (ae.latent_channels, ae.spatial_factor, ae.temporal_factor, ae.scale_factor, ae.shift_factor)
    assert attrs == (3, 1, 1, 1.0, 0.0)
    x = torch.rand(2, 3, 7, 5, 6) * 2 - 1
    z = ae.encode(x)
    assert torch.equal(z, x) and torch.equal(ae.decode(z), x)
    with pytest.raises(ValueError, match=r"expects \(B, 3, T, H, W\)"):
        ae.encode(torch.zeros(3, 7, 5, 6))
    with pytest.raises(ValueError, match="chunk_size=0"):
        Identity(chunk_size=0)


class Pool2(VideoAutoencoder):
    """Toy AE: 2x temporal and spatial average pooling, records chunk sizes."""
    latent_channels, spatial_factor, temporal_factor, scale_factor, shift_factor = 3, 2, 2, 0.5, 0.25

    def __init__(self, chunk_size=None):
        super().__init__(chunk_size)
        self.seen = []

    def _encode_chunk(self, x):
        self.seen.append(("enc", x.shape[2]))
        return torch.nn.functional.avg_pool3d(x, 2)

    def _decode_chunk(self, z):
        self.seen.append(("dec", z.shape[2]))
        return z.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)


def test_chunking_and_scale_shift():
    x = torch.randn(1, 3, 8, 4, 4)
    full, chunked = Pool2(), Pool2(chunk_size=4)
    z_full, z_chunk = full.encode(x), chunked.encode(x)
    assert z_full.shape == (1, 3, 4, 2, 2) and torch.allclose(z_full, z_chunk)
    raw = torch.nn.functional.avg_pool3d(x, 2)
    assert torch.allclose(z_full, (raw - 0.25) * 0.5)
    assert torch.allclose(chunked.decode(z_chunk), full.decode(z_full))
    assert chunked.seen == [("enc", 4), ("enc", 4), ("dec", 2), ("dec", 2)]
    up = raw.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    assert torch.allclose(full.decode(z_full), up)
    with pytest.raises(ValueError, match="multiple of temporal_factor"):
        Pool2(chunk_size=3).encode(x)
    with pytest.raises(ValueError, match="T=7"):
        Pool2().encode(torch.randn(1, 3, 7, 4, 4))


def test_identity_round_trips_uint8_frames():
    from utils.video_io import to_tensor, to_uint8

    frames = np.random.default_rng(0).integers(0, 256, size=(5, 4, 6, 3), dtype=np.uint8)
    ae = Identity()
    z = ae.encode(to_tensor(frames)[None])
    assert z.shape == (1, 3, 5, 4, 6) and z.min() >= -1 and z.max() <= 1
    assert np.array_equal(to_uint8(ae.decode(z)[0]), frames)
