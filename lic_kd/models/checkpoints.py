"""Trained networks back from disk: lic_kd checkpoints and run directories, sweep directories and ladders by
lambda, CompressAI files and zoo weights."""

from __future__ import annotations

import hashlib
import json
import math
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
from lic_kd.results import current_targets


def resolve_checkpoint(path: str | Path, lmbda: float | None = None) -> Path:
    """A checkpoint file; a lic_kd run directory (its best, else last, checkpoint); or a sweep directory of
    finished runs, from which the one trained at `lmbda` (or its only run, without `lmbda`) is taken."""
    path = Path(path)
    if path.is_dir() and not (path / "checkpoints").is_dir() and any(path.glob("*/results.json")):
        runs = [
            p.parent
            for p in sorted(path.glob("*/results.json"))
            if lmbda is None or math.isclose(json.loads(p.read_text())["run"]["lmbda"] or -1, lmbda, rel_tol=1e-9)
        ]
        if len(runs) != 1:
            at = "" if lmbda is None else f" at lmbda={lmbda}"
            raise CheckpointError(
                f"sweep directory {path} has {len(runs)} finished runs{at}, expected one: name the run "
                f"directory{'' if lmbda is not None else ' (or, for the z teacher of hybrid KD, teacher.z_lmbda)'}"
            )
        path = runs[0]
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CheckpointError(f"run directory {path} has no checkpoints/best.ckpt or checkpoints/last.ckpt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def checkpoint_fingerprint(spec: str | Path | None) -> str | None:
    """The first 12 hex digits of a sha256 over the weights a teacher setting names: its file, a run's best
    checkpoint, every run of a sweep, a ladder's rungs, a zoo file. Two runs whose teachers differ in content
    (not only in name) differ in it; None when nothing is named."""
    if spec is None or str(spec) == "":
        return None
    if str(spec).startswith("zoo:") and len(str(spec).split(":")) == 2:  # by lambda: every quality in the cache
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        return hashlib.sha256(
            " ".join(sorted(p.name for p in folder.glob(f"{str(spec)[4:]}-*.pth.tar"))).encode()
        ).hexdigest()[:12]
    if str(spec).startswith("zoo:"):
        files = [zoo_file(str(spec))[0]]
    elif is_ladder(spec):
        root = Path(spec) if Path(spec).is_dir() else Path(spec).parent
        return ladder_fingerprint(read_ladder(root))
    elif Path(spec).is_dir() and not (Path(spec) / "checkpoints").is_dir():
        files = [resolve_checkpoint(p.parent) for p in sorted(Path(spec).glob("*/results.json"))]
    else:
        files = [resolve_checkpoint(spec)]
    return hashlib.sha256("".join(sha256(f) for f in files).encode()).hexdigest()[:12]


def load_net(
    path: str | Path, architecture: str | None = None, lmbda: float | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a frozen eval-mode network from a lic_kd checkpoint or run directory, or a CompressAI
    checkpoint file (a raw state dict or `{"state_dict": ...}`), for which `architecture` names the model
    class and its widths are inferred from the weights. Also returns what the checkpoint says of its run:
    {"checkpoint", "net" (config), "role", "loss", "teacher", "init", "steps"}. `lmbda` picks a run from a sweep
    dir or a rung from a teacher ladder (lic_kd.models.ladder); `zoo:MODEL:QUALITY` names CompressAI zoo weights in the
    torch hub cache."""
    ladder_meta = None
    if str(path).startswith("zoo:"):
        path, architecture = zoo_file(str(path), lmbda)
    elif is_ladder(path):  # a shipped teacher ladder: the rung at lmbda, its sha256 checked
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
    hparams = ckpt.get("hyper_parameters", {})
    if "net" in hparams:  # written by lic_kd's LightningModule
        net_cfg = current_targets(dict(hparams["net"]))
        net = build_net(net_cfg)
        if hparams.get("quant"):  # fixed point: the parametrized layers' keys, and the calibrated ranges
            quantize(net, dict(hparams["quant"]))
        state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
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
