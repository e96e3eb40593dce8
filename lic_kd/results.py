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


def failure_record(err: BaseException, **extra: Any) -> dict[str, Any]:
    """failure.json of a run that raised: the error, and where a run diverged (DivergedError.record)."""
    diverged = getattr(err, "record", None)
    return {"error": f"{type(err).__name__}: {err}", **({"diverged": diverged} if diverged else {}), **extra}


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


# Configuration keys that cannot change a run's numbers (where it writes, how it logs, its torch threads), and
# the two that make points of one curve (lambda) or repeats of it (seed): left out of a run's curve settings.
NOT_SETTINGS = ("paths", "hydra", "logger", "callbacks", "threads", "eval", "lmbda", "seed", "data.seed",
                # copies of steps and val_every (interpolated into the schedule): named once
                "scheduler.steps", "scheduler.val_every", "trainer.val_check_interval", "trainer.log_every_n_steps",
                "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.default_root_dir")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= flatten(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value}
    return {k.removesuffix("."): v for k, v in flat.items()}


def _portable(value: Any, root: str) -> Any:
    """Paths inside the repository written relative to it, so that clones on other machines agree."""
    if isinstance(value, list):
        return [_portable(v, root) for v in value]
    return value.replace(root, "<repo>") if isinstance(value, str) and root in value else value


def curve_settings_of(config: dict[str, Any]) -> dict[str, Any]:
    """Everything in a run's resolved configuration that can change its result, flattened, except lambda and
    seed: runs that differ in any of it are different curves. A teacher that takes no part in the run (a plain
    student from random weights) is left out."""
    from lic_kd import REPO_ROOT

    flat = {k: _portable(v, str(REPO_ROOT)) for k, v in flatten(config).items()
            if not any(k == n or k.startswith(f"{n}.") for n in NOT_SETTINGS) and not k.endswith(".lmbda")}
    uses_teacher = config.get("role") not in ("teacher", "student") or (config.get("student") or {}).get("init") == "teacher" \
        or bool(config.get("prune"))
    return {k: v for k, v in flat.items() if uses_teacher or not k.startswith("teacher.")}


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
        # what makes its curve; a training run replaces it with its whole configuration's (train.run_settings)
        "settings": meta.get("settings") or curve_settings_of(
            {"model": net, "loss": meta.get("loss"), "teacher": meta.get("teacher"), "role": meta.get("role"),
             "student": {"init": meta.get("init")}, "prune": meta.get("prune"), "quant": meta.get("quant"),
             "steps": meta.get("steps")}),
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
