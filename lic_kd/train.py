"""`python -m lic_kd.train`: train a run's students (one network, or several trained together with
`student.N=[...]`), then code the evaluation set for real and write each student's results.json. Re-running in the
same run directory resumes from last.ckpt, and a student whose results are complete is left as it is."""

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
from lic_kd.evaluation.run import evaluate_run, run_identity
from lic_kd.io import write_json_atomic
from lic_kd.results import (
    DIVERGED,
    RESULTS_FILE,
    RUNNING,
    TRAINED,
    check_same_run,
    failure_record,
    has_trained,
    is_complete,
    read_record,
    status_of,
    status_record,
)
from lic_kd.training.module import CodecModule, DivergedError
from lic_kd.training.parts import build_module, student_record
from lic_kd.training.setup import check_resumable, fit, make_trainer, training_record
from lic_kd.training.spec import InitKind, RunSpec, StudentSpec, hydra_overrides, parse_run, run_settings

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


def identity(spec: RunSpec, student: StudentSpec) -> dict[str, Any]:
    """What a student is, for its results.json, from the run spec (not from its checkpoint)."""
    record = student_record(spec, student)
    best = (student.run_dir / "checkpoints" / "best.ckpt").resolve()
    meta = {k: record[k] for k in ("net", "loss", "role", "teacher", "init", "prune", "quant")}
    meta |= {"steps": None, "checkpoint": str(best), "settings": run_settings(spec, student)}
    return run_identity(meta) | {
        "steps_planned": spec.budget.steps,
        "seed": spec.seed,
        "overrides": list(student.overrides),
        "precision": spec.precision,  # of training; evaluation codes in float32
        **({"trained_with": [s.name for s in spec.students]} if spec.grouped else {}),
        "run_dir": str(student.run_dir.resolve()),
    }


def pending_students(
    spec: RunSpec, settings: dict[str, dict[str, Any]] | None = None, rename: bool = True
) -> list[StudentSpec]:
    """The students still to train or evaluate. One whose results are complete is left as it is, if it is the run
    asked for (check_same_run against `settings`, by student, when the caller has them: they hash the teachers);
    given a larger budget, and with the run's last.ckpt to go on from, it trains on and its evaluation so far is kept
    as results-<batches>.json (`rename`: now; the sweep's preflight only counts)."""
    pending, last = [], spec.run_dir / "checkpoints" / "last.ckpt"
    for student in spec.students:
        record = read_record(student.run_dir)
        if record is not None and has_trained(record):
            wanted = settings[student.name] if settings else run_settings(spec, student)
            check_same_run(student.run_dir / RESULTS_FILE, wanted)
        if record is None or not is_complete(record):
            pending.append(student)
            continue
        trained = record["run"].get("steps") or 0
        if trained < spec.budget.steps and last.is_file() and not spec.ptq:  # a PTQ run trains no batch
            if not rename:
                pending.append(student)
                continue
            check_resumable(torch.load(last, map_location="cpu", weights_only=False), last)  # before the rename
            (student.run_dir / RESULTS_FILE).rename(student.run_dir / f"results-{trained}.json")
            log.info(
                "%s trained %d of %d batches: training on from last.ckpt (its results: results-%d.json)",
                student.run_dir,
                trained,
                spec.budget.steps,
                trained,
            )
            pending.append(student)
    return pending


def write_status(student: StudentSpec, status: str, run: dict[str, Any], **rest: Any) -> None:
    write_json_atomic(student.run_dir / RESULTS_FILE, status_record(status, run, **rest))


def train(cfg: DictConfig) -> None:
    use_threads(cfg.get("threads"))
    try:
        spec = parse_run(cfg)  # everything that can be wrong, before any data is read
    except Exception as err:
        run_dir = Path(cfg.paths.output_dir)
        recorded = read_record(run_dir)
        if recorded is None or not has_trained(recorded):  # a finished run's record is never overwritten
            run = {"role": cfg.get("role"), "overrides": hydra_overrides(), "run_dir": str(run_dir.resolve())}
            write_json_atomic(run_dir / RESULTS_FILE, failure_record(err, run))
        raise
    if spec.grouped:  # the run's own directory holds its students' (a failure recorded there before is past)
        (spec.run_dir / RESULTS_FILE).unlink(missing_ok=True)
    runs = {s.name: identity(spec, s) for s in spec.students}
    pending = pending_students(spec, {name: run["settings"] for name, run in runs.items()})
    if not pending:
        if spec.grouped:
            log.info("every student of %s has its %s: complete, nothing to do", spec.run_dir, RESULTS_FILE)
        else:
            log.info("%s exists: this run is complete, nothing to do", spec.run_dir / RESULTS_FILE)
        return
    start = time.perf_counter()
    names = ", ".join(s.name for s in spec.students)
    log.info(
        "run %s: %s, %s, %d batches, seed %d",
        spec.run_dir,
        spec.role.value,
        f"students {names} trained together" if spec.grouped else "one network",
        spec.budget.steps,
        spec.seed,
    )  # a resumed run appends its segments
    for student in pending:  # from here a run killed from outside is listed by reports: it did not finish
        write_status(student, RUNNING, runs[student.name])
    module: CodecModule | None = None
    try:
        L.seed_everything(spec.seed, workers=True)
        datamodule = instantiate(cfg.data)
        datamodule.check()
        needs_images = spec.quant or any(s.init.kind is not InitKind.RANDOM for s in spec.students)
        module = build_module(spec, datamodule.calibration_images() if needs_images else None)
        trainer = make_trainer(spec, module)
        if spec.ptq:
            log.info("post-training quantization: calibrated on training crops, no training")
            for name in ("best.ckpt", "last.ckpt"):  # evaluation, resume and reports read it like any run's
                module.save_student(spec.students[0].name, spec.run_dir / "checkpoints" / name, batches=0)
        else:
            fit(trainer, module, datamodule, spec)
            if trainer.global_rank != 0:  # the other DDP processes that SLURM started: rank 0 evaluates and writes
                return
        last = torch.load(spec.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        training = training_record(last, module.optimizer_steps_per_batch)
        devices = trainer.world_size
        for student in pending:
            if student.name in module.diverged:
                write_status(student, DIVERGED, runs[student.name], **diverged_fields(module, student.name))
            else:
                write_status(student, TRAINED, runs[student.name] | {"steps": training["batches"]})
        training_s = time.perf_counter() - start
        for student in [s for s in pending if s.name not in module.diverged]:
            evaluate_run(
                student.run_dir,
                datamodule.eval_paths,
                student.run_dir,
                spec.cfg.eval.device,
                started=time.perf_counter() - training_s,
                identity=runs[student.name] | {"steps": training["batches"], "devices": devices, "training": training},
            )
    except Exception as err:  # each unfinished student says why in its results.json
        for student in pending:
            record = read_record(student.run_dir)
            if record is not None and is_complete(record):
                continue
            if record is not None and status_of(record) == TRAINED:  # its checkpoints are final: it can still teach
                write_status(student, TRAINED, record["run"], error=f"evaluation failed: {type(err).__name__}: {err}")
            elif module is not None and student.name in module.diverged:
                write_status(student, DIVERGED, runs[student.name], **diverged_fields(module, student.name))
            else:
                write_json_atomic(student.run_dir / RESULTS_FILE, failure_record(err, runs[student.name]))
        raise
    if module.diverged and HydraConfig.get().mode != RunMode.MULTIRUN:
        raise ConfigError(
            f"student(s) {', '.join(module.diverged)} diverged (their {RESULTS_FILE} says where); the others were "
            "evaluated: lower optimizer.main.lr or set optimizer.clip_max_norm"
        )


def diverged_fields(module: CodecModule, name: str) -> dict[str, Any]:
    """What a student that stopped at a non-finite loss records: the error, and where (DivergedError.record)."""
    record = dict(module.diverged[name])
    return {"error": f"DivergedError: {record.pop('error')}", "diverged": record}


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with isolated_job():
        try:
            train(cfg)
        except DivergedError as err:  # a result, not a crash: recorded, reported as diverged; a sweep goes on
            log.error("run diverged: %s", err)
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                raise
        except Exception as err:
            # Hydra reports a sweep's failures only once every job has run: the reason is in each results.json
            log.error("run failed: %s: %s", type(err).__name__, err)
            raise


if __name__ == "__main__":
    run_cli(main)
