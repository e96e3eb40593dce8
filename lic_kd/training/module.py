"""One LightningModule for every role: a teacher or plain student (its own objective), or a KD student
(frozen teachers), for codecs (rate-distortion) and for autoencoders without an entropy model (reconstruction)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from compressai.models import CompressionModel
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import MultiStepLR, ReduceLROnPlateau

from lic_kd.errors import ConfigError, UserError
from lic_kd.frugal.prune import prune_into
from lic_kd.frugal.quant import calibrate, quantize
from lic_kd.io import save_atomic
from lic_kd.models.checkpoints import load_net
from lic_kd.models.networks import build_net, capture_latents, optimizer_steps_per_batch
from lic_kd.training.losses import DistillationLoss, RateDistortionLoss
from lic_kd.training.precision import entropy_models_in_float32

ROLES = ("teacher", "student", "kd")


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True) if isinstance(cfg, DictConfig) else cfg


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


def step_at_validation(scheduler: Any, val_loss: torch.Tensor) -> None:
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.step(val_loss)


class DivergedError(UserError):
    """Training met a non-finite loss or gradient: the weights are still the last finite ones, nothing
    non-finite was stepped into them. The message names the batch and the last finite loss."""

    def __init__(self, what: str, batch: int, last_loss: float | None, lr: float, clipped: bool) -> None:
        self.record = {"what": what, "batch": batch, "last_finite_loss": last_loss, "lr": lr}
        last = "no finite loss before it" if last_loss is None else f"last finite loss {last_loss:.6g}"
        fix = f"lower optimizer.main.lr (now {lr:g})" + ("" if clipped else " or set optimizer.clip_max_norm=1.0")
        super().__init__(f"training diverged at batch {batch}: {what} ({last}); the run stops here, unevaluated: {fix}")


class CodecModule(L.LightningModule):
    """Trains a CompressAI model with CompressAI's recipe: a main optimizer on the network and an auxiliary
    one on the entropy bottleneck quantiles (hence manual optimization), with gradient clipping. An
    autoencoder without an entropy model has the main optimizer only."""

    def __init__(
        self,
        net: dict,
        loss: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        role: str = "student",
        teacher: dict | None = None,
        init: str = "random",
        calibration: torch.Tensor | None = None,
        prune: dict | None = None,
        quant: dict | None = None,
        noise_seed: int | None = None,
        teacher_nets: tuple[torch.nn.Module, torch.nn.Module | None] | None = None,
    ) -> None:
        """`net`, `loss`: `_target_` configs; `optimizer`: {main, aux, clip_max_norm}; `scheduler`: a
        `_target_` config of the main optimizer's LR schedule, stepped at each validation; `init`: `random`,
        `teacher` (teacher.checkpoint, pruned to this network's widths) or a checkpoint to start from;
        `calibration`: training crops on which a narrower network's channels are ranked (lic_kd.frugal.prune);
        `prune`: the prune group's settings, recorded (train.apply_pruning has already set widths and init);
        `quant`: the quant group's settings: the network is made fixed point after its initialisation and its
        activation ranges calibrated on `calibration` (lic_kd.frugal.quant); `noise_seed`: the seed of the training
        noise's own random stream (default: the process's seed); `teacher_nets`: the (main, z) teachers,
        already loaded, that students trained together share (lic_kd.training.group), else loaded from `teacher`."""
        super().__init__()
        if role not in ROLES:
            raise ConfigError(f"role must be one of {ROLES}, got {role!r}")
        self.save_hyperparameters(
            {
                k: _plain(v)
                for k, v in dict(
                    net=net,
                    loss=loss,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    role=role,
                    teacher=teacher,
                    init=init,
                    prune=prune,
                    quant=quant,
                ).items()
            }
        )
        self.automatic_optimization = False
        self.net = build_net(self.hparams.net)
        self.loss = instantiate(self.hparams.loss)
        self.is_kd = isinstance(self.loss, DistillationLoss)
        if self.is_kd != (role == "kd"):
            raise ConfigError(
                f"role={role} needs loss={'kd' if role == 'kd' else 'plain'}, got {type(self.loss).__name__}"
            )
        task = self.loss.task if self.is_kd else self.loss
        self.has_entropy_model = isinstance(self.net, CompressionModel)
        has_rate = self.has_entropy_model or getattr(
            self.net, "has_rate", False
        )  # learned JPEG: a rate proxy, no aux optimizer
        if has_rate != isinstance(task, RateDistortionLoss):
            need = "objective=rd (rate-distortion)" if has_rate else "objective=reconstruction (it has no rate)"
            raise ConfigError(
                f"{type(self.net).__name__} {'has an' if has_rate else 'has no'} entropy model: "
                f"train it with {need}, got {type(task).__name__}"
            )
        self.optimizer_steps_per_batch = optimizer_steps_per_batch(self.net)
        # prune.criterion=l1 ranks channels by filter norm alone: no activations (lic_kd.frugal.prune)
        ranking_images = None if (prune or {}).get("criterion") == "l1" else calibration
        self._initialise(init, teacher, getattr(task, "lmbda", None), ranking_images)
        if quant:
            if calibration is None:
                raise ValueError("quantization needs calibration images (training crops)")
            quantize(self.net, quant)
            calibrate(self.net, calibration)
        self.noise_seed = torch.initial_seed() if noise_seed is None else noise_seed
        self.noise_state: dict[str, torch.Tensor] | None = None  # set at the first training step
        self.last_finite_loss: float | None = None
        self._batch_number = 0
        self.teacher = self.z_teacher = None
        if self.is_kd and teacher_nets is not None:
            self.teacher, self.z_teacher = teacher_nets
        elif self.is_kd:
            if not teacher or not teacher.get("checkpoint"):
                raise ConfigError(
                    "role=kd needs a teacher: set teacher.checkpoint=PATH (a lic_kd run dir or .ckpt, or a "
                    "CompressAI file)"
                )
            self.teacher, _ = load_net(
                teacher["checkpoint"], teacher.get("architecture"), lmbda=getattr(task, "lmbda", None)
            )
            if teacher.get("z_checkpoint"):  # hybrid KD: z from a low-rate teacher, y and x_hat from the main one
                if not self.loss.weights["z"]:
                    raise ConfigError("teacher.z_checkpoint (hybrid KD) gives the z target only: set loss.w_z > 0")
                self.z_teacher, _ = load_net(
                    teacher["z_checkpoint"], teacher.get("architecture"), lmbda=teacher.get("z_lmbda")
                )
        for net in (self.net, self.teacher, self.z_teacher):  # rates in float32 under mixed precision
            if net is not None:
                entropy_models_in_float32(net)

    def _initialise(
        self, init: str, teacher: dict | None, lmbda: float | None, calibration: torch.Tensor | None
    ) -> None:
        """Start from trained weights: the teacher's (its most important channels when this network is
        narrower, the teacher itself plus idle channels when it is wider) or any checkpoint's. Resuming overwrites
        them with last.ckpt, as it should."""
        if init in (None, "random"):
            return
        if init == "teacher":
            if not teacher or not teacher.get("checkpoint"):
                raise ConfigError("student.init=teacher needs a teacher: set teacher.checkpoint=PATH")
            source_path, architecture = teacher["checkpoint"], teacher.get("architecture")
        else:
            # a CompressAI file without a teacher config (a teacher trained on from one): this network's own class
            own_class = f"{type(self.net).__module__}.{type(self.net).__qualname__}"
            source_path, architecture = init, (teacher or {}).get("architecture") or own_class
        source, _ = load_net(source_path, architecture, lmbda=lmbda)
        try:
            prune_into(source, self.net, calibration)
        except ValueError as err:
            raise ConfigError(f"student.init={init}: {err}") from None

    def train(self, mode: bool = True) -> "CodecModule":
        super().train(mode)
        for teacher in (self.teacher, self.z_teacher):
            if teacher is not None:
                teacher.eval()  # a teacher always quantizes by rounding, as at inference
        return self

    @torch.no_grad()
    def teacher_targets(self, x: torch.Tensor) -> tuple[dict, dict[str, torch.Tensor]]:
        """The teacher's output and latents; in hybrid KD, z_hat comes from the low-rate teacher."""
        with capture_latents(self.teacher) as latents:
            out = self.teacher(x)
        if self.z_teacher is not None:
            with capture_latents(self.z_teacher) as z_latents:
                self.z_teacher(x)
            latents["z_hat"] = z_latents.get("z_hat")
        return out, latents

    def check_kd_shapes(self, size: int = 64) -> None:
        """Run student and teacher once on a dummy image: a KD term whose latents differ in shape is a
        configuration error, raised before any training."""
        if not self.is_kd:
            return
        x = torch.zeros(1, 3, size, size)
        with torch.no_grad():
            was_training = self.net.training
            self.net.eval()
            with capture_latents(self.net) as student_latents:
                self.net(x)
            self.net.train(was_training)
            _, teacher_latents = self.teacher_targets(x)
        shapes = {
            name: {k: tuple(v.shape) for k, v in latents.items() if v is not None}
            for name, latents in (("student", student_latents), ("teacher", teacher_latents))
        }
        for key in self.loss.required_latents():
            s, t = shapes["student"].get(key), shapes["teacher"].get(key)
            if s is None or t is None or s != t:
                hint = (
                    "M (latent channels)"
                    if key == "y_hat"
                    else "hyper-latent width (model=bmshj2018-hyperprior-hyperwidth "
                    f"model.hyper_N={t[1] if t else 'N'})"
                )
                raise ConfigError(
                    f"KD on {key} needs equal student and teacher shapes, got student {s} vs teacher {t}: "
                    f"set the student's {hint} to the teacher's, or its KD weight to 0"
                )

    def _step(self, batch: torch.Tensor, targets: tuple[dict, dict] | None = None) -> dict[str, torch.Tensor]:
        """The loss on a batch; `targets`: the teacher's (output, latents) when a group has computed them."""
        if not self.is_kd:
            return self.loss(self.net(batch), batch)
        with capture_latents(self.net) as student_latents:
            student_out = self.net(batch)
        teacher_out, teacher_latents = targets if targets is not None else self.teacher_targets(batch)
        return self.loss(student_out, student_latents, teacher_out, teacher_latents, batch)

    @contextmanager
    def noise_stream(self) -> Iterator[None]:
        """The training noise (CompressAI's uniform noise in place of rounding) draws from this network's own
        random stream, seeded with `noise_seed` and saved in checkpoints: it then depends on nothing else the
        process draws, so that students trained together draw what each would draw alone."""
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            if self.noise_state is None:
                torch.default_generator.manual_seed(self.noise_seed)
                if cuda:
                    torch.cuda.manual_seed(self.noise_seed)
            else:
                torch.set_rng_state(self.noise_state["cpu"])
                if cuda and "cuda" in self.noise_state:
                    torch.cuda.set_rng_state(self.noise_state["cuda"], self.device)
            yield
            self.noise_state = {"cpu": torch.get_rng_state()} | (
                {"cuda": torch.cuda.get_rng_state(self.device)} if cuda else {}
            )

    def fit_batch(
        self, host: L.LightningModule, batch: torch.Tensor, optimizers: list, targets: tuple | None = None
    ) -> dict[str, torch.Tensor]:
        """One batch of CompressAI's recipe: the main optimizer on the loss (clipped), the auxiliary one on
        the quantiles. `host` is the LightningModule the trainer runs (this one, or the group holding it). A
        non-finite loss or gradient raises DivergedError before any optimizer steps on it."""
        optimizer, aux_optimizer = (optimizers + [None])[:2]
        self._batch_number = host.trainer.global_step // host.optimizer_steps_per_batch + 1
        with self.noise_stream():
            out = self._step(batch, targets)
        self.check_finite(out["loss"], "the loss is {}", self._batch_number)
        optimizer.zero_grad()
        host.manual_backward(out["loss"])
        optimizer.step()  # unscaled (16-mixed), checked and clipped first: before_main_step
        logs = {f"train/{k.removesuffix('_loss')}": v.detach() for k, v in out.items() if torch.is_tensor(v)}

        if aux_optimizer is not None:
            aux_loss = self.net.aux_loss()
            self.check_finite(aux_loss, "the auxiliary (quantiles) loss is {}", self._batch_number)
            aux_optimizer.zero_grad()
            host.manual_backward(aux_loss)
            aux_optimizer.step()
            logs["train/aux"] = aux_loss.detach()
        self.last_finite_loss = float(out["loss"].detach())
        return logs

    def owns_main_optimizer(self, optimizer: Any) -> bool:
        return getattr(optimizer, "optimizer", optimizer) is self.main_optimizer  # Lightning's wrapper or the optimizer

    def before_main_step(self, host: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        """Between backward and the main optimizer's step, where Lightning has unscaled float16 gradients: a
        non-finite gradient stops the run (under 16-mixed the scaler skips such a step itself), then clipping."""
        if host.trainer.precision != "16-mixed":
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            self.check_finite(torch.nn.utils.get_total_norm(grads), "a gradient is {}", self._batch_number)
        if self.hparams.optimizer.get("clip_max_norm"):
            host.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.optimizer["clip_max_norm"], gradient_clip_algorithm="norm"
            )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.owns_main_optimizer(optimizer):
            self.before_main_step(self, optimizer)

    def check_finite(self, value: torch.Tensor, what: str, batch: int) -> None:
        """DivergedError, naming `what` (with {} for nan or inf) and the batch, when `value` is not finite."""
        if not torch.isfinite(value).all():
            kind = "nan" if torch.isnan(value).any() else "inf"
            raise DivergedError(
                what.format(kind),
                batch,
                self.last_finite_loss,
                self.main_optimizer.param_groups[0]["lr"],
                bool(self.hparams.optimizer.get("clip_max_norm")),
            )

    def step_schedule_after_batch(self, scheduler: Any) -> None:
        if steps_every_batch(scheduler):
            scheduler.step()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        optimizers = self.optimizers()
        logs = self.fit_batch(self, batch, optimizers if isinstance(optimizers, list) else [optimizers])
        self.step_schedule_after_batch(self.lr_schedulers())
        self.log_dict(logs, prog_bar=False, batch_size=batch.shape[0])
        self.log("loss", logs["train/loss"], prog_bar=True, logger=False)

    def save_run_checkpoint(self, path: Path, batches: int, **extra: Any) -> None:
        """This network as a run's checkpoint in Lightning's layout, written without a Trainer (a post-training
        quantization; a student of a group): load_net, resume and reports read it as any run's. Written to a
        temporary file, then renamed: a reader never sees half a file."""
        checkpoint = {
            "state_dict": {k: v for k, v in self.state_dict().items() if k.startswith("net.")},
            "hyper_parameters": dict(self.hparams),
            "epoch": 0,
            "global_step": batches * self.optimizer_steps_per_batch,
            "pytorch-lightning_version": L.__version__,
            **extra,
        }
        save_atomic(checkpoint, path)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["noise_state"] = self.noise_state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.noise_state = checkpoint.get("noise_state")

    def validation_logs(self, batch: torch.Tensor, targets: tuple | None = None) -> dict[str, torch.Tensor]:
        out = self._step(batch, targets)
        # val/loss is the student's own objective in every role (RD loss, or reconstruction loss), so best
        # checkpoints and the plateau schedule follow the quantity that is evaluated; the KD objective is
        # logged beside it.
        logs = {"val/loss": out.get("task_loss", out["loss"])}
        logs |= {f"val/{k.removesuffix('_loss')}": out[k] for k in ("bpp_loss", "mse_loss", "ms_ssim_loss") if k in out}
        if self.is_kd:
            logs["val/kd_loss"] = out["loss"]
        return logs

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        # averaged over DDP processes, so that every process picks the same best checkpoint and LR step
        self.log_dict(self.validation_logs(batch), prog_bar=True, batch_size=batch.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        val_loss = self.trainer.callback_metrics["val/loss"]
        # raised before ModelCheckpoint sees it: a non-finite validation never becomes best.ckpt
        self.check_finite(
            val_loss, "the validation loss is {}", self.trainer.global_step // self.optimizer_steps_per_batch
        )
        step_at_validation(self.lr_schedulers(), val_loss)

    def configure_optimizers(self) -> Any:
        main = [p for n, p in self.net.named_parameters() if not n.endswith(".quantiles")]
        optimizers = [instantiate(self.hparams.optimizer["main"], params=main)]
        self.main_optimizer = optimizers[0]  # the one whose gradients are checked and clipped (before_main_step)
        if self.has_entropy_model:
            aux = [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]
            optimizers.append(instantiate(self.hparams.optimizer["aux"], params=aux))
        if not self.hparams.scheduler:
            return optimizers
        scheduler = instantiate(self.hparams.scheduler, optimizer=optimizers[0])
        return optimizers, [{"scheduler": scheduler, "interval": "epoch"}]
