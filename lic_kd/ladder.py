"""Teacher ladders: trained networks at several lambdas, shipped as CompressAI-format weights with their
provenance, and named like a sweep directory (`teacher.checkpoint=teachers/NAME`: each run takes the rung
of its own lambda).

A ladder directory holds `ladder.json` (architecture, widths, the exact command, commit, data, machine, and
per rung: lambda, file, sha256, steps, seed, wall time and the Kodak metrics of its evaluation run),
`SHA256SUMS`, and one `<name>-<sha256[:8]>.pth.tar` per rung: the network's state dict with its CDF tables
updated, as CompressAI's `update_model` writes it, so CompressAI's own tools read it. Loading checks the
hash.

`python -m lic_kd.ladder SWEEP_DIR OUT_DIR --command "..."` builds one from a finished sweep of teachers;
`--append` adds the runs of a sweep fine-tuned from its base as new rungs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

from lic_kd.errors import UserError, run_cli

LADDER_FILE = "ladder.json"


class LadderError(UserError):
    """A ladder that is incomplete, damaged or has no rung at the lambda asked for."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_ladder(path: str | Path) -> bool:
    """A ladder directory, or one of the weights files in it."""
    path = Path(path)
    return (path / LADDER_FILE).is_file() or (path.is_file() and (path.parent / LADDER_FILE).is_file())


def read_ladder(root: str | Path) -> dict[str, Any]:
    return json.loads((Path(root) / LADDER_FILE).read_text())


def ladder_rung(root: str | Path, lmbda: float | None) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(weights file, ladder, rung) of the rung trained at `lmbda` (the only one when lmbda is None), or of
    the ladder's weights file `root` names, after checking the file's sha256 against the ladder's record."""
    root = Path(root)
    file = None
    if root.is_file():
        root, file = root.parent, root.name
    ladder = read_ladder(root)
    rungs = ladder["rungs"]
    lambdas = ", ".join(f"{r['lmbda']:g}" for r in rungs)
    if file is not None:
        matches = [r for r in rungs + [ladder.get("base") or {}] if r.get("file") == file]
        if not matches:
            raise LadderError(f"{root / file} is not one of the weights files {LADDER_FILE} records")
        rung = matches[0]
    elif lmbda is None:
        if len(rungs) != 1:
            raise LadderError(f"ladder {root} has rungs at lmbda {lambdas}: name one (lmbda=...)")
        rung = rungs[0]
    else:
        matches = [r for r in rungs if math.isclose(r["lmbda"], lmbda, rel_tol=1e-9)]
        if not matches:
            raise LadderError(f"ladder {root} has no teacher at lmbda={lmbda:g}; its rungs: {lambdas}")
        rung = matches[0]
    path = root / rung["file"]
    if not path.is_file():
        raise LadderError(f"ladder {root}: weights file {rung['file']} is missing")
    digest = sha256(path)
    if digest != rung["sha256"]:
        raise LadderError(f"{path} is damaged: sha256 {digest[:12]}... but {LADDER_FILE} records {rung['sha256'][:12]}...")
    return path, ladder, rung


def ladder_fingerprint(ladder: dict[str, Any]) -> str:
    """12 hex digits of a sha256 over the rungs' own: a retrained ladder under the same name differs in it."""
    return hashlib.sha256("".join(sorted(r["sha256"] for r in ladder["rungs"])).encode()).hexdigest()[:12]


def rung_meta(ladder: dict[str, Any], rung: dict[str, Any]) -> dict[str, Any]:
    """What load_net reports of a ladder rung, shaped like a lic_kd checkpoint's own record. Its rungs are one
    curve: the ladder, whatever each rung's fine-tuning."""
    return {
        "settings": {"ladder": ladder.get("name"), "ladder.fingerprint": ladder_fingerprint(ladder)},
        "role": "teacher",
        "loss": {"_target_": "lic_kd.losses.make_rd_loss", "lmbda": rung["lmbda"], "metric": ladder.get("metric", "mse")},
        "teacher": None,
        "init": rung.get("init"),
        "steps": rung.get("steps_total"),
        "shipped_kodak": rung.get("kodak"),
    }


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return commit + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _machine() -> dict[str, Any]:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), None) \
        if Path("/proc/cpuinfo").is_file() else None
    return {"host": platform.node(), "cpu": cpu or platform.processor(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version()}


def _first_log_time(run_dir: Path) -> float:
    """When a run started: the first timestamp of its log (Hydra appends a resumed run's lines)."""
    from datetime import datetime

    log_file = run_dir / "train.log"
    match = re.search(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", log_file.read_text(errors="replace"), re.M) if log_file.is_file() else None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp() if match else (run_dir / "results.json").stat().st_mtime


def _resumes(run_dir: Path) -> list[int]:
    """The batches at which a run was resumed (from its log): the segments it was trained in."""
    log_file = run_dir / "train.log"
    text = log_file.read_text(errors="replace") if log_file.is_file() else ""
    return sorted(set(int(b) for b in re.findall(r"resuming from \S+ at batch (\d+) of", text)))


def build_ladder(sweep_dir: Path, out_dir: Path, name: str, command: str, base_dir: Path | None = None,
                 note: str | None = None) -> dict[str, Any]:
    """Export every finished run of a teacher sweep into a ladder directory (weights, ladder.json, SHA256SUMS)."""
    from lic_kd.export import export_compressai
    from lic_kd.models import load_net
    from lic_kd.results import read_results

    runs = sorted((read_results(p) for p in Path(sweep_dir).glob("*/results.json")), key=lambda r: r["run"]["lmbda"])
    if not runs:
        raise LadderError(f"{sweep_dir} has no finished runs (no */results.json)")
    base = read_results(base_dir / "results.json") if base_dir else None
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.pth.tar"):
        old.unlink()
    base_record, base_wall = None, 0.0
    if base is not None:
        # elapsed from the run's first log line to its results, resumed segments included
        base_wall = (base_dir / "results.json").stat().st_mtime - _first_log_time(base_dir)
        net, _ = load_net(base_dir)
        path, digest = export_compressai(net, out_dir / f"{name}-base-lmbda{base['run']['lmbda']:g}.pth.tar")
        base_record = {"lmbda": base["run"]["lmbda"], "file": path.name, "sha256": digest, "seed": base["run"].get("seed"),
                       "steps_total": base["run"].get("steps"), "wall_time_s": round(base_wall, 1),
                       "resumed_at_batches": _resumes(base_dir),
                       "kodak": {k: base["metrics"].get(k) for k in ("bpp", "bpp_estimated", "psnr", "ms_ssim", "n_images")}}
    base_steps = (base or {}).get("run", {}).get("steps") or 0
    rungs = [_export_rung(r, out_dir, name, base_steps, base_wall, "base" if base else None) for r in runs]
    first = runs[0]["run"]
    net_cfg = torch.load(Path(first["checkpoint"]), map_location="cpu", weights_only=False)["hyper_parameters"]["net"]
    ladder = {
        "name": name,
        "architecture": net_cfg["_target_"],
        **{k: v for k, v in net_cfg.items() if k != "_target_"},
        "metric": (first.get("objective") or {}).get("metric", "mse"),
        "command": command,
        "commit": _git_commit(),
        "data": {"train": _train_dirs(Path(first["run_dir"])), "evaluation": "Kodak (24 images), coded for real, never trained on"},
        "machine": _machine(),
        "notes": note,
        "base": base_record,
        "rungs": rungs,
    }
    (out_dir / LADDER_FILE).write_text(json.dumps(ladder, indent=2) + "\n")
    files = rungs + ([base_record] if base_record else [])
    (out_dir / "SHA256SUMS").write_text("".join(f"{r['sha256']}  {r['file']}\n" for r in files))
    return ladder


def _export_rung(result: dict[str, Any], out_dir: Path, name: str, base_steps: int, base_wall: float,
                 init: str | None) -> dict[str, Any]:
    """Export one finished teacher run into the ladder directory; its record (steps and wall time include
    those of the base it was fine-tuned from)."""
    from lic_kd.export import export_compressai
    from lic_kd.models import load_net

    run = result["run"]
    net, _ = load_net(run["run_dir"])
    path, digest = export_compressai(net, out_dir / f"{name}-lmbda{run['lmbda']:g}.pth.tar")
    return {
        "lmbda": run["lmbda"], "file": path.name, "sha256": digest, "seed": run.get("seed"),
        "steps_base": base_steps or None, "steps_finetune": run.get("steps"), "steps_total": base_steps + (run.get("steps") or 0),
        "wall_time_s": round(result["wall_time_s"] + base_wall, 1),  # the rung's own run plus its base's
        "init": init,
        "kodak": {k: result["metrics"].get(k) for k in ("bpp", "bpp_estimated", "psnr", "ms_ssim", "n_images")},
    }


def append_rungs(sweep_dir: Path, out_dir: Path, command: str, note: str | None = None) -> dict[str, Any]:
    """Add the finished runs of a sweep fine-tuned from this ladder's base (`student.init=<its base file>`)
    to the ladder as new rungs, each with its own command and commit; a rung at the same lambda is replaced."""
    from lic_kd.results import read_results

    ladder = read_ladder(out_dir)
    base = ladder.get("base") or {}
    runs = [read_results(p) for p in Path(sweep_dir).glob("*/results.json")]
    if not runs:
        raise LadderError(f"{sweep_dir} has no finished runs (no */results.json)")
    added = []
    for r in runs:
        init = Path(str(r["run"].get("init") or "")).name
        if init != base.get("file"):
            raise LadderError(f"{r['run']['run_dir']} was initialised from {r['run'].get('init')!r}, not from this ladder's base "
                              f"{base.get('file')}: rungs of one ladder share its base")
        rung = _export_rung(r, out_dir, ladder["name"], base.get("steps_total") or 0, base.get("wall_time_s") or 0.0, "base")
        added.append(rung | {"command": command, "commit": _git_commit()})
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


def _train_dirs(run_dir: Path) -> Any:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    train = cfg.data.train_dir
    names = [str(d).split("/")[-1] for d in (train if not isinstance(train, str) else [train])]
    return {"folders": names, "crop_size": cfg.data.crop_size, "batch_size": cfg.data.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description="Ship a finished sweep of teachers as a ladder (weights + provenance)")
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--name", default=None, help="file name stem (default: the out_dir's name)")
    parser.add_argument("--base", type=Path, default=None, help="run dir of the base teacher the rungs were fine-tuned from")
    parser.add_argument("--command", required=True, help="the exact command that trained the ladder")
    parser.add_argument("--note", default=None, help="anything else a reader of the provenance should know")
    parser.add_argument("--append", action="store_true",
                        help="add the sweep's runs (fine-tuned from the ladder's base) to the existing ladder OUT_DIR")
    args = parser.parse_args()
    if args.append:
        ladder = append_rungs(args.sweep_dir, args.out_dir, args.command, args.note)
    else:
        ladder = build_ladder(args.sweep_dir, args.out_dir, args.name or args.out_dir.name, args.command, args.base, args.note)
    for r in ladder["rungs"]:
        k = r["kodak"]
        print(f"lmbda {r['lmbda']:<7g} bpp {k['bpp']:.4f}  PSNR {k['psnr']:.2f} dB  MS-SSIM {k['ms_ssim']:.4f}  {r['file']}")


if __name__ == "__main__":
    run_cli(main)
