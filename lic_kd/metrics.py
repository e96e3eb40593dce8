"""Image quality as lic_kd measures it: on the 8-bit image a decoder would save, averaged over images as
CompressAI reports a dataset."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim

MS_SSIM_MIN_SIDE = 161  # 5 scales of 11x11 windows: (11 - 1) * 2**4 + 1


def psnr_8bit(x: torch.Tensor, x_hat: torch.Tensor) -> float | None:
    """PSNR in dB between 8-bit images given as [0, 1] tensors; None when they are identical."""
    mse = F.mse_loss(x * 255, x_hat * 255).item()
    return None if mse == 0 else 10 * math.log10(255**2 / mse)


def to_8bit(x_hat: torch.Tensor) -> torch.Tensor:
    """The 8-bit image a decoder would save, back in [0, 1]: metrics are measured on it."""
    return (x_hat.clamp(0, 1) * 255).round() / 255


def to_pixels(image: torch.Tensor) -> np.ndarray:
    """A [0, 1] image tensor (3, H, W) as the 8-bit H x W x 3 array an image file holds."""
    return (image.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()


def reconstruction_quality(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, Any]:
    """PSNR and MS-SSIM of a reconstruction, each with the reason when it cannot be measured."""
    h, w = x.shape[-2:]
    row: dict[str, Any] = {"psnr": psnr_8bit(x, x_hat), "ms_ssim": None}
    if row["psnr"] is None:
        row["psnr_missing"] = "identical reconstruction (PSNR is infinite)"
    if min(h, w) >= MS_SSIM_MIN_SIDE:
        row["ms_ssim"] = ms_ssim(x, x_hat, data_range=1.0).item()
    else:
        row["ms_ssim_missing"] = (
            f"image {w}x{h} is smaller than {MS_SSIM_MIN_SIDE} px on a side (MS-SSIM uses 5 scales)"
        )
    return row


METRICS = ("bpp", "bpp_payload", "bpp_estimated", "psnr", "ms_ssim", "encode_s", "decode_s")


def dataset_means(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Mean of the per-image values, as CompressAI reports a dataset; images missing a metric are skipped."""
    means: dict[str, float | None] = {}
    for key in METRICS:
        if not any(key in r for r in rows):  # e.g. no rate for an autoencoder: no such column at all
            continue
        values = [r[key] for r in rows if r.get(key) is not None]
        means[key] = sum(values) / len(values) if values else None
    means["n_images"] = len(rows)
    return means


def summary(metrics: dict[str, Any]) -> str:
    """One log line of dataset means."""
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    rate = (
        f"bpp {fmt(metrics.get('bpp'), '.4f')} (estimated {fmt(metrics.get('bpp_estimated'), '.4f')}), "
        if metrics.get("bpp") is not None
        else "no rate (autoencoder), "
    )
    return rate + f"PSNR {fmt(metrics.get('psnr'), '.2f')} dB, MS-SSIM {fmt(metrics.get('ms_ssim'), '.4f')}"
