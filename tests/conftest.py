"""Shared helpers: run the real entry points (`python -m lic_kd.*`) on tiny settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Under pytest-xdist (make test: two workers on two cores), each worker and the commands it starts run torch on one
# thread: two 2-thread torch processes on 2 cores thrash, two 1-thread ones give 1.6-1.7x the throughput.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO / "data" / "kodak"
CBSD68 = REPO / "data" / "cbsd68"


def run_module(
    module: str, *args: str, cwd: Path | None = None, timeout: int = 600, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m module args...` as a user would run it; output captured for the assertions."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def train(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """The smoke preset plus `args`; Hydra wants its flags (-m) before the overrides."""
    flags = [a for a in args if a.startswith("-")]
    return run_module("lic_kd.train", *flags, "experiment=smoke", *[a for a in args if a not in flags], **kwargs)


@pytest.fixture(scope="session")
def teacher_sweep(tmp_path_factory) -> Path:
    """Smoke teachers at two lambdas, trained once for the whole session."""
    sweep = tmp_path_factory.mktemp("teachers")
    train("-m", "role=teacher", "lmbda=0.005,0.02", f"hydra.sweep.dir={sweep}")
    return sweep


def compose_config(overrides: list[str], name: str = "train"):
    """The configuration `python -m lic_kd.{name} OVERRIDES` would run with (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import lic_kd.models.zoo  # noqa: F401  (the config resolvers)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # as in a run: ${hydra:...} resolves
    return cfg


def task_config(overrides: list[str], name: str = "train"):
    """What `python -m lic_kd.{name} OVERRIDES` hands its task: the composed configuration less Hydra's own."""
    from omegaconf import OmegaConf

    cfg = compose_config(overrides, name)
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def refused(out_dir: Path, *overrides: str) -> str:
    """What `python -m lic_kd.train experiment=smoke OVERRIDES` says of a mistake, run in this process through the
    task function the command calls: the one line of the UserError it raises, before any training (the exit status
    and the line's form are tested through the command itself once, in test_train_cli)."""
    from lic_kd.errors import one_line, user_error
    from lic_kd.train import train as train_task

    with pytest.raises(Exception) as err:
        train_task(task_config(["experiment=smoke", f"paths.output_dir={out_dir}", *overrides]))
    cause = user_error(err.value)  # as the command finds it (Hydra wraps errors raised inside a _target_)
    assert cause is not None, f"not a user error: {err.value!r}"
    assert not (out_dir / "checkpoints").exists()  # refused before any training
    return one_line(cause)
