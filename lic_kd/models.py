"""Codec networks: CompressAI models built from config, loaded from checkpoints, and their latents for KD."""

from __future__ import annotations

import hashlib
import json
import math
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from compressai.models import CompressionModel, FactorizedPrior, ScaleHyperprior
from hydra.utils import get_class, instantiate
from torch import nn

from lic_kd.ladder import LadderError, is_ladder, ladder_fingerprint, ladder_rung, read_ladder, rung_meta, sha256
from lic_kd.errors import ConfigError, UserError


class CheckpointError(UserError):
    """A checkpoint that is missing or cannot be loaded; the message names it."""


# The MSE lambdas CompressAI's zoo models were trained with, by quality (widths come from its own table).
ZOO_MSE_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}
# lic_kd model config names whose zoo widths CompressAI lists under another name.
ZOO_ALIASES = {"cheng2020-anchor-checkerboard": "cheng2020-anchor"}


def zoo_preset(model: str, quality: int, field: str) -> float | int | None:
    """N, M or lmbda of CompressAI's zoo `model` at `quality` (M is None for single-width models)."""
    from compressai.zoo.image import cfgs

    table = cfgs.get(ZOO_ALIASES.get(model, model))
    if table is None:
        raise ConfigError(f"no CompressAI zoo presets for model {model!r}; known: {', '.join(sorted(cfgs))}")
    if quality not in table:
        raise ConfigError(f"{model} has zoo qualities {min(table)}..{max(table)}, got {quality}")
    if field == "lmbda":
        return ZOO_MSE_LAMBDAS[quality]
    widths = table[quality]
    return {"N": widths[0], "M": widths[1] if len(widths) > 1 else None}[field]


class ScaleHyperpriorHyperWidth(ScaleHyperprior):
    """A scale hyperprior whose hyper-latent z has its own width `hyper_N`, so that a thin student's z can
    match a wide teacher's for KD on z. The hyper layers are CompressAI's own, built at that width."""

    def __init__(self, N: int, M: int, hyper_N: int | None = None, **kwargs: Any) -> None:
        super().__init__(N, M, **kwargs)
        self.hyper_N = int(hyper_N or N)
        if self.hyper_N != self.N:
            donor = ScaleHyperprior(self.hyper_N, M)
            self.h_a, self.h_s, self.entropy_bottleneck = donor.h_a, donor.h_s, donor.entropy_bottleneck


class Autoencoder(nn.Module):
    """Balle et al.'s analysis and synthesis transforms (CompressAI's own, taken from its factorized-prior
    model) with no quantization and no entropy model: the network of autoencoder KD, trained for
    reconstruction alone. Its latent y is what g_s receives, so KD on y hooks it like a codec's y_hat."""

    def __init__(self, N: int, M: int) -> None:
        super().__init__()
        donor = FactorizedPrior(N, M)
        self.N, self.M = N, M
        self.g_a, self.g_s = donor.g_a, donor.g_s

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x_hat": self.g_s(self.g_a(x))}


def optimizer_steps_per_batch(net: nn.Module) -> int:
    """Lightning counts every optimizer step: a codec steps its main and its auxiliary (entropy bottleneck
    quantiles) optimizer per batch, an autoencoder only its main one."""
    return 2 if isinstance(net, CompressionModel) else 1


def build_net(net_cfg: dict[str, Any]) -> nn.Module:
    """Instantiate a network from its `_target_` config after checking its widths."""
    for key in ("N", "M", "hyper_N"):
        value = net_cfg.get(key)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(f"network width {key} must be a positive integer, got {value!r}")
    return instantiate(net_cfg)


ZOO_FILE = re.compile(r"-([0-9a-f]{8})\.pth(\.tar)?$")  # CompressAI names its weights <model>-<q>-<sha256[:8]>.pth.tar


ZOO_MS_SSIM_LAMBDAS = {1: 2.40, 2: 4.58, 3: 8.73, 4: 16.64, 5: 31.73, 6: 60.50, 7: 115.37, 8: 220.00}


def zoo_quality(model: str, metric: str, lmbda: float | None) -> int:
    """The quality CompressAI trained `model` at for this lambda (its MSE or MS-SSIM table)."""
    table = ZOO_MSE_LAMBDAS if metric == "mse" else ZOO_MS_SSIM_LAMBDAS
    match = [q for q, value in table.items() if lmbda is not None and math.isclose(value, lmbda, rel_tol=1e-3)]
    if not match:
        known = ", ".join(f"q{q} {v:g}" for q, v in table.items())
        raise CheckpointError(f"zoo:{model} takes the quality trained at the run's lambda, and lmbda={lmbda} is none of "
                              f"CompressAI's {metric} lambdas ({known}): set lmbda to one, or name zoo:{model}:QUALITY")
    return match[0]


def zoo_file(spec: str, lmbda: float | None = None) -> tuple[Path, str]:
    """`zoo:MODEL[:QUALITY[:METRIC]]` -> (that weights file in the torch hub cache, its model class). Without a
    quality, the one CompressAI trained at `lmbda` (each run of a sweep takes its own). The file is never
    downloaded: CompressAI's file under its own name, or any file named `<model>-<q>-<sha256[:8]>.pth.tar` as
    `python -m lic_kd.export` writes them, in `$TORCH_HOME/hub/checkpoints/`."""
    from compressai.zoo.image import model_architectures, model_urls

    parts = spec.split(":")
    if len(parts) not in (2, 3, 4) or (len(parts) > 2 and not parts[2].isdigit()):
        raise CheckpointError(f"zoo checkpoints are named zoo:MODEL (by the run's lambda) or zoo:MODEL:QUALITY[:METRIC], got {spec!r}")
    model, metric = parts[1], parts[3] if len(parts) == 4 else "mse"
    if model not in model_urls:
        raise CheckpointError(f"CompressAI's zoo has no {model}; models: {', '.join(model_urls)}")
    quality = int(parts[2]) if len(parts) > 2 else zoo_quality(model, metric, lmbda)
    try:
        url = model_urls[model][metric][quality]
    except KeyError:
        raise CheckpointError(f"CompressAI's zoo has no {model} {metric} quality {quality}; models: {', '.join(model_urls)}") from None
    cls = model_architectures[model]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    official = url.rsplit("/", 1)[-1]
    stem = ZOO_FILE.sub("", official)
    found = [folder / official] if (folder / official).is_file() else sorted(
        p for p in folder.glob(f"{stem}-*.pth.tar") if ZOO_FILE.search(p.name) and ZOO_FILE.sub("", p.name) == stem)
    if not found:
        at = "" if len(parts) > 2 else f" at lmbda={lmbda:g}"
        raise CheckpointError(f"{spec}{at} (quality {quality}, {metric}): place {official} ({url}) in {folder}; no download here")
    return found[0], f"{cls.__module__}.{cls.__name__}"


def check_zoo_hash(path: Path) -> None:
    """A file named like CompressAI's zoo weights must hash to the 8 hex digits in its name."""
    match = ZOO_FILE.search(path.name)
    if match and not sha256(path).startswith(match.group(1)):
        raise CheckpointError(f"{path} does not match the sha256 prefix {match.group(1)} in its name: damaged or not that file")


def resolve_checkpoint(path: str | Path, lmbda: float | None = None) -> Path:
    """A checkpoint file; a lic_kd run directory (its best, else last, checkpoint); or a sweep directory of
    finished runs, from which the one trained at `lmbda` (or its only run, without `lmbda`) is taken."""
    path = Path(path)
    if path.is_dir() and not (path / "checkpoints").is_dir() and any(path.glob("*/results.json")):
        runs = [p.parent for p in sorted(path.glob("*/results.json"))
                if lmbda is None or math.isclose(json.loads(p.read_text())["run"]["lmbda"] or -1, lmbda, rel_tol=1e-9)]
        if len(runs) != 1:
            at = "" if lmbda is None else f" at lmbda={lmbda}"
            raise CheckpointError(f"sweep directory {path} has {len(runs)} finished runs{at}, expected one: name the run "
                                  f"directory{'' if lmbda is not None else ' (or, for the z teacher of hybrid KD, teacher.z_lmbda)'}")
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
        return hashlib.sha256(" ".join(sorted(p.name for p in folder.glob(f"{str(spec)[4:]}-*.pth.tar"))).encode()).hexdigest()[:12]
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


def load_net(path: str | Path, architecture: str | None = None, lmbda: float | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a frozen eval-mode network from a lic_kd checkpoint or run directory, or a CompressAI
    checkpoint file (a raw state dict or `{"state_dict": ...}`), for which `architecture` names the model
    class and its widths are inferred from the weights. Also returns what the checkpoint says of its run:
    {"checkpoint", "net" (config), "role", "loss", "teacher", "init", "steps"}. `lmbda` picks a run from a sweep
    dir or a rung from a teacher ladder (lic_kd.ladder); `zoo:MODEL:QUALITY` names CompressAI zoo weights in the
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
        raise CheckpointError(f"{path} has non-finite weights ({nonfinite[0]}{' and more' if len(nonfinite) > 1 else ''}): "
                              "a diverged network is neither evaluated nor used as a teacher")
    net.eval()
    net.requires_grad_(False)
    return net, {"checkpoint": str(path.resolve()), "net": net_cfg, **meta}


def _net_from_checkpoint(ckpt: dict, path: Path, architecture: str | None) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    hparams = ckpt.get("hyper_parameters", {})
    if "net" in hparams:  # written by lic_kd's LightningModule
        net_cfg = dict(hparams["net"])
        net = build_net(net_cfg)
        if hparams.get("quant"):  # fixed point: the parametrized layers' keys, and the calibrated ranges
            from lic_kd.quant import quantize

            quantize(net, dict(hparams["quant"]))
        state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        net.load_state_dict(state)
        meta = {k: hparams.get(k) for k in ("role", "loss", "teacher", "init", "prune", "quant")}
        meta["steps"] = ckpt.get("global_step", 0) // optimizer_steps_per_batch(net)
    else:
        if architecture is None:
            raise CheckpointError(f"{path} is a plain state dict: name its model class (teacher.architecture)")
        from compressai.zoo.pretrained import load_pretrained  # renames the keys of older zoo files

        state = load_pretrained({k.removeprefix("module."): v for k, v in ckpt.get("state_dict", ckpt).items()})
        try:
            net = get_class(architecture).from_state_dict(state)
        except Exception as err:
            raise CheckpointError(f"{path} does not hold a {architecture} state dict: {err}") from err
        net_cfg = {"_target_": architecture, **{k: getattr(net, k) for k in ("N", "M") if hasattr(net, k)}}
        meta = {"role": "external", "loss": None, "teacher": None, "init": None, "prune": None, "quant": None, "steps": None}
    return net, net_cfg, meta


@contextmanager
def capture_latents(net: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the quantized latents a CompressAI model feeds its synthesis transforms during forward:
    `y_hat` (input of g_s) and, for hyperprior models, `z_hat` (input of h_s). Hooks, not a fork."""
    latents: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module_name in (("y_hat", "g_s"), ("z_hat", "h_s")):
        module = getattr(net, module_name, None)
        if module is not None:
            hooks.append(module.register_forward_pre_hook(lambda _m, args, key=name: latents.__setitem__(key, args[0])))
    try:
        yield latents
    finally:
        for hook in hooks:
            hook.remove()
