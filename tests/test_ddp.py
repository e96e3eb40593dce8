"""Teachers that outgrow one device: Lightning's DDP, here with two CPU processes over gloo, locally (spawned)
and as two tasks of one SLURM job; one results.json written by rank 0, resume working."""

import json

import pytest
from test_slurm import SLURM, slurm_answers

from conftest import train

DDP = ["trainer=ddp", "trainer.accelerator=cpu"]


def run_record(run_dir):
    return json.loads((run_dir / "results.json").read_text())["run"]


def test_two_processes_train_one_run_and_resume(tmp_path):
    run = tmp_path / "run"
    proc = train(*DDP, "steps=4", "val_every=2", f"hydra.run.dir={run}")
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # two processes joined one process group
    assert run_record(run)["devices"] == 2 and run_record(run)["steps"] == 4
    (run / "results.json").unlink()  # as if killed during evaluation, then asked for more batches
    proc = train(*DDP, "steps=6", "val_every=2", f"hydra.run.dir={run}")
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'} at batch 4 of 6" in proc.stdout + proc.stderr
    assert run_record(run)["steps"] == 6


@pytest.mark.skipif(not slurm_answers(), reason="no SLURM cluster answers `sinfo` (make slurm-up)")
def test_two_slurm_tasks_train_one_run(tmp_path):
    sweep = tmp_path / "sweep"
    train("-m", *SLURM, *DDP, "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}", timeout=900)
    assert [run_record(p.parent)["devices"] for p in sweep.glob("*/results.json")] == [2]
    logs = {p.stem: p.read_text() + p.with_suffix(".out").read_text() for p in sweep.glob(".submitit/*/*_log.err")}
    assert len(logs) == 2 and sum("MEMBER: 2/2" in text for text in logs.values()) == 1
    assert sum("evaluating" in text for text in logs.values()) == 1  # rank 0 alone codes and writes


@pytest.mark.skipif(not slurm_answers(), reason="no SLURM cluster answers `sinfo` (make slurm-up)")
def test_processes_and_tasks_that_disagree_are_an_error_before_submission(tmp_path):
    proc = train("-m", *SLURM, *DDP, f"hydra.sweep.dir={tmp_path / 'sweep'}", check=False)
    assert proc.returncode != 0
    assert (
        "trainer.devices=2 x trainer.num_nodes=1 training processes, but the SLURM job starts tasks_per_node=1"
        in proc.stderr
    )
    assert not (tmp_path / "sweep" / ".submitit").exists()
