"""`python -m lic_kd.evaluate` against CompressAI's `python -m compressai.utils.eval_model` on the same checkpoint and
images: the same bpp up to the bytes of lic_kd's own file header, PSNR and MS-SSIM to 1e-4, and the time of the
whole command (goal: <= 1.0x).

The checkpoint is the shipped teacher at lambda 0.0067 (N=64, M=96), exported with `python -m lic_kd.teachers.export`;
the images are Kodak (24, 768x512; --smoke: one 256x192 crop of kodim01, a multiple of 64 so that neither tool
pads). Each command runs as a subprocess, as a user runs it, once per round, in rotating order; times are the
whole command (start-up and imports included) and the ratios medians of same-round ratios. CompressAI's tool
sets torch to 1 thread itself; lic_kd runs with torch's default (all cores) and, for a like-for-like figure,
with OMP_NUM_THREADS=1.

    python -m benchmarks.evaluate_parity [--smoke] [--repeats R] [--images DIR]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import (
    KODAK,
    REPO,
    TEACHER_LMBDA,
    TEACHERS,
    device_of,
    environment,
    finish,
    interleave,
    median_ratio,
    parser,
    ratio,
    spread,
)

TOL = 1e-4
SMOKE_CROP = (256, 192)  # width, height: multiples of 64


def run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of one command; its output kept for the error message only."""
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=1800
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall


def header_bytes(bitstreams: Path) -> dict[str, int]:
    """Per file: bytes of lic_kd's file that are not CompressAI's strings (magic, sizes, latent shape, lengths)."""
    from lic_kd.evaluation.coding import read_bitstream

    out = {}
    for f in sorted(bitstreams.glob("*.lkd")):
        strings, _, _ = read_bitstream(f)
        out[f.stem] = f.stat().st_size - sum(len(s[0]) for s in strings)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=None, help="folder of images (default Kodak; --smoke: one crop)")
    args = p.parse_args(argv)
    env = environment(device_of(args.device))
    repeats = args.repeats or (1 if args.smoke else 2)
    py = sys.executable

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp_name:
        tmp = Path(tmp_name)
        from lic_kd.teachers.export import main as export

        export(
            [str(TEACHERS), str(tmp / "teacher.pth.tar"), "--lmbda", str(TEACHER_LMBDA)]
        )  # python -m lic_kd.teachers.export
        ckpt = next(tmp.glob("teacher-*.pth.tar"))
        images = args.images
        if images is None and args.smoke:
            from PIL import Image

            images = tmp / "images"
            images.mkdir()
            with Image.open(KODAK / "kodim01.png") as img:
                img.crop((0, 0, *SMOKE_CROP)).save(images / "kodim01_crop.png")
        images = images or KODAK
        runs: dict[str, list[Path]] = {"lic_kd": [], "lic_kd_1thread": [], "compressai": []}

        def lic(name: str, extra_env: dict[str, str] | None) -> Callable[[], float]:
            def go() -> float:
                out = tmp / f"{name}-{len(runs[name])}"
                runs[name].append(out)
                return run(
                    [py, "-m", "lic_kd.evaluate", f"checkpoint={ckpt}", f"images={images}", f"hydra.run.dir={out}"],
                    extra_env,
                )

            return go

        def theirs() -> float:
            out = tmp / f"compressai-{len(runs['compressai'])}"
            runs["compressai"].append(out)
            return run(
                [
                    py,
                    "-m",
                    "compressai.utils.eval_model",
                    "checkpoint",
                    str(images),
                    "-a",
                    "bmshj2018-hyperprior",
                    "-p",
                    str(ckpt),
                    "-d",
                    str(out),
                    "-o",
                    "theirs",
                ]
            )

        variants = {
            "lic_kd": lic("lic_kd", None),
            "lic_kd_1thread": lic("lic_kd_1thread", {"OMP_NUM_THREADS": "1"}),
            "compressai": theirs,
        }
        one_thread_already = torch.get_num_threads() == 1  # OMP_NUM_THREADS=1 here: both lic_kd commands are the same
        if one_thread_already:
            del variants["lic_kd_1thread"]
        t = interleave(variants, repeats, warmup=0)
        if one_thread_already:
            t["lic_kd_1thread"], runs["lic_kd_1thread"] = t["lic_kd"], runs["lic_kd"]
        ours = json.loads((runs["lic_kd"][-1] / "results.json").read_text())
        ours_1t = json.loads((runs["lic_kd_1thread"][-1] / "results.json").read_text())
        their = {
            k: v[0] for k, v in json.loads((runs["compressai"][-1] / "theirs.json").read_text())["results"].items()
        }
        headers = header_bytes(runs["lic_kd_1thread"][-1] / "bitstreams")
        rows = ours_1t["images"]
        header_bpp = sum(8 * headers[Path(r["image"]).stem] / (r["height"] * r["width"]) for r in rows) / len(rows)
        n_images = len(rows)
        ours_in_process = [json.loads((d / "results.json").read_text())["wall_time_s"] for d in runs["lic_kd"]]
        their_coding = n_images * (their["encoding_time"] + their["decoding_time"])

    # parity on equal arithmetic: eval_model codes with 1 thread, and a g_a computed on 2 threads may round a
    # latent the other way at a .5 boundary (a few bytes of the strings differ: float noise, reported apart)
    m = ours_1t["metrics"]
    bpp_strings = m["bpp"] - header_bpp
    med = {k: spread(v)["median"] for k, v in t.items()}
    ratios = {
        "evaluate_time": ratio(
            med["lic_kd"],
            med["compressai"],
            paired=median_ratio(t["lic_kd"], t["compressai"]),
            goal_value=1.0,
            what="wall seconds of python -m lic_kd.evaluate / python -m compressai.utils.eval_model, "
            "same checkpoint and images",
        ),
        "evaluate_time_1thread": ratio(
            med["lic_kd_1thread"],
            med["compressai"],
            paired=median_ratio(t["lic_kd_1thread"], t["compressai"]),
            goal_value=1.0,
            what="the same with OMP_NUM_THREADS=1 for lic_kd (eval_model sets 1 thread itself)",
        ),
        "bpp_file_vs_strings": ratio(
            m["bpp"], their["bpp"], what="lic_kd bpp (whole file) / eval_model bpp (strings only)"
        ),
        "bpp_strings_parity": ratio(
            bpp_strings,
            their["bpp"],
            goal="|diff| <= 1e-9 bpp",
            met=abs(bpp_strings - their["bpp"]) <= 1e-9,
            what="lic_kd bpp less its header / eval_model bpp, both on 1 thread: the same strings",
        ),
        "psnr_parity": ratio(
            m["psnr"],
            their["psnr-rgb"],
            goal=f"|diff| <= {TOL:g} dB",
            met=abs(m["psnr"] - their["psnr-rgb"]) <= TOL,
            what="PSNR lic_kd / eval_model",
        ),
        "ms_ssim_parity": ratio(
            m["ms_ssim"],
            their["ms-ssim-rgb"],
            goal=f"|diff| <= {TOL:g}",
            met=abs(m["ms_ssim"] - their["ms-ssim-rgb"]) <= TOL,
            what="MS-SSIM lic_kd / eval_model",
        ),
    }
    absolute = {
        "wall_s": {k: spread(v) for k, v in t.items()},
        "lic_kd_wall_in_process_s": spread(ours_in_process),
        "lic_kd_coding_s": sum(r["encode_s"] + r["decode_s"] for r in ours["images"]),
        "lic_kd_1thread_coding_s": sum(r["encode_s"] + r["decode_s"] for r in ours_1t["images"]),
        "compressai_coding_s": their_coding,
        "lic_kd_profile": {k: ours.get(k) for k in ("latency", "memory", "energy")},
        "header_bytes_per_image": {
            "min": min(headers.values()),
            "max": max(headers.values()),
            "mean": sum(headers.values()) / len(headers),
            "bpp": header_bpp,
        },
        "metrics": {"lic_kd": {k: m[k] for k in ("bpp", "bpp_estimated", "psnr", "ms_ssim")}, "compressai": their},
        "diff": {
            "bpp_strings": bpp_strings - their["bpp"],
            "psnr": m["psnr"] - their["psnr-rgb"],
            "ms_ssim": m["ms_ssim"] - their["ms-ssim-rgb"],
        },
        "diff_lic_kd_2_threads": {
            "bpp": ours["metrics"]["bpp"] - m["bpp"],
            "psnr": ours["metrics"]["psnr"] - m["psnr"],
            "ms_ssim": ours["metrics"]["ms_ssim"] - m["ms_ssim"],
        },
    }
    settings = {
        "checkpoint": f"{TEACHERS.name} lambda {TEACHER_LMBDA}, exported by python -m lic_kd.teachers.export",
        "images": str(images) if not args.smoke else f"kodim01 cropped to {SMOKE_CROP[0]}x{SMOKE_CROP[1]}",
        "n_images": n_images,
        "repeats": repeats,
        "commands": [
            "python -m lic_kd.evaluate checkpoint=FILE images=DIR hydra.run.dir=DIR",
            "python -m compressai.utils.eval_model checkpoint DIR -a bmshj2018-hyperprior -p FILE -d DIR -o NAME",
        ],
    }
    if one_thread_already:
        settings["lic_kd_1thread"] = (
            "not run apart: torch already has 1 thread here (OMP_NUM_THREADS=1), the same command as lic_kd"
        )
    coding = absolute["lic_kd_coding_s"]
    notes = [
        f"lic_kd's header: {absolute['header_bytes_per_image']['mean']:.0f} bytes per image ({header_bpp:.6f} bpp); "
        f"coding (compress + decompress of every image): lic_kd {coding:.1f} s, eval_model {their_coding:.1f} s; "
        f"the rest of lic_kd's {med['lic_kd']:.1f} s is start-up, reading and checking the images, the estimate "
        "forward "
        f"and the latency/memory profile"
    ]
    return finish("evaluate_parity", args, env, settings, ratios, absolute, notes)


if __name__ == "__main__":
    main()
