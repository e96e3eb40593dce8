"""Teacher ladders: trained networks at several lambdas, shipped as CompressAI-format weights with their
provenance, and named like a sweep directory (`teacher.checkpoint=teachers/NAME`: each run takes the rung
of its own lambda).

A ladder directory holds `ladder.json` (architecture, widths, the exact command, commit, data, machine, and
per rung: lambda, file, sha256, steps, seed, wall time and the Kodak metrics of its evaluation run),
`SHA256SUMS`, and one `<name>-<sha256[:8]>.pth.tar` per rung: the network's state dict with its CDF tables
updated, as CompressAI's `update_model` writes it, so CompressAI's own tools read it. Loading checks the
hash.

`python -m lic_kd.teachers.ladder SWEEP_DIR OUT_DIR --command "..."` builds one from a finished sweep of teachers;
`--append` adds the runs of a sweep fine-tuned from its base as new rungs.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from lic_kd.errors import UserError
from lic_kd.io import sha256

LADDER_FILE = "ladder.json"


class LadderError(UserError):
    """A ladder that is incomplete, damaged or has no rung at the lambda asked for."""


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
        raise LadderError(
            f"{path} is damaged: sha256 {digest[:12]}... but {LADDER_FILE} records {rung['sha256'][:12]}..."
        )
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
        "loss": {
            "_target_": "lic_kd.training.losses.make_rd_loss",
            "lmbda": rung["lmbda"],
            "metric": ladder.get("metric", "mse"),
        },
        "teacher": None,
        "init": rung.get("init"),
        "steps": rung.get("steps_total"),
        "shipped_kodak": rung.get("kodak"),
    }
