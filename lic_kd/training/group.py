"""Students trained together: one process, the same batches, one teacher forward for all of them.

A KD step costs a student step plus the teacher's forward; with `student.N=[16,32,48]` the teacher's forward is
paid once per batch for the whole list. Each student keeps its own optimizers, schedule, training-noise
stream, best checkpoint and run directory, so that it ends where it would have ended trained alone (to float
noise) and is evaluated, reported and resumed like any run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from lic_kd.io import write_json_atomic
from lic_kd.results import FAILURE_FILE, failure_record
from lic_kd.training.module import CodecModule, DivergedError, step_at_validation

__all__ = ["StudentGroup"]


log = logging.getLogger(__name__)


class StudentGroup(L.LightningModule):
    """Trains several CodecModules (`members`, by name) on every batch. KD members share one teacher: its
    targets are computed once per batch. Each member's best checkpoint (its own validation loss) and final
    checkpoint are written into its run directory (`member_dirs`); the group's own checkpoints (every
    member, its optimizers and schedules) are what a resumed group starts from."""

    def __init__(self, members: dict[str, CodecModule], member_dirs: dict[str, Path]) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.members = nn.ModuleDict(members)
        self.member_dirs = {name: Path(d) for name, d in member_dirs.items()}
        kd = [m for m in self.members.values() if m.is_kd]
        if kd and len(kd) != len(self.members):
            raise ValueError("students trained together share one role: all KD or none")
        self.shared = kd[0] if kd else None  # whose teachers every member uses (the same modules)
        if self.shared is not None and any(m.teacher is not self.shared.teacher for m in kd):
            raise ValueError("students trained together must share their teacher modules (teacher_nets)")
        self.optimizer_steps_per_batch = sum(m.optimizer_steps_per_batch for m in self.members.values())
        self.best: dict[str, float] = {}
        self.diverged: dict[str, dict[str, Any]] = {}  # members stopped at a non-finite loss: the others go on

    def active(self) -> dict[str, CodecModule]:
        return {name: m for name, m in self.members.items() if name not in self.diverged}

    def stop_member(self, name: str, err: DivergedError) -> None:
        """A member met a non-finite loss: it stops (its weights stay the last finite ones, its best.ckpt stays
        what it was), says so in its run directory, and the group goes on without it; with none left, it stops."""
        self.diverged[name] = failure_record(err)
        if self.trainer.is_global_zero:
            write_json_atomic(self.member_dirs[name] / FAILURE_FILE, self.diverged[name])
        log.error("student %s: %s", name, err)
        if not self.active():
            raise err

    def _targets(self, batch: torch.Tensor) -> tuple[dict, dict] | None:
        return self.shared.teacher_targets(batch) if self.shared is not None else None

    def _optimizers(self) -> dict[str, list]:
        """Lightning's flat list of optimizers back to each member's, in configure order."""
        flat, out, start = self.optimizers(), {}, 0
        flat = flat if isinstance(flat, list) else [flat]
        for name, count in self._counts.items():
            out[name], start = flat[start : start + count], start + count
        return out

    def _schedulers(self) -> dict[str, Any]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return {}
        return dict(zip(self.members, schedulers if isinstance(schedulers, list) else [schedulers]))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        targets = self._targets(batch)  # one teacher forward serves every student
        optimizers, schedulers = self._optimizers(), self._schedulers()
        losses = []
        for name, member in self.active().items():
            try:
                logs = member.fit_batch(self, batch, optimizers[name], targets)
            except DivergedError as err:
                self.stop_member(name, err)
                continue
            member.step_schedule_after_batch(schedulers.get(name))
            self.log_dict({f"{name}/{k}": v for k, v in logs.items()}, batch_size=batch.shape[0])
            losses.append(logs["train/loss"])
        if losses:
            self.log("loss", torch.stack(losses).mean(), prog_bar=True, logger=False)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        member = next((m for m in self.active().values() if m.owns_main_optimizer(optimizer)), None)
        if member is not None:
            member.before_main_step(self, optimizer)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        targets = self._targets(batch)
        losses = []
        for name, member in self.active().items():
            logs = member.validation_logs(batch, targets)
            self.log_dict({f"{name}/{k}": v for k, v in logs.items()}, batch_size=batch.shape[0], sync_dist=True)
            losses.append(logs["val/loss"])
        # the group's val/loss (its own best.ckpt): the mean; each student's best is chosen on its own loss
        self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, batch_size=batch.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        schedulers = self._schedulers()
        batches = self.trainer.global_step // self.optimizer_steps_per_batch
        for name, member in self.active().items():
            val_loss = self.trainer.callback_metrics[f"{name}/val/loss"]
            try:
                member.check_finite(val_loss, "the validation loss is {}", batches)
            except DivergedError as err:
                self.stop_member(name, err)
                continue
            step_at_validation(schedulers.get(name), val_loss)
            # as ModelCheckpoint(monitor=val/loss, mode=min) would in a run of its own: ties keep the first
            if self.trainer.is_global_zero and float(val_loss) < self.best.get(name, float("inf")):
                self.best[name] = float(val_loss)
                member.save_run_checkpoint(
                    self.member_dirs[name] / "checkpoints" / "best.ckpt", batches, val_loss=float(val_loss)
                )

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            self.save_last_checkpoints(self.trainer.global_step // self.optimizer_steps_per_batch)

    def save_last_checkpoints(self, batches: int) -> None:
        """Each student's final state as its last.ckpt: the run's length, and what `steps` reports."""
        for name, member in self.active().items():
            member.save_run_checkpoint(self.member_dirs[name] / "checkpoints" / "last.ckpt", batches)

    def configure_optimizers(self) -> Any:
        optimizers, schedulers, self._counts = [], [], {}
        for name, member in self.members.items():
            configured = member.configure_optimizers()
            opts, scheds = configured if isinstance(configured, tuple) else (configured, [])
            self._counts[name] = len(opts)
            optimizers += opts
            schedulers += scheds
        if schedulers and len(schedulers) != len(self.members):
            raise ValueError("students trained together all have an LR schedule, or none")
        return (optimizers, schedulers) if schedulers else optimizers

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["members"] = {
            name: {"noise_state": m.noise_state, "best": self.best.get(name), "diverged": self.diverged.get(name)}
            for name, m in self.members.items()
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for name, saved in checkpoint.get("members", {}).items():
            self.members[name].noise_state = saved["noise_state"]
            if saved["best"] is not None:
                self.best[name] = saved["best"]
            if saved.get("diverged"):
                self.diverged[name] = saved["diverged"]
