"""One LightningModule for every role: a teacher or plain student (RD loss), or a KD student (frozen teacher)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lic_kd.losses import DistillationLoss
from lic_kd.models import build_net, capture_latents, load_net

ROLES = ("teacher", "student", "kd")


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class CodecModule(L.LightningModule):
    """Trains a CompressAI model with CompressAI's recipe: a main optimizer on the network and an auxiliary
    one on the entropy bottleneck quantiles (hence manual optimization), with gradient clipping."""

    def __init__(
        self,
        net: dict,
        loss: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        role: str = "student",
        teacher: dict | None = None,
    ) -> None:
        """`net`, `loss`: `_target_` configs; `optimizer`: {main, aux, clip_max_norm}; `scheduler`: a
        `_target_` config of the main optimizer's LR schedule, stepped at each validation."""
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.save_hyperparameters(
            {k: _plain(v) for k, v in dict(net=net, loss=loss, optimizer=optimizer, scheduler=scheduler,
                                          role=role, teacher=teacher).items()}
        )
        self.automatic_optimization = False
        self.net = build_net(self.hparams.net)
        self.loss = instantiate(self.hparams.loss)
        self.is_kd = isinstance(self.loss, DistillationLoss)
        if self.is_kd != (role == "kd"):
            raise ValueError(f"role={role} needs loss={'kd' if role == 'kd' else 'rd'}, got {type(self.loss).__name__}")
        self.teacher = None
        if self.is_kd:
            if not teacher or not teacher.get("checkpoint"):
                raise ValueError("role=kd needs a teacher: set teacher.checkpoint=PATH (a lic_kd run dir or .ckpt, or a CompressAI file)")
            self.teacher, _ = load_net(teacher["checkpoint"], teacher.get("architecture"), lmbda=self.hparams.loss["lmbda"])

    def train(self, mode: bool = True) -> "CodecModule":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher always quantizes by rounding, as at inference
        return self

    def check_kd_shapes(self, size: int = 64) -> None:
        """Run student and teacher once on a dummy image: a KD term whose latents differ in shape is a
        configuration error, raised before any training."""
        if not self.is_kd:
            return
        x = torch.zeros(1, 3, size, size)
        shapes = {}
        with torch.no_grad():
            for name, net in (("student", self.net), ("teacher", self.teacher)):
                was_training = net.training
                net.eval()
                with capture_latents(net) as latents:
                    net(x)
                net.train(was_training)
                shapes[name] = {k: tuple(v.shape) for k, v in latents.items()}
        for key in self.loss.required_latents():
            s, t = shapes["student"].get(key), shapes["teacher"].get(key)
            if s is None or t is None or s != t:
                hint = "M (latent channels)" if key == "y_hat" else "hyper-latent width N"
                raise ValueError(f"KD on {key} needs equal student and teacher shapes, got student {s} vs teacher {t}: "
                                 f"set the student's {hint} to the teacher's, or its KD weight to 0")

    def _step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.is_kd:
            return self.loss(self.net(batch), batch)
        with capture_latents(self.net) as student_latents:
            student_out = self.net(batch)
        with torch.no_grad(), capture_latents(self.teacher) as teacher_latents:
            teacher_out = self.teacher(batch)
        return self.loss(student_out, student_latents, teacher_out, teacher_latents, batch)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        optimizer, aux_optimizer = self.optimizers()
        out = self._step(batch)
        optimizer.zero_grad()
        self.manual_backward(out["loss"])
        if self.hparams.optimizer.get("clip_max_norm"):
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.optimizer["clip_max_norm"], gradient_clip_algorithm="norm")
        optimizer.step()

        aux_loss = self.net.aux_loss()
        aux_optimizer.zero_grad()
        self.manual_backward(aux_loss)
        aux_optimizer.step()

        logs = {f"train/{k.removesuffix('_loss')}": v.detach() for k, v in out.items()}
        logs["train/aux"] = aux_loss.detach()
        self.log_dict(logs, prog_bar=False, batch_size=batch.shape[0])
        self.log("loss", out["loss"].detach(), prog_bar=True, logger=False)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        out = self._step(batch)
        # val/loss is the student's own rate-distortion loss in every role, so best checkpoints and the
        # plateau schedule follow the quantity that is evaluated; the KD objective is logged beside it.
        logs = {"val/loss": out.get("rd_loss", out["loss"]), "val/bpp": out["bpp_loss"], "val/mse": out["mse_loss"]}
        if self.is_kd:
            logs["val/kd_loss"] = out["loss"]
        self.log_dict(logs, prog_bar=True, batch_size=batch.shape[0])

    def on_validation_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is None or self.trainer.sanity_checking:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(self.trainer.callback_metrics["val/loss"])
        else:
            scheduler.step()

    def configure_optimizers(self) -> Any:
        main = [p for n, p in self.net.named_parameters() if not n.endswith(".quantiles")]
        aux = [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]
        optimizer = instantiate(self.hparams.optimizer["main"], params=main)
        aux_optimizer = instantiate(self.hparams.optimizer["aux"], params=aux)
        if not self.hparams.scheduler:
            return [optimizer, aux_optimizer]
        scheduler = instantiate(self.hparams.scheduler, optimizer=optimizer)
        return [optimizer, aux_optimizer], [{"scheduler": scheduler, "interval": "epoch"}]
