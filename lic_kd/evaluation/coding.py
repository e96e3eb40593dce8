"""Real entropy coding of images: pad, compress, write the bitstream file, read it back, decompress, crop,
measure. bpp counts every byte of the file written, over the original (unpadded) pixels. Autoencoders
without an entropy model have no bitstream: their 8-bit reconstructions are written and measured."""

from __future__ import annotations

import copy
import json
import struct
import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from compressai.entropy_models import GaussianConditional
from compressai.models import CompressionModel
from PIL import Image
from torch import nn
from tqdm import tqdm

from lic_kd.data import load_rgb, to_tensor
from lic_kd.errors import ConfigError
from lic_kd.evaluation.jpeg_files import evaluate_jpeg
from lic_kd.evaluation.profiling import (
    profile_autoencoder,
    profile_codec,
    profile_image,
    sync,
)
from lic_kd.metrics import dataset_means, reconstruction_quality, to_8bit, to_pixels
from lic_kd.models.learned_jpeg import LearnedJPEG

PAD_MULTIPLE = 64  # the total downsampling of the hyperprior models: g_a (16) x h_a (4)


MAGIC = b"LKD2"


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


def searchsorted_indexes(conditional: GaussianConditional, scales: torch.Tensor) -> torch.Tensor:
    """CompressAI's GaussianConditional.build_indexes in one pass: the index of a scale is the number of
    scale-table entries (but the last) below it. The same integers (tested), in one kernel instead of a loop of
    small ones over the table: that loop took a third of the coding time of a Kodak image at N=64 on a loaded
    machine (profiled); on an idle one the coding time is the same either way (benchmarks/evaluate_parity.py)."""
    scales = conditional.lower_bound_scale(scales)
    table = conditional.scale_table[:-1].to(scales.dtype)
    return torch.searchsorted(table, scales.contiguous(), right=False).int()


def prepare_for_coding(net: CompressionModel) -> CompressionModel:
    """An eval-mode copy with its CDF tables built: `update()` resizes buffers, so never update the original.
    Its Gaussian conditionals find their CDF indexes in one search (`searchsorted_indexes`)."""
    coder = copy.deepcopy(net).eval()
    coder.update(force=True)
    for module in coder.modules():
        if type(module) is GaussianConditional:  # not subclasses (a mixture indexes otherwise)
            module.build_indexes = partial(searchsorted_indexes, module)
    return coder


def estimated_bpp(coder: CompressionModel, x_padded: torch.Tensor, num_pixels: int) -> float:
    """The entropy model's own rate estimate (an eval-mode forward's likelihoods), without running the synthesis
    transform, which the estimate does not need."""
    g_s = coder.g_s
    coder.g_s = nn.Identity()
    try:
        likelihoods = coder(x_padded)["likelihoods"]
    finally:
        coder.g_s = g_s
    return sum(p.log2().sum().neg().item() for p in likelihoods.values()) / num_pixels


def on_device(coder: CompressionModel, device: torch.device) -> CompressionModel:
    """`coder` moved to `device` as lic_kd codes with it. On a CPU the synthesis transform g_s runs in channels_last
    memory format: 1.25-1.5x faster decoding at N = 16..128 (benchmarks/decode_fps.py), the same reconstruction to
    float noise. Only g_s: the entropy model's inputs (h_a, h_s) keep their layout, so the bitstream is unchanged."""
    coder = coder.to(device)
    if device.type == "cpu" and isinstance(getattr(coder, "g_s", None), nn.Module):
        coder.g_s = coder.g_s.to(memory_format=torch.channels_last)
    return coder


@torch.inference_mode()
def code_image(
    coder: CompressionModel, path: Path, bitstream: Path, device: torch.device, decoded_png: Path | None = None
) -> dict[str, Any]:
    """Code one image for real and measure it; save what was decoded as `decoded_png` when given (the report's
    visual comparison shows it). `coder` comes from prepare_for_coding."""
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
    if decoded_png is not None:
        decoded_png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_pixels(to_8bit(x_hat)[0])).save(decoded_png)

    return {
        "image": path.name,
        "height": h,
        "width": w,
        "bytes": n_bytes,
        "bpp": 8 * n_bytes / num_pixels,
        "bpp_payload": 8 * payload / num_pixels,
        "bpp_estimated": bpp_estimated,
        **reconstruction_quality(x, to_8bit(x_hat)),
        "encode_s": encode_s,
        "decode_s": decode_s,
    }


@torch.inference_mode()
def reconstruct_image(
    net: nn.Module, path: Path, out_png: Path, device: torch.device, decoded_png: None = None
) -> dict[str, Any]:
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
    return {
        "image": path.name,
        "height": h,
        "width": w,
        **reconstruction_quality(x, x_hat),
        "encode_s": encode_s,
        "decode_s": decode_s,
    }


SHOWCASE_IMAGE = "kodim23.png"  # the report's visual comparison: Kodak's parrots (fine detail and smooth areas)


def showcase_image(images: Sequence[Path]) -> Path:
    """The image whose decoded pixels a run keeps for the report's visual comparison."""
    return next((p for p in images if p.name == SHOWCASE_IMAGE), images[0])


def evaluate_net(net: nn.Module, images: Sequence[Path], run_dir: Path, device: str = "auto") -> dict[str, Any]:
    """Code every image (bitstreams in run_dir/bitstreams, a learned JPEG's .jpg files too; an autoencoder's
    reconstructions in run_dir/reconstructions); returns {"metrics": dataset means, "images": per-image
    rows, "device", and the latency, energy and memory profile measured on the first 768x512 image (else the first
    image)}. The showcase image's decoded pixels are kept in run_dir/reconstructions for the report."""
    if isinstance(net, LearnedJPEG):  # real .jpg files through Pillow/libjpeg, not CompressAI's coders
        return evaluate_jpeg(net, images, run_dir)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    if isinstance(net, CompressionModel):
        coder, out_dir, suffix, run_one, profiler = (
            on_device(prepare_for_coding(net), dev),
            run_dir / "bitstreams",
            ".lkd",
            code_image,
            profile_codec,
        )
    else:
        coder, out_dir, suffix, run_one, profiler = (
            net.eval().to(dev),
            run_dir / "reconstructions",
            ".png",
            reconstruct_image,
            profile_autoencoder,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = showcase_image(images) if suffix == ".lkd" else None  # an autoencoder saves every reconstruction
    rows = [
        run_one(
            coder,
            path,
            out_dir / f"{path.stem}{suffix}",
            dev,
            decoded_png=run_dir / "reconstructions" / f"{path.stem}.png" if path == shown else None,
        )
        for path in tqdm(
            images, desc="coding" if suffix == ".lkd" else "reconstructing", unit="img", dynamic_ncols=True
        )
    ]
    for row, path in zip(rows, images):  # the files a report shows, relative to the run directory
        row["file"] = f"{out_dir.name}/{path.stem}{suffix}"
        if suffix == ".png" or path == shown:
            row["decoded"] = f"reconstructions/{path.stem}.png"
    probe = profile_image(images, rows)
    profile = profiler(coder, pad(to_tensor(load_rgb(probe))[None].to(dev)), dev)
    profile["latency"]["image"] = probe.name
    return {"metrics": dataset_means(rows), "images": rows, "device": str(dev), **profile}
