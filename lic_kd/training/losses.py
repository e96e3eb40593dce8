"""Training objectives: CompressAI's rate-distortion loss, a reconstruction loss for autoencoders without
an entropy model, and knowledge distillation on top of either."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressai.losses import RateDistortionLoss as _CompressAIRateDistortionLoss
from pytorch_msssim import ms_ssim
from torch import nn

from lic_kd.errors import ConfigError

__all__ = ["RateDistortionLoss", "ReconstructionLoss", "DistillationLoss", "latent_kl", "make_rd_loss"]


METRICS = ("mse", "ms-ssim")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")


class RateDistortionLoss(_CompressAIRateDistortionLoss):
    """CompressAI's loss. A network without an entropy model whose output carries its own differentiable rate
    as `bpp` (learned JPEG's proxy of the entropy-coded size) is charged that rate instead of likelihoods."""

    def forward(self, output: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if "likelihoods" in output or "bpp" not in output:
            return super().forward(output, target)
        out = super().forward({**output, "likelihoods": {}}, target)  # the distortion term alone
        out["bpp_loss"] = output["bpp"]
        out["loss"] = out["loss"] + output["bpp"]
        return out


def make_rd_loss(lmbda: float, metric: str = "mse") -> RateDistortionLoss:
    """`lmbda * D + bpp` with D = 255^2 * MSE or 1 - MS-SSIM: CompressAI's own loss (returns a dict with
    loss, bpp_loss and mse_loss or ms_ssim_loss)."""
    if not lmbda > 0:
        raise ConfigError(f"lmbda must be > 0, got {lmbda}")
    _check_metric(metric)
    return RateDistortionLoss(lmbda=lmbda, metric=metric, return_type="all")


class ReconstructionLoss(nn.Module):
    """The objective of an autoencoder without an entropy model: MSE of [0, 1] images, or 1 - MS-SSIM.
    No rate term, so no lambda."""

    def __init__(self, metric: str = "mse") -> None:
        super().__init__()
        _check_metric(metric)
        self.metric = metric

    def forward(self, output: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"mse_loss": F.mse_loss(output["x_hat"], target)}
        if self.metric == "ms-ssim":
            out["ms_ssim_loss"] = ms_ssim(output["x_hat"], target, data_range=1.0)
            out["loss"] = 1 - out["ms_ssim_loss"]
        else:
            out["loss"] = out["mse_loss"]
        return out


def latent_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of channel-wise softmax distributions, averaged over batch and positions."""
    channels = student.shape[1]
    s = student.movedim(1, -1).reshape(-1, channels) / temperature
    t = teacher.movedim(1, -1).reshape(-1, channels) / temperature
    return (
        F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="batchmean")
        * temperature**2
    )


class DistillationLoss(nn.Module):
    """`w_task * task(student) + w_y * D(y_hat_s, y_hat_t) + w_z * D(z_hat_s, z_hat_t) + w_x * MSE(x_hat_s, x_hat_t)`.

    `task` is the student's own objective: the RD loss of a codec, or the reconstruction loss of an
    autoencoder. D is MSE or KL on the latents; the recipe of Allemand et al. (2025) uses MSE with
    w_y = w_x = 0.3, w_task = 0.4. Targets come from frozen teachers in eval mode (rounded latents)."""

    def __init__(
        self,
        task: nn.Module,
        w_task: float = 0.4,
        w_y: float = 0.3,
        w_z: float = 0.0,
        w_x: float = 0.3,
        latent_criterion: str = "mse",
        temperature: float = 1.0,
        x_in_task_units: bool = True,
    ) -> None:
        super().__init__()
        for name, weight in {"w_task": w_task, "w_y": w_y, "w_z": w_z, "w_x": w_x}.items():
            if weight < 0:
                raise ConfigError(f"KD weight {name} must be >= 0, got {weight}")
        if latent_criterion not in ("mse", "kl"):
            raise ConfigError(f"latent_criterion must be 'mse' or 'kl', got {latent_criterion!r}")
        self.task = task
        self.weights = {"y": w_y, "z": w_z, "x": w_x}
        self.w_task = w_task
        self.latent_criterion = latent_criterion
        self.temperature = temperature
        # The x_hat term in the task's own distortion units (lmbda * 255^2 * MSE for CompressAI's RD loss, or
        # lmbda * (1 - MS-SSIM)): the teacher's reconstruction then weighs against the original image w_x : w_task
        # at every lambda, as the published weights mean. False: MSE of [0, 1] images, 1/(lmbda * 255^2) of that
        # (0.1-0.6 % at the demo's lambdas), which leaves y_hat as the only KD term in practice.
        self.x_in_task_units = x_in_task_units

    def x_distortion(self, x_student: torch.Tensor, x_teacher: torch.Tensor) -> torch.Tensor:
        """The student's reconstruction against the teacher's, as the task measures a distortion (or plain MSE
        of [0, 1] images with x_in_task_units=false)."""
        if not self.x_in_task_units:
            return F.mse_loss(x_student, x_teacher)
        metric, lmbda = getattr(self.task, "metric", "mse"), getattr(self.task, "lmbda", None)
        if isinstance(metric, nn.MSELoss):  # CompressAI's RD loss on MSE
            return lmbda * 255**2 * F.mse_loss(x_student, x_teacher)
        if metric is ms_ssim or metric == "ms-ssim":
            distortion = 1 - ms_ssim(x_student, x_teacher, data_range=1.0)
        else:
            distortion = F.mse_loss(x_student, x_teacher)
        return distortion if lmbda is None else lmbda * distortion

    def _latent_distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.latent_criterion == "kl":
            return latent_kl(student, teacher, self.temperature)
        return F.mse_loss(student, teacher)

    def forward(
        self,
        student_out: dict,
        student_latents: dict[str, torch.Tensor],
        teacher_out: dict,
        teacher_latents: dict[str, torch.Tensor],
        target: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        out = self.task(student_out, target)
        out["task_loss"] = out["loss"]
        loss = self.w_task * out["task_loss"]
        if self.weights["y"]:
            out["kd_y"] = self._latent_distance(student_latents["y_hat"], teacher_latents["y_hat"])
            loss = loss + self.weights["y"] * out["kd_y"]
        if self.weights["z"]:
            out["kd_z"] = self._latent_distance(student_latents["z_hat"], teacher_latents["z_hat"])
            loss = loss + self.weights["z"] * out["kd_z"]
        if self.weights["x"]:
            out["kd_x"] = self.x_distortion(student_out["x_hat"], teacher_out["x_hat"])
            loss = loss + self.weights["x"] * out["kd_x"]
        out["loss"] = loss
        return out

    def required_latents(self) -> list[str]:
        """Latents whose student and teacher shapes must match for this loss."""
        return [f"{k}_hat" for k in ("y", "z") if self.weights[k]]
