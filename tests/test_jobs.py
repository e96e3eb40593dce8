"""One job of a sequential sweep never bleeds into the next."""

import os

import wandb
from lightning.pytorch.loggers import WandbLogger

from lic_kd.train import isolated_job


def test_offline_wandb_does_not_leak_into_the_next_job(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    with isolated_job():
        logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lic_kd_test")
        logger.experiment.log({"x": 1})  # a real offline run
        assert os.environ.get("WANDB_MODE") in ("offline", "dryrun")  # what W&B does to the whole process
        assert wandb.run is not None
    assert "WANDB_MODE" not in os.environ
    assert os.environ["WANDB_SILENT"] == "true"  # what was set before the job is kept
    assert wandb.run is None
    assert list(tmp_path.glob("wandb/offline-run-*"))
