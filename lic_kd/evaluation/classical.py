"""Classical codecs through Pillow (JPEG, WebP, JPEG 2000, AVIF), each at a ladder of quality settings, on
the same images and with the same metrics as the learned codecs: real files, bpp from their size.

`python -m lic_kd.evaluation.classical [--images DIR] [--codecs jpeg,webp,...] [--out outputs/codecs]` writes one
results.json per codec and quality, which the report reads like any run."""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image, features
from tqdm import tqdm

from lic_kd import REPO_ROOT
from lic_kd.data import check_images, list_images, load_rgb, to_tensor
from lic_kd.errors import ConfigError, run_cli
from lic_kd.io import write_json_atomic
from lic_kd.metrics import dataset_means, reconstruction_quality
from lic_kd.results import RESULTS_FILE, environment, results_record

# name -> (file suffix, Pillow feature that must be present, save kwargs for one quality value, ladder)
CODECS: dict[str, tuple[str, str, Callable[[int], dict[str, Any]], Sequence[int]]] = {
    # JPEG down to quality 3: the low rates (0.2-0.5 bpp on Kodak) where learned codecs are compared with it
    "JPEG": (".jpg", "jpg", lambda q: {"format": "JPEG", "quality": q}, (3, 5, 10, 15, 20, 30, 50, 70, 85, 95)),
    "WebP": (".webp", "webp", lambda q: {"format": "WEBP", "quality": q, "method": 6}, (5, 10, 20, 30, 50, 70, 85, 95)),
    # JPEG 2000 quality is a target PSNR in dB (OpenJPEG's fixed-quality mode)
    "JPEG2000": (
        ".jp2",
        "jpg_2000",
        lambda q: {"format": "JPEG2000", "quality_mode": "dB", "quality_layers": [q]},
        (26, 28, 30, 32, 34, 36, 38, 40),
    ),
    "AVIF": (".avif", "avif", lambda q: {"format": "AVIF", "quality": q, "speed": 6}, (10, 20, 30, 40, 50, 60, 70, 85)),
}


def available_codecs() -> list[str]:
    return [name for name, (_, feature, _, _) in CODECS.items() if features.check(feature)]


def code_with_pillow(path: Path, codec: str, quality: int, out_file: Path) -> dict[str, Any]:
    """Encode one image to a real file, decode it back and measure it."""
    suffix, _, options, _ = CODECS[codec]
    img = load_rgb(path)
    w, h = img.size
    buffer = io.BytesIO()
    start = time.perf_counter()
    img.save(buffer, **options(quality))
    encode_s = time.perf_counter() - start
    data = buffer.getvalue()
    out_file.write_bytes(data)
    start = time.perf_counter()
    with Image.open(out_file) as decoded_img:
        decoded = decoded_img.convert("RGB")
    decode_s = time.perf_counter() - start
    x, x_hat = to_tensor(img)[None], to_tensor(decoded)[None]
    row: dict[str, Any] = {
        "image": path.name,
        "height": h,
        "width": w,
        "bytes": len(data),
        "bpp": 8 * len(data) / (w * h),
        "bpp_estimated": None,
        **reconstruction_quality(x, x_hat),
        "encode_s": encode_s,
        "decode_s": decode_s,
    }
    return row


def spread(ladder: Sequence[int], points: int | None) -> list[int]:
    """`points` qualities evenly spread over a ladder, ends included (all of it when points is None)."""
    if not points or points >= len(ladder):
        return list(ladder)
    if points < 2:
        raise ConfigError(f"--points must be at least 2 (a curve), got {points}")
    return [ladder[round(i * (len(ladder) - 1) / (points - 1))] for i in range(points)]


def run_codec(codec: str, images: Sequence[Path], out_root: Path, qualities: Sequence[int] | None = None) -> list[Path]:
    """Every quality of one codec: one run directory (bitstreams + results.json) per quality."""
    suffix, _, _, ladder = CODECS[codec]
    written = []
    for quality in tqdm(qualities or ladder, desc=codec, unit="q", dynamic_ncols=True):
        run_dir = out_root / codec / f"q{quality}"
        if (run_dir / RESULTS_FILE).is_file():
            written.append(run_dir / RESULTS_FILE)
            continue
        (run_dir / "bitstreams").mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        rows = [code_with_pillow(p, codec, quality, run_dir / "bitstreams" / f"{p.stem}{suffix}") for p in images]
        for row, path in zip(rows, images):  # the file a report shows: Pillow decodes it
            row["file"] = row["decoded"] = f"bitstreams/{path.stem}{suffix}"
        results = results_record(
            {
                "role": "codec",
                "architecture": codec,
                "quality": quality,
                "loss_weights": {},
                "run_dir": str(run_dir.resolve()),
            },
            dataset_means(rows),
            params=None,
            wall_time_s=time.perf_counter() - start,
            device="cpu",
            environment=environment() | {"pillow": Image.__version__},
            images=rows,
        )
        write_json_atomic(run_dir / RESULTS_FILE, results)
        written.append(run_dir / RESULTS_FILE)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lic_kd.evaluation.classical",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=Path, default=REPO_ROOT / "data" / "kodak")
    parser.add_argument(
        "--codecs", default=",".join(available_codecs()), help=f"comma-separated, of {', '.join(CODECS)}"
    )
    parser.add_argument("--qualities", default=None, help="comma-separated quality ladder (default: each codec's own)")
    parser.add_argument("--points", type=int, default=None, help="use k qualities spread over each codec's ladder")
    parser.add_argument("--limit", type=int, default=None, help="code only the first k images")
    parser.add_argument("--out", type=Path, default=Path("outputs/codecs"))
    args = parser.parse_args(argv)
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = [c for c in codecs if c not in CODECS]
    if unknown:
        parser.exit(2, f"error: unknown codec(s) {', '.join(unknown)}; known: {', '.join(CODECS)}\n")
    missing = [c for c in codecs if c not in available_codecs()]
    if missing:
        parser.exit(2, f"error: this Pillow cannot encode {', '.join(missing)} (Pillow {Image.__version__})\n")
    images = list_images(args.images, args.limit)
    check_images(images)
    qualities = [int(q) for q in args.qualities.split(",")] if args.qualities else None
    for codec in codecs:
        ladder = qualities or spread(CODECS[codec][3], args.points)
        run_codec(codec, images, args.out, ladder)
    print(f"codec results written under {args.out}/")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
