"""A learned JPEG's real files: its tables written into baseline JPEGs by Pillow/libjpeg, decoded by the
standard decoder and measured; and the rate proxy fitted to such files
(`python -m lic_kd.evaluation.jpeg_files TRAIN_IMAGES`)."""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from lic_kd.data import list_images, load_rgb, to_tensor
from lic_kd.errors import run_cli
from lic_kd.evaluation.profiling import EnergyMeter, profile_image
from lic_kd.metrics import dataset_means, psnr_8bit, reconstruction_quality, to_8bit
from lic_kd.models.learned_jpeg import (
    DEFAULT_RATE_PROXY,
    SUBSAMPLING,
    LearnedJPEG,
    zigzag_order,
)

CALIBRATION_TABLES = (5, 10, 20, 30, 50, 70, 85, 95, "flat:2", "flat:6", "flat:16", "flat:40", "flat:100")


@torch.no_grad()
def proxy_samples(
    images: Sequence[Path],
    tables: Sequence[str | int] = CALIBRATION_TABLES,
    subsamplings: Sequence[str] = tuple(SUBSAMPLING),
) -> tuple[np.ndarray, np.ndarray]:
    """Rate features (one row per file, columns as DEFAULT_RATE_PROXY) and real bits of each image written
    by Pillow with each of `tables` (model.init values) and subsampling (standard Huffman tables)."""
    features, bits = [], []
    for path in images:
        img = load_rgb(path)
        x = to_tensor(img)[None]
        for subsampling in subsamplings:
            for init in tables:
                net = LearnedJPEG(subsampling, init=init).eval()
                f = net(x)["rate_features"]
                features.append([f[k.removesuffix("_bits")].item() for k in DEFAULT_RATE_PROXY])
                bits.append(8 * len(encode_jpeg(img, net.integer_tables(), subsampling, optimize=False)))
    return np.array(features), np.array(bits, dtype=float)


def proxy_fit_quality(predicted: np.ndarray, bits: np.ndarray) -> dict[str, float]:
    """Pearson r and mean relative error of predicted against real bits."""
    return {
        "pearson_r": float(np.corrcoef(predicted, bits)[0, 1]),
        "mean_abs_rel_error": float(np.mean(np.abs(predicted / bits - 1))),
        "files": len(bits),
    }


def calibrate_rate_proxy(images: Sequence[Path], **kwargs: Any) -> dict[str, Any]:
    """Least squares of the real files' bits on the rate features: the proxy's constants, and how well
    they fit these images."""
    features, bits = proxy_samples(images, **kwargs)
    coefficients, *_ = np.linalg.lstsq(features, bits, rcond=None)
    return {
        "rate_proxy": {k: round(float(c), 3) for k, c in zip(DEFAULT_RATE_PROXY, coefficients)},
        **proxy_fit_quality(features @ coefficients, bits),
    }


def encode_jpeg(img: Image.Image, tables: Sequence[Sequence[int]], subsampling: str, optimize: bool) -> bytes:
    """A baseline JPEG file of `img` with these tables (natural order), through Pillow/libjpeg."""
    buffer = io.BytesIO()
    img.save(
        buffer,
        format="JPEG",
        qtables=[list(t) for t in tables],
        subsampling=SUBSAMPLING[subsampling],
        optimize=optimize,
    )
    return buffer.getvalue()


def decode_jpeg(data: bytes) -> Image.Image:
    """Decode with the standard decoder (Pillow's libjpeg), as any viewer would."""
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def tables_text(tables: Sequence[Sequence[int]]) -> str:
    """Both tables as 8x8 text in natural order, then in zig-zag order (the DQT marker's)."""
    zz = zigzag_order()
    lines = [
        "# learned JPEG quantization tables (baseline, 8-bit entries 1..255)",
        "# natural 8x8 order (row = vertical frequency), as Pillow's qtables= and libjpeg take them",
    ]
    for name, table in zip(("luma (table 0)", "chroma (table 1)"), tables):
        lines += [f"## {name}"] + [" ".join(f"{v:3d}" for v in table[r * 8 : r * 8 + 8]) for r in range(8)]
    lines.append("# the same tables in zig-zag order (as stored in the file's DQT marker)")
    for name, table in zip(("luma", "chroma"), tables):
        lines.append(f"## {name}: " + " ".join(str(table[i]) for i in zz))
    return "\n".join(lines) + "\n"


@torch.inference_mode()
def code_image_jpeg(net: LearnedJPEG, path: Path, out_dir: Path) -> dict[str, Any]:
    """Write one image as real JPEG files with the learned tables: out_dir/STEM.jpg with the run's Huffman
    setting (model.optimize_huffman), out_dir/huffman-{standard,optimized}/STEM.jpg with the other; decode the
    run's file back with the standard decoder and measure it like every codec."""
    img = load_rgb(path)
    w, h = img.size
    tables = net.integer_tables()
    files = {}
    for optimize in (False, True):
        start = time.perf_counter()
        data = encode_jpeg(img, tables, net.subsampling, optimize)
        if optimize == net.optimize_huffman:  # the run's file; the other Huffman setting goes to a subfolder
            encode_s = time.perf_counter() - start
            files[optimize] = out_dir / f"{path.stem}.jpg"
        else:
            files[optimize] = out_dir / f"huffman-{'optimized' if optimize else 'standard'}" / f"{path.stem}.jpg"
            files[optimize].parent.mkdir(exist_ok=True)
        files[optimize].write_bytes(data)
    chosen = files[net.optimize_huffman]
    start = time.perf_counter()
    decoded = decode_jpeg(chosen.read_bytes())
    decode_s = time.perf_counter() - start
    x, x_file = to_tensor(img)[None], to_tensor(decoded)[None]
    out = net(x)  # eval mode: exact rounding, the written tables
    n_bytes = chosen.stat().st_size
    return {
        "image": path.name,
        "height": h,
        "width": w,
        "bytes": n_bytes,
        "bpp": 8 * n_bytes / (w * h),
        "bpp_estimated": out["bpp"].item(),
        **{
            f"bpp_huffman_{k}": 8 * files[o].stat().st_size / (w * h)
            for o, k in ((False, "standard"), (True, "optimized"))
        },
        **reconstruction_quality(x, x_file),
        "encode_s": encode_s,
        "decode_s": decode_s,
        # how closely the differentiable model predicts the real decoder (PSNR of model vs file)
        "psnr_model_vs_file": psnr_8bit(x_file, to_8bit(out["x_hat"])),
    }


# Peak extra resident memory of one decode, in a fresh process that loads only Pillow: in the evaluating process
# Pillow's block allocator already holds memory from the earlier images, which would hide the decoder's needs.
_DECODE_PEAK = """
import io, sys
from pathlib import Path
from PIL import Image, JpegImagePlugin  # the plugin loaded before the measurement, not during it
def kib(key):
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in lines if line.startswith(key + ":"))
data = Path(sys.argv[1]).read_bytes()
Path("/proc/self/clear_refs").write_text("5")
base = kib("VmRSS")
Image.open(io.BytesIO(data)).convert("RGB")
print((kib("VmHWM") - base) * 1024)
"""


def profile_jpeg(
    img: Image.Image, tables: Sequence[Sequence[int]], subsampling: str, optimize: bool, repeats: int = 3
) -> dict[str, Any]:
    """Latency (median after a warm-up), energy and decode memory of Pillow/libjpeg with these tables, in the
    format of lic_kd.evaluation.profiling's: {"latency", "energy", "memory"}."""
    encode = lambda: encode_jpeg(img, tables, subsampling, optimize)  # noqa: E731
    data = encode()
    decode = lambda: decode_jpeg(data)  # noqa: E731

    def median_s(fn: Any) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    latency = {
        "encode_s": median_s(encode),
        "decode_s": median_s(decode),
        "height": img.height,
        "width": img.width,
        "device": "cpu (Pillow/libjpeg)",
        "threads": 1,
        "torch": torch.__version__,
        "repeats": repeats,
    }
    latency["decoder_fps"] = 1.0 / latency["decode_s"]
    meter = EnergyMeter(torch.device("cpu"))
    if meter.available:
        energy = {
            "available": True,
            "source": meter.source,
            "decode_j": meter.joules_per_call(decode, torch.device("cpu")),
            "encode_decode_j": meter.joules_per_call(lambda: (encode(), decode()), torch.device("cpu")),
        }
    else:
        energy = {"available": False, "reason": meter.reason, "decode_j": None, "encode_decode_j": None}
    with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
        f.write(data)
        f.flush()
        proc = subprocess.run([sys.executable, "-c", _DECODE_PEAK, f.name], capture_output=True, text=True, timeout=300)
    if proc.returncode == 0 and proc.stdout.strip():
        memory = {"decode_peak_bytes": int(proc.stdout.split()[-1]), "source": "VmHWM of a fresh process"}
    else:
        memory = {
            "decode_peak_bytes": None,
            "source": "unavailable",
            "reason": (proc.stderr.strip().splitlines() or ["no /proc"])[-1][:300],
        }
    return {"latency": latency, "energy": energy, "memory": memory}


def evaluate_jpeg(net: LearnedJPEG, images: Sequence[Path], run_dir: Path) -> dict[str, Any]:
    """evaluate_net for a learned JPEG: real .jpg files in run_dir/bitstreams (readable by any viewer), the
    tables in run_dir/tables.txt, the same metrics and profile as every codec, and how well the rate proxy
    tracks the real file sizes."""
    net = net.eval().cpu()  # Pillow codes on the CPU
    out_dir = run_dir / "bitstreams"
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = net.integer_tables()
    (run_dir / "tables.txt").write_text(tables_text(tables))
    rows = [code_image_jpeg(net, p, out_dir) for p in tqdm(images, desc="writing JPEG", unit="img", dynamic_ncols=True)]
    for row, path in zip(rows, images):  # the file a report shows: a real JPEG that any decoder reads
        row["file"] = row["decoded"] = f"{out_dir.name}/{path.stem}.jpg"
    metrics = dataset_means(rows)
    for key in ("bpp_huffman_standard", "bpp_huffman_optimized", "psnr_model_vs_file"):
        values = [r[key] for r in rows if r.get(key) is not None]
        metrics[key] = float(np.mean(values)) if values else None

    probe = profile_image(images, rows)
    prof = profile_jpeg(load_rgb(probe), tables, net.subsampling, net.optimize_huffman)
    prof["latency"]["image"] = probe.name
    real, proxy = np.array([r["bpp"] for r in rows]), np.array([r["bpp_estimated"] for r in rows])
    codec = {
        "format": "baseline JPEG (Pillow/libjpeg)",
        "subsampling": net.subsampling,
        "optimize_huffman": net.optimize_huffman,
        "tables": {"order": "natural (row-major 8x8)", "luma": tables[0], "chroma": tables[1]},
        "rate_proxy": {
            **net.rate_proxy,
            "pearson_r": float(np.corrcoef(real, proxy)[0, 1]) if len(rows) > 2 else None,
            "mean_proxy_over_real": float(np.mean(proxy / real)),
        },
    }
    return {"metrics": metrics, "images": rows, "device": "cpu", "codec": codec, **prof}


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m lic_kd.evaluation.jpeg_files TRAIN_IMAGES [--check EVAL_IMAGES]`: fit the rate proxy's constants to
    real files (the values of conf/model/learned-jpeg.yaml), and check the fit on other images."""
    parser = argparse.ArgumentParser(prog="python -m lic_kd.evaluation.jpeg_files", description=main.__doc__)
    parser.add_argument("images", type=Path, help="calibration images (training data, never the evaluation set)")
    parser.add_argument(
        "--check", type=Path, default=None, help="images to measure the fitted proxy on (e.g. data/kodak)"
    )
    args = parser.parse_args(argv)
    fit = calibrate_rate_proxy(list_images(args.images))
    if args.check is not None:
        features, bits = proxy_samples(list_images(args.check))
        fit["check"] = proxy_fit_quality(features @ np.array(list(fit["rate_proxy"].values())), bits)
    print(json.dumps(fit, indent=2))


if __name__ == "__main__":
    run_cli(main)
