"""The one factory of a run's parts: from its spec, each student's network (initialised, pruned, quantized and
calibrated as it says), loss and optimizer settings, and the teachers its KD students share. Training and the
sweep's preflight both build through it."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from compressai.models import CompressionModel
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lic_kd.errors import ConfigError
from lic_kd.frugal.prune import prune_into
from lic_kd.frugal.quant import calibrate, quantize
from lic_kd.models.checkpoints import load_net
from lic_kd.models.networks import build_net, capture_latents
from lic_kd.training.losses import DistillationLoss, RateDistortionLoss
from lic_kd.training.module import CodecModule, Student, Teachers
from lic_kd.training.precision import entropy_models_in_float32
from lic_kd.training.spec import InitKind, Role, RunSpec, StudentSpec, lr_schedule, uses_teacher


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True) if isinstance(cfg, DictConfig) else cfg


def build_module(spec: RunSpec, calibration: torch.Tensor | None) -> CodecModule:
    """The LightningModule of a run: every student built as a run of its own would build it (the process's seed
    set before each one's initialisation), the teachers loaded once for all of them, the KD shapes checked.
    `calibration`: training crops on which a narrower network ranks its teacher's channels and a fixed-point one
    calibrates its activation ranges; None (the sweep's preflight) ranks by filter norm and skips quantization."""
    students: dict[str, Student] = {}
    teachers = None
    for student_spec in spec.students:
        L.seed_everything(spec.seed, workers=True, verbose=False)
        student = build_student(spec, student_spec, calibration)
        if student.is_kd and teachers is None:
            teachers = load_teachers(spec, getattr(student.loss.task, "lmbda", None))
        if student.is_kd:
            check_kd_shapes(student, teachers)
        students[student_spec.name] = student
    return CodecModule(students, teachers)


def build_student(spec: RunSpec, student: StudentSpec, calibration: torch.Tensor | None) -> Student:
    cfg = student.cfg
    net = build_net(_plain(cfg.model))
    loss = instantiate(_plain(cfg.loss))
    is_kd = isinstance(loss, DistillationLoss)
    if is_kd != (spec.role is Role.KD):
        raise ConfigError(
            f"role={spec.role.value} needs loss={'kd' if spec.role is Role.KD else 'plain'}, got {type(loss).__name__}"
        )
    task = loss.task if is_kd else loss
    has_rate = isinstance(net, CompressionModel) or getattr(net, "has_rate", False)  # learned JPEG: a rate proxy
    if has_rate != isinstance(task, RateDistortionLoss):
        need = "objective=rd (rate-distortion)" if has_rate else "objective=reconstruction (it has no rate)"
        raise ConfigError(
            f"{type(net).__name__} {'has an' if has_rate else 'has no'} entropy model: "
            f"train it with {need}, got {type(task).__name__}"
        )
    # prune.criterion=l1 ranks channels by filter norm alone: no activations (lic_kd.frugal.prune)
    ranking = None if (spec.prune or {}).get("criterion") == "l1" else calibration
    _initialise(spec, student, net, getattr(task, "lmbda", None), ranking)
    if spec.quant and calibration is not None:
        quantize(net, spec.quant)
        calibrate(net, calibration)
    entropy_models_in_float32(net)  # rates in float32 under mixed precision
    return Student(net, loss, student_record(spec, student), noise_seed=spec.seed)


def student_record(spec: RunSpec, student: StudentSpec) -> dict[str, Any]:
    """What a student's checkpoint records of it (load_net reads it back), from the spec."""
    cfg = student.cfg
    return {
        "net": _plain(cfg.model),
        "loss": _plain(cfg.loss),
        "optimizer": _plain(cfg.optimizer),
        "scheduler": _plain(lr_schedule(cfg)),
        "role": spec.role.value,
        "teacher": _plain(cfg.teacher) if uses_teacher(spec.role, student.init, spec.prune) else None,
        "init": student.init.setting,
        "prune": spec.prune,
        "quant": spec.quant,
    }


def _initialise(
    spec: RunSpec, student: StudentSpec, net: torch.nn.Module, lmbda: float | None, ranking: torch.Tensor | None
) -> None:
    """Start from trained weights: the teacher's (its most important channels when this network is narrower, the
    teacher itself plus idle channels when it is wider) or any checkpoint's. Resuming overwrites them."""
    init = student.init
    if init.kind is InitKind.RANDOM:
        return
    if init.kind is InitKind.TEACHER:
        source, architecture = spec.teacher.source, spec.teacher.architecture
    else:
        # a CompressAI file without a teacher config (a teacher trained on from one): this network's own class
        own_class = f"{type(net).__module__}.{type(net).__qualname__}"
        teacher_arch = spec.teacher.architecture if spec.role is Role.KD else None  # a KD run's teacher config
        source, architecture = init.path, teacher_arch or own_class
    trained, _ = load_net(source, architecture, lmbda=lmbda)
    try:
        prune_into(trained, net, ranking)
    except ValueError as err:
        raise ConfigError(f"student.init={init.setting}: {err}") from None


def load_teachers(spec: RunSpec, lmbda: float | None) -> Teachers:
    """The frozen teachers, each at the run's lambda when the setting holds one per lambda (a sweep, a ladder)."""
    main, _ = load_net(spec.teacher.source, spec.teacher.architecture, lmbda=lmbda)
    z = None
    if spec.teacher.z_source is not None:  # hybrid KD: z from a low-rate teacher, y and x_hat from the main one
        z, _ = load_net(spec.teacher.z_source, spec.teacher.architecture, lmbda=spec.teacher.z_lmbda)
    for net in (main, z):
        if net is not None:
            entropy_models_in_float32(net)
    return Teachers(main, z)


def check_kd_shapes(student: Student, teachers: Teachers, size: int = 64) -> None:
    """Run student and teacher once on a dummy image: a KD term whose latents differ in shape is a configuration
    error, raised before any training."""
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        was_training = student.net.training
        student.net.eval()
        with capture_latents(student.net) as student_latents:
            student.net(x)
        student.net.train(was_training)
        _, teacher_latents = teachers.targets(x)
    shapes = {
        name: {k: tuple(v.shape) for k, v in latents.items() if v is not None}
        for name, latents in (("student", student_latents), ("teacher", teacher_latents))
    }
    for key in student.loss.required_latents():
        s, t = shapes["student"].get(key), shapes["teacher"].get(key)
        if s is None or t is None or s != t:
            hint = (
                "M (latent channels)"
                if key == "y_hat"
                else f"hyper-latent width (model=bmshj2018-hyperprior-hyperwidth model.hyper_N={t[1] if t else 'N'})"
            )
            raise ConfigError(
                f"KD on {key} needs equal student and teacher shapes, got student {s} vs teacher {t}: "
                f"set the student's {hint} to the teacher's, or its KD weight to 0"
            )
