"""Resuming: which checkpoint a run continues from, and what its checkpoints say of its training time."""

import pytest
import torch

from lic_kd.errors import CheckpointError
from lic_kd.training.setup import TrainingClock, resume_checkpoint, training_record


def test_a_run_resumes_from_its_last_trainer_state_alone_and_sets_a_damaged_file_aside(tmp_path):
    assert resume_checkpoint(tmp_path) is None
    torch.save({"global_step": 8, "state_dict": {}, "hyper_parameters": {"net": {}}}, tmp_path / "best.ckpt")
    assert resume_checkpoint(tmp_path) is None  # a student's best.ckpt holds its weights only: nothing to resume
    torch.save({"global_step": 24, "batches": 12, "loops": {}, "students": {}}, tmp_path / "last.ckpt")
    assert resume_checkpoint(tmp_path) == (tmp_path / "last.ckpt", 12)
    (tmp_path / "last.ckpt").write_bytes(b"truncated")  # damaged
    assert resume_checkpoint(tmp_path) is None  # set aside: the run trains from the start
    assert not (tmp_path / "last.ckpt").exists() and len(list(tmp_path.glob("last.ckpt.damaged-*"))) == 1


def test_a_trainer_state_of_an_older_lic_kd_is_named_not_loaded(tmp_path):
    torch.save(
        {"global_step": 8, "loops": {}, "state_dict": {"net.g_a.0.weight": torch.zeros(1)}}, tmp_path / "last.ckpt"
    )
    with pytest.raises(CheckpointError, match="is not a trainer state of this lic_kd .* another directory"):
        resume_checkpoint(tmp_path)
    assert (tmp_path / "last.ckpt").is_file()  # kept as it is


def test_the_training_record_sums_the_segments_a_resumed_run_was_trained_in():
    clock = TrainingClock()
    clock.load_state_dict({"segments": [{"from_batch": 0, "started_at": "t0", "seconds": 30.0}]})
    checkpoint = {"global_step": 40, "callbacks": {"TrainingClock": clock.state_dict()}}
    assert training_record(checkpoint, 2) == {"batches": 20, "segments": clock.segments, "seconds": 30.0}
    assert training_record({"global_step": 6}, 2) == {"batches": 3, "segments": [], "seconds": 0}
