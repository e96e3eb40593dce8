"""`python -m benchmarks [--smoke] [--out DIR] [--only NAME,...]`: every benchmark in turn (one process), then one
table of all their ratios. `make bench` runs this; `make bench BENCH_ARGS=--smoke` the tiny mode (seconds per
benchmark: checks that they run, measures nothing)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from benchmarks import BENCHMARKS
from benchmarks.common import out_dir, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    common = (
        (["--smoke"] if args.smoke else []) + (["--out", str(args.out)] if args.out else []) + ["--device", args.device]
    )
    records, failed, start = {}, [], time.perf_counter()
    for name in names:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            records[name] = importlib.import_module(f"benchmarks.{name}").main(common)
        except Exception:  # one failing benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)

    print(
        "\n"
        + "=" * 80
        + f"\nAll benchmarks ({'smoke' if args.smoke else 'full'}, {time.perf_counter() - start:.0f} s, "
        f"load average now {os.getloadavg()[0]:.2f}):\n"
    )
    for record in records.values():
        print(table(record) + "\n")
    folder = out_dir(args)
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "benchmarks": {n: str(folder / f"{n}.json") for n in records},
        "failed": failed,
        "wall_s": time.perf_counter() - start,
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
