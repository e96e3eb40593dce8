"""Nothing lost, nothing repeated: a run killed while writing a checkpoint or during its evaluation finishes
on the next run of the same command, and the same command gives the same metrics."""

import json
import re

import pytest

from conftest import train

QUALITY = ("bpp", "bpp_estimated", "psnr", "ms_ssim")


def metrics(run_dir):
    return json.loads((run_dir / "results.json").read_text())["metrics"]


def test_a_damaged_last_checkpoint_is_set_aside_and_the_run_trains_again(tmp_path):
    """Lightning writes last.ckpt through a temporary file, so a kill leaves the previous one whole; a file damaged
    all the same (a full disk) is set aside, never loaded, and the run trains its budget from the start. A
    student's best.ckpt holds its weights alone, not the trainer's state: it is no place to resume from."""
    run = tmp_path / "run"
    train("steps=8", "val_every=4", f"hydra.run.dir={run}")
    (run / "results.json").unlink()  # as if the process had been killed ...
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # ... and its last.ckpt damaged
    proc = train("steps=12", "val_every=4", f"hydra.run.dir={run}")
    out = proc.stdout + proc.stderr
    assert f"{last} cannot be read" in out and "set aside as last.ckpt.damaged-" in out
    assert "resuming from" not in out
    assert len(list(last.parent.glob("last.ckpt.damaged-*"))) == 1
    record = json.loads((run / "results.json").read_text())
    assert record["run"]["steps"] == 12 and record["run"]["training"]["segments"][0]["from_batch"] == 0


def test_a_run_killed_during_evaluation_evaluates_without_training_again(tmp_path):
    run = tmp_path / "run"
    train("steps=6", "val_every=3", f"hydra.run.dir={run}")
    first = metrics(run)
    (run / "results.json").unlink()  # results.json is the last thing a run writes
    proc = train("steps=6", "val_every=3", f"hydra.run.dir={run}")
    assert "at batch 6 of 6" in proc.stdout + proc.stderr  # resumed at its end: nothing left to train
    assert {k: metrics(run)[k] for k in QUALITY} == {k: first[k] for k in QUALITY}


@pytest.mark.parametrize("workers", [0, 2])
def test_the_same_command_twice_gives_the_same_metrics(tmp_path, workers):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        train("steps=6", "val_every=3", f"data.num_workers={workers}", f"hydra.run.dir={run}")
    a, b = (metrics(run) for run in runs)
    assert {k: a[k] for k in QUALITY} == {k: b[k] for k in QUALITY}


def test_a_finished_run_given_a_larger_budget_trains_on_and_keeps_its_earlier_results(tmp_path):
    """How a teacher is trained on (experiment=teacher_ladder with more steps): the same command with a larger
    `steps` resumes from last.ckpt instead of calling the run complete; the earlier evaluation is kept beside."""
    run = tmp_path / "run"
    train("steps=4", "val_every=2", f"hydra.run.dir={run}")
    first = json.loads((run / "results.json").read_text())
    proc = train("steps=6", "val_every=2", f"hydra.run.dir={run}")
    assert "trained 4 of 6 batches: training on from last.ckpt" in proc.stdout + proc.stderr
    assert "at batch 4 of 6" in proc.stdout + proc.stderr
    assert json.loads((run / "results-4.json").read_text()) == first
    assert json.loads((run / "results.json").read_text())["run"]["steps"] == 6
    again = train("steps=6", "val_every=2", f"hydra.run.dir={run}")  # the same budget: complete, nothing to do
    assert "this run is complete, nothing to do" in again.stdout + again.stderr
    finished = (run / "results.json").read_bytes()
    other = train("steps=6", "val_every=2", "optimizer.main.lr=3e-4", f"hydra.run.dir={run}", check=False)
    assert other.returncode == 2  # another configuration is not this run, finished: named, and nothing touched
    assert re.search(
        r"holds a finished run of another configuration \(optimizer.main.lr=[\d.e-]+ there, 0.0003 now\)", other.stderr
    )
    assert (run / "results.json").read_bytes() == finished and not (run / "results-6.json").exists()
