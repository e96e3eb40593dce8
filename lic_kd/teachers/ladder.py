"""Shipping a teacher ladder (`python -m lic_kd.teachers.ladder SWEEP OUT --base RUN --command ...`): every
finished run of a teacher sweep exported in CompressAI's format, with its provenance in ladder.json
(lic_kd.models.ladder reads it)."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from lic_kd.errors import run_cli
from lic_kd.io import sha256
from lic_kd.models.checkpoints import load_net
from lic_kd.models.ladder import LADDER_FILE, LadderError, read_ladder
from lic_kd.results import RESULTS_FILE, git_state, is_complete, read_record, read_results
from lic_kd.teachers.export import export_compressai


def _git_commit() -> str | None:
    git_state.cache_clear()  # read now: the caller writes into the work tree next
    commit, dirty = git_state()
    return None if commit is None else commit + ("+uncommitted changes" if dirty else "")


def complete_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The evaluated runs of a sweep, their records (a failed, diverged or unfinished one is none of its rungs)."""
    records = (read_record(p.parent) for p in sorted(Path(sweep_dir).glob(f"*/{RESULTS_FILE}")))
    return [r for r in records if r is not None and is_complete(r)]


def _machine() -> dict[str, Any]:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        )
        if Path("/proc/cpuinfo").is_file()
        else None
    )
    return {
        "host": platform.node(),
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


KODAK_KEYS = (
    "bpp",
    "bpp_payload",
    "bpp_estimated",
    "psnr",
    "ms_ssim",
    "n_images",
)  # what a ladder records of each network


def _continued_base(base: dict[str, Any] | None, previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """A base trained on from the previous ladder's base file (student.init=<that file>): that file's record,
    whose batches and wall time this base adds to its own. None for a base trained from scratch."""
    if not base or not previous or not previous.get("base"):
        return None
    init = base["run"].get("init")
    if not init or init in ("random", "teacher") or not Path(str(init)).is_file():
        return None
    prior = previous["base"]
    if sha256(Path(str(init))) != prior["sha256"]:
        return None
    return {k: prior.get(k) for k in ("file", "sha256", "steps_total", "wall_time_s")} | {
        "commit": previous.get("commit"),
        "kodak": {k: (prior.get("kodak") or {}).get(k) for k in ("bpp", "psnr", "ms_ssim")},
    }


def kodak_during_training(base_dir: Path, continued: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The base's Kodak quality at each point it was coded while training (a run trained on with a larger
    `steps` keeps each earlier evaluation as results-<batches>.json), batches counted from the first base's
    start: the curve that says whether more batches still pay."""
    points = (
        [{"batches": continued["steps_total"], **continued["kodak"]}] if continued and continued.get("kodak") else []
    )
    offset = (continued or {}).get("steps_total") or 0
    for path in [*base_dir.glob("results-*.json"), base_dir / RESULTS_FILE]:
        result = read_results(path)
        if not is_complete(result):
            continue
        metrics = {k: result["metrics"].get(k) for k in ("bpp", "psnr", "ms_ssim")}
        points.append({"batches": offset + int(result["run"]["steps"]), **metrics})
    return sorted(points, key=lambda p: p["batches"])


def _student_lmbdas(previous: dict[str, Any] | None, rungs: list[dict[str, Any]]) -> dict[str, Any]:
    """The rungs a sweep of students takes by default (lic_kd.sweep), kept from the ladder this one replaces
    while they are still rungs of it."""
    chosen = (previous or {}).get("student_lmbdas")
    return {"student_lmbdas": chosen} if chosen and set(chosen) <= {r["lmbda"] for r in rungs} else {}


def _summary(ladder: dict[str, Any]) -> dict[str, Any]:
    """What a replaced ladder said: its commit, batches and Kodak numbers (not its weights), kept beside the new."""
    base = ladder.get("base") or {}
    return {
        "commit": ladder.get("commit"),
        "base": {k: base.get(k) for k in ("steps_total", "wall_time_s", "kodak")} if base else None,
        "rungs": [{k: r.get(k) for k in ("lmbda", "steps_total", "kodak")} for r in ladder.get("rungs", [])],
    }


def training_time(result: dict[str, Any]) -> tuple[float, list[int]]:
    """A finished run's wall time, resumed segments included, and the batches it was resumed at, from its
    results.json: the segments its checkpoints recorded before the last, plus the last one's wall time
    (training and evaluation). A run recorded without segments: its wall time, no resumes known."""
    segments = (result["run"].get("training") or {}).get("segments") or []
    earlier = sum(s["seconds"] for s in segments[:-1])
    return earlier + float(result["wall_time_s"]), [s["from_batch"] for s in segments[1:]]


def build_ladder(
    sweep_dir: Path, out_dir: Path, name: str, command: str, base_dir: Path | None = None, note: str | None = None
) -> dict[str, Any]:
    """Export every finished run of a teacher sweep into a ladder directory (weights, ladder.json, SHA256SUMS)."""

    runs = sorted(complete_runs(sweep_dir), key=lambda r: r["run"]["lmbda"])
    if not runs:
        raise LadderError(f"{sweep_dir} has no finished runs (no complete */results.json)")
    commit = _git_commit()  # before this function writes into the work tree
    base = read_record(base_dir) if base_dir else None
    if base_dir and (base is None or not is_complete(base)):
        raise LadderError(f"base {base_dir} has no complete {RESULTS_FILE}: evaluate it first (the same command)")
    previous = read_ladder(out_dir) if (out_dir / LADDER_FILE).is_file() else None  # read before it is replaced
    continued = _continued_base(base, previous)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.pth.tar"):
        old.unlink()
    base_record, base_wall = None, 0.0
    if base is not None:
        base_wall, resumes = training_time(base)  # resumed segments included
        base_wall += (continued or {}).get("wall_time_s") or 0.0
        net, _ = load_net(base_dir)
        path, digest = export_compressai(net, out_dir / f"{name}-base-lmbda{base['run']['lmbda']:g}.pth.tar")
        base_record = {
            "lmbda": base["run"]["lmbda"],
            "file": path.name,
            "sha256": digest,
            "seed": base["run"].get("seed"),
            "steps_total": (base["run"].get("steps") or 0) + ((continued or {}).get("steps_total") or 0),
            "wall_time_s": round(base_wall, 1),
            "resumed_at_batches": resumes,
            "kodak": {k: base["metrics"].get(k) for k in KODAK_KEYS},
            "kodak_during_training": kodak_during_training(base_dir, continued),
            **({"continued_from": continued} if continued else {}),
        }
    base_steps = (base_record or {}).get("steps_total") or 0
    rungs = [_export_rung(r, out_dir, name, base_steps, base_wall, "base" if base else None) for r in runs]
    first = runs[0]["run"]
    net_cfg = torch.load(Path(first["checkpoint"]), map_location="cpu", weights_only=False)["hyper_parameters"]["net"]
    ladder = {
        "name": name,
        "architecture": net_cfg["_target_"],
        **{k: v for k, v in net_cfg.items() if k != "_target_"},
        "metric": (first.get("objective") or {}).get("metric", "mse"),
        "command": command,
        "commit": commit,
        "data": {
            "train": _train_dirs(first),
            "evaluation": "Kodak (24 images), coded for real, never trained on",
        },
        "machine": _machine(),
        "notes": note,
        "base": base_record,
        "rungs": rungs,
        **_student_lmbdas(previous, rungs),
        **({"previous": _summary(previous)} if previous else {}),
    }
    (out_dir / LADDER_FILE).write_text(json.dumps(ladder, indent=2) + "\n")
    files = rungs + ([base_record] if base_record else [])
    (out_dir / "SHA256SUMS").write_text("".join(f"{r['sha256']}  {r['file']}\n" for r in files))
    return ladder


def _export_rung(
    result: dict[str, Any], out_dir: Path, name: str, base_steps: int, base_wall: float, init: str | None
) -> dict[str, Any]:
    """Export one finished teacher run into the ladder directory; its record (steps and wall time include
    those of the base it was fine-tuned from)."""

    run = result["run"]
    net, _ = load_net(run["run_dir"])
    path, digest = export_compressai(net, out_dir / f"{name}-lmbda{run['lmbda']:g}.pth.tar")
    return {
        "lmbda": run["lmbda"],
        "file": path.name,
        "sha256": digest,
        "seed": run.get("seed"),
        "steps_base": base_steps or None,
        "steps_finetune": run.get("steps"),
        "steps_total": base_steps + (run.get("steps") or 0),
        "wall_time_s": round(training_time(result)[0] + base_wall, 1),  # the rung's own run plus its base's
        "init": init,
        "kodak": {k: result["metrics"].get(k) for k in KODAK_KEYS},
    }


def append_rungs(sweep_dir: Path, out_dir: Path, command: str, note: str | None = None) -> dict[str, Any]:
    """Add the finished runs of a sweep fine-tuned from this ladder's base (`student.init=<its base file>`)
    to the ladder as new rungs, each with its own command and commit; a rung at the same lambda is replaced."""

    ladder = read_ladder(out_dir)
    commit = _git_commit()  # before this function writes into the work tree
    base = ladder.get("base") or {}
    runs = complete_runs(sweep_dir)
    if not runs:
        raise LadderError(f"{sweep_dir} has no finished runs (no complete */results.json)")
    added = []
    for r in runs:
        init = Path(str(r["run"].get("init") or "")).name
        if init != base.get("file"):
            raise LadderError(
                f"{r['run']['run_dir']} was initialised from {r['run'].get('init')!r}, not from this ladder's base "
                f"{base.get('file')}: rungs of one ladder share its base"
            )
        rung = _export_rung(
            r, out_dir, ladder["name"], base.get("steps_total") or 0, base.get("wall_time_s") or 0.0, "base"
        )
        added.append(rung | {"command": command, "commit": commit})
    new_lambdas = {r["lmbda"] for r in added}
    kept = [r for r in ladder["rungs"] if r["lmbda"] not in new_lambdas]
    for old in set(r["file"] for r in ladder["rungs"]) - set(r["file"] for r in kept):
        (out_dir / old).unlink(missing_ok=True)
    ladder["rungs"] = sorted(kept + added, key=lambda r: r["lmbda"])
    if note:
        ladder["notes"] = " ".join(filter(None, [ladder.get("notes"), note]))
    (out_dir / LADDER_FILE).write_text(json.dumps(ladder, indent=2) + "\n")
    files = ladder["rungs"] + ([base] if base else [])
    (out_dir / "SHA256SUMS").write_text("".join(f"{r['sha256']}  {r['file']}\n" for r in files))
    return ladder


def _train_dirs(run: dict[str, Any]) -> Any:
    """The training data of a run, from its results.json's settings."""
    settings = run.get("settings") or {}
    train = settings["data.train_dir"]
    names = [str(d).split("/")[-1] for d in (train if not isinstance(train, str) else [train])]
    return {"folders": names, "crop_size": settings["data.crop_size"], "batch_size": settings["data.batch_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(description="Ship a finished sweep of teachers as a ladder (weights + provenance)")
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--name", default=None, help="file name stem (default: the out_dir's name)")
    parser.add_argument(
        "--base", type=Path, default=None, help="run dir of the base teacher the rungs were fine-tuned from"
    )
    parser.add_argument("--command", required=True, help="the exact command that trained the ladder")
    parser.add_argument("--note", default=None, help="anything else a reader of the provenance should know")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add the sweep's runs (fine-tuned from the ladder's base) to the existing ladder OUT_DIR",
    )
    args = parser.parse_args()
    if args.append:
        ladder = append_rungs(args.sweep_dir, args.out_dir, args.command, args.note)
    else:
        ladder = build_ladder(
            args.sweep_dir, args.out_dir, args.name or args.out_dir.name, args.command, args.base, args.note
        )
    for r in ladder["rungs"]:
        k = r["kodak"]
        print(
            f"lmbda {r['lmbda']:<7g} bpp {k['bpp']:.4f}  PSNR {k['psnr']:.2f} dB  MS-SSIM {k['ms_ssim']:.4f}  "
            f"{r['file']}"
        )


if __name__ == "__main__":
    run_cli(main)
