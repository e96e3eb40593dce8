"""The Trainer of a run: its callbacks (the run's resumable state, each student's best checkpoint, the training
clock), its strategy, resuming."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

from lic_kd.errors import CheckpointError
from lic_kd.training.module import CodecModule
from lic_kd.training.spec import RunSpec

log = logging.getLogger(__name__)


def resume_checkpoint(checkpoints: Path) -> tuple[Path, int] | None:
    """The trainer state to resume from and the batches it had trained: the run's last.ckpt (a student's best.ckpt
    holds its weights alone). A file that cannot be read (damaged) is set aside under a new name, said in the log, and
    the run starts over; one written by lic_kd before the run spec (commit 65296f9 and earlier) is named, not loaded."""
    path = checkpoints / "last.ckpt"
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or damaged: torch raises many types
        aside = path.with_name(f"last.ckpt.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(aside)
        log.warning("%s cannot be read (%s: %s): set aside as %s", path, type(err).__name__, str(err)[:200], aside.name)
        return None
    check_resumable(checkpoint, path)
    return path, int(checkpoint["batches"])


def check_resumable(checkpoint: dict[str, Any], path: Path) -> None:
    """A trainer state of this lic_kd: its students by name (lic_kd.training.module)."""
    if not {"students", "batches", "loops"} <= set(checkpoint):
        raise CheckpointError(
            f"{path} is not a trainer state of this lic_kd (written before the run spec, commit 65296f9 or "
            "earlier): finish that run with the lic_kd that started it, or give this one another directory"
        )


class StudentCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for one student: Lightning decides when (that student's lowest validation loss,
    ties keeping the first, its best score resumed with the run). What it writes is the student alone, in the
    layout of load_net's files, not the trainer's whole state: with several students trained together that state
    holds all of them (the run's last.ckpt, for resuming), and evaluation, teachers and init read one network."""

    def __init__(self, student: str, run_dir: Path, monitor: str) -> None:
        super().__init__(
            dirpath=run_dir / "checkpoints",
            filename="best",
            monitor=monitor,
            mode="min",
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        self.student = student

    @property
    def state_key(self) -> str:
        return self._generate_state_key(student=self.student, monitor=self.monitor)

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self.student not in trainer.lightning_module.diverged:  # stopped: no loss of its own; its best stays
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        module: CodecModule = trainer.lightning_module
        if trainer.is_global_zero:
            module.save_student(self.student, Path(filepath), val_loss=float(self.current_score))
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath


class FinalCheckpoint(L.Callback):
    """last.ckpt at the end of training (the final batches may postdate the last validation), written inside
    fit so that under DDP it holds rank 0's state, spawned processes included."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path)


class ValidateAtEnd(L.Callback):
    """The budget is `steps` batches, and it ends with a validation: one that is not a multiple of val_every too
    (best.ckpt may then be the last batches', as the budget results.json reports), and one a stopped student
    leaves short of Lightning's max_steps (its optimizers no longer step). Lightning validates when a run is asked
    to stop."""

    def __init__(self, steps: int, val_every: int) -> None:
        self.steps, self.val_every = steps, val_every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: CodecModule, *args: Any) -> None:
        at_max_steps = trainer.global_step >= trainer.max_steps
        if (at_max_steps and self.steps % self.val_every) or (not at_max_steps and pl_module.batches >= self.steps):
            trainer.should_stop = True


def strategy_for(strategy: Any) -> Any:
    """DDP as lic_kd trains it. The entropy bottleneck's quantiles take no part in the main loss (the auxiliary
    optimizer steps them), so DDP must look for unused parameters. Processes: SLURM starts one per task;
    elsewhere they are spawned, since Lightning's default re-runs the command line, which inside a Hydra sweep
    would start the whole sweep again in every process."""
    if strategy not in ("ddp", "ddp_spawn"):
        return strategy
    return "ddp_find_unused_parameters_true" if SLURMEnvironment.detect() else "ddp_spawn_find_unused_parameters_true"


class TrainingClock(L.Callback):
    """The segments a run was trained in (a resumed run adds one): the batch each started at, when, and for how
    many seconds. Kept in the run's checkpoints, so that results.json says how long training took, resumes
    included (training_record)."""

    def __init__(self) -> None:
        self.segments, self._started = [], None

    def on_train_start(self, trainer: L.Trainer, pl_module: CodecModule) -> None:
        self._started = time.time()
        started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._started))
        self.segments.append({"from_batch": pl_module.batches, "started_at": started_at, "seconds": 0.0})

    def state_dict(self) -> dict[str, Any]:
        if self._started is not None:
            self.segments[-1]["seconds"] = round(time.time() - self._started, 1)
        return {"segments": self.segments}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.segments = list(state_dict.get("segments", []))


def training_record(checkpoint: dict[str, Any], batch_optimizer_steps: int) -> dict[str, Any]:
    """What a run's last checkpoint says of its training: batches done, and its segments (TrainingClock)."""
    segments = checkpoint.get("callbacks", {}).get(TrainingClock.__qualname__, {}).get("segments", [])
    return {
        "batches": checkpoint.get("batches", checkpoint["global_step"] // batch_optimizer_steps),
        "segments": segments,
        "seconds": round(sum(s["seconds"] for s in segments), 1),
    }


def make_trainer(spec: RunSpec, module: CodecModule) -> L.Trainer:
    cfg, steps = spec.cfg, spec.budget.steps
    batch_optimizer_steps = module.optimizer_steps_per_batch
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    students = [StudentCheckpoint(s.name, s.run_dir, f"{module.prefix(s.name)}val/loss") for s in spec.students]
    return instantiate(
        cfg.trainer,
        strategy=strategy_for(cfg.trainer.get("strategy", "auto")),
        max_steps=batch_optimizer_steps * steps,  # Lightning counts each optimizer's steps
        val_check_interval=min(spec.budget.val_every, steps),
        # the students' best.ckpt first: the run's last.ckpt, written after them, then holds each one's new best score
        callbacks=students
        + [instantiate(c) for c in cfg.callbacks.values()]
        + [
            FinalCheckpoint(spec.run_dir / "checkpoints" / "last.ckpt"),
            ValidateAtEnd(steps, spec.budget.val_every),
            TrainingClock(),
        ],
        logger=[instantiate(c) for c in cfg.logger.values()],
        plugins=plugins,
    )


def fit(trainer: L.Trainer, module: CodecModule, datamodule: Any, spec: RunSpec) -> None:
    """Train, resuming from the run's last checkpoint when it has one."""
    resume = resume_checkpoint(spec.run_dir / "checkpoints")
    if resume is not None:
        log.info("resuming from %s at batch %d of %d", resume[0], resume[1], spec.budget.steps)
    # the checkpoint is this run's own file (trusted): its hyperparameters may hold OmegaConf containers
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume[0]) if resume else None, weights_only=False)
