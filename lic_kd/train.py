"""`python -m lic_kd.train`: train one network (teacher, student or KD student), then code the evaluation
set for real and write results.json. Re-running in the same run directory resumes from last.ckpt, and a
run that already has results.json is left as it is."""

from __future__ import annotations

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
from omegaconf import DictConfig

from lic_kd.errors import ConfigError, run_cli
from lic_kd.evaluation.profiling import use_threads
from lic_kd.evaluation.run import evaluate_run
from lic_kd.io import write_json_atomic
from lic_kd.results import FAILURE_FILE, RESULTS_FILE, check_same_run, failure_record, read_results
from lic_kd.training.group import StudentGroup
from lic_kd.training.members import (
    group_members,
    member_config,
    member_overrides,
    write_member_hydra_dir,
)
from lic_kd.training.module import CodecModule, DivergedError
from lic_kd.training.setup import (
    apply_pruning,
    build_module,
    check_config,
    check_quant,
    fit,
    hydra_overrides,
    make_trainer,
    pruned_config,
    run_settings,
    training_record,
)

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


def train(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(cfg.paths.output_dir)
    if group_members(cfg) is not None:
        return train_group(cfg)
    results_path = run_dir / RESULTS_FILE
    if results_path.is_file():
        check_same_run(results_path, run_settings(pruned_config(cfg)))
        done = read_results(results_path)
        trained = done["run"].get("steps") or 0
        if trained >= cfg.steps or not (run_dir / "checkpoints" / "last.ckpt").is_file():
            log.info("%s exists: this run is complete, nothing to do", results_path)
            return done
        # a larger budget for a finished run: train on from its last checkpoint; its evaluation so far is kept
        results_path.rename(run_dir / f"results-{trained}.json")
        log.info("trained %d of %d batches: training on from last.ckpt (its results: results-%d.json)",
                 trained, cfg.steps, trained)  # fmt: skip
    start = time.perf_counter()
    use_threads(cfg.get("threads"))
    log.info(
        "run %s: %s, %d batches, seed %d", run_dir, cfg.role, cfg.steps, cfg.seed
    )  # a resumed run appends its segments
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
    return evaluate_trained(
        cfg,
        run_dir,
        datamodule.eval_paths,
        run_dir / "checkpoints" / "last.ckpt",
        module.optimizer_steps_per_batch,
        trainer.world_size,
        start,
    )


def evaluate_trained(
    cfg: DictConfig,
    run_dir: Path,
    images: list[Path],
    last: Path,
    batch_optimizer_steps: int,
    devices: int,
    started: float,
    **identity: Any,
) -> dict[str, Any]:
    """A trained run's best checkpoint evaluated (lic_kd.evaluation.run), with what only its training knows."""
    training = training_record(torch.load(last, map_location="cpu", weights_only=False), batch_optimizer_steps)
    return evaluate_run(
        run_dir,
        images,
        run_dir,
        cfg.eval.device,
        started=started,
        identity={
            "steps": training.pop("batches"),
            "devices": devices,
            "steps_planned": cfg.steps,
            "seed": cfg.seed,
            "overrides": hydra_overrides(),
            "settings": run_settings(cfg),
            "precision": str(cfg.trainer.get("precision", "32-true")),  # of training; evaluation codes in float32
            "training": training,
        }
        | identity,
    )


def train_group(cfg: DictConfig) -> dict[str, Any]:
    """student.N=[...] (and/or student.init=[...]): the students of this role, lambda and seed trained together in
    one process, each in its own run directory (N16, N32, ...) with its own results.json; a KD group pays the
    teacher's forward once per batch. Re-running resumes the group and evaluates the students that have no
    results yet."""
    run_dir = Path(cfg.paths.output_dir)
    students = group_members(cfg)
    members_cfg = {name: member_config(cfg, name, student) for name, student in students.items()}
    member_dirs = {name: Path(c.paths.output_dir) for name, c in members_cfg.items()}
    for name, member_dir in member_dirs.items():
        if (member_dir / RESULTS_FILE).is_file():
            check_same_run(member_dir / RESULTS_FILE, run_settings(members_cfg[name]))
    pending = [name for name, d in member_dirs.items() if not (d / RESULTS_FILE).is_file()]
    if not pending:
        log.info("every student of %s has its %s: complete, nothing to do", run_dir, RESULTS_FILE)
        return {}
    start = time.perf_counter()
    use_threads(cfg.get("threads"))
    log.info(
        "run %s: %s, students %s trained together, %d batches, seed %d",
        run_dir,
        cfg.role,
        ", ".join(students),
        cfg.steps,
        cfg.seed,
    )
    if cfg.get("prune") or cfg.get("quant"):
        raise ConfigError(
            "student.N=[...] or student.init=[...] trains several students together; prune and quant runs are one "
            "network each: sweep them"
        )
    if cfg.trainer.get("devices") not in (None, 1, "auto") or cfg.trainer.get("num_nodes", 1) != 1:
        raise ConfigError(
            "students trained together (student.N=[...], student.init=[...]) share one process on one device: "
            "set trainer.devices=1"
        )
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
            L.seed_everything(
                cfg.seed, workers=True, verbose=False
            )  # each student's initialisation, as in a run of its own
            first = next(
                iter(members.values()), None
            )  # the first loads the teachers as a run of its own; the others share them
            members[name] = build_module(
                member_cfg, datamodule, (first.teacher, first.z_teacher) if first and first.is_kd else None
            )
        group = StudentGroup(members, member_dirs)
        trainer = make_trainer(cfg, group.optimizer_steps_per_batch, run_dir / "checkpoints" / "last.ckpt")
        fit(trainer, group, datamodule, run_dir, group.optimizer_steps_per_batch, cfg.steps)
        # a group resumed at its end trains nothing and Lightning skips on_train_end: the students' last.ckpt again
        group.save_last_checkpoints(trainer.global_step // group.optimizer_steps_per_batch)
        training_s = time.perf_counter() - start
        for name in [n for n in pending if n not in group.diverged]:
            evaluate_trained(
                members_cfg[name],
                member_dirs[name],
                datamodule.eval_paths,
                run_dir / "checkpoints" / "last.ckpt",
                group.optimizer_steps_per_batch,
                trainer.world_size,
                time.perf_counter() - training_s,
                trained_with=list(students),
                overrides=member_overrides(hydra_overrides(), students[name]),
            )
    except Exception as err:  # each unfinished student says why, as a run of its own would
        diverged = group.diverged if group is not None else {}
        for name, d in member_dirs.items():
            if not (d / RESULTS_FILE).is_file() and name not in diverged:
                write_json_atomic(d / FAILURE_FILE, failure_record(err, overrides=hydra_overrides()))
        raise
    for name, d in member_dirs.items():
        if name not in group.diverged:
            (d / FAILURE_FILE).unlink(missing_ok=True)
    if group.diverged and HydraConfig.get().mode != RunMode.MULTIRUN:
        raise ConfigError(
            f"student(s) {', '.join(group.diverged)} diverged (their {FAILURE_FILE} says where); the others were "
            "evaluated: lower optimizer.main.lr or set optimizer.clip_max_norm"
        )
    return {}


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    failure = Path(cfg.paths.output_dir) / FAILURE_FILE
    with isolated_job():
        try:
            train(cfg)
        except DivergedError as err:  # a result, not a crash: recorded, reported as diverged; a sweep goes on
            log.error("run diverged: %s", err)
            write_json_atomic(failure, failure_record(err, overrides=hydra_overrides()))
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                raise
            return
        except Exception as err:
            # Hydra reports a sweep's failures only once every job has run: leave the reason in the run dir.
            log.error("run failed: %s: %s", type(err).__name__, err)
            write_json_atomic(failure, failure_record(err, overrides=hydra_overrides()))
            raise
    failure.unlink(missing_ok=True)


if __name__ == "__main__":
    run_cli(main)
