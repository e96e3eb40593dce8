"""results.json: one per run, written atomically, the one contract between stages and the only thing reports read.

A run's results.json says where it stands (`status`): `running` from the start of its training (a run killed from
outside stays so), `trained` when its training ended (it can teach), `complete` once its images are coded (its
metrics, and the files a report shows, listed), or `failed` / `diverged` with the reason."""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lic_kd import REPO_ROOT

RESULTS_FILE = "results.json"

RUNNING, TRAINED, COMPLETE, FAILED, DIVERGED = "running", "trained", "complete", "failed", "diverged"


def status_of(record: dict[str, Any]) -> str:
    """A record's status; one written before statuses existed is complete (it was written only then)."""
    return record.get("status", COMPLETE)


def is_complete(record: dict[str, Any]) -> bool:
    return status_of(record) == COMPLETE


def has_trained(record: dict[str, Any]) -> bool:
    """Training ended: the run's checkpoints are final (it can teach, be started from, be evaluated)."""
    return status_of(record) in (TRAINED, COMPLETE)


def failure_record(err: BaseException, run: dict[str, Any]) -> dict[str, Any]:
    """The record of a run that raised: failed with the error, or diverged and where (DivergedError.record)."""
    diverged = getattr(err, "record", None)
    return status_record(
        DIVERGED if diverged else FAILED,
        run,
        error=f"{type(err).__name__}: {err}",
        **({"diverged": diverged} if diverged else {}),
    )


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's results.json, or None when it has none (or one that cannot be read: it is rewritten)."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        return read_results(path) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def trained_runs(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The runs of a sweep directory whose training ended, with their records (by run directory name)."""
    found = []
    for path in sorted(Path(sweep_dir).glob(f"*/{RESULTS_FILE}")):
        record = read_record(path.parent)
        if record is not None and has_trained(record):
            found.append((path.parent, record))
    return found


# The keys every results.json's "run" has, whatever made it (a training run, an evaluation, a classical codec,
# a published curve): None where they do not apply, so that a report reads every record the same way.
RUN_KEYS = (
    "role",
    "architecture",
    "N",
    "M",
    "lmbda",
    "quality",
    "loss",
    "loss_weights",
    "teacher",
    "init",
    "prune",
    "quant",
    "steps",
    "settings",
    "run_dir",
)


def results_record(run: dict[str, Any], metrics: dict[str, Any], **rest: Any) -> dict[str, Any]:
    """One complete results record: what the run is, its dataset metrics, and whatever else it measured."""
    return {"status": COMPLETE, "run": {k: None for k in RUN_KEYS} | run, "metrics": metrics, **rest}


def status_record(status: str, run: dict[str, Any], **rest: Any) -> dict[str, Any]:
    """The record of a run that has no metrics (yet): running, trained, failed or diverged."""
    return {"status": status, "run": {k: None for k in RUN_KEYS} | run, "environment": environment(), **rest}


def read_results(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def check_same_run(results_path: Path, wanted: dict[str, Any]) -> None:
    """A finished run is left as it is on re-running only when it is the run asked for: results of another
    configuration in its directory (trained from a teacher since retrained, at another lr) are named, not
    reported as this one's. Settings either side lacks (recorded by an older lic_kd) and the budget (a larger one
    trains on) are not compared."""
    from lic_kd.errors import ConfigError

    recorded = current_targets(read_results(results_path)["run"].get("settings") or {})
    wanted = current_targets(wanted)

    def same(key: str) -> bool:
        return json.dumps(recorded[key], sort_keys=True) == json.dumps(wanted[key], sort_keys=True)

    differ = [k for k in sorted(set(recorded) & set(wanted)) if k != "steps" and not same(k)]
    if differ:
        shown = "; ".join(f"{k}={recorded[k]} there, {wanted[k]} now" for k in differ[:3])
        raise ConfigError(
            f"{results_path.parent} holds a finished run of another configuration ({shown}): give this one another "
            "directory (hydra.sweep.dir=... or hydra.run.dir=...) or move that run away"
        )


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """The commit lic_kd runs from and whether its tracked files have uncommitted changes; (None, None) outside
    a git checkout (an installed package)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        return commit, bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        return None, None


def environment() -> dict[str, Any]:
    """What the numbers were measured with: the code (commit, uncommitted changes), the packages, the machine."""
    import compressai
    import hydra
    import lightning

    commit, dirty = git_state()
    return {
        "commit": commit,
        "uncommitted_changes": dirty,
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "lightning": lightning.__version__,
        "hydra": hydra.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "host": platform.node(),
    }


# Configuration keys that cannot change a run's numbers (where it writes, how it logs, its torch threads), and
# the two that make points of one curve (lambda) or repeats of it (seed): left out of a run's curve settings.
NOT_SETTINGS = (
    "plan_only",
    "teacher.any_lmbda",
    "paths",
    "hydra",
    "logger",
    "callbacks",
    "threads",
    "eval",
    "lmbda",
    "seed",
    "data.seed",
    # how images are read, not which: loader workers draw other crops from the same distribution, like a seed
    "data.num_workers",
    "data.cache_images",
    # copies of steps and val_every (interpolated into the schedule): named once
    "scheduler.steps",
    "scheduler.val_every",
    "trainer.val_check_interval",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.default_root_dir",
)


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


def curve_settings_of(config: dict[str, Any], uses_teacher: bool) -> dict[str, Any]:
    """Everything in a run's resolved configuration that can change its result, flattened, except lambda and
    seed: runs that differ in any of it are different curves. A teacher that takes no part in the run (a plain
    student from random weights: `uses_teacher` false) is left out."""

    flat = {
        k: _portable(v, str(REPO_ROOT))
        for k, v in flatten(config).items()
        if not any(k == n or k.startswith(f"{n}.") for n in NOT_SETTINGS) and not k.endswith(".lmbda")
    }
    return {k: v for k, v in flat.items() if uses_teacher or not k.startswith("teacher.")}


# Class paths that checkpoints and results.json written before lic_kd was grouped by stage hold: read as today's.
MOVED_TARGETS = {
    "lic_kd.models.ScaleHyperpriorHyperWidth": "lic_kd.models.networks.ScaleHyperpriorHyperWidth",
    "lic_kd.models.Autoencoder": "lic_kd.models.networks.Autoencoder",
    "lic_kd.learned_jpeg.LearnedJPEG": "lic_kd.models.learned_jpeg.LearnedJPEG",
    "lic_kd.losses.make_rd_loss": "lic_kd.training.losses.make_rd_loss",
    "lic_kd.losses.RateDistortionLoss": "lic_kd.training.losses.RateDistortionLoss",
    "lic_kd.losses.ReconstructionLoss": "lic_kd.training.losses.ReconstructionLoss",
    "lic_kd.losses.DistillationLoss": "lic_kd.training.losses.DistillationLoss",
    "lic_kd.module.budget_multistep": "lic_kd.training.module.budget_multistep",
    "lic_kd.module.budget_plateau": "lic_kd.training.module.budget_plateau",
}


def current_targets(value: Any) -> Any:
    """`value` (a config tree, a settings dict, a class path) with every moved class path made today's."""
    if isinstance(value, Mapping):  # a dict, or an OmegaConf container a checkpoint holds
        return {k: current_targets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [current_targets(v) for v in value]
    return MOVED_TARGETS.get(value, value) if isinstance(value, str) else value
