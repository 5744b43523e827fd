"""Video metrics on videos in [-1, 1]: PSNR and SSIM per frame, the prediction baselines, and the
weight-free generation metrics (Fréchet distance, VBench temporal flicker, Physics-IQ-style motion scores)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _to01(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().clamp(-1, 1) + 1) / 2)


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """PSNR (dB) of each frame of (C, T, H, W) videos in [-1, 1], on the [0, 1] scale. -> (T,)"""
    mse = ((_to01(pred) - _to01(target)) ** 2).mean(dim=(0, 2, 3))
    return 10 * torch.log10(1.0 / (mse + eps))


def _valid_filter(n: int, size: int, sigma: float) -> torch.Tensor:
    """(n - size + 1, n) float64 band matrix: 'valid' filtering of a length-n axis with the normalised 1-D
    Gaussian of ``size`` taps and ``sigma``; SSIM's 2-D window is its outer product with itself."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    m = torch.zeros(n - size + 1, n, dtype=torch.float64)
    for i in range(n - size + 1):
        m[i, i:i + size] = g
    return m


def ssim_per_frame(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM of each frame (Wang et al. 2004: Gaussian window 11 / sigma 1.5, K1=0.01, K2=0.03,
    data range 1, 'valid' filtering, mean over channels). Frames smaller than the window use a
    window of the frame's size. (C, T, H, W) in [-1, 1] -> (T,)"""
    x = _to01(pred).double().permute(1, 0, 2, 3)  # (T, C, H, W); float64: var = E[x^2] - mu^2 cancels
    y = _to01(target).double().permute(1, 0, 2, 3)
    win = min(window, x.shape[-1], x.shape[-2])
    rows, cols = _valid_filter(x.shape[-2], win, sigma), _valid_filter(x.shape[-1], win, sigma).T
    filt = lambda z: rows @ z @ cols  # the separable Gaussian window, 'valid': a 2-D conv as two band matrices
    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x ** 2
    syy = filt(y * y) - mu_y ** 2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3)).float()


def copy_last_baseline(context: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat the last context frame ``n`` times. (C, Tc, H, W) -> (C, n, H, W)"""
    return context[:, -1:].expand(-1, n, -1, -1).clone()


def linear_baseline(context: torch.Tensor, n: int) -> torch.Tensor:
    """Per-pixel linear extrapolation of the last two frames, clipped to [-1, 1]."""
    if context.shape[1] < 2:
        return copy_last_baseline(context, n)
    last, prev = context[:, -1], context[:, -2]
    k = torch.arange(1, n + 1, dtype=context.dtype).view(1, n, 1, 1)
    return (last[:, None] + k * (last - prev)[:, None]).clamp(-1, 1)


# ---------------------------------------------------------------------------- generation metrics
# Weight-free metrics of generated videos. Those that need network weights (FVD's I3D, CLIP) are
# components in tools/scorers/ and call the functions here.


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of features (N, D) in float64: ``mu = mean_i f_i``,
    ``sigma = sum_i (f_i - mu)(f_i - mu)^T / (N - 1)`` (the unbiased estimate, as numpy.cov)."""
    f = features.double().reshape(features.shape[0], -1)
    if f.shape[0] < 2:
        raise ValueError(f"gaussian_stats needs at least 2 feature vectors for a covariance, got {f.shape[0]}")
    mu = f.mean(0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2)::

        d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

    (Dowson & Landau 1982; FID / FVD report d^2). ``Tr((sigma1 sigma2)^(1/2))`` is computed as the
    sum of the square roots of the eigenvalues of ``sigma1^(1/2) sigma2 sigma1^(1/2)`` (symmetric,
    positive semi-definite: the same eigenvalues as ``sigma1 sigma2``), in float64; tiny negative
    eigenvalues from round-off are clipped to 0."""
    mu1, mu2, s1, s2 = (x.double() for x in (mu1, mu2, sigma1, sigma2))
    w, v = torch.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T  # sigma1^(1/2)
    m = root1 @ s2 @ root1
    tr_cross = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_cross)


def temporal_flicker(video: torch.Tensor) -> float:
    """VBench's temporal flickering score of one video (C, T, H, W) in [-1, 1], T >= 2::

        score = (255 - mean_t MAE_t) / 255,   MAE_t = mean_{c,h,w} |x_{t+1} - x_t|

    with pixels on the 0..255 scale: 1 for a static video, lower the more consecutive frames
    differ. VBench reads uint8 frames; this takes the float video (values rounded to 0..255
    first, so a decoded mp4 and its tensor score the same)."""
    if video.ndim != 4 or video.shape[1] < 2:
        raise ValueError(f"temporal_flicker needs a (C, T, H, W) video with T >= 2, got {tuple(video.shape)}")
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round()
    mae = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(0, 2, 3))  # (T-1,)
    return float((255.0 - mae.mean()) / 255.0)


#: OpenCV's fixed Gaussian kernels for sizes 3, 5, 7 with sigma 0 (getGaussianKernel's table)
_CV_SMALL_KERNELS = {3: (0.25, 0.5, 0.25), 5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
                     7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125)}


def _gaussian_blur(x: torch.Tensor, size: int) -> torch.Tensor:
    """OpenCV's GaussianBlur(size, sigma 0) of (N, 1, H, W), reflect-101 borders: its fixed kernels for
    sizes 3 / 5 / 7 (5: [1, 4, 6, 4, 1] / 16), else sigma = 0.3 ((size - 1) / 2 - 1) + 0.8."""
    if size <= 1:
        return x
    if size in _CV_SMALL_KERNELS:
        g = torch.tensor(_CV_SMALL_KERNELS[size], dtype=torch.float64)
    else:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
        ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        g = torch.exp(-(ax ** 2) / (2 * sigma ** 2))
        g = g / g.sum()
    g = g.to(x.dtype)
    p = size // 2
    x = F.pad(x, (p, p, p, p), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, size))
    return F.conv2d(x, g.view(1, 1, size, 1))


def _open_close(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Morphological opening then closing of a {0, 1} float mask (N, 1, H, W) with a size x size
    square (erosion = -maxpool(-x); borders never erode or dilate, as OpenCV's defaults)."""
    if size <= 1:
        return mask
    p = size // 2

    def dilate(m):
        return F.max_pool2d(F.pad(m, (p, p, p, p), value=0.0), size, stride=1)

    def erode(m):
        return -F.max_pool2d(F.pad(-m, (p, p, p, p), value=-1.0), size, stride=1)

    opened = dilate(erode(mask))
    return erode(dilate(opened))


def motion_masks(video: torch.Tensor, alpha: float = 0.3, threshold: float = 10.0, blur: int = 5,
                 kernel: int = 5) -> torch.Tensor:
    """Physics-IQ's binary motion masks of a video (C, T, H, W) in [-1, 1] -> bool (T, H, W).

    Per frame t on the 0..255 scale: grey ``g_t = 0.299 R + 0.587 G + 0.114 B`` (rounded),
    Gaussian blur ``blur`` x ``blur`` (rounded); a running-average background
    ``b_0 = g_0``, ``b_t = (1 - alpha) b_{t-1} + alpha g_t``; the mask
    ``m_t = |g_t - round(b_t)| > threshold``, then a morphological opening and closing with a
    ``kernel`` x ``kernel`` square. ``m_0`` is empty (nothing to compare with). Defaults are
    Physics-IQ's (alpha 0.3, threshold 10, 5 x 5 blur and kernel); a kernel larger than the
    moving objects erases them (use 3 for balls a few pixels wide)."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"motion_masks needs an RGB video (3, T, H, W), got {tuple(video.shape)}")
    x = ((video.double().clamp(-1, 1) + 1) * 127.5).round()
    grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).round()[:, None]  # (T, 1, H, W)
    grey = _gaussian_blur(grey, blur).round()
    masks = torch.zeros(grey.shape, dtype=torch.float64)
    background = grey[0].clone()
    for t in range(1, grey.shape[0]):
        background = (1 - alpha) * background + alpha * grey[t]
        masks[t] = ((grey[t] - background.round()).abs() > threshold).double()
    return _open_close(masks, kernel)[:, 0] > 0.5


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a and b| / |a or b| of bool tensors; 1 when both are empty (nothing moves in either)."""
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def spatial_iou(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Where motion happens: IoU of the masks (T, H, W) collapsed over time,
    ``IoU(max_t pred_t, max_t ref_t)`` (1 when neither moves)."""
    return _iou(pred.any(0), ref.any(0))


def spatiotemporal_iou(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Where and when: the mean over frames of the per-frame IoU, ``mean_t IoU(pred_t, ref_t)``
    (a frame where neither moves counts 1)."""
    return sum(_iou(p, r) for p, r in zip(pred, ref)) / max(1, pred.shape[0])


def weighted_spatial_iou(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Where and how much: with the share of frames each pixel moves, ``w(x) = mean_t m_t(x)``,
    ``sum_x min(w_pred, w_ref) / sum_x max(w_pred, w_ref)`` (1 when neither moves)."""
    a, b = pred.double().mean(0), ref.double().mean(0)
    union = torch.maximum(a, b).sum()
    return 1.0 if union == 0 else float(torch.minimum(a, b).sum() / union)


def frame_mse(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over frames of the per-frame mean squared error on the [0, 1] scale, videos (C, T, H, W)
    in [-1, 1] (Physics-IQ's MSE; lower is better)."""
    return float(((_to01(pred) - _to01(ref)) ** 2).mean(dim=(0, 2, 3)).mean())


#: Physics-IQ-style scores of a video against its reference continuation (all but mse: higher is better)
MOTION_METRICS = ("spatial_iou", "spatiotemporal_iou", "weighted_spatial_iou", "mse")


def physics_iq_scores(pred: torch.Tensor, ref: torch.Tensor, skip: int = 0, **mask_settings) -> dict[str, float]:
    """The four Physics-IQ-style scores of ``pred`` against ``ref`` (both (C, T, H, W) in [-1, 1],
    the same length): masks (:func:`motion_masks`, ``mask_settings``) are computed on the whole
    videos, so given context frames warm the background up, and scored on frames ``skip:`` (the
    continuation); ``mse`` (:func:`frame_mse`) on the same frames."""
    if pred.shape != ref.shape:
        raise ValueError(f"physics_iq_scores: the video {tuple(pred.shape)} and its reference {tuple(ref.shape)} "
                         f"differ in shape; give references of the same length and size")
    if not 0 <= skip < pred.shape[1]:
        raise ValueError(f"skip={skip} must leave frames to score (the videos have {pred.shape[1]})")
    mp, mr = motion_masks(pred, **mask_settings)[skip:], motion_masks(ref, **mask_settings)[skip:]
    return {"spatial_iou": spatial_iou(mp, mr), "spatiotemporal_iou": spatiotemporal_iou(mp, mr),
            "weighted_spatial_iou": weighted_spatial_iou(mp, mr), "mse": frame_mse(pred[:, skip:], ref[:, skip:])}


def physics_iq_score(scores: dict[str, float], variance: dict[str, float]) -> float:
    """Physics-IQ's aggregate (in %) of mean scores against the physical variance (the same scores
    of a second take of each scene against the first)::

        100 * [ (sIoU / sIoU_var + stIoU / stIoU_var + wsIoU / wsIoU_var) / 3 - (MSE - MSE_var) ]

    clipped to [0, 100]: 100 = as close to the reference as a physically possible second take."""
    ratios = [scores[k] / variance[k] if variance[k] > 0 else 0.0
              for k in ("spatial_iou", "spatiotemporal_iou", "weighted_spatial_iou")]
    value = 100.0 * (sum(ratios) / 3 - (scores["mse"] - variance["mse"]))
    return float(min(100.0, max(0.0, value)))


def clip_similarity(frame_embeddings: torch.Tensor, target: torch.Tensor) -> float:
    """CLIP-T / CLIP-I of one video: the mean over its frames of the cosine similarity between each
    frame's embedding (T, D) and the target embedding (D,) (a prompt's, or a conditioning image's),
    ``mean_t <f_t, e> / (|f_t| |e|)``."""
    cos = F.cosine_similarity(frame_embeddings.double(), target.double()[None], dim=-1)
    return float(cos.mean())


# ---------------------------------------------------------------------------- action metrics
# World models of games (tools/datasets/atari.py): where the player's paddle is in a video, and how
# well its motion follows the commanded actions. Plain functions of the video and the game table's
# numbers (``GameSpec.reader()`` gives color / band / axis), so they score any video: the emulator's,
# a model's, a baseline's.


def paddle_positions(video: torch.Tensor, color: tuple, band: tuple, axis: str, threshold: float = 0.3,
                     min_pixels: int = 2) -> torch.Tensor:
    """The paddle's centre in each frame of a (C, F, H, W) video in [-1, 1] -> (F,) float, NaN where no
    paddle is seen.

    A pixel is paddle when its RGB distance to ``color`` (0..255 triple) is below ``threshold`` (on the
    0..1 scale; ~0.3 is half of Pong's paddle-to-background distance). Only the paddle's band is read:
    columns ``band = (lo, hi)`` (end exclusive) for a paddle moving along ``axis="row"`` (Pong), rows for
    ``axis="col"`` (Breakout). The centre is the mean row (or column) of the paddle pixels, in pixels;
    frames with fewer than ``min_pixels`` of them give NaN."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"paddle_positions needs an RGB (3, F, H, W) video, got {tuple(video.shape)}")
    if axis not in ("row", "col"):
        raise ValueError(f"axis={axis!r} must be 'row' (the paddle moves vertically) or 'col' (horizontally)")
    lo, hi = int(band[0]), int(band[1])
    x = _to01(video)
    x = x[..., lo:hi] if axis == "row" else x[:, :, lo:hi, :]                 # (3, F, H, b) or (3, F, b, W)
    c = torch.tensor([float(v) / 255 for v in color], dtype=x.dtype).view(3, 1, 1, 1)
    mask = ((x - c) ** 2).sum(0).sqrt() < threshold                          # (F, H, b) or (F, b, W)
    per_line = mask.sum(2 if axis == "row" else 1).double()                  # (F, H) or (F, W)
    coord = torch.arange(per_line.shape[1], dtype=torch.float64)
    count = per_line.sum(1)
    pos = (per_line * coord).sum(1) / count.clamp(min=1)
    return torch.where(count >= min_pixels, pos, torch.full_like(pos, float("nan"))).float()


def _movable(pos: torch.Tensor, direction: torch.Tensor, limits: tuple | None, margin: float) -> torch.Tensor:
    """Whether a paddle at ``pos`` can still move in ``direction`` (not at the stop it heads for)."""
    if limits is None:
        return torch.ones_like(pos, dtype=torch.bool)
    lo, hi = float(limits[0]), float(limits[1])
    return ~(((direction < 0) & (pos <= lo + margin)) | ((direction > 0) & (pos >= hi - margin)))


def action_sensitivity(positions: torch.Tensor, directions, limits: tuple | None = None, margin: float = 1.5,
                       min_step: float = 0.5) -> dict:
    """How well a paddle's motion follows the commanded directions, for one video.

    ``positions`` (F,): the paddle's centre per frame (:func:`paddle_positions`; NaN = not seen).
    ``directions`` (F,): -1 / 0 / +1, how the action that PRODUCED frame f moves the paddle's coordinate
    (0: no move or no action). The paddle's answer to the action of frame f is its step
    ``v[f] = positions[f] - positions[f-1]`` (a step counts as a move when ``|v| >= min_step`` px).
    Frames whose paddle sits at the stop it is told to move into (``limits`` = the centre's two stops,
    within ``margin`` px) are left out: it cannot move there. Returns

    - ``agreement``: over frames commanding a move, the share whose step has the commanded sign
      (1: always; a frozen video 0; a paddle moving at random ~0.5);
    - ``correlation``: Pearson correlation of the commanded direction and the step over every readable
      frame (NaN when either is constant, e.g. a frozen video);
    - ``frames``: how many frames the agreement counts; ``readable``: the share of frames with a paddle.
    """
    pos = torch.as_tensor(positions, dtype=torch.float64)
    d = torch.as_tensor(directions, dtype=torch.float64)
    if pos.ndim != 1 or pos.shape != d.shape or len(pos) < 2:
        raise ValueError(f"action_sensitivity needs positions and directions of one equal length >= 2, got "
                         f"{tuple(pos.shape)} and {tuple(d.shape)}")
    v, dv = pos[1:] - pos[:-1], d[1:]
    ok = torch.isfinite(v) & _movable(pos[:-1], dv, limits, margin)
    moving = ok & (dv != 0)
    step = torch.where(v.abs() >= min_step, torch.sign(v), torch.zeros_like(v))
    n = int(moving.sum())
    agreement = float((step[moving] == dv[moving]).double().mean()) if n else float("nan")
    a, b = dv[ok], v[ok]
    corr = float("nan")
    if len(a) > 1 and a.std() > 0 and b.std() > 0:
        corr = float(((a - a.mean()) * (b - b.mean())).mean() / (a.std(unbiased=False) * b.std(unbiased=False)))
    return {"agreement": agreement, "correlation": corr, "frames": n,
            "readable": float(torch.isfinite(pos).double().mean())}


def response_times(positions: torch.Tensor, directions, limits: tuple | None = None, margin: float = 1.5,
                   min_step: float = 0.5) -> dict:
    """Frames until the paddle answers each change of command, for one video.

    A change is a frame f whose commanded direction (see :func:`action_sensitivity`) is a move and differs
    from frame f-1's. Its response time is the number of frames k >= 0 until the first step
    ``v[f + k]`` with the commanded sign while the command holds: 0 = the very frame the new action
    produced already moved the right way. Changes whose paddle sits at the stop it is told to move into,
    or whose paddle is unreadable at the change, are skipped. Returns ``{"times": [k or None (never
    answered while the command held) per change], "mean": mean k over answered changes (NaN if none),
    "answered": share of changes answered (NaN if none)}``."""
    pos = torch.as_tensor(positions, dtype=torch.float64)
    d = torch.as_tensor(directions, dtype=torch.float64)
    if pos.ndim != 1 or pos.shape != d.shape:
        raise ValueError(f"response_times needs positions and directions of one equal length, got "
                         f"{tuple(pos.shape)} and {tuple(d.shape)}")
    times = []
    for f in range(1, len(d)):
        if d[f] == 0 or d[f] == d[f - 1] or not torch.isfinite(pos[f - 1]):
            continue
        if not bool(_movable(pos[f - 1:f], d[f:f + 1], limits, margin)[0]):
            continue
        k, answered = 0, None
        while f + k < len(d) and d[f + k] == d[f]:
            step = pos[f + k] - pos[f + k - 1]
            if torch.isfinite(step) and abs(float(step)) >= min_step and float(torch.sign(step)) == float(d[f]):
                answered = k
                break
            k += 1
        times.append(answered)
    got = [t for t in times if t is not None]
    return {"times": times, "mean": float(sum(got) / len(got)) if got else float("nan"),
            "answered": len(got) / len(times) if times else float("nan")}


def color_histogram_distance(video: torch.Tensor, reference: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Drift without a ground truth: for each frame of ``video`` (C, T, H, W) in [-1, 1], the total
    variation distance between its colour histogram (``bins`` levels per RGB channel) and the pooled
    histogram of the ``reference`` frames (C, R, H, W), e.g. the context. 0 = the same colours in the same
    amounts (a ball or paddle that moved), 1 = no colour in common. -> (T,)"""
    if video.ndim != 4 or reference.ndim != 4 or video.shape[0] != 3 or reference.shape[0] != 3:
        raise ValueError(f"color_histogram_distance needs RGB (3, T, H, W) videos, got {tuple(video.shape)} and "
                         f"{tuple(reference.shape)}")

    def hist(x: torch.Tensor) -> torch.Tensor:  # (3, T, H, W) -> (T, bins^3), each row sums to 1
        q = (_to01(x) * bins).long().clamp(max=bins - 1)
        code = (q[0] * bins + q[1]) * bins + q[2]                              # (T, H, W)
        code = code.flatten(1)
        h = torch.zeros(code.shape[0], bins ** 3, dtype=torch.float64).scatter_add_(
            1, code, torch.ones_like(code, dtype=torch.float64))
        return h / h.sum(1, keepdim=True)

    ref = hist(reference).mean(0, keepdim=True)
    return (0.5 * (hist(video) - ref).abs().sum(1)).float()
