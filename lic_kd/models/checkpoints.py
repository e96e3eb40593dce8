"""Trained networks back from disk: lic_kd checkpoints and run directories, sweep directories and ladders by
lambda, CompressAI files and zoo weights."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from torch import nn

from lic_kd.errors import CheckpointError
from lic_kd.frugal.quant import quantize
from lic_kd.io import sha256
from lic_kd.models.ladder import (
    LadderError,
    is_ladder,
    ladder_fingerprint,
    ladder_rung,
    read_ladder,
    rung_meta,
)
from lic_kd.models.networks import build_net, optimizer_steps_per_batch
from lic_kd.models.zoo import check_zoo_hash, zoo_file
from lic_kd.results import current_targets, trained_runs


class SourceKind(str, Enum):
    ZOO = "zoo"  # zoo:MODEL[:QUALITY[:METRIC]]: CompressAI's weights in the torch hub cache
    LADDER = "ladder"  # a shipped teacher ladder, or one of its weights files
    SWEEP = "sweep"  # a sweep directory of finished runs: the one at the run's lambda
    RUN = "run"  # a lic_kd run directory (checkpoints/)
    FILE = "file"  # a lic_kd .ckpt or a CompressAI file


@dataclass(frozen=True)
class CheckpointSource:
    """A setting that names trained weights (teacher.checkpoint, student.init=PATH), told apart once."""

    text: str
    kind: SourceKind

    @classmethod
    def parse(cls, value: "str | Path | CheckpointSource") -> "CheckpointSource":
        if isinstance(value, CheckpointSource):
            return value
        text = str(value)
        path = Path(text)
        if text.startswith("zoo:"):
            kind = SourceKind.ZOO
        elif is_ladder(path):
            kind = SourceKind.LADDER
        elif path.is_dir() and not (path / "checkpoints").is_dir():
            kind = SourceKind.SWEEP
        elif path.is_dir():
            kind = SourceKind.RUN
        else:
            kind = SourceKind.FILE
        return cls(text, kind)

    @property
    def path(self) -> Path:
        return Path(self.text)

    @property
    def is_one_network(self) -> bool:
        """A run, a file, or one weights file of a ladder: one network, trained at one lambda (a sweep, a ladder
        and the zoo by lambda hold one per lambda)."""
        return self.kind in (SourceKind.RUN, SourceKind.FILE) or (
            self.kind is SourceKind.LADDER and self.path.is_file()
        )

    def __str__(self) -> str:
        return self.text


def sweep_run_at(sweep: Path, lmbda: float | None) -> Path:
    """The run of a sweep directory trained at `lmbda` (its only run, without `lmbda`), from what each run wrote
    when its training ended (lic_kd.results.trained_runs): a teacher need not be evaluated to teach."""
    runs = [
        run_dir
        for run_dir, record in trained_runs(sweep)
        if lmbda is None or math.isclose(record["run"].get("lmbda") or -1, lmbda, rel_tol=1e-9)
    ]
    if len(runs) != 1:
        at = "" if lmbda is None else f" at lmbda={lmbda}"
        raise CheckpointError(
            f"sweep directory {sweep} has {len(runs)} trained runs{at}, expected one: name the run "
            f"directory{'' if lmbda is not None else ' (or, for the z teacher of hybrid KD, teacher.z_lmbda)'}"
        )
    return runs[0]


def resolve_checkpoint(path: str | Path | CheckpointSource, lmbda: float | None = None) -> Path:
    """A checkpoint file; a lic_kd run directory (its best, else last, checkpoint); or a sweep directory of
    trained runs, from which the one trained at `lmbda` (or its only run, without `lmbda`) is taken."""
    source = CheckpointSource.parse(path)
    path = source.path
    if source.kind is SourceKind.SWEEP:
        if not path.is_dir():
            raise CheckpointError(f"checkpoint not found: {path}")
        path = sweep_run_at(path, lmbda)
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CheckpointError(f"run directory {path} has no checkpoints/best.ckpt or checkpoints/last.ckpt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def checkpoint_fingerprint(spec: str | Path | CheckpointSource | None) -> str | None:
    """The first 12 hex digits of a sha256 over the weights a teacher setting names: its file, a run's best
    checkpoint, every run of a sweep, a ladder's rungs, a zoo file. Two runs whose teachers differ in content
    (not only in name) differ in it; None when nothing is named."""
    if spec is None or str(spec) == "":
        return None
    source = CheckpointSource.parse(spec)
    if source.kind is SourceKind.ZOO and len(source.text.split(":")) == 2:  # by lambda: every quality in the cache
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        return hashlib.sha256(
            " ".join(sorted(p.name for p in folder.glob(f"{source.text[4:]}-*.pth.tar"))).encode()
        ).hexdigest()[:12]
    if source.kind is SourceKind.ZOO:
        files = [zoo_file(source.text)[0]]
    elif source.kind is SourceKind.LADDER:
        root = source.path if source.path.is_dir() else source.path.parent
        return ladder_fingerprint(read_ladder(root))
    elif source.kind is SourceKind.SWEEP:
        files = [resolve_checkpoint(run_dir) for run_dir, _ in trained_runs(source.path)]
    else:
        files = [resolve_checkpoint(source)]
    return hashlib.sha256("".join(sha256(f) for f in files).encode()).hexdigest()[:12]


def load_net(
    path: str | Path | CheckpointSource, architecture: str | None = None, lmbda: float | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a frozen eval-mode network from a lic_kd checkpoint or run directory, or a CompressAI
    checkpoint file (a raw state dict or `{"state_dict": ...}`), for which `architecture` names the model
    class and its widths are inferred from the weights. Also returns what the checkpoint says of its run:
    {"checkpoint", "net" (config), "role", "loss", "teacher", "init", "steps"}. `lmbda` picks a run from a sweep
    dir or a rung from a teacher ladder (lic_kd.models.ladder); `zoo:MODEL:QUALITY` names CompressAI zoo weights in the
    torch hub cache."""
    ladder_meta = None
    source = CheckpointSource.parse(path)
    path = source.path
    if source.kind is SourceKind.ZOO:
        path, architecture = zoo_file(source.text, lmbda)
    elif source.kind is SourceKind.LADDER:  # a shipped teacher ladder: the rung at lmbda, its sha256 checked
        try:
            path, ladder, rung = ladder_rung(path, lmbda)
        except LadderError as err:
            raise CheckpointError(str(err)) from None
        architecture, ladder_meta = ladder["architecture"], rung_meta(ladder, rung)
    path = resolve_checkpoint(path, lmbda)
    check_zoo_hash(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot load checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a checkpoint (a {type(ckpt).__name__}, expected a dict)")
    # Building a network to receive weights draws its random initialization: fork the RNG, so that loading
    # one teacher, two or none leaves the training run's random stream (its crops, its batches) unchanged.
    with torch.random.fork_rng(devices=[]):
        net, net_cfg, meta = _net_from_checkpoint(ckpt, path, architecture)
    meta |= ladder_meta or {}
    nonfinite = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise CheckpointError(
            f"{path} has non-finite weights ({nonfinite[0]}{' and more' if len(nonfinite) > 1 else ''}): "
            "a diverged network is neither evaluated nor used as a teacher"
        )
    net.eval()
    net.requires_grad_(False)
    return net, {"checkpoint": str(path.resolve()), "net": net_cfg, **meta}


def _net_from_checkpoint(
    ckpt: dict, path: Path, architecture: str | None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    hparams, prefix = ckpt.get("hyper_parameters", {}), "net."
    if "students" in ckpt and "net" not in hparams:  # a run's resumable state (lic_kd.training.module)
        if len(ckpt["students"]) != 1:
            raise CheckpointError(
                f"{path} is the state of {len(ckpt['students'])} students trained together: name one student's "
                "run directory or best.ckpt"
            )
        name, saved = next(iter(ckpt["students"].items()))
        hparams, prefix = saved["record"], f"students.{name}.net."
    if "net" in hparams:  # written by lic_kd
        net_cfg = current_targets(dict(hparams["net"]))
        net = build_net(net_cfg)
        if hparams.get("quant"):  # fixed point: the parametrized layers' keys, and the calibrated ranges
            quantize(net, dict(hparams["quant"]))
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        net.load_state_dict(state)
        meta = {k: current_targets(hparams.get(k)) for k in ("role", "loss", "teacher", "init", "prune", "quant")}
        meta["steps"] = ckpt.get("global_step", 0) // optimizer_steps_per_batch(net)
    else:
        if architecture is None:
            raise CheckpointError(f"{path} is a plain state dict: name its model class (teacher.architecture)")
        from compressai.zoo.pretrained import (
            load_pretrained,  # renames the keys of older zoo files
        )

        state = load_pretrained({k.removeprefix("module."): v for k, v in ckpt.get("state_dict", ckpt).items()})
        try:
            net = get_class(architecture).from_state_dict(state)
        except Exception as err:
            raise CheckpointError(f"{path} does not hold a {architecture} state dict: {err}") from err
        net_cfg = {"_target_": architecture, **{k: getattr(net, k) for k in ("N", "M") if hasattr(net, k)}}
        meta = {
            "role": "external",
            "loss": None,
            "teacher": None,
            "init": None,
            "prune": None,
            "quant": None,
            "steps": None,
        }
    return net, net_cfg, meta
