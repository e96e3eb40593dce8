"""The benchmarks' tiny mode runs and writes every ratio. Benchmarks are not tests: no timing is asserted here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import REPO


def test_every_benchmark_smoke_run_writes_every_ratio(tmp_path):
    from benchmarks import BENCHMARKS

    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # 1 thread: kind to a shared machine
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == []
    for name, expected in BENCHMARKS.items():
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["benchmark"] == name and record["mode"] == "smoke"
        env = record["environment"]
        assert env["torch"] and env["torch_threads"] >= 1 and len(env["loadavg_start"]) == 3 and env["device"]
        missing = [r for r in expected if r not in record["ratios"]]
        assert not missing, f"{name}: no {missing}"
        for key, entry in record["ratios"].items():
            assert (
                math.isfinite(entry["ratio"]) and math.isfinite(entry["value"]) and math.isfinite(entry["baseline"])
            ), (name, key, entry)
            assert ("goal" in entry) == ("met" in entry), (name, key)
        assert f"### {name} (smoke)" in proc.stdout  # the printed table
    # parity is not a timing: the same checkpoint and image give the same strings, PSNR and MS-SSIM in both tools
    parity = json.loads((tmp_path / "evaluate_parity.json").read_text())["ratios"]
    assert parity["bpp_strings_parity"]["met"] and parity["psnr_parity"]["met"] and parity["ms_ssim_parity"]["met"]
