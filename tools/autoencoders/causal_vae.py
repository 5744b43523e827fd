"""AUTO_ENCODER ``CausalVAE``: a small causal video VAE the project trains (ENGINE train_autoencoder).

Design (after the Open-Sora Plan CausalVAE / WF-VAE family): causal 3-D convolutions (time is
padded on the left only, with copies of the first frame), two temporal stride-2 downsamples
(temporal factor 4) and three spatial ones (factor 8). The first frame is encoded alone: T = 1 + 4k
pixel frames <-> 1 + k latent frames, and an image is a one-frame video.

Residual shortcuts (``shortcut: true``, after DC-AE's "residual autoencoding", Chen et al. 2024):
every down/upsampling block and the latent bottleneck add a parameter-free path, space(-time)-to-
channel with channel averaging down, channel repeats and channel(-time)-to-space up, so the convs
learn a residual on top of a lossy copy of their input. Without them this small VAE stays in a
blurred, colourless solution (measured: batch PSNR ~17 dB from step 130 to 1500 on the demo; with
them it passes the mean-frame baseline within 100 steps; README "Latent space").

Long videos are encoded and decoded in chunks of ``chunk_size`` pixel frames (the first chunk
1 + chunk_size): every causal conv keeps the frames the next chunk needs (a causal cache), so
chunked results equal whole-video results. Normalization is per position (a LayerNorm over
channels, no statistics over time or space), so large frames can be cut into spatial tiles
(``tile_size`` pixels) with a margin of the network's receptive field: tiled results equal
untiled ones and there are no seams.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from tools.autoencoders.base import VideoAutoencoder
from utils.registry import AUTO_ENCODER


class CausalConv3d(nn.Module):
    """Conv3d causal in time. Whole video: left pad of ``kt - 1`` copies of the first frame.
    Streaming (``self.stream = True``): the previous chunk's unconsumed frames are the left pad."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: Tuple[int, int] = (1, 1)):
        super().__init__()
        self.kt, self.st = kernel, stride[0]
        self.conv = nn.Conv3d(cin, cout, kernel, stride=(stride[0], stride[1], stride[1]),
                              padding=(0, kernel // 2, kernel // 2))
        self.stream, self.cache = False, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        if self.cache is not None:
            x = torch.cat([self.cache, x], dim=2)
        elif self.kt > 1:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1), x], dim=2)
        n = (x.shape[2] - self.kt) // self.st + 1  # output frames
        if self.stream:
            self.cache = x[:, :, self.st * n:]
        return self.conv(x)


class ChannelNorm(nn.Module):
    """LayerNorm over channels at every (t, h, w): no statistics across time or space."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.n1, self.c1 = ChannelNorm(cin), CausalConv3d(cin, cout)
        self.n2, self.c2 = ChannelNorm(cout), CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


def channel_fit(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Parameter-free channel change of a residual shortcut (DC-AE's "residual autoencoding"):
    mean over groups of consecutive channels (fewer out) or repeats of each channel (more out)."""
    cin = x.shape[1]
    if cin == channels:
        return x
    if cin % channels == 0:
        return x.unflatten(1, (channels, cin // channels)).mean(2)
    return x.repeat_interleave(channels // cin, dim=1)


def fits(cin: int, cout: int) -> bool:
    """Whether ``channel_fit`` can map ``cin`` to ``cout`` channels."""
    return cin % cout == 0 or cout % cin == 0


class Downsample(nn.Module):
    """Stride-2 causal conv in space (and time with ``temporal``: 1 + 2k -> 1 + k frames), plus,
    with ``shortcut``, a parameter-free residual: space(-time)-to-channel of the input, channels
    averaged to ``cout`` (DC-AE). Time pairs are (2j - 1, 2j), the video's first frame paired
    with itself, so an image stays one frame and chunks of even length line up."""

    def __init__(self, cin: int, cout: int, temporal: bool, shortcut: bool = True):
        super().__init__()
        self.temporal = temporal
        self.conv = CausalConv3d(cin, cout, stride=(2 if temporal else 1, 2))
        self.shortcut = shortcut and fits(cin * (8 if temporal else 4), cout)
        self.cout = cout
        self.at_start = True  # the next frame is the video's first (set by CausalVAE while streaming)

    def _space_to_channel(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        if not self.temporal:
            x = x.reshape(B, C, T, H // 2, 2, W // 2, 2).permute(0, 1, 4, 6, 2, 3, 5)
            return x.reshape(B, 4 * C, T, H // 2, W // 2)
        if self.at_start:
            x, T = torch.cat([x[:, :, :1], x], dim=2), T + 1
        x = x.reshape(B, C, T // 2, 2, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(B, 8 * C, T // 2, H // 2, W // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + channel_fit(self._space_to_channel(x), self.cout) if self.shortcut else y


class Upsample(nn.Module):
    """2x nearest in space and a conv to ``cout``; with ``temporal``, each frame -> 2 frames (conv
    to 2C, depth to time) and the video's very first frame -> 1 (causal: 1 + k -> 1 + 2k). With
    ``shortcut``, plus the parameter-free inverse of Downsample's: channels repeated to ``cout``
    x 4 (x 8) and moved to space (and time)."""

    def __init__(self, cin: int, cout: int, temporal: bool, shortcut: bool = True):
        super().__init__()
        self.temporal = temporal
        self.time_conv = CausalConv3d(cin, 2 * cin) if temporal else None
        self.conv = CausalConv3d(cin, cout)
        self.cout = cout
        self.shortcut = shortcut and fits(cin, cout * (8 if temporal else 4))
        self.at_start = True  # the next frame is the video's first (set by CausalVAE while streaming)

    def _channel_to_space(self, x: torch.Tensor) -> torch.Tensor:
        B, _, T, H, W = x.shape
        C = self.cout
        if not self.temporal:
            x = channel_fit(x, 4 * C).reshape(B, C, 2, 2, T, H, W).permute(0, 1, 4, 5, 2, 6, 3)
            return x.reshape(B, C, T, 2 * H, 2 * W)
        x = channel_fit(x, 8 * C).reshape(B, C, 2, 2, 2, T, H, W).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(B, C, 2 * T, 2 * H, 2 * W)
        return x[:, :, 1:] if self.at_start else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self._channel_to_space(x) if self.shortcut else None
        if self.temporal:
            B, C, T, H, W = x.shape
            x = self.time_conv(x).reshape(B, 2, C, T, H, W).permute(0, 2, 3, 1, 4, 5).reshape(B, C, 2 * T, H, W)
            if self.at_start:
                x = x[:, :, 1:]
        B, C, T, H, W = x.shape
        x = F.interpolate(x.transpose(1, 2).reshape(B * T, C, H, W), scale_factor=2.0, mode="nearest")
        y = self.conv(x.reshape(B, T, C, 2 * H, 2 * W).transpose(1, 2))
        return y if skip is None else y + skip


class Encoder(nn.Module):
    def __init__(self, chans: Sequence[int], temporal: Sequence[bool], latent_channels: int, blocks: int,
                 shortcut: bool = True):
        super().__init__()
        self.conv_in = CausalConv3d(3, chans[0])
        layers: List[nn.Module] = []
        for i in range(len(chans) - 1):
            layers += [ResBlock(chans[i], chans[i]) for _ in range(blocks)]
            layers.append(Downsample(chans[i], chans[i + 1], temporal[i], shortcut))
        self.down = nn.Sequential(*layers)
        self.mid = ResBlock(chans[-1], chans[-1])
        self.norm, self.conv_out = ChannelNorm(chans[-1]), CausalConv3d(chans[-1], 2 * latent_channels)
        self.latent_channels = latent_channels
        self.shortcut = shortcut and fits(chans[-1], latent_channels)

    def init_logvar(self, value: float) -> None:
        """Start the posterior nearly deterministic: logvar = ``value`` everywhere (zero weights, constant
        bias). With the default init (logvar ~ 0, std ~ 1) the decoder first sees latents buried in unit
        noise and learns only the background."""
        half = self.conv_out.conv.out_channels // 2
        with torch.no_grad():
            self.conv_out.conv.weight[half:].zero_()
            self.conv_out.conv.bias[half:].fill_(float(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pixels -> moments (mean, logvar)
        h = self.mid(self.down(self.conv_in(x)))
        moments = self.conv_out(F.silu(self.norm(h)))
        if not self.shortcut:
            return moments
        mean, logvar = moments.chunk(2, dim=1)  # the shortcut feeds the mean only
        return torch.cat([mean + channel_fit(h, self.latent_channels), logvar], dim=1)


class Decoder(nn.Module):
    def __init__(self, chans: Sequence[int], temporal: Sequence[bool], latent_channels: int, blocks: int,
                 shortcut: bool = True):
        super().__init__()
        self.conv_in = CausalConv3d(latent_channels, chans[-1])
        self.shortcut = shortcut and fits(latent_channels, chans[-1])
        self.mid = ResBlock(chans[-1], chans[-1])
        layers: List[nn.Module] = []
        for i in reversed(range(len(chans) - 1)):
            layers += [ResBlock(chans[i + 1], chans[i + 1]) for _ in range(blocks)]
            layers.append(Upsample(chans[i + 1], chans[i], temporal[i], shortcut))
        self.up = nn.Sequential(*layers)
        self.norm, self.conv_out = ChannelNorm(chans[0]), CausalConv3d(chans[0], 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        if self.shortcut:
            h = h + channel_fit(z, h.shape[1])
        return self.conv_out(F.silu(self.norm(self.up(self.mid(h)))))


def _check_sizes(latent_channels, base_channels, channel_mult, num_res_blocks) -> None:
    """ValueError naming the first size setting that could never build a network."""
    def is_int(v, lo):
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo

    if not is_int(latent_channels, 1):
        raise ValueError(f"latent_channels={latent_channels!r} must be an integer >= 1 (e.g. 4 or 8)")
    if not is_int(base_channels, 1):
        raise ValueError(f"base_channels={base_channels!r} must be an integer >= 1 (e.g. 32)")
    if not (isinstance(channel_mult, (list, tuple)) and channel_mult and all(is_int(m, 1) for m in channel_mult)):
        raise ValueError(f"channel_mult={channel_mult!r} must list one integer >= 1 per resolution level (its "
                         f"length - 1 is the number of 2x downsamples), e.g. [1, 2, 4, 4]")
    if not is_int(num_res_blocks, 0):
        raise ValueError(f"num_res_blocks={num_res_blocks!r} must be an integer >= 0 (e.g. 1)")


@AUTO_ENCODER.register_class()
class CausalVAE(VideoAutoencoder):
    """Causal video VAE: temporal 4 over 1+4k frames, spatial 8, chunked / tiled without seams; trainable."""

    causal = True
    variational = True
    trainable = True  # ENGINE train_autoencoder calls forward(x, generator, rank_slice)

    def __init__(self, latent_channels: int = 4, base_channels: int = 32, channel_mult: Sequence[int] = (1, 2, 4, 4),
                 temporal_downsample: Sequence[bool] = (True, True, False), num_res_blocks: int = 1,
                 weights: Optional[str] = None, scale_factor: float = 1.0, shift_factor: float = 0.0,
                 chunk_size: Optional[int] = None, tile_size: Optional[int] = None, sample_posterior: bool = False,
                 init_logvar: Optional[float] = -6.0, shortcut: bool = True):
        super().__init__(chunk_size=chunk_size, sample_posterior=sample_posterior)
        _check_sizes(latent_channels, base_channels, channel_mult, num_res_blocks)
        mult, temporal = list(channel_mult), [bool(t) for t in temporal_downsample]
        if len(temporal) != len(mult) - 1:
            raise ValueError(f"temporal_downsample={list(temporal_downsample)} needs one flag per downsample "
                             f"({len(mult) - 1} for channel_mult={mult}).")
        self.latent_channels = int(latent_channels)
        self.spatial_factor, self.temporal_factor = 2 ** (len(mult) - 1), 2 ** sum(temporal)
        self.scale_factor, self.shift_factor = float(scale_factor), float(shift_factor)
        chans = [int(base_channels * m) for m in mult]
        self.encoder = Encoder(chans, temporal, self.latent_channels, num_res_blocks, bool(shortcut))
        self.decoder = Decoder(chans, temporal, self.latent_channels, num_res_blocks, bool(shortcut))
        if init_logvar is not None:  # initial posterior std exp(init_logvar / 2) (0.05 for -6); null: torch's init
            self.encoder.init_logvar(init_logvar)
        self.enc_margin, self.dec_margin = self._margins(len(mult) - 1, num_res_blocks)
        if tile_size is not None and (tile_size < 1 or tile_size % self.spatial_factor):
            raise ValueError(f"tile_size={tile_size} must be a positive multiple of spatial_factor "
                             f"{self.spatial_factor} (pixels) or null (no tiling).")
        self.tile_size = tile_size
        if weights:
            from utils.checkpoint import load_weights

            load_weights(self, Path(weights), strict=True)

    @staticmethod
    def _margins(levels: int, blocks: int) -> Tuple[int, int]:
        """Receptive-field radius: of the encoder in pixels, of the decoder in latents (each 3x3 conv
        adds one unit of its input resolution)."""
        enc = 1 + sum((2 * blocks + 1) * 2 ** i for i in range(levels)) + 2 * 2 ** levels + 2 ** levels
        dec = 1 + 2 + sum((2 * blocks) / 2 ** (levels - 1 - i) + (1 + 1 / 2) / 2 ** (levels - 1 - i)
                          for i in range(levels)) + 1
        return enc, math.ceil(dec)

    # -- streaming over time ----------------------------------------------------------------
    @contextmanager
    def _streaming(self, net: nn.Module) -> Iterator[List[nn.Module]]:
        """Causal caches on; yields the blocks that treat the video's first frame specially
        (``at_start``), for the caller to clear after the first chunk; everything reset on exit."""
        convs = [m for m in net.modules() if isinstance(m, CausalConv3d)]
        starts = [m for m in net.modules() if isinstance(m, (Downsample, Upsample))]
        for m in convs:
            m.stream, m.cache = True, None
        try:
            yield starts
        finally:
            for m in convs:
                m.stream, m.cache = False, None
            for m in starts:
                m.at_start = True

    def _run(self, net: nn.Module, x: torch.Tensor, first: int, step: Optional[int]) -> torch.Tensor:
        """``net`` over time: all at once, or chunks ``[0, first)``, then ``step`` frames each."""
        if step is None or x.shape[2] <= first:
            return net(x)
        out = []
        with self._streaming(net) as starts:
            for i, c in enumerate([x[:, :, :first]] + list(x[:, :, first:].split(step, dim=2))):
                out.append(net(c))
                if i == 0:
                    for m in starts:
                        m.at_start = False
        return torch.cat(out, dim=2)

    def _encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        step = self._chunk(self.chunk_size, self.temporal_factor, "chunk_size")
        enc = lambda v: self._run(self.encoder, v, 1 + (step or 0), step)  # noqa: E731
        return self._tiled(enc, x, self.tile_size, self.enc_margin, self.spatial_factor, down=True)

    def _decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        step = self._chunk(self.chunk_size, self.temporal_factor, "chunk_size")
        lstep = step // self.temporal_factor if step else None
        dec = lambda v: self._run(self.decoder, v, 1 + (lstep or 0), lstep)  # noqa: E731
        tile = self.tile_size // self.spatial_factor if self.tile_size else None
        return self._tiled(dec, z, tile, self.dec_margin, self.spatial_factor, down=False)

    # -- spatial tiles ------------------------------------------------------------------------
    @staticmethod
    def _tiled(fn, x: torch.Tensor, tile: Optional[int], margin: int, factor: int, down: bool) -> torch.Tensor:
        """``fn`` over tiles of ``tile`` input pixels, each read with ``margin`` more on every side and
        cropped back: equal to ``fn(x)`` when ``margin`` covers the receptive field."""
        H, W = x.shape[-2:]
        if tile is None or (H <= tile and W <= tile):
            return fn(x)
        unit = factor if down else 1  # input margins stay aligned with the downsampling grid
        margin = -(-margin // unit) * unit
        rows = []
        for y0 in range(0, H, tile):
            cols = []
            for x0 in range(0, W, tile):
                ya, xa = max(0, y0 - margin), max(0, x0 - margin)
                yb, xb = min(H, y0 + tile + margin), min(W, x0 + tile + margin)
                out = fn(x[..., ya:yb, xa:xb])
                s = (1 / factor) if down else factor
                oy, ox = int((y0 - ya) * s), int((x0 - xa) * s)
                th, tw = int(min(tile, H - y0) * s), int(min(tile, W - x0) * s)
                cols.append(out[..., oy:oy + th, ox:ox + tw])
            rows.append(torch.cat(cols, dim=-1))
        return torch.cat(rows, dim=-2)

    # -- training -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None,
                rank_slice: Tuple[int, int] = (0, 1)) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: pixels -> (reconstruction, posterior mean, logvar); the latent is sampled with
        noise from ``generator`` (global batch, sliced per rank)."""
        self.check_frames(x.shape[2], "num_frames")
        moments = self.encoder(x)
        mean, logvar = moments.chunk(2, dim=1)
        rank, world = rank_slice
        B = x.shape[0]
        noise = torch.randn((B * world, *mean.shape[1:]), generator=generator)[rank * B:(rank + 1) * B]
        z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise.to(mean)
        return self.decoder(z), mean, logvar
