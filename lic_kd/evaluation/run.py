"""One evaluation of a trained network, for every kind of run: its images coded for real, its identity
read from its checkpoint, one results.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from lic_kd.data import load_rgb, to_tensor
from lic_kd.evaluation.coding import evaluate_net, pad
from lic_kd.evaluation.complexity import complexity
from lic_kd.evaluation.determinism import decode_determinism, determinism_summary
from lic_kd.frugal.quant import bits_by_part, model_bytes
from lic_kd.io import write_json_atomic
from lic_kd.metrics import summary
from lic_kd.models.checkpoints import load_net
from lic_kd.results import RESULTS_FILE, curve_settings_of, environment, results_record

log = logging.getLogger(__name__)

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
        # what makes its curve; a training run gives its whole configuration's (lic_kd.training.spec.run_settings)
        "settings": meta.get("settings")
        or curve_settings_of(
            {
                "model": net,
                "loss": meta.get("loss"),
                "teacher": meta.get("teacher"),
                "role": meta.get("role"),
                "student": {"init": meta.get("init")},
                "prune": meta.get("prune"),
                "quant": meta.get("quant"),
                "steps": meta.get("steps"),
            },
            uses_teacher=meta.get("role") not in ("teacher", "student")
            or meta.get("init") == "teacher"
            or bool(meta.get("prune")),
        ),
    }


def build_results(
    identity: dict[str, Any], net: torch.nn.Module, evaluation: dict[str, Any], wall_time_s: float
) -> dict[str, Any]:
    counts = complexity(net) | {"bits": bits_by_part(net, identity.get("quant")), "model_bytes": model_bytes(net)}
    return results_record(
        identity,
        evaluation["metrics"],
        **{
            "params": counts["params"],
            "complexity": counts,
            "wall_time_s": wall_time_s,
            "device": evaluation["device"],
            **{k: evaluation.get(k) for k in ("latency", "energy", "memory")},
            **(
                {"codec": evaluation["codec"]} if "codec" in evaluation else {}
            ),  # a learned JPEG's tables and rate proxy
            **({"determinism": evaluation["determinism"]} if "determinism" in evaluation else {}),  # fixed-point runs
            "environment": environment(),
            "images": evaluation["images"],
        },
    )


def evaluate_run(
    checkpoint: str | Path,
    images: Sequence[Path],
    run_dir: Path,
    device: str = "auto",
    *,
    architecture: str | None = None,
    lmbda: float | None = None,
    started: float | None = None,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Code `images` with the network of `checkpoint` (a training run's directory: its best checkpoint), write
    run_dir/results.json and return it. `identity`: what the run is, from its spec (a training run), in place of what
    the checkpoint says of itself. A fixed-point network is also decoded twice, on 1 and 2 threads."""
    started = time.perf_counter() if started is None else started
    net, meta = load_net(checkpoint, architecture, lmbda=lmbda)
    log.info("evaluating %d images with %s", len(images), meta["checkpoint"])
    evaluation = evaluate_net(net, images, run_dir, device)
    if meta.get("quant"):
        evaluation["determinism"] = decode_determinism(net, pad(to_tensor(load_rgb(images[0]))[None]))
        log.info("decoding twice, 1 and 2 threads: %s", determinism_summary(evaluation["determinism"]))
    run = (identity if identity is not None else run_identity(meta)) | {
        "run_dir": str(run_dir.resolve()),
        "images_dir": str(Path(images[0]).parent.resolve()),
    }
    results = build_results(run, net, evaluation, time.perf_counter() - started)
    write_json_atomic(run_dir / RESULTS_FILE, results)
    log.info("%s: %s -> %s", results["run"]["role"], summary(results["metrics"]), run_dir / RESULTS_FILE)
    shipped = meta.get("shipped_kodak")
    if shipped and shipped.get("n_images") == results["metrics"]["n_images"]:
        # a shipped teacher re-coded: its record and this machine's numbers side by side
        log.info(
            "recorded when it was trained: bpp %.4f, PSNR %.2f dB (here: bpp %.4f, PSNR %.2f dB)",
            shipped["bpp"],
            shipped["psnr"],
            results["metrics"]["bpp"],
            results["metrics"]["psnr"],
        )
    return results
