"""results.json: one per run, written atomically, the only thing reports read."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

RESULTS_FILE = "results.json"
FAILURE_FILE = "failure.json"  # written by a run that raised: what went wrong


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_results(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def environment() -> dict[str, Any]:
    """What the numbers were measured with."""
    import compressai
    import lightning

    return {
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "host": platform.node(),
    }


LOSS_KINDS = {"DistillationLoss": "kd", "make_rd_loss": "rd", "ReconstructionLoss": "reconstruction"}


def run_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What a run is, from what load_net read in its checkpoint: the keys the report groups and sorts by."""
    net, loss = meta["net"], dict(meta.get("loss") or {})
    kind = LOSS_KINDS.get(str(loss.pop("_target_", "")).rsplit(".", 1)[-1])
    task = dict(loss.pop("task", None) or loss)  # a KD loss nests the student's own objective
    teacher = meta.get("teacher") or {}
    return {
        "role": meta.get("role"),
        "architecture": net["_target_"].rsplit(".", 1)[-1],
        "N": net.get("N"),
        "M": net.get("M"),
        "lmbda": task.get("lmbda"),
        "loss": kind,
        "objective": {k: v for k, v in task.items() if k != "_target_"},
        "loss_weights": loss if kind == "kd" else {},
        "kd_variant": None if kind != "kd" else ("hybrid" if teacher.get("z_checkpoint") else "single"),
        "teacher": meta.get("teacher"),
        "init": meta.get("init") or "random",
        "prune": meta.get("prune"),  # {keep, criterion} of a pruned copy of the teacher, else None
        "quant": meta.get("quant"),  # {mode, weight_bits, activation_bits, rounding, parts} of a fixed-point run
        # the network's settings besides its widths (e.g. a learned JPEG's subsampling): they make curves too
        "model_options": {k: v for k, v in net.items() if k not in ("_target_", "N", "M")},
        "steps": meta.get("steps"),
        "checkpoint": meta["checkpoint"],
    }


def build_results(identity: dict[str, Any], net: torch.nn.Module, evaluation: dict[str, Any], wall_time_s: float) -> dict[str, Any]:
    from lic_kd.complexity import complexity
    from lic_kd.quant import bits_by_part, model_bytes

    counts = complexity(net) | {"bits": bits_by_part(net, identity.get("quant")), "model_bytes": model_bytes(net)}
    return {
        "run": identity,
        "metrics": evaluation["metrics"],
        "params": counts["params"],
        "complexity": counts,
        "wall_time_s": wall_time_s,
        "device": evaluation["device"],
        **{k: evaluation.get(k) for k in ("latency", "energy", "memory")},
        **({"codec": evaluation["codec"]} if "codec" in evaluation else {}),  # a learned JPEG's tables and rate proxy
        **({"determinism": evaluation["determinism"]} if "determinism" in evaluation else {}),  # fixed-point runs
        "environment": environment(),
        "images": evaluation["images"],
    }
