"""`python -m lic_kd.train`: train one network (teacher, student or KD student), then code the evaluation
set for real and write results.json. Re-running in the same run directory resumes from last.ckpt, and a
run that already has results.json is left as it is."""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

import lic_kd  # noqa: F401  (registers the config resolvers)

from lic_kd.errors import ConfigError, run_cli
from lic_kd.codec import MS_SSIM_MIN_SIDE, evaluate_net, pad, summary
from lic_kd.data import load_rgb, to_tensor
from lic_kd.group import StudentGroup
from lic_kd.models import checkpoint_fingerprint, load_net, optimizer_steps_per_batch, zoo_preset
from lic_kd.profiling import use_threads
from lic_kd.prune import CRITERIA, pruned_widths
from lic_kd.quant import check_spec, decode_determinism, determinism_summary
from lic_kd.module import CodecModule, DivergedError
from lic_kd.precision import check_precision
from lic_kd.results import FAILURE_FILE, RESULTS_FILE, build_results, curve_settings_of, failure_record, read_results, run_identity, write_json_atomic

log = logging.getLogger(__name__)


@contextmanager
def isolated_job() -> Iterator[None]:
    """Whatever a job does to the process (W&B's offline mode sets WANDB_* variables, a W&B run stays
    open) is undone when it ends, even when it fails, so the next job of a sequential sweep starts clean."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
    try:
        yield
    finally:
        if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
            sys.modules["wandb"].finish()
        for key in [k for k in os.environ if k.startswith("WANDB_")]:
            del os.environ[key]
        os.environ.update(saved)


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def check_config(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"this configuration needs {', '.join(missing)}: set {'them' if len(missing) > 1 else 'it'} on the command line")
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
        raise ConfigError(f"objective.metric=ms-ssim needs training and validation crops of at least {MS_SSIM_MIN_SIDE} px "
                         f"(5 scales of 11x11 windows), got {crop}: set data.crop_size and data.val_crop_size to 192 or more")


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
    explicit = {o.lstrip("+").split("=", 1)[0] for o in _overrides()}
    for key, field in (("lmbda", "lmbda"), ("student.N", "N"), ("student.M", "M")):
        preset, value = zoo_preset(model, quality, field), OmegaConf.select(cfg, key)
        if preset is not None and value != preset and key not in explicit:
            raise ConfigError(f"rate={rate} sets {key}={preset:g} but {key}={value:g} won (experiment={choices.get('experiment')} sets it): "
                              f"drop one of the two, or give {key}= on the command line")


def apply_pruning(cfg: DictConfig) -> None:
    """prune=channels: this run's network is the teacher (at this run's lmbda) with prune.keep of the
    channels of every layer, started from its most important ones (student.init=teacher, lic_kd.prune)."""
    prune = cfg.get("prune")
    if not prune:
        return
    if prune.get("criterion") not in CRITERIA:
        raise ConfigError(f"prune.criterion must be one of {', '.join(CRITERIA)}, got {prune.get('criterion')!r}")
    if not cfg.teacher.get("checkpoint"):
        raise ConfigError("prune needs the trained network to prune: set teacher.checkpoint=PATH")
    if cfg.student.get("init") not in (None, "random", "teacher"):
        raise ConfigError(f"prune starts from teacher.checkpoint, not from student.init={cfg.student.init}: drop one of the two")
    source, _ = load_net(cfg.teacher.checkpoint, cfg.teacher.get("architecture"), lmbda=cfg.lmbda)
    widths = pruned_widths(source, prune.get("keep"))
    with open_dict(cfg):
        cfg.student.N, cfg.student.M, cfg.student.init = widths["N"], widths["M"], "teacher"
        if "hyper_N" in widths and "hyper_N" in cfg.model:
            cfg.model.hyper_N = widths["hyper_N"]
    log.info("pruning %s to %s", type(source).__name__, ", ".join(f"{k}={v}" for k, v in widths.items()))


def check_quant(cfg: DictConfig) -> None:
    """quant=ptq|qat: the settings, and a trained network to start from."""
    quant = cfg.get("quant")
    if not quant:
        return
    check_spec(OmegaConf.to_container(quant))
    if (cfg.student.get("init") or "random") == "random":
        raise ConfigError(f"quant={quant.mode} quantizes a trained network: set student.init=CHECKPOINT, or "
                         "student.init=teacher with teacher.checkpoint=PATH")


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
            log.warning("%s cannot be read (%s: %s): set aside as %s", path, type(err).__name__, str(err)[:200], aside.name)
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


def make_trainer(cfg: DictConfig, batch_optimizer_steps: int, last: Path) -> L.Trainer:
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    return instantiate(
        cfg.trainer,
        strategy=strategy_for(cfg.trainer.get("strategy", "auto")),
        max_steps=batch_optimizer_steps * cfg.steps,  # Lightning counts each optimizer's steps
        val_check_interval=min(cfg.val_every, cfg.steps),
        callbacks=[instantiate(c) for c in cfg.callbacks.values()] + [FinalCheckpoint(last), ValidateAtEnd(cfg.steps, cfg.val_every)],
        logger=[instantiate(c) for c in cfg.logger.values()],
        plugins=plugins,
    )


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule: Any, run_dir: Path, batch_optimizer_steps: int, steps: int) -> None:
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


def evaluate_run(cfg: DictConfig, run_dir: Path, eval_paths: list[Path], devices: int, start: float, **identity: Any) -> dict[str, Any]:
    """Code the evaluation images with the run's best checkpoint and write its results.json."""
    steps_done = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    net, meta = load_net(run_dir)  # the best checkpoint by validation RD loss
    log.info("evaluating %d images with %s", len(eval_paths), meta["checkpoint"])
    evaluation = evaluate_net(net, eval_paths, run_dir, cfg.eval.device)
    if cfg.get("quant"):  # the reason for fixed point: the same decoded image on 1 and 2 threads?
        evaluation["determinism"] = decode_determinism(net, pad(to_tensor(load_rgb(eval_paths[0]))[None]))
        log.info("decoding twice, 1 and 2 threads: %s", determinism_summary(evaluation["determinism"]))
    identity = run_identity(meta) | {
        "steps": steps_done // optimizer_steps_per_batch(net),
        "devices": devices,
        "steps_planned": cfg.steps,
        "seed": cfg.seed,
        "run_dir": str(run_dir.resolve()),
        "overrides": _overrides(),
        "settings": run_settings(cfg),
        "precision": str(cfg.trainer.get("precision", "32-true")),  # of training; evaluation codes in float32
    } | identity
    results = build_results(identity, net, evaluation, time.perf_counter() - start)
    write_json_atomic(run_dir / RESULTS_FILE, results)
    log.info("%s: %s -> %s", cfg.role, summary(results["metrics"]), run_dir / RESULTS_FILE)
    return results


def train(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(cfg.paths.output_dir)
    if group_members(cfg) is not None:
        return train_group(cfg)
    results_path = run_dir / RESULTS_FILE
    if results_path.is_file():
        log.info("%s exists: this run is complete, nothing to do", results_path)
        return read_results(results_path)
    start = time.perf_counter()
    use_threads(cfg.get("threads"))
    log.info("run %s: %s, %d batches, seed %d", run_dir, cfg.role, cfg.steps, cfg.seed)  # a resumed run appends its segments
    L.seed_everything(cfg.seed, workers=True)

    # Everything that can be wrong is checked before training: budget, widths, lmbda, teacher, data, shapes.
    check_config(cfg)
    apply_pruning(cfg)
    check_quant(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.check()
    module = build_module(cfg, datamodule)
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer = make_trainer(cfg, module.optimizer_steps_per_batch, last)
    if (cfg.get("quant") or {}).get("mode") == "ptq":
        log.info("post-training quantization: calibrated on training crops, no training")
        for name in ("best.ckpt", "last.ckpt"):  # evaluation, resume and reports read it like any run's
            module.save_run_checkpoint(run_dir / "checkpoints" / name, batches=0)
    else:
        fit(trainer, module, datamodule, run_dir, module.optimizer_steps_per_batch, cfg.steps)
        if trainer.global_rank != 0:  # the other DDP processes that SLURM started: rank 0 evaluates and writes
            return {}
    return evaluate_run(cfg, run_dir, datamodule.eval_paths, trainer.world_size, start)


def _is_list(value: Any) -> bool:
    return isinstance(value, (ListConfig, list))


def group_members(cfg: DictConfig) -> dict[str, dict[str, Any]] | None:
    """student.N=[16,32,48] and/or student.init=[random,teacher]: every combination, students trained together
    (lic_kd.group), by run-directory name (N16, or N16-teacher when inits are listed); None for one network."""
    widths, inits = cfg.student.get("N"), cfg.student.get("init")
    if not _is_list(widths) and not _is_list(inits):
        return None
    width_list = list(widths) if _is_list(widths) else [widths]
    if not width_list or len(set(width_list)) != len(width_list) or not all(isinstance(n, int) and n > 0 for n in width_list):
        raise ConfigError(f"student.N=[...] lists the distinct positive widths of students trained together, got {width_list}")
    init_list = [i or "random" for i in inits] if _is_list(inits) else [inits or "random"]
    if not init_list or len(set(init_list)) != len(init_list):
        raise ConfigError(f"student.init=[...] lists distinct initialisations of students trained together, got {init_list}")

    def name(width: int, index: int, init: str) -> str:
        if not _is_list(inits):
            return f"N{width}"
        return f"N{width}-{init if init in ('random', 'teacher') else f'init{index}'}"

    return {name(n, i, init): {"N": n, "init": init} for n in width_list for i, init in enumerate(init_list)}


def member_config(cfg: DictConfig, name: str, student: dict[str, Any]) -> DictConfig:
    """The configuration of one student of a group: its width and init, its run directory inside the group's."""
    member = copy.deepcopy(cfg)
    with open_dict(member):
        member.student.N, member.student.init = student["N"], student["init"]
        member.paths.output_dir = str(Path(cfg.paths.output_dir) / name)
    return member


def member_overrides(overrides: list[str], student: dict[str, Any]) -> list[str]:
    """The group's command-line overrides as this student's own: student.N=16, student.init=teacher."""
    own = {f"student.{k}": f"student.{k}={v}" for k, v in student.items()}
    return [own.get(o.lstrip("+").split("=", 1)[0], o) for o in overrides]


def train_group(cfg: DictConfig) -> dict[str, Any]:
    """student.N=[...] (and/or student.init=[...]): the students of this role, lambda and seed trained together in
    one process, each in its own run directory (N16, N32, ...) with its own results.json; a KD group pays the
    teacher's forward once per batch. Re-running resumes the group and evaluates the students that have no
    results yet."""
    run_dir = Path(cfg.paths.output_dir)
    students = group_members(cfg)
    members_cfg = {name: member_config(cfg, name, student) for name, student in students.items()}
    member_dirs = {name: Path(c.paths.output_dir) for name, c in members_cfg.items()}
    pending = [name for name, d in member_dirs.items() if not (d / RESULTS_FILE).is_file()]
    if not pending:
        log.info("every student of %s has its %s: complete, nothing to do", run_dir, RESULTS_FILE)
        return {}
    start = time.perf_counter()
    use_threads(cfg.get("threads"))
    log.info("run %s: %s, students %s trained together, %d batches, seed %d", run_dir, cfg.role, ", ".join(students), cfg.steps, cfg.seed)
    if cfg.get("prune") or cfg.get("quant"):
        raise ConfigError("student.N=[...] or student.init=[...] trains several students together; prune and quant runs are one network each: sweep them")
    if cfg.trainer.get("devices") not in (None, 1, "auto") or cfg.trainer.get("num_nodes", 1) != 1:
        raise ConfigError("students trained together (student.N=[...], student.init=[...]) share one process on one device: set trainer.devices=1")
    for name, member_cfg in members_cfg.items():  # run dirs first: a failure below is then recorded in each
        write_member_hydra_dir(member_cfg, member_dirs[name], students[name])
    group: StudentGroup | None = None
    try:
        for member_cfg in members_cfg.values():
            check_config(member_cfg)
        datamodule = instantiate(cfg.data)
        datamodule.check()
        members: dict[str, CodecModule] = {}
        for name, member_cfg in members_cfg.items():
            L.seed_everything(cfg.seed, workers=True, verbose=False)  # each student's initialisation, as in a run of its own
            first = next(iter(members.values()), None)  # the first loads the teachers as a run of its own; the others share them
            members[name] = build_module(member_cfg, datamodule, (first.teacher, first.z_teacher) if first and first.is_kd else None)
        group = StudentGroup(members, member_dirs)
        trainer = make_trainer(cfg, group.optimizer_steps_per_batch, run_dir / "checkpoints" / "last.ckpt")
        fit(trainer, group, datamodule, run_dir, group.optimizer_steps_per_batch, cfg.steps)
        # a group resumed at its end trains nothing and Lightning skips on_train_end: the students' last.ckpt again
        group.save_last_checkpoints(trainer.global_step // group.optimizer_steps_per_batch)
        training_s = time.perf_counter() - start
        for name in [n for n in pending if n not in group.diverged]:
            evaluate_run(members_cfg[name], member_dirs[name], datamodule.eval_paths, trainer.world_size,
                         time.perf_counter() - training_s, trained_with=list(students), overrides=member_overrides(_overrides(), students[name]))
    except Exception as err:  # each unfinished student says why, as a run of its own would
        diverged = group.diverged if group is not None else {}
        for name, d in member_dirs.items():
            if not (d / RESULTS_FILE).is_file() and name not in diverged:
                write_json_atomic(d / FAILURE_FILE, failure_record(err, overrides=_overrides()))
        raise
    for name, d in member_dirs.items():
        if name not in group.diverged:
            (d / FAILURE_FILE).unlink(missing_ok=True)
    if group.diverged and HydraConfig.get().mode != RunMode.MULTIRUN:
        raise ConfigError(f"student(s) {', '.join(group.diverged)} diverged (their {FAILURE_FILE} says where); the others were "
                          "evaluated: lower optimizer.main.lr or set optimizer.clip_max_norm")
    return {}


def write_member_hydra_dir(member_cfg: DictConfig, member_dir: Path, student: dict[str, Any]) -> None:
    """A student's run directory looks like any run's: its own configuration in .hydra/."""
    hydra_dir = member_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(member_cfg))
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(member_overrides(_overrides(), student))))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    failure = Path(cfg.paths.output_dir) / FAILURE_FILE
    with isolated_job():
        try:
            train(cfg)
        except DivergedError as err:  # a result, not a crash: recorded, reported as diverged; a sweep goes on
            log.error("run diverged: %s", err)
            write_json_atomic(failure, failure_record(err, overrides=_overrides()))
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                raise
            return
        except Exception as err:
            # Hydra reports a sweep's failures only once every job has run: leave the reason in the run dir.
            log.error("run failed: %s: %s", type(err).__name__, err)
            write_json_atomic(failure, failure_record(err, overrides=_overrides()))
            raise
    failure.unlink(missing_ok=True)


if __name__ == "__main__":
    run_cli(main)
