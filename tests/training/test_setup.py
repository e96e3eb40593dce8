"""Resuming: which checkpoint a run continues from, and what its checkpoints say of its training time."""

import torch

from lic_kd.training.setup import TrainingClock, resume_checkpoint, training_record


def test_a_run_resumes_from_a_trainer_state_never_from_a_students_own_file_and_sets_a_damaged_file_aside(tmp_path):
    assert resume_checkpoint(tmp_path) is None
    torch.save({"global_step": 8, "state_dict": {}, "hyper_parameters": {"net": {}}}, tmp_path / "best.ckpt")
    assert resume_checkpoint(tmp_path) is None  # a student's best.ckpt holds its weights only: nothing to resume
    torch.save({"global_step": 8, "loops": {}}, tmp_path / "best.ckpt")  # a trainer state (an older run's best)
    assert resume_checkpoint(tmp_path) == (tmp_path / "best.ckpt", 8)
    (tmp_path / "last.ckpt").write_bytes(b"truncated")  # damaged
    assert resume_checkpoint(tmp_path) == (tmp_path / "best.ckpt", 8)
    assert not (tmp_path / "last.ckpt").exists() and len(list(tmp_path.glob("last.ckpt.damaged-*"))) == 1
    torch.save({"global_step": 12, "loops": {}}, tmp_path / "last.ckpt")
    assert resume_checkpoint(tmp_path) == (tmp_path / "last.ckpt", 12)


def test_the_training_record_sums_the_segments_a_resumed_run_was_trained_in():
    clock = TrainingClock(batch_optimizer_steps=2)
    clock.load_state_dict({"segments": [{"from_batch": 0, "started_at": "t0", "seconds": 30.0}]})
    checkpoint = {"global_step": 40, "callbacks": {"TrainingClock": clock.state_dict()}}
    assert training_record(checkpoint, 2) == {"batches": 20, "segments": clock.segments, "seconds": 30.0}
    assert training_record({"global_step": 6}, 2) == {"batches": 3, "segments": [], "seconds": 0}
