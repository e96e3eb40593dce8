"""`python -m lic_kd.train -m ...`: a sweep is a study, checked before it starts and reported when it ends.

What a sweep over student widths means (`-m student.N=16,32,64,96,112` and nothing else): for each width, a plain
and a KD student from the shipped teacher ladder at the ladder's student lambdas (experiment=study), the students
of one role, lambda and seed trained together (`student.N=[16,...]`, one job each). Every job's configuration is
composed and checked (teacher, widths, KD shapes, data) before the first one starts; the plan (jobs, students,
where they run, the report, the expected time from a few measured batches) is printed first (`plan_only=true`
stops there). The sweep directory is named by the command, so the same command resumes the same sweep; its report
(multirun_reports/<sweep name>/) is written when the last job ends (SweepReport, a Hydra callback)."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lic_kd import REPO_ROOT
from lic_kd.data import list_images
from lic_kd.errors import ConfigError, UserError
from lic_kd.evaluation.profiling import use_threads
from lic_kd.models.ladder import is_ladder, read_ladder
from lic_kd.reporting.writer import write_report
from lic_kd.results import read_results
from lic_kd.train import pending_students
from lic_kd.training.module import CodecModule
from lic_kd.training.parts import build_module
from lic_kd.training.spec import RunSpec, parse_run

log = logging.getLogger(__name__)

REPORTS = Path("multirun_reports")
REFERENCES = sorted((REPO_ROOT / "data" / "reference").glob("*.json"))  # published curves, shipped


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _value(arguments: Sequence[str], key: str) -> str | None:
    return next((a.split("=", 1)[1] for a in arguments if _key(a) == key and "=" in a), None)


def study_arguments(arguments: Sequence[str]) -> list[str]:
    """The sweep a command means when it names no experiment: widths swept (`student.N=16,32`) become one list,
    trained together (`student.N=[16,32]`), of plain and KD students (`role=student,kd` unless a role is given),
    in the study preset (experiment=study: the shipped ladder, its budget). A command that names its experiment
    is run as it is written."""
    out = list(arguments)
    widths = _value(out, "student.N")
    swept = widths is not None and "," in widths and not widths.strip().startswith("[")
    if not swept or _value(out, "experiment") is not None:
        return out
    out = [f"student.N=[{widths}]" if _key(a) == "student.N" else a for a in out]
    if _value(out, "role") is None:
        out.append("role=student,kd")
    return out + ["experiment=study"]


def teacher_arguments(arguments: Sequence[str], cfg: DictConfig) -> list[str]:
    """A ladder as the teacher brings its lambdas (its student lambdas, else every rung) unless lmbda is given,
    and its latent width as the students' M unless student.M is given (KD on y compares latents of that width)."""
    out = list(arguments)
    teacher = OmegaConf.select(cfg, "teacher.checkpoint")
    if not teacher or not is_ladder(teacher) or not Path(teacher).is_dir() or cfg.get("role") == "teacher":
        return out
    ladder = read_ladder(teacher)
    if _value(out, "lmbda") is None:
        lambdas = ladder.get("student_lmbdas") or [r["lmbda"] for r in ladder["rungs"]]
        out.append("lmbda=" + ",".join(f"{x:g}" for x in lambdas))
    if _value(out, "student.M") is None and cfg.student.M != ladder["M"]:
        out.append(f"student.M={ladder['M']}")
    return out


def _shown(overrides: Sequence[str]) -> str:
    """A job as the plan and its errors name it: its own overrides, less Hydra's and the plan flag."""
    return " ".join(o for o in overrides if not _key(o).startswith("hydra.") and _key(o) != "plan_only")


def sweep_name(arguments: Sequence[str]) -> str:
    """A sweep directory's name from the command's own arguments: the same command, the same sweep."""
    text = " ".join(sorted(a for a in arguments if not _key(a).startswith("hydra.") and _key(a) != "plan_only"))
    name = re.sub(r"[^A-Za-z0-9.,=+_-]+", "_", text).strip("_") or "defaults"
    return name if len(name) <= 80 else f"{name[:60]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def check_job(cfg: DictConfig, datamodules: dict[str, Any]) -> tuple[RunSpec, CodecModule, int]:
    """Everything a job checks before it trains, done now, as the job itself does it: its run spec (values,
    teacher, its lambda, widths), its students built (teacher and init loaded, each student initialised from it by
    filter norm, KD shapes), finished runs that must be the ones asked for, data. Also how many of its students
    are still to train or evaluate."""
    spec = parse_run(cfg)
    pending = pending_students(spec, rename=False)
    module = build_module(spec, calibration=None)
    data_key = OmegaConf.to_yaml(cfg.data)
    if data_key not in datamodules:
        datamodules[data_key] = instantiate(cfg.data)
        datamodules[data_key].check()
    return spec, module, len(pending)


def seconds_per_batch(module: CodecModule, cfg: DictConfig, repeats: int = 2) -> float:
    """One training batch of these students (and their teacher's forward), measured on random crops."""
    x = torch.rand(cfg.data.batch_size, 3, cfg.data.crop_size, cfg.data.crop_size)
    total = 0.0
    for student in module.students.values():
        student.net.train()
        for i in range(repeats + 1):
            start = time.perf_counter()
            out = student.net(x)
            loss = out["x_hat"].square().mean() + sum(p.log().mean() for p in out.get("likelihoods", {}).values())
            loss.backward()
            total += (time.perf_counter() - start) * (i > 0) / repeats  # the first one warms up
        student.net.zero_grad(set_to_none=True)
    if module.teachers is not None:
        start = time.perf_counter()
        module.teachers.targets(x)
        total += time.perf_counter() - start
    return total


def seconds_to_evaluate(module: CodecModule, images: int) -> float:
    """Coding `images` Kodak-sized images with each student: a forward at that size, times three (encoding,
    decoding and the estimate), as measured on this machine's evaluations."""
    x = torch.rand(1, 3, 512, 768)
    total = 0.0
    with torch.no_grad():
        for student in module.students.values():
            student.net.eval()
            start = time.perf_counter()
            student.net(x)
            total += 3 * (time.perf_counter() - start) * images
    return total


def parallel_jobs(cfg: DictConfig) -> tuple[str, int]:
    """Where the jobs run and how many at once."""
    launcher = OmegaConf.select(cfg, "hydra.launcher._target_") or ""
    if "joblib" in launcher.lower():
        return f"joblib, {cfg.hydra.launcher.n_jobs} processes at once", int(cfg.hydra.launcher.n_jobs)
    if "slurm" in launcher.lower():
        return f"SLURM partition {OmegaConf.select(cfg, 'hydra.launcher.partition') or '(default)'}", 0
    return "this process, one job after the other", 1


def format_duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def plan(jobs: Sequence[tuple[Sequence[str], RunSpec, CodecModule, int]], sweep_cfg: DictConfig) -> str:
    """What the sweep will do, and how long it should take here."""
    where, parallel = parallel_jobs(sweep_cfg)
    lines, per_job, measured = [], [], {}
    for number, (overrides, spec, module, pending) in enumerate(jobs):
        cfg, students = spec.cfg, len(spec.students)
        use_threads(cfg.get("threads"))
        # the same students (widths, role, crops) cost the same at every lambda: measured once
        widths = tuple(s.net.N for s in module.students.values() if hasattr(s.net, "N"))
        key = (cfg.role, widths, cfg.data.batch_size, cfg.data.crop_size)
        if key not in measured:
            images = len(list_eval_images(cfg))
            measured[key] = (seconds_per_batch(module, cfg), seconds_to_evaluate(module, images))
        batch_s, evaluate_s = measured[key]
        finished = students - pending
        seconds = (1.15 * cfg.steps * batch_s + evaluate_s) * (1 - finished / students)
        per_job.append(seconds)
        shown = _shown(overrides)
        state = "done" if finished == students else f"~{format_duration(seconds)}"
        state += f" ({finished} with results)" if 0 < finished < students else ""
        lines.append(f"  job {number}: {students} student(s), {cfg.steps} batches, {state}: {shown}")
    total = sum(per_job) / parallel if parallel else max(per_job, default=0)
    if not all(per_job):
        lines.insert(0, f"  {per_job.count(0)} of {len(jobs)} jobs done: the time above is for the others")
    students = sum(len(spec.students) for _, spec, _, _ in jobs)
    name = Path(sweep_cfg.hydra.sweep.dir).name
    head = [
        f"plan: {len(jobs)} jobs, {students} students, on {where}",
        f"  sweep dir {sweep_cfg.hydra.sweep.dir} (the same command resumes it)",
        f"  report {REPORTS / name / 'report.md'}",
        f"  expected {'per job (queue wait not included)' if not parallel else 'on this machine'}: "
        f"~{format_duration(total)} (from 2 measured batches of each kind of job; evaluation estimated)",
    ]
    return "\n".join(head + lines)


def list_eval_images(cfg: DictConfig) -> list[Path]:
    return list_images(cfg.data.eval_dir, cfg.data.get("eval_limit"))


def preflight(
    jobs: Sequence[Sequence[str]], compose: Callable[[list[str]], DictConfig], sweep_cfg: DictConfig
) -> list[tuple[Sequence[str], RunSpec, CodecModule, int]]:
    """Compose and check every job; the first problem is one line naming the job's overrides."""
    checked, datamodules = [], {}
    saved = HydraConfig.get() if HydraConfig.initialized() else None
    try:
        for number, overrides in enumerate(jobs):
            cfg = compose(list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.num = number
                cfg.paths.output_dir = str(Path(sweep_cfg.hydra.sweep.dir) / str(number))  # where it will run
            HydraConfig.instance().set_config(cfg)  # the job's own choices (rate presets read them)
            cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # what the job's task receives
            with torch.random.fork_rng(devices=[]), open_dict(cfg):
                try:
                    checked.append((overrides, *check_job(cfg, datamodules)))
                except UserError as err:
                    shown = _shown(overrides)
                    raise ConfigError(f"job {shown}: {err}") from None  # the line names the job
    finally:
        if saved is not None:
            HydraConfig.instance().set_config(OmegaConf.create({"hydra": saved}))
    return checked


def sweep_teachers(sweep_dir: Path) -> set[str]:
    """The teachers the runs of a sweep name in their results.json (students trained together one level down)."""
    found = set()
    for path in [*sweep_dir.glob("*/results.json"), *sweep_dir.glob("*/*/results.json")]:
        teacher = (read_results(path)["run"].get("teacher") or {}).get("checkpoint")
        if teacher:
            found.add(str(teacher))
    return found


class SweepReport(Callback):
    """At the end of a multirun (any launcher): the report of its sweep directory, with the published curves,
    the ladder's teacher curve (its record) when the teacher is a ladder, and its failed runs listed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("plan_only"):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        ladders = sorted({Path(t) for t in sweep_teachers(sweep_dir) if is_ladder(t) and Path(t).is_dir()})
        try:
            out = write_report([sweep_dir], sweep_dir.name, REPORTS, references=REFERENCES, ladders=ladders)
        except UserError as err:
            log.error("no report for %s: %s", sweep_dir, err)
            return
        log.info("report: %s", out / "report.md")
        print(f"report written to {out / 'report.md'}")
