"""Sweeps on a real SLURM cluster (the local one from scripts/slurm-local.sh, which .ci/run starts)."""

import json
import re
import shutil
import subprocess
import time
from datetime import datetime

import pandas as pd
import pytest
import torch

from conftest import run_module, train


def slurm_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and any(s.strip("*~#") in ("idle", "mix", "alloc") for s in out.stdout.split())


pytestmark = [
    pytest.mark.xdist_group("slurm"),  # one worker runs them one after the other: the cluster has 2 CPUs
    pytest.mark.skipif(
        not slurm_answers(),
        reason="no SLURM cluster answers `sinfo`: start the local one with `make slurm-up` "
        "(scripts/slurm-local.sh up, as root)",
    ),
]

# The preset for the repository's own cluster, as a user runs it (one CPU and 2 GB per job).
SLURM = ["launcher=slurm_local", "hydra.launcher.timeout_min=10"]


def sacct(job_id: str, settle_s: float = 30) -> pd.DataFrame:
    """The job's accounting records, once none of them is still PENDING or RUNNING (the accounting lags a
    job's end by a moment: submitit may have its result before slurmdbd has the final state)."""
    deadline = time.monotonic() + settle_s
    while True:
        out = subprocess.run(
            ["sacct", "-j", job_id, "-X", "-n", "-P", "--duplicates", "-o", "JobID,State,Start,End"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        table = pd.DataFrame(
            [line.split("|") for line in out.strip().splitlines()], columns=["job", "state", "start", "end"]
        )
        if not table["state"].isin(["PENDING", "RUNNING"]).any() or time.monotonic() > deadline:
            return table
        time.sleep(1)


def job_ids(sweep) -> set[str]:
    return {p.name for p in (sweep / ".submitit").iterdir() if p.is_dir()}


def test_sweep_on_slurm_lands_results_and_report_with_array_parallelism(tmp_path):
    sweep = tmp_path / "sweep"
    train("-m", *SLURM, "student.N=8,12", "hydra.launcher.array_parallelism=1", f"hydra.sweep.dir={sweep}", timeout=900)
    found = sorted(sweep.glob("*/results.json"))
    assert {json.loads(p.read_text())["run"]["N"] for p in found} == {8, 12}
    # a job array with at most one task running at a time: the second starts after the first ended
    array_id = next(iter(job_ids(sweep))).split("_")[0]
    tasks = sacct(array_id)
    assert len(tasks) == 2 and (tasks["state"] == "COMPLETED").all()
    first, second = sorted(tasks.itertuples(), key=lambda t: t.start)
    assert datetime.fromisoformat(second.start) >= datetime.fromisoformat(first.end)
    run_module("lic_kd.report", str(sweep), "--name", "s", "--out-root", str(tmp_path / "rep"), "--no-figures")
    assert len(pd.read_csv(tmp_path / "rep" / "s" / "rd_table.csv")) == 2


def test_a_failed_job_leaves_the_others_and_the_report_lists_it(tmp_path):
    sweep = tmp_path / "sweep"
    # an impossible job is refused before submission (nothing runs); one that fails while it runs (here: diverges)
    # leaves the others to finish, and the report lists it
    refused = train("-m", *SLURM, "student.N=8,0", f"hydra.sweep.dir={sweep}", check=False, timeout=900)
    assert refused.returncode == 2 and "job experiment=smoke" in refused.stderr and not (sweep / "0").exists()
    train(
        "-m", *SLURM, "steps=40", "val_every=10", "optimizer.main.lr=1e-3,1e3", f"hydra.sweep.dir={sweep}", timeout=900
    )
    run_module("lic_kd.report", str(sweep), "--name", "f", "--out-root", str(tmp_path / "rep"), "--no-figures")
    assert len(pd.read_csv(tmp_path / "rep" / "f" / "rd_table.csv")) == 1
    missing = pd.read_csv(tmp_path / "rep" / "f" / "missing_runs.csv")
    assert len(missing) == 1 and missing["reason"][0].startswith("diverged at batch")


def release_when_requeued(job: str, timeout: float = 120) -> None:
    """SLURM holds a requeued job for about two minutes (its begin time); the administrator's
    `scontrol update StartTime=now` lets it start at once, so the test waits for lic_kd, not for SLURM."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
            return
        time.sleep(0.5)


def test_a_signalled_job_is_requeued_and_resumes(tmp_path):
    """SLURM's warning signal (USR2: what `--signal` sends before a time limit, and what preemption sends) makes
    submitit requeue the job into the same run directory, which resumes from last.ckpt. The signal is sent by
    the test once a checkpoint exists, not by SLURM's coarse timer, so that the test means the same on an idle
    and on a loaded machine: resumed, not restarted, and exactly one results.json."""
    import sys

    from conftest import REPO

    sweep = tmp_path / "sweep"
    args = [
        sys.executable,
        "-m",
        "lic_kd.train",
        "-m",
        "experiment=smoke",
        *SLURM,
        "steps=500",
        "val_every=50",
        "student.N=8",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    deadline, job, batch = time.monotonic() + 600, None, 0
    while time.monotonic() < deadline and proc.poll() is None and batch < 100:
        time.sleep(1)
        if (
            job is None and (sweep / ".submitit").is_dir()
        ):  # submitit: a folder per job (<id>, or <id>_<task> in an array)
            job = next(
                (p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)),
                None,
            )
        if last.is_file():
            try:
                batch = torch.load(last, map_location="cpu", weights_only=False)["global_step"] // 2
            except Exception:  # caught mid-write
                pass
    try:
        assert job and 100 <= batch < 500, f"the job was not caught mid-training (batch {batch})"
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        release_when_requeued(job)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["scancel", job or "0"], capture_output=True)
    assert proc.returncode == 0, out[-3000:]
    run = sweep / "0"
    assert json.loads((run / "results.json").read_text())["run"]["steps"] == 500
    assert list(sweep.glob("*/results.json")) == [run / "results.json"]  # exactly one result
    assert "REQUEUED" in sacct(job)["state"].tolist()
    resumed_at = [
        int(b) for b in re.findall(r"resuming from \S+ at batch (\d+) of 500", (run / "train.log").read_text())
    ]
    assert len(resumed_at) == 1 and resumed_at[0] >= 100  # from the checkpoint it had, not from scratch


def test_an_impossible_request_is_an_error_before_anything_is_submitted(tmp_path):
    """launcher=slurm's defaults (8 CPUs, 32 GB per job) on this 2-CPU node: one line, at once, no job."""
    sweep = tmp_path / "sweep"
    start = time.monotonic()
    proc = train("-m", "launcher=slurm", "student.N=8,16", f"hydra.sweep.dir={sweep}", check=False, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert (
        "hydra.launcher.cpus_per_task=8 x tasks_per_node=1 needs 8 CPUs on a node, but the largest node of partition"
        in proc.stderr
    )
    assert not (sweep / ".submitit").exists() and elapsed < 60


def test_a_job_pending_for_a_reason_that_never_clears_is_cancelled(tmp_path):
    """The watcher a sweep runs while it waits: a job SLURM holds for PartitionConfig is cancelled, with the reason."""
    from lic_kd.slurm import JobWatcher

    job = (
        subprocess.run(
            ["sbatch", "--parsable", "--cpus-per-task=64", "--mem=100M", "--wrap", "sleep 1"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(";")[0]
    )
    (tmp_path / ".submitit" / f"{job}_0").mkdir(parents=True)  # submitit's layout: one folder per job
    watcher = JobWatcher(tmp_path / ".submitit", n_jobs=1, poll_s=1)
    watcher.start()
    watcher.join(timeout=60)
    assert watcher.fatal and f"SLURM job {job} is pending with reason PartitionConfig" in watcher.fatal
    time.sleep(2)
    queued = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    assert queued in ("", "CANCELLED")
