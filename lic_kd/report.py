"""`python -m lic_kd.report SWEEP_DIR [SWEEP_DIR ...] --name NAME`: the rate-distortion table of every run
and the BD-rate / BD-PSNR of every curve against an anchor, into multirun_reports/NAME/."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from lic_kd import REPO_ROOT
from lic_kd.errors import run_cli
from lic_kd.reporting.bd import MIN_POINTS
from lic_kd.reporting.writer import write_report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lic_kd.report", description=__doc__)
    parser.add_argument(
        "sweep_dirs", nargs="*", type=Path, help="sweep (or run) directories to aggregate (also codec outputs)"
    )
    parser.add_argument("--name", required=True, help="report name: writes multirun_reports/NAME/")
    parser.add_argument("--out-root", type=Path, default=Path("multirun_reports"))
    parser.add_argument("--anchor", default=None, help="curve label to compare against (default: the teacher curve)")
    parser.add_argument("--method", default="pchip", choices=sorted(MIN_POINTS), help="BD interpolation")
    parser.add_argument("--rate", default="bpp", choices=["bpp", "bpp_estimated"], help="bitstream or estimated bpp")
    parser.add_argument("--metric", default="psnr", choices=["psnr", "ms_ssim_db"])
    parser.add_argument(
        "--reference",
        type=Path,
        nargs="*",
        action="extend",  # --reference A --reference B: both
        default=[],
        metavar="JSON",
        help="published curves in CompressAI's results format, added as named curves (anchors)",
    )
    parser.add_argument(
        "--ladder",
        type=Path,
        nargs="*",
        action="extend",  # --ladder A --ladder B: both
        default=[],
        metavar="DIR",
        help="shipped teacher ladders, each a curve from its ladder.json record (labelled as a record)",
    )
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    parser.add_argument(
        "--images", type=Path, default=REPO_ROOT / "data" / "kodak", help="evaluation images (visual comparison)"
    )
    args = parser.parse_args(argv)
    out = write_report(
        args.sweep_dirs,
        args.name,
        args.out_root,
        args.anchor,
        args.method,
        args.rate,
        args.metric,
        args.reference,
        not args.no_figures,
        args.images,
        args.ladder,
    )
    print((out / "rd_table.md").read_text())
    print((out / "bd_rate.md").read_text())
    print(f"report written to {out}/")


if __name__ == "__main__":
    run_cli(main)
