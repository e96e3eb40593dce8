"""The one LightningModule: the students of a run (one, or several trained together) on the same batches, each with
its own optimizers, schedule, training-noise stream and best checkpoint, and the frozen teachers whose targets are
computed once per batch for all of them. A teacher or plain student trains on its own objective; a KD student on
the distillation loss; codecs on rate-distortion, autoencoders without an entropy model on reconstruction.

It receives its parts ready (lic_kd.training.parts builds them): nothing here reads a configuration."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from compressai.models import CompressionModel
from hydra.utils import instantiate
from torch import nn
from torch.optim.lr_scheduler import MultiStepLR, ReduceLROnPlateau

from lic_kd.errors import ConfigError, UserError
from lic_kd.io import save_atomic
from lic_kd.models.networks import capture_latents, optimizer_steps_per_batch
from lic_kd.training.losses import DistillationLoss


def budget_multistep(
    optimizer: torch.optim.Optimizer, milestones: list[float], steps: int, gamma: float = 0.1
) -> MultiStepLR:
    """MultiStepLR whose milestones are fractions of the training budget (0.8: after 80 % of the `steps`
    batches), stepped every batch: changing `steps` keeps what the schedule means."""
    if not milestones or not all(isinstance(f, (int, float)) and 0 < f < 1 for f in milestones):
        raise ConfigError(
            "scheduler.milestones are fractions of the training budget in (0, 1), e.g. [0.8, 0.95], got "
            f"{list(milestones)}"
        )
    return MultiStepLR(optimizer, milestones=sorted({max(1, round(f * steps)) for f in milestones}), gamma=gamma)


def budget_plateau(
    optimizer: torch.optim.Optimizer,
    patience: float,
    steps: int,
    val_every: int,
    factor: float = 0.5,
    mode: str = "min",
) -> ReduceLROnPlateau:
    """ReduceLROnPlateau whose patience is a fraction of the training budget (0.2: a fifth of the batches without
    a better validation loss), counted in validations, at least one."""
    if not 0 < patience < 1:
        raise ConfigError(
            f"scheduler.patience is a fraction of the training budget in (0, 1), e.g. 0.2, got {patience}"
        )
    return ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=max(1, round(patience * steps / val_every)))


def steps_every_batch(scheduler: Any) -> bool:
    """A fixed schedule steps every batch; a plateau schedule at each validation (it reads the validation loss)."""
    return scheduler is not None and not isinstance(scheduler, ReduceLROnPlateau)


class DivergedError(UserError):
    """Training met a non-finite loss or gradient: the weights are still the last finite ones, nothing
    non-finite was stepped into them. The message names the batch and the last finite loss."""

    def __init__(self, what: str, batch: int, last_loss: float | None, lr: float, clipped: bool) -> None:
        self.record = {"what": what, "batch": batch, "last_finite_loss": last_loss, "lr": lr}
        last = "no finite loss before it" if last_loss is None else f"last finite loss {last_loss:.6g}"
        fix = f"lower optimizer.main.lr (now {lr:g})" + ("" if clipped else " or set optimizer.clip_max_norm=1.0")
        super().__init__(f"training diverged at batch {batch}: {what} ({last}); the run stops here, unevaluated: {fix}")


class Teachers(nn.Module):
    """The frozen teachers of KD students: `main` gives the y_hat and x_hat targets, `z` (hybrid KD, a low-rate
    teacher) the z_hat target. Always in eval mode: a teacher quantizes by rounding, as at inference."""

    def __init__(self, main: nn.Module, z: nn.Module | None = None) -> None:
        super().__init__()
        self.main, self.z = main, z

    def train(self, mode: bool = True) -> "Teachers":
        return super().train(False)

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> tuple[dict, dict[str, torch.Tensor]]:
        """The main teacher's output and latents; in hybrid KD, z_hat comes from the low-rate teacher."""
        with capture_latents(self.main) as latents:
            out = self.main(x)
        if self.z is not None:
            with capture_latents(self.z) as z_latents:
                self.z(x)
            latents["z_hat"] = z_latents.get("z_hat")
        return out, latents


class Student(nn.Module):
    """One network in training with CompressAI's recipe: a main optimizer on the network and an auxiliary one on
    the entropy bottleneck quantiles (an autoencoder or a learned JPEG has the main one only), clipping, and its
    own training-noise stream. `record`: what its checkpoint says of it (load_net, evaluation and resuming read
    it): net, loss, optimizer ({main, aux, clip_max_norm}), scheduler (a `_target_` config or None), role, teacher,
    init, prune, quant."""

    def __init__(self, net: nn.Module, loss: nn.Module, record: dict[str, Any], noise_seed: int) -> None:
        super().__init__()
        self.net, self.loss, self.record = net, loss, record
        self.optimizer_cfg, self.scheduler_cfg = record["optimizer"], record["scheduler"]
        self.is_kd = isinstance(loss, DistillationLoss)
        self.has_entropy_model = isinstance(net, CompressionModel)
        self.optimizer_steps = optimizer_steps_per_batch(net)
        self.noise_seed = noise_seed
        self.noise_state: dict[str, torch.Tensor] | None = None  # set at the first training step
        self.last_finite_loss: float | None = None
        self.main_optimizer: torch.optim.Optimizer | None = None

    def losses(self, batch: torch.Tensor, targets: tuple[dict, dict] | None) -> dict[str, torch.Tensor]:
        """The loss terms on a batch; `targets`: the teachers' (output, latents) of a KD student."""
        if not self.is_kd:
            return self.loss(self.net(batch), batch)
        with capture_latents(self.net) as student_latents:
            student_out = self.net(batch)
        teacher_out, teacher_latents = targets
        return self.loss(student_out, student_latents, teacher_out, teacher_latents, batch)

    @contextmanager
    def noise_stream(self, device: torch.device) -> Iterator[None]:
        """The training noise (CompressAI's uniform noise in place of rounding) draws from this network's own
        random stream, seeded with `noise_seed` and saved in checkpoints: it then depends on nothing else the
        process draws, so that students trained together draw what each would draw alone."""
        cuda = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if cuda else []):
            if self.noise_state is None:
                torch.default_generator.manual_seed(self.noise_seed)
                if cuda:
                    torch.cuda.manual_seed(self.noise_seed)
            else:
                torch.set_rng_state(self.noise_state["cpu"])
                if cuda and "cuda" in self.noise_state:
                    torch.cuda.set_rng_state(self.noise_state["cuda"], device)
            yield
            self.noise_state = {"cpu": torch.get_rng_state()} | (
                {"cuda": torch.cuda.get_rng_state(device)} if cuda else {}
            )

    def check_finite(self, value: torch.Tensor, what: str, batch: int) -> None:
        """DivergedError, naming `what` (with {} for nan or inf) and the batch, when `value` is not finite."""
        if not torch.isfinite(value).all():
            kind = "nan" if torch.isnan(value).any() else "inf"
            raise DivergedError(
                what.format(kind),
                batch,
                self.last_finite_loss,
                self.main_optimizer.param_groups[0]["lr"],
                bool(self.optimizer_cfg.get("clip_max_norm")),
            )

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], Any]:
        main = [p for n, p in self.net.named_parameters() if not n.endswith(".quantiles")]
        optimizers = [instantiate(self.optimizer_cfg["main"], params=main)]
        self.main_optimizer = optimizers[0]  # the one whose gradients are checked and clipped
        if self.has_entropy_model:
            aux = [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]
            optimizers.append(instantiate(self.optimizer_cfg["aux"], params=aux))
        scheduler = instantiate(self.scheduler_cfg, optimizer=optimizers[0]) if self.scheduler_cfg else None
        return optimizers, scheduler

    def validation_logs(self, batch: torch.Tensor, targets: tuple | None) -> dict[str, torch.Tensor]:
        out = self.losses(batch, targets)
        # val/loss is the student's own objective in every role (RD loss, or reconstruction loss), so best
        # checkpoints and the plateau schedule follow the quantity that is evaluated; the KD objective is
        # logged beside it.
        logs = {"val/loss": out.get("task_loss", out["loss"])}
        logs |= {f"val/{k.removesuffix('_loss')}": out[k] for k in ("bpp_loss", "mse_loss", "ms_ssim_loss") if k in out}
        if self.is_kd:
            logs["val/kd_loss"] = out["loss"]
        return logs

    def checkpoint(self, batches: int, **extra: Any) -> dict[str, Any]:
        """This network as a run's checkpoint, the file load_net reads: its weights, its record, its batches."""
        return {
            "state_dict": {f"net.{k}": v for k, v in self.net.state_dict().items()},
            "hyper_parameters": dict(self.record),
            "epoch": 0,
            "global_step": batches * self.optimizer_steps,
            "pytorch-lightning_version": L.__version__,
            **extra,
        }


class CodecModule(L.LightningModule):
    """Trains `students` (by name; a run of one network has one) on every batch; KD students share `teachers`.
    Metrics are logged under each student's name when several train together (N16/val/loss), else plainly
    (val/loss). A student that meets a non-finite loss stops (`diverged`) and the others go on."""

    def __init__(self, students: dict[str, Student], teachers: Teachers | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        kd = [s.is_kd for s in students.values()]
        if any(kd) and not all(kd):
            raise ValueError("students trained together share one role: all KD or none")
        if any(kd) and teachers is None:
            raise ValueError("KD students need their teachers")
        self.students = nn.ModuleDict(students)
        self.teachers = teachers if any(kd) else None
        self.optimizer_steps_per_batch = sum(s.optimizer_steps for s in students.values())
        # batches trained, counted here: once a student stops, Lightning's global_step (its optimizer steps) grows
        # by fewer steps per batch, and the budget and every batch number stay counted in batches
        self.batches = 0
        self.diverged: dict[str, dict[str, Any]] = {}
        self._counts: dict[str, int] = {}

    def prefix(self, name: str) -> str:
        return f"{name}/" if len(self.students) > 1 else ""

    def active(self) -> dict[str, Student]:
        return {name: s for name, s in self.students.items() if name not in self.diverged}

    def stop(self, name: str, err: DivergedError) -> None:
        """A student met a non-finite loss: it stops (its weights stay the last finite ones, its best checkpoint
        stays what it was) and the others go on; with none left, training stops."""
        self.diverged[name] = err.record | {"error": str(err)}
        if len(self.students) > 1:
            self.print(f"student {name}: {err}")
        if not self.active():
            raise err

    def _targets(self, batch: torch.Tensor) -> tuple[dict, dict] | None:
        return self.teachers.targets(batch) if self.teachers is not None else None  # one forward for every student

    def _optimizers(self) -> dict[str, list]:
        """Lightning's flat list of optimizers back to each student's, in configure order."""
        flat, out, start = self.optimizers(), {}, 0
        flat = flat if isinstance(flat, list) else [flat]
        for name, count in self._counts.items():
            out[name], start = flat[start : start + count], start + count
        return out

    def _schedulers(self) -> dict[str, Any]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return {}
        return dict(zip(self.students, schedulers if isinstance(schedulers, list) else [schedulers]))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.batches += 1
        targets = self._targets(batch)
        optimizers, schedulers = self._optimizers(), self._schedulers()
        losses = []
        for name, student in self.active().items():
            try:
                logs = self._fit_batch(student, batch, optimizers[name], targets)
            except DivergedError as err:
                self.stop(name, err)
                continue
            if steps_every_batch(schedulers.get(name)):
                schedulers[name].step()
            self.log_dict({f"{self.prefix(name)}{k}": v for k, v in logs.items()}, batch_size=batch.shape[0])
            losses.append(logs["train/loss"])
        if losses:
            self.log("loss", torch.stack(losses).mean(), prog_bar=True, logger=False)

    def _fit_batch(
        self, student: Student, batch: torch.Tensor, optimizers: list, targets: tuple | None
    ) -> dict[str, torch.Tensor]:
        """One batch of CompressAI's recipe: the main optimizer on the loss (checked and clipped in
        on_before_optimizer_step), the auxiliary one on the quantiles. A non-finite loss or gradient raises
        DivergedError before any optimizer steps on it."""
        optimizer, aux_optimizer = (optimizers + [None])[:2]
        batch_number = self.batches
        with student.noise_stream(self.device):
            out = student.losses(batch, targets)
        student.check_finite(out["loss"], "the loss is {}", batch_number)
        optimizer.zero_grad()
        self.manual_backward(out["loss"])
        optimizer.step()  # unscaled (16-mixed), checked and clipped first: on_before_optimizer_step
        logs = {f"train/{k.removesuffix('_loss')}": v.detach() for k, v in out.items() if torch.is_tensor(v)}
        if aux_optimizer is not None:
            aux_loss = student.net.aux_loss()
            student.check_finite(aux_loss, "the auxiliary (quantiles) loss is {}", batch_number)
            aux_optimizer.zero_grad()
            self.manual_backward(aux_loss)
            aux_optimizer.step()
            logs["train/aux"] = aux_loss.detach()
        student.last_finite_loss = float(out["loss"].detach())
        return logs

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Between backward and a main optimizer's step, where Lightning has unscaled float16 gradients: a
        non-finite gradient stops the student (under 16-mixed the scaler skips such a step itself), then clipping."""
        inner = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper or the optimizer
        student = next((s for s in self.active().values() if s.main_optimizer is inner), None)
        if student is None:
            return
        if self.trainer.precision != "16-mixed":
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            student.check_finite(torch.nn.utils.get_total_norm(grads), "a gradient is {}", self.batches)
        if student.optimizer_cfg.get("clip_max_norm"):
            self.clip_gradients(
                optimizer, gradient_clip_val=student.optimizer_cfg["clip_max_norm"], gradient_clip_algorithm="norm"
            )

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        targets = self._targets(batch)
        losses = []
        for name, student in self.active().items():
            logs = student.validation_logs(batch, targets)
            # averaged over DDP processes, so that every process picks the same best checkpoint and LR step
            self.log_dict(
                {f"{self.prefix(name)}{k}": v for k, v in logs.items()},
                prog_bar=len(self.students) == 1,
                batch_size=batch.shape[0],
                sync_dist=True,
            )
            losses.append(logs["val/loss"])
        if len(self.students) > 1:  # the progress bar's one number: the mean
            self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, batch_size=batch.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        schedulers = self._schedulers()
        for name, student in self.active().items():
            val_loss = self.trainer.callback_metrics[f"{self.prefix(name)}val/loss"]
            try:  # before StudentCheckpoint sees it: a non-finite validation never becomes a best checkpoint
                student.check_finite(val_loss, "the validation loss is {}", self.batches)
            except DivergedError as err:
                self.stop(name, err)
                continue
            if isinstance(schedulers.get(name), ReduceLROnPlateau):
                schedulers[name].step(val_loss)

    def configure_optimizers(self) -> Any:
        optimizers, schedulers, self._counts = [], [], {}
        for name, student in self.students.items():
            opts, scheduler = student.configure_optimizers()
            self._counts[name] = len(opts)
            optimizers += opts
            schedulers += [scheduler] if scheduler is not None else []
        if schedulers and len(schedulers) != len(self.students):
            raise ValueError("students trained together all have an LR schedule, or none")
        return (optimizers, [{"scheduler": s, "interval": "epoch"} for s in schedulers]) if schedulers else optimizers

    def save_student(self, name: str, path: Path, batches: int | None = None, **extra: Any) -> None:
        """One student's checkpoint file (Student.checkpoint), written atomically: a reader never sees half."""
        batches = self.batches if batches is None else batches
        save_atomic(self.students[name].checkpoint(batches, **extra), path)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["batches"] = self.batches
        checkpoint["students"] = {
            name: {"noise_state": s.noise_state, "diverged": self.diverged.get(name), "record": s.record}
            for name, s in self.students.items()
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.batches = checkpoint["batches"]
        for name, saved in checkpoint.get("students", {}).items():
            self.students[name].noise_state = saved["noise_state"]
            if saved.get("diverged"):
                self.diverged[name] = saved["diverged"]
