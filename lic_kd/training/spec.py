"""The run spec: a composed training configuration parsed once into typed values and checked once, before anything
expensive. `python -m lic_kd.train`, the sweep's preflight and the results record all read a run through it.

A run trains one or more students together (`student.N=[16,32]`, `student.init=[random,teacher]`): a run of one
network is a group of one, whose student's run directory is the run's own."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from lic_kd.errors import ConfigError
from lic_kd.frugal.prune import CRITERIA, pruned_widths
from lic_kd.frugal.quant import check_spec
from lic_kd.metrics import MS_SSIM_MIN_SIDE
from lic_kd.models.checkpoints import CheckpointSource, checkpoint_fingerprint, load_net
from lic_kd.models.zoo import zoo_preset
from lic_kd.results import curve_settings_of
from lic_kd.training.precision import check_precision

log = logging.getLogger(__name__)


class Role(str, Enum):
    TEACHER = "teacher"
    STUDENT = "student"
    KD = "kd"


class InitKind(str, Enum):
    RANDOM = "random"
    TEACHER = "teacher"  # teacher.checkpoint: its most important channels (narrower) or itself plus idle ones
    CHECKPOINT = "checkpoint"  # any trained network's file or run directory


@dataclass(frozen=True)
class Init:
    kind: InitKind
    path: str | None = None  # the checkpoint of InitKind.CHECKPOINT

    @classmethod
    def parse(cls, value: Any) -> "Init":
        if value in (None, "random"):
            return cls(InitKind.RANDOM)
        if value == "teacher":
            return cls(InitKind.TEACHER)
        return cls(InitKind.CHECKPOINT, str(value))

    @property
    def setting(self) -> str:
        """As the configuration writes it: random, teacher, or the checkpoint's path."""
        return self.path if self.kind is InitKind.CHECKPOINT else self.kind.value


@dataclass(frozen=True)
class TeacherSpec:
    """The frozen networks a run reads: for KD targets, to start from, or to prune."""

    source: CheckpointSource
    architecture: str | None
    z_source: CheckpointSource | None  # hybrid KD: the low-rate teacher of the z_hat target
    z_lmbda: float | None
    any_lmbda: bool


@dataclass(frozen=True)
class Budget:
    steps: int  # training batches
    val_every: int  # batches between validations, best checkpoints and LR-schedule steps


@dataclass(frozen=True)
class StudentSpec:
    """One network the run trains: its own configuration (its width and init set), its run directory."""

    name: str
    cfg: DictConfig
    run_dir: Path
    init: Init
    overrides: tuple[str, ...]  # the command line as this student's own (student.N=16 for student.N=[16,32])


@dataclass(frozen=True)
class RunSpec:
    cfg: DictConfig
    run_dir: Path
    role: Role
    seed: int
    budget: Budget
    teacher: TeacherSpec | None  # None when no teacher takes part (a plain student from random weights)
    students: tuple[StudentSpec, ...]
    prune: dict[str, Any] | None
    quant: dict[str, Any] | None
    precision: str

    @property
    def grouped(self) -> bool:
        """Students listed on the command line (student.N=[...]): each has a run directory inside the run's."""
        return lists_students(self.cfg)

    @property
    def ptq(self) -> bool:
        return bool(self.quant) and self.quant.get("mode") == "ptq"


def hydra_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _is_list(value: Any) -> bool:
    return isinstance(value, (ListConfig, list))


def lists_students(cfg: DictConfig) -> bool:
    """student.N=[...] and/or student.init=[...]: students trained together, even a list of one."""
    return _is_list(cfg.student.get("N")) or _is_list(cfg.student.get("init"))


def uses_teacher(role: Role, init: Init, prune: Any) -> bool:
    """A teacher takes part in a run that distils from it, starts from it or prunes it."""
    return role is Role.KD or init.kind is InitKind.TEACHER or bool(prune)


def parse_run(cfg: DictConfig) -> RunSpec:
    """Every check that needs no training data: values, budget, schedule, presets, precision, the students listed, the
    teacher (loaded when pruning or when its lambda must be read). Raises ConfigError naming the value and the fix."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"this configuration needs {', '.join(missing)}: set {'them' if len(missing) > 1 else 'it'} on the "
            "command line"
        )
    try:
        role = Role(cfg.role)
    except ValueError:
        raise ConfigError(f"role must be one of {', '.join(r.value for r in Role)}, got {cfg.role!r}") from None
    for key in ("steps", "val_every"):
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise ConfigError(f"{key} must be a positive integer (training batches), got {cfg[key]!r}")
    schedule = lr_schedule(cfg)
    if schedule:  # its settings are fractions of the budget: checked now, not after the data is read
        instantiate(schedule, optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
    check_rate_preset(cfg)
    precision = str(cfg.trainer.get("precision", "32-true"))
    check_precision(precision, cfg.trainer.get("accelerator"))
    crop = min(cfg.data.get("crop_size") or MS_SSIM_MIN_SIDE, cfg.data.get("val_crop_size") or MS_SSIM_MIN_SIDE)
    if cfg.objective.get("metric") == "ms-ssim" and crop < MS_SSIM_MIN_SIDE:
        raise ConfigError(
            f"objective.metric=ms-ssim needs training and validation crops of at least {MS_SSIM_MIN_SIDE} px "
            f"(5 scales of 11x11 windows), got {crop}: set data.crop_size and data.val_crop_size to 192 or more"
        )
    prune = OmegaConf.to_container(cfg.prune) if cfg.get("prune") else None
    quant = OmegaConf.to_container(cfg.quant) if cfg.get("quant") else None
    students = _students(cfg)
    if lists_students(cfg):
        if prune or quant:
            raise ConfigError(
                "student.N=[...] or student.init=[...] trains several students together; prune and quant runs are "
                "one network each: sweep them"
            )
        if cfg.trainer.get("devices") not in (None, 1, "auto") or cfg.trainer.get("num_nodes", 1) != 1:
            raise ConfigError(
                "students trained together (student.N=[...], student.init=[...]) share one process on one device: "
                "set trainer.devices=1"
            )
    teacher = _teacher(cfg, role, students, prune)
    if prune:
        students = (_pruned(students[0], teacher, prune, cfg.lmbda),)
    if quant:
        check_spec(quant)
        if students[0].init.kind is InitKind.RANDOM:
            raise ConfigError(
                f"quant={quant['mode']} quantizes a trained network: set student.init=CHECKPOINT, or "
                "student.init=teacher with teacher.checkpoint=PATH"
            )
    if teacher is not None and role is Role.KD:
        check_teacher_lmbda(teacher, cfg.lmbda)
    return RunSpec(
        cfg=cfg,
        run_dir=Path(cfg.paths.output_dir),
        role=role,
        seed=cfg.seed,
        budget=Budget(cfg.steps, cfg.val_every),
        teacher=teacher,
        students=students,
        prune=prune,
        quant=quant,
        precision=precision,
    )


def _students(cfg: DictConfig) -> tuple[StudentSpec, ...]:
    """student.N=[16,32,48] and/or student.init=[random,teacher]: every combination, by run-directory name (N16, or
    N16-teacher when inits are listed), each in a directory of its own inside the run's; otherwise the run's one
    network, in the run's own directory."""
    widths, inits = cfg.student.get("N"), cfg.student.get("init")
    overrides = hydra_overrides()
    if not lists_students(cfg):
        return (StudentSpec("student", cfg, Path(cfg.paths.output_dir), Init.parse(inits), tuple(overrides)),)
    width_list = list(widths) if _is_list(widths) else [widths]
    if (
        not width_list
        or len(set(width_list)) != len(width_list)
        or not all(isinstance(n, int) and n > 0 for n in width_list)
    ):
        raise ConfigError(
            f"student.N=[...] lists the distinct positive widths of students trained together, got {width_list}"
        )
    init_list = [i or "random" for i in inits] if _is_list(inits) else [inits or "random"]
    if not init_list or len(set(init_list)) != len(init_list):
        raise ConfigError(
            f"student.init=[...] lists distinct initialisations of students trained together, got {init_list}"
        )

    def name(width: int, index: int, init: str) -> str:
        if not _is_list(inits):
            return f"N{width}"
        return f"N{width}-{init if init in ('random', 'teacher') else f'init{index}'}"

    students = []
    for width in width_list:
        for index, init in enumerate(init_list):
            member = copy.deepcopy(cfg)
            run_dir = Path(cfg.paths.output_dir) / name(width, index, init)
            with open_dict(member):
                member.student.N, member.student.init = width, init
                member.paths.output_dir = str(run_dir)
            own = {"student.N": f"student.N={width}", "student.init": f"student.init={init}"}
            member_overrides = tuple(own.get(o.lstrip("+").split("=", 1)[0], o) for o in overrides)
            students.append(StudentSpec(name(width, index, init), member, run_dir, Init.parse(init), member_overrides))
    return tuple(students)


def _teacher(
    cfg: DictConfig, role: Role, students: tuple[StudentSpec, ...], prune: dict[str, Any] | None
) -> TeacherSpec | None:
    if not any(uses_teacher(role, s.init, prune) for s in students):
        return None
    checkpoint = cfg.teacher.get("checkpoint")
    if not checkpoint:
        needs = (
            "prune needs the trained network to prune"
            if prune
            else "role=kd needs a teacher"
            if role is Role.KD
            else "student.init=teacher needs a teacher"
        )
        raise ConfigError(
            f"{needs}: set teacher.checkpoint=PATH (a lic_kd run dir or .ckpt, a sweep dir or ladder of teachers, or "
            "a CompressAI file)"
        )
    z_checkpoint = cfg.teacher.get("z_checkpoint") if role is Role.KD else None
    if z_checkpoint and not cfg.loss.get("w_z"):
        raise ConfigError("teacher.z_checkpoint (hybrid KD) gives the z target only: set loss.w_z > 0")
    return TeacherSpec(
        source=CheckpointSource.parse(checkpoint),
        architecture=cfg.teacher.get("architecture"),
        z_source=CheckpointSource.parse(z_checkpoint) if z_checkpoint else None,
        z_lmbda=cfg.teacher.get("z_lmbda"),
        any_lmbda=bool(cfg.teacher.get("any_lmbda")),
    )


def _pruned(student: StudentSpec, teacher: TeacherSpec, prune: dict[str, Any], lmbda: float) -> StudentSpec:
    """prune=channels: the network is the teacher (at this run's lmbda) with prune.keep of the channels of every
    layer, started from its most important ones (lic_kd.frugal.prune)."""
    if prune.get("criterion") not in CRITERIA:
        raise ConfigError(f"prune.criterion must be one of {', '.join(CRITERIA)}, got {prune.get('criterion')!r}")
    if student.init.kind is InitKind.CHECKPOINT:
        raise ConfigError(
            f"prune starts from teacher.checkpoint, not from student.init={student.init.path}: drop one of the two"
        )
    source, _ = load_net(teacher.source, teacher.architecture, lmbda=lmbda)
    widths = pruned_widths(source, prune.get("keep"))
    cfg = copy.deepcopy(student.cfg)
    with open_dict(cfg):
        cfg.student.N, cfg.student.M, cfg.student.init = widths["N"], widths["M"], "teacher"
        if "hyper_N" in widths and "hyper_N" in cfg.model:
            cfg.model.hyper_N = widths["hyper_N"]
    log.info("pruning %s to %s", type(source).__name__, ", ".join(f"{k}={v}" for k, v in widths.items()))
    return StudentSpec(student.name, cfg, student.run_dir, Init(InitKind.TEACHER), student.overrides)


def check_teacher_lmbda(teacher: TeacherSpec, lmbda: float) -> None:
    """A teacher that is one run, trained at another lambda than this run's, is used only when the user says so
    (teacher.any_lmbda=true): a sweep dir, a ladder or the zoo gives each run the teacher of its own lambda."""
    if teacher.any_lmbda or not teacher.source.is_one_network:
        return
    _, meta = load_net(teacher.source, teacher.architecture)
    trained_at = ((meta.get("loss") or {}).get("task") or meta.get("loss") or {}).get("lmbda")
    if trained_at is not None and not math.isclose(trained_at, lmbda, rel_tol=1e-6):
        raise ConfigError(
            f"teacher.checkpoint={teacher.source} was trained at lmbda={trained_at:g}, this run's is {lmbda:g}: give a "
            "sweep dir or a ladder of teachers (each run takes its own lambda's), or set teacher.any_lmbda=true"
        )


def lr_schedule(cfg: DictConfig) -> DictConfig | None:
    """The schedule's config, or None for a constant rate: scheduler=none beside a preset that tunes its
    schedule (experiment=demo's milestones) leaves those settings without a _target_."""
    scheduler = cfg.get("scheduler")
    return scheduler if scheduler and "_target_" in scheduler else None


def check_rate_preset(cfg: DictConfig) -> None:
    """rate=qK sets lmbda, student.N and student.M to CompressAI's quality K; a preset chosen beside it
    (experiment=...) that sets them too would silently win: an error, unless the command line says which."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    rate = choices.get("rate")
    if not rate or rate == "null":
        return
    model, quality = choices.get("model"), int(str(rate).removeprefix("q"))
    explicit = {o.lstrip("+").split("=", 1)[0] for o in hydra_overrides()}
    for key, field in (("lmbda", "lmbda"), ("student.N", "N"), ("student.M", "M")):
        preset, value = zoo_preset(model, quality, field), OmegaConf.select(cfg, key)
        if preset is not None and value != preset and key not in explicit:
            raise ConfigError(
                f"rate={rate} sets {key}={preset:g} but {key}={value:g} won "
                f"(experiment={choices.get('experiment')} sets it): "
                f"drop one of the two, or give {key}= on the command line"
            )


def run_settings(spec: RunSpec, student: StudentSpec) -> dict[str, Any]:
    """What makes this student's curve (lic_kd.results.curve_settings_of), with the content of the teachers and of
    an init checkpoint it names (a retrained teacher at the same path is another curve)."""
    cfg = student.cfg
    settings = curve_settings_of(
        OmegaConf.to_container(cfg, resolve=True), uses_teacher(spec.role, student.init, spec.prune)
    )
    for key in ("teacher.checkpoint", "teacher.z_checkpoint"):
        if settings.get(key):
            settings[f"{key}_sha256"] = checkpoint_fingerprint(OmegaConf.select(cfg, key))
    if student.init.kind is InitKind.CHECKPOINT:
        settings["student.init_sha256"] = checkpoint_fingerprint(student.init.path)
    return settings
