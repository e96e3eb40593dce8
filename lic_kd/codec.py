"""Real entropy coding of images: pad, compress, write the bitstream file, read it back, decompress, crop,
measure. bpp counts every byte of the file written, over the original (unpadded) pixels. Autoencoders
without an entropy model have no bitstream: their 8-bit reconstructions are written and measured."""

from __future__ import annotations

import copy
import json
import math
import struct
import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from compressai.entropy_models import GaussianConditional
from compressai.models import CompressionModel
from PIL import Image
from pytorch_msssim import ms_ssim
from torch import nn
from tqdm import tqdm

from lic_kd.data import load_rgb, to_tensor
from lic_kd.profiling import profile_autoencoder, profile_codec, sync
from lic_kd.errors import ConfigError

PAD_MULTIPLE = 64  # the total downsampling of the hyperprior models: g_a (16) x h_a (4)
MAGIC = b"LKD2"
MS_SSIM_MIN_SIDE = 161  # 5 scales of 11x11 windows: (11 - 1) * 2**4 + 1


def pad(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Replicate-pad the bottom and right so that height and width are multiples of `multiple`."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="replicate")


def _plain_shape(shape: Any) -> Any:
    """Latent shapes as JSON-able lists (models give a torch.Size, or a dict of them for latent codecs)."""
    if isinstance(shape, dict):
        return {k: _plain_shape(v) for k, v in shape.items()}
    return [int(v) for v in shape]


def write_bitstream(path: Path, strings: Sequence[Sequence[bytes]], shape: Any, size: Sequence[int]) -> int:
    """Store a compressed image: magic, original H and W, the latent shape (compact JSON: a dict for latent
    codecs), then each string with its length. Every byte counts in bpp. Returns the bytes written."""
    header = json.dumps(_plain_shape(shape), separators=(",", ":")).encode()
    parts = [MAGIC, struct.pack(">HHH", *size, len(header)), header, struct.pack(">B", len(strings))]
    for group in strings:
        if len(group) != 1:
            raise ValueError(f"expected one string per group for a single image, got {len(group)}")
        parts += [struct.pack(">I", len(group[0])), group[0]]
    data = b"".join(parts)
    path.write_bytes(data)
    return len(data)


def read_bitstream(path: Path) -> tuple[list[list[bytes]], Any, tuple[int, int]]:
    """Inverse of write_bitstream: (strings, latent shape, original (H, W))."""
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise ConfigError(f"{path} is not a lic_kd bitstream")
    h, w, header_len = struct.unpack_from(">HHH", data, 4)
    offset = 10
    shape = json.loads(data[offset : offset + header_len])
    offset += header_len
    (n_strings,) = struct.unpack_from(">B", data, offset)
    offset += 1
    strings = []
    for _ in range(n_strings):
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        strings.append([data[offset : offset + length]])
        offset += length
    return strings, shape, (h, w)


def psnr_8bit(x: torch.Tensor, x_hat: torch.Tensor) -> float | None:
    """PSNR in dB between 8-bit images given as [0, 1] tensors; None when they are identical."""
    mse = F.mse_loss(x * 255, x_hat * 255).item()
    return None if mse == 0 else 10 * math.log10(255**2 / mse)


def prepare_for_coding(net: CompressionModel) -> CompressionModel:
    """An eval-mode copy with its CDF tables built: `update()` resizes buffers, so never update the original.
    Its Gaussian conditionals find their CDF indexes in one search (`searchsorted_indexes`)."""
    coder = copy.deepcopy(net).eval()
    coder.update(force=True)
    for module in coder.modules():
        if type(module) is GaussianConditional:  # not subclasses (a mixture indexes otherwise)
            module.build_indexes = partial(searchsorted_indexes, module)
    return coder


def searchsorted_indexes(conditional: GaussianConditional, scales: torch.Tensor) -> torch.Tensor:
    """CompressAI's GaussianConditional.build_indexes in one pass: the index of a scale is the number of
    scale-table entries (but the last) below it. The same integers (tested), in one kernel instead of a loop of
    small ones over the table: that loop took a third of the coding time of a Kodak image at N=64 on a loaded
    machine (profiled); on an idle one the coding time is the same either way (benchmarks/evaluate_parity.py)."""
    scales = conditional.lower_bound_scale(scales)
    table = conditional.scale_table[:-1].to(scales.dtype)
    return torch.searchsorted(table, scales.contiguous(), right=False).int()


def estimated_bpp(coder: CompressionModel, x_padded: torch.Tensor, num_pixels: int) -> float:
    """The entropy model's own rate estimate (an eval-mode forward's likelihoods), without running the synthesis
    transform, which the estimate does not need."""
    g_s = coder.g_s
    coder.g_s = nn.Identity()
    try:
        likelihoods = coder(x_padded)["likelihoods"]
    finally:
        coder.g_s = g_s
    return sum(l.log2().sum().neg().item() for l in likelihoods.values()) / num_pixels


def on_device(coder: CompressionModel, device: torch.device) -> CompressionModel:
    """`coder` moved to `device` as lic_kd codes with it. On a CPU the synthesis transform g_s runs in channels_last
    memory format: 1.25-1.5x faster decoding at N = 16..128 (benchmarks/decode_fps.py), the same reconstruction to
    float noise. Only g_s: the entropy model's inputs (h_a, h_s) keep their layout, so the bitstream is unchanged."""
    coder = coder.to(device)
    if device.type == "cpu" and isinstance(getattr(coder, "g_s", None), nn.Module):
        coder.g_s = coder.g_s.to(memory_format=torch.channels_last)
    return coder


@torch.inference_mode()
def code_image(coder: CompressionModel, path: Path, bitstream: Path, device: torch.device) -> dict[str, Any]:
    """Code one image for real and measure it. `coder` comes from prepare_for_coding."""
    x = to_tensor(load_rgb(path))[None].to(device)
    h, w = x.shape[-2:]
    num_pixels = h * w
    x_padded = pad(x)

    bpp_estimated = estimated_bpp(coder, x_padded, num_pixels)

    sync(device)
    start = time.perf_counter()
    enc = coder.compress(x_padded)
    sync(device)
    encode_s = time.perf_counter() - start
    n_bytes = write_bitstream(bitstream, enc["strings"], enc["shape"], (h, w))
    payload = sum(len(s) for group in enc["strings"] for s in group)  # what CompressAI's eval_model counts

    strings, shape, (h_read, w_read) = read_bitstream(bitstream)
    sync(device)
    start = time.perf_counter()
    dec = coder.decompress(strings, shape)
    x_hat = dec["x_hat"][..., :h_read, :w_read].clamp(0, 1)
    sync(device)
    decode_s = time.perf_counter() - start

    return {"image": path.name, "height": h, "width": w, "bytes": n_bytes, "bpp": 8 * n_bytes / num_pixels,
            "bpp_payload": 8 * payload / num_pixels, "bpp_estimated": bpp_estimated, **reconstruction_quality(x, to_8bit(x_hat)), "encode_s": encode_s, "decode_s": decode_s}


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
        row["ms_ssim_missing"] = f"image {w}x{h} is smaller than {MS_SSIM_MIN_SIDE} px on a side (MS-SSIM uses 5 scales)"
    return row


@torch.inference_mode()
def reconstruct_image(net: nn.Module, path: Path, out_png: Path, device: torch.device) -> dict[str, Any]:
    """Run an autoencoder without an entropy model on one image (g_a timed as the encoder, g_s as the
    decoder), save the 8-bit reconstruction as PNG and measure it. There is no rate."""
    x = to_tensor(load_rgb(path))[None].to(device)
    h, w = x.shape[-2:]
    sync(device)
    start = time.perf_counter()
    y = net.g_a(pad(x))
    sync(device)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    x_hat = to_8bit(net.g_s(y)[..., :h, :w])
    sync(device)
    decode_s = time.perf_counter() - start
    Image.fromarray(to_pixels(x_hat[0])).save(out_png)
    return {"image": path.name, "height": h, "width": w, **reconstruction_quality(x, x_hat), "encode_s": encode_s, "decode_s": decode_s}


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
    rate = f"bpp {fmt(metrics.get('bpp'), '.4f')} (estimated {fmt(metrics.get('bpp_estimated'), '.4f')}), " if metrics.get("bpp") is not None else "no rate (autoencoder), "
    return rate + f"PSNR {fmt(metrics.get('psnr'), '.2f')} dB, MS-SSIM {fmt(metrics.get('ms_ssim'), '.4f')}"


def evaluate_net(net: nn.Module, images: Sequence[Path], run_dir: Path, device: str = "auto") -> dict[str, Any]:
    """Code every image (bitstreams in run_dir/bitstreams, a learned JPEG's .jpg files too; an autoencoder's
    reconstructions in run_dir/reconstructions); returns {"metrics": dataset means, "images": per-image rows, "device", and
    the latency, energy and memory profile measured on the first 768x512 image (else the first image)}."""
    from lic_kd.learned_jpeg import LearnedJPEG, evaluate_jpeg  # lazily: it builds on this module

    if isinstance(net, LearnedJPEG):  # real .jpg files through Pillow/libjpeg, not CompressAI's coders
        return evaluate_jpeg(net, images, run_dir)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    if isinstance(net, CompressionModel):
        coder, out_dir, suffix, run_one, profiler = on_device(prepare_for_coding(net), dev), run_dir / "bitstreams", ".lkd", code_image, profile_codec
    else:
        coder, out_dir, suffix, run_one, profiler = net.eval().to(dev), run_dir / "reconstructions", ".png", reconstruct_image, profile_autoencoder
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        run_one(coder, path, out_dir / f"{path.stem}{suffix}", dev)
        for path in tqdm(images, desc="coding" if suffix == ".lkd" else "reconstructing", unit="img", dynamic_ncols=True)
    ]
    sizes = [(r["width"], r["height"]) for r in rows]
    probe = images[sizes.index((768, 512))] if (768, 512) in sizes else images[0]
    profile = profiler(coder, pad(to_tensor(load_rgb(probe))[None].to(dev)), dev)
    profile["latency"]["image"] = probe.name
    return {"metrics": dataset_means(rows), "images": rows, "device": str(dev), **profile}
