"""One training run set up from its configuration: every check before training, the LightningModule, the
Trainer, resuming."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict

from lic_kd.errors import ConfigError
from lic_kd.frugal.prune import CRITERIA, pruned_widths
from lic_kd.frugal.quant import check_spec
from lic_kd.metrics import MS_SSIM_MIN_SIDE
from lic_kd.models.checkpoints import checkpoint_fingerprint, load_net
from lic_kd.models.zoo import zoo_preset
from lic_kd.results import curve_settings_of
from lic_kd.training.module import CodecModule
from lic_kd.training.precision import check_precision

log = logging.getLogger(__name__)


def hydra_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def check_config(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"this configuration needs {', '.join(missing)}: set {'them' if len(missing) > 1 else 'it'} on the "
            "command line"
        )
    for key in ("steps", "val_every"):
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise ConfigError(f"{key} must be a positive integer (training batches), got {cfg[key]!r}")
    schedule = lr_schedule(cfg)
    if schedule:  # its settings are fractions of the budget: checked now, not after the data is read
        instantiate(schedule, optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
    check_rate_preset(cfg)
    check_precision(cfg.trainer.get("precision", "32-true"), cfg.trainer.get("accelerator"))
    crop = min(cfg.data.get("crop_size") or MS_SSIM_MIN_SIDE, cfg.data.get("val_crop_size") or MS_SSIM_MIN_SIDE)
    if cfg.objective.get("metric") == "ms-ssim" and crop < MS_SSIM_MIN_SIDE:
        raise ConfigError(
            f"objective.metric=ms-ssim needs training and validation crops of at least {MS_SSIM_MIN_SIDE} px "
            f"(5 scales of 11x11 windows), got {crop}: set data.crop_size and data.val_crop_size to 192 or more"
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


def apply_pruning(cfg: DictConfig) -> None:
    """prune=channels: this run's network is the teacher (at this run's lmbda) with prune.keep of the
    channels of every layer, started from its most important ones (student.init=teacher, lic_kd.frugal.prune)."""
    prune = cfg.get("prune")
    if not prune:
        return
    if prune.get("criterion") not in CRITERIA:
        raise ConfigError(f"prune.criterion must be one of {', '.join(CRITERIA)}, got {prune.get('criterion')!r}")
    if not cfg.teacher.get("checkpoint"):
        raise ConfigError("prune needs the trained network to prune: set teacher.checkpoint=PATH")
    if cfg.student.get("init") not in (None, "random", "teacher"):
        raise ConfigError(
            f"prune starts from teacher.checkpoint, not from student.init={cfg.student.init}: drop one of the two"
        )
    source, _ = load_net(cfg.teacher.checkpoint, cfg.teacher.get("architecture"), lmbda=cfg.lmbda)
    widths = pruned_widths(source, prune.get("keep"))
    with open_dict(cfg):
        cfg.student.N, cfg.student.M, cfg.student.init = widths["N"], widths["M"], "teacher"
        if "hyper_N" in widths and "hyper_N" in cfg.model:
            cfg.model.hyper_N = widths["hyper_N"]
    log.info("pruning %s to %s", type(source).__name__, ", ".join(f"{k}={v}" for k, v in widths.items()))


def pruned_config(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg` with its pruned widths set (apply_pruning), the configuration a pruned run records."""
    if not cfg.get("prune"):
        return cfg
    pruned = copy.deepcopy(cfg)
    apply_pruning(pruned)
    return pruned


def check_quant(cfg: DictConfig) -> None:
    """quant=ptq|qat: the settings, and a trained network to start from."""
    quant = cfg.get("quant")
    if not quant:
        return
    check_spec(OmegaConf.to_container(quant))
    if (cfg.student.get("init") or "random") == "random":
        raise ConfigError(
            f"quant={quant.mode} quantizes a trained network: set student.init=CHECKPOINT, or "
            "student.init=teacher with teacher.checkpoint=PATH"
        )


def resume_checkpoint(checkpoints: Path) -> tuple[Path, int] | None:
    """The checkpoint to resume from and its global step: last.ckpt, else best.ckpt. A file that cannot be
    read (a run killed while writing it) is set aside under a new name, said in the log, and the next one
    tried; with none left the run starts over."""
    for name in ("last.ckpt", "best.ckpt"):
        path = checkpoints / name
        if not path.is_file():
            continue
        try:
            return path, int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
        except Exception as err:  # truncated or damaged: torch raises many types
            aside = path.with_name(f"{name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            path.rename(aside)
            log.warning(
                "%s cannot be read (%s: %s): set aside as %s", path, type(err).__name__, str(err)[:200], aside.name
            )
    return None


class FinalCheckpoint(L.Callback):
    """last.ckpt at the end of training (the final batches may postdate the last validation), written inside
    fit so that under DDP it holds rank 0's state, spawned processes included."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path)


class ValidateAtEnd(L.Callback):
    """A budget that is not a multiple of val_every ends with a validation too: best.ckpt may then be the last
    batches', as the budget results.json reports. (Lightning validates when a run is asked to stop.)"""

    def __init__(self, steps: int, val_every: int) -> None:
        self.steps, self.val_every = steps, val_every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step >= trainer.max_steps and self.steps % self.val_every:
            trainer.should_stop = True


def strategy_for(strategy: Any) -> Any:
    """DDP as lic_kd trains it. The entropy bottleneck's quantiles take no part in the main loss (the auxiliary
    optimizer steps them), so DDP must look for unused parameters. Processes: SLURM starts one per task;
    elsewhere they are spawned, since Lightning's default re-runs the command line, which inside a Hydra sweep
    would start the whole sweep again in every process."""
    if strategy not in ("ddp", "ddp_spawn"):
        return strategy
    return "ddp_find_unused_parameters_true" if SLURMEnvironment.detect() else "ddp_spawn_find_unused_parameters_true"


def build_module(cfg: DictConfig, datamodule: Any, teacher_nets: tuple | None = None) -> CodecModule:
    """The LightningModule of one run's network, initialised as cfg.student.init says."""
    init = cfg.student.get("init") or "random"
    module = CodecModule(
        net=cfg.model,
        loss=cfg.loss,
        optimizer=cfg.optimizer,
        scheduler=lr_schedule(cfg),
        role=cfg.role,
        teacher=cfg.teacher if cfg.role == "kd" or cfg.student.get("init") == "teacher" else None,
        init=init,
        calibration=datamodule.calibration_images() if init != "random" or cfg.get("quant") else None,
        prune=OmegaConf.to_container(cfg.prune) if cfg.get("prune") else None,
        quant=OmegaConf.to_container(cfg.quant) if cfg.get("quant") else None,
        noise_seed=cfg.seed,
        teacher_nets=teacher_nets,
    )
    module.check_kd_shapes()
    return module


class TrainingClock(L.Callback):
    """The segments a run was trained in (a resumed run adds one): the batch each started at, when, and for how
    many seconds. Kept in the run's checkpoints, so that results.json says how long training took, resumes
    included (training_record)."""

    def __init__(self, batch_optimizer_steps: int) -> None:
        self.batch_optimizer_steps, self.segments, self._started = batch_optimizer_steps, [], None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.time()
        started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._started))
        self.segments.append(
            {"from_batch": trainer.global_step // self.batch_optimizer_steps, "started_at": started_at, "seconds": 0.0}
        )

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
        "batches": checkpoint["global_step"] // batch_optimizer_steps,
        "segments": segments,
        "seconds": round(sum(s["seconds"] for s in segments), 1),
    }


def make_trainer(cfg: DictConfig, batch_optimizer_steps: int, last: Path) -> L.Trainer:
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    return instantiate(
        cfg.trainer,
        strategy=strategy_for(cfg.trainer.get("strategy", "auto")),
        max_steps=batch_optimizer_steps * cfg.steps,  # Lightning counts each optimizer's steps
        val_check_interval=min(cfg.val_every, cfg.steps),
        callbacks=[instantiate(c) for c in cfg.callbacks.values()]
        + [FinalCheckpoint(last), ValidateAtEnd(cfg.steps, cfg.val_every), TrainingClock(batch_optimizer_steps)],
        logger=[instantiate(c) for c in cfg.logger.values()],
        plugins=plugins,
    )


def fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: Any,
    run_dir: Path,
    batch_optimizer_steps: int,
    steps: int,
) -> None:
    """Train, resuming from the run's last checkpoint when it has one."""
    resume = resume_checkpoint(run_dir / "checkpoints")
    if resume is not None:
        log.info("resuming from %s at batch %d of %d", resume[0], resume[1] // batch_optimizer_steps, steps)
    # the checkpoint is this run's own file (trusted): its hyperparameters may hold OmegaConf containers
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume[0]) if resume else None, weights_only=False)


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """What makes this run's curve (lic_kd.results.curve_settings_of), with the content of the teachers and of
    an init checkpoint it names (a retrained teacher at the same path is another curve)."""
    settings = curve_settings_of(OmegaConf.to_container(cfg, resolve=True))
    for key in ("teacher.checkpoint", "teacher.z_checkpoint"):
        if settings.get(key):
            settings[f"{key}_sha256"] = checkpoint_fingerprint(OmegaConf.select(cfg, key))
    if settings.get("student.init") not in (None, "random", "teacher"):
        settings["student.init_sha256"] = checkpoint_fingerprint(cfg.student.init)
    return settings
