"""scripts/gpu-check.sh in its CPU mode: every step runs for real on the CPU, the CUDA parts say why they did not."""

import json
import subprocess

from conftest import REPO


def test_gpu_check_cpu_mode_runs_each_step_and_names_what_it_skipped(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(
        ["bash", "scripts/gpu-check.sh", "--cpu", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in proc.stdout.splitlines() if line[:2] == "| "}
    for check in ("smoke run, 32-true", "smoke run, bf16-mixed", "teacher training", "evaluation on cpu"):
        assert rows[check][0].strip() == "ok", (check, rows[check])
    assert "no CUDA device: CPU mode" in rows["evaluation on cuda"][2]
    assert "needs 2 CUDA devices, 0 here" in rows["DDP on 2 devices"][2]
    assert "decoding on CUDA: no CUDA device" in rows["bitstream decoded elsewhere"][2]
    precisions = {json.loads((out / f"smoke-{p}" / "results.json").read_text())["run"]["precision"] for p in
                  ("32-true", "bf16-mixed")}  # fmt: skip
    assert precisions == {"32-true", "bf16-mixed"}
    teacher = json.loads((out / "teacher" / "results.json").read_text())
    assert (teacher["run"]["settings"]["student.N"], teacher["run"]["settings"]["student.M"]) == (128, 192)
    assert "batches/s" in rows["teacher training"][2]
    assert (out / "summary.md").read_text().startswith("gpu-check (cpu mode)")
