"""CompressAI's pretrained zoo: its qualities' widths and lambdas (conf/rate/), and its weights files in the
torch hub cache (`teacher.checkpoint=zoo:MODEL`), never downloaded here."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lic_kd.errors import CheckpointError, ConfigError
from lic_kd.io import sha256

# The MSE lambdas CompressAI's zoo models were trained with, by quality (widths come from its own table).
ZOO_MSE_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}


ZOO_MS_SSIM_LAMBDAS = {1: 2.40, 2: 4.58, 3: 8.73, 4: 16.64, 5: 31.73, 6: 60.50, 7: 115.37, 8: 220.00}


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


ZOO_FILE = re.compile(r"-([0-9a-f]{8})\.pth(\.tar)?$")  # CompressAI names its weights <model>-<q>-<sha256[:8]>.pth.tar


def zoo_quality(model: str, metric: str, lmbda: float | None) -> int:
    """The quality CompressAI trained `model` at for this lambda (its MSE or MS-SSIM table)."""
    table = ZOO_MSE_LAMBDAS if metric == "mse" else ZOO_MS_SSIM_LAMBDAS
    match = [q for q, value in table.items() if lmbda is not None and math.isclose(value, lmbda, rel_tol=1e-3)]
    if not match:
        known = ", ".join(f"q{q} {v:g}" for q, v in table.items())
        raise CheckpointError(
            f"zoo:{model} takes the quality trained at the run's lambda, and lmbda={lmbda} is none of "
            f"CompressAI's {metric} lambdas ({known}): set lmbda to one, or name zoo:{model}:QUALITY"
        )
    return match[0]


def zoo_file(spec: str, lmbda: float | None = None) -> tuple[Path, str]:
    """`zoo:MODEL[:QUALITY[:METRIC]]` -> (that weights file in the torch hub cache, its model class). Without a
    quality, the one CompressAI trained at `lmbda` (each run of a sweep takes its own). The file is never
    downloaded: CompressAI's file under its own name, or any file named `<model>-<q>-<sha256[:8]>.pth.tar` as
    `python -m lic_kd.teachers.export` writes them, in `$TORCH_HOME/hub/checkpoints/`."""
    from compressai.zoo.image import model_architectures, model_urls

    parts = spec.split(":")
    if len(parts) not in (2, 3, 4) or (len(parts) > 2 and not parts[2].isdigit()):
        raise CheckpointError(
            f"zoo checkpoints are named zoo:MODEL (by the run's lambda) or zoo:MODEL:QUALITY[:METRIC], got {spec!r}"
        )
    model, metric = parts[1], parts[3] if len(parts) == 4 else "mse"
    if model not in model_urls:
        raise CheckpointError(f"CompressAI's zoo has no {model}; models: {', '.join(model_urls)}")
    quality = int(parts[2]) if len(parts) > 2 else zoo_quality(model, metric, lmbda)
    try:
        url = model_urls[model][metric][quality]
    except KeyError:
        raise CheckpointError(
            f"CompressAI's zoo has no {model} {metric} quality {quality}; models: {', '.join(model_urls)}"
        ) from None
    cls = model_architectures[model]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    official = url.rsplit("/", 1)[-1]
    stem = ZOO_FILE.sub("", official)
    found = (
        [folder / official]
        if (folder / official).is_file()
        else sorted(
            p for p in folder.glob(f"{stem}-*.pth.tar") if ZOO_FILE.search(p.name) and ZOO_FILE.sub("", p.name) == stem
        )
    )
    if not found:
        at = "" if len(parts) > 2 else f" at lmbda={lmbda:g}"
        raise CheckpointError(
            f"{spec}{at} (quality {quality}, {metric}): place {official} ({url}) in {folder}; no download here"
        )
    return found[0], f"{cls.__module__}.{cls.__name__}"


def check_zoo_hash(path: Path) -> None:
    """A file named like CompressAI's zoo weights must hash to the 8 hex digits in its name."""
    match = ZOO_FILE.search(path.name)
    if match and not sha256(path).startswith(match.group(1)):
        raise CheckpointError(
            f"{path} does not match the sha256 prefix {match.group(1)} in its name: damaged or not that file"
        )


if not OmegaConf.has_resolver("lic_kd_zoo"):  # ${lic_kd_zoo:MODEL,QUALITY,FIELD} in conf/rate/
    OmegaConf.register_new_resolver("lic_kd_zoo", lambda model, quality, field: zoo_preset(model, int(quality), field))
