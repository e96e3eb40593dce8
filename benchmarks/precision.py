"""Mixed precision on this machine: seconds per training batch and the Kodak result at equal batches of
`trainer.precision=bf16-mixed` against `32-true`, for the shipped teacher (N=64, M=96) and a thin student (N=16),
each fine-tuned from the shipped ladder at lambda 0.0067 (demo crops and batches), over two seeds. The quality
difference between precisions is set against the difference between seeds: bf16 holds quality when the first is
within the second.

Runs are lic_kd's own (`lic_kd.train.train` on the composed config), interleaved (fp32 s1, bf16 s1, fp32 s2, ...)
so that load changes hit both precisions alike. Quality: the RD cost J = lmbda * 255^2 * MSE + bpp on the first
Kodak images (MSE from the mean PSNR), bitstream bpp.

    python -m benchmarks.precision [--smoke] [--steps B] [--images K] [--quality-anyway]
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import open_dict

from benchmarks.common import (
    TEACHER_LMBDA,
    TEACHERS,
    compose_train,
    device_of,
    environment,
    finish,
    parser,
    ratio,
    spread,
)

PRECISIONS = ("32-true", "bf16-mixed")
MODELS = {"teacher": 64, "student": 16}


class BatchClock(L.Callback):
    """Seconds of every training batch, loader included (start of one batch to start of the next)."""

    last: "BatchClock | None" = None

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start: float | None = None
        BatchClock.last = self

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        if self._start is not None:
            self.times.append(now - self._start)
        self._start = now


def rd_cost(metrics: dict[str, float], lmbda: float) -> float:
    return lmbda * 255**2 * 10 ** (-metrics["psnr"] / 10) + metrics["bpp"]


def one_run(model: str, precision: str, seed: int, steps: int, images: int, smoke: bool, device: str) -> dict[str, Any]:
    from lic_kd.train import train

    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        if smoke:
            overrides = ["experiment=smoke", f"steps={steps}", f"val_every={steps}"]
        else:
            overrides = [
                "experiment=demo",
                f"student.N={MODELS[model]}",
                "student.init=teacher",
                f"teacher.checkpoint={TEACHERS}",
                f"lmbda={TEACHER_LMBDA}",
                f"steps={steps}",
                f"val_every={steps}",
            ]
            if model == "teacher":  # the demo's lr (1e-3, for students cut from it) throws the trained teacher off
                overrides.append("optimizer.main.lr=1e-4")
        overrides += [
            f"trainer.precision={precision}",
            f"seed={seed}",
            f"data.eval_limit={images}",
            f"paths.output_dir={tmp}",
            "trainer.enable_progress_bar=false",
        ]
        if device != "auto":
            overrides.append(f"trainer.accelerator={device}")
        cfg = compose_train(overrides)
        with open_dict(cfg):
            cfg.callbacks = {"clock": {"_target_": f"{__name__}.BatchClock"}}
        start = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - start
        result = json.loads((Path(tmp) / "results.json").read_text())
    warm = BatchClock.last.times[min(5, len(BatchClock.last.times) - 1) :]
    return {
        "model": model,
        "precision": precision,
        "seed": seed,
        "s_per_batch": statistics.median(warm),
        "wall_s": wall,
        "metrics": result["metrics"],
        "lmbda": float(cfg.lmbda),
        "overrides": overrides,
    }


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: without them, bfloat16 convolutions are emulated on the CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def probe_step(N: int, precision: str, repeats: int = 3) -> float:
    """Median seconds of one forward and backward of ScaleHyperprior(N, 96) on the demo's batch (8 crops of
    128x128), under the precision's autocast, entropy models in float32 as in training."""
    import torch
    from compressai.models import ScaleHyperprior

    from lic_kd.training.precision import entropy_models_in_float32

    torch.manual_seed(0)
    net = entropy_models_in_float32(ScaleHyperprior(N, 96)).train()
    x = torch.rand(8, 3, 128, 128)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            out = net(x)
            loss = ((out["x_hat"].float() - x) ** 2).mean() + sum(p.log().mean() for p in out["likelihoods"].values())
        loss.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="training batches per run (default 300; smoke 8)")
    p.add_argument("--images", type=int, default=None, help="Kodak images coded per run (default 8; smoke 1)")
    p.add_argument(
        "--quality-anyway", action="store_true", help="make the quality runs even where bf16 is slower than fp32"
    )
    args = p.parse_args(argv)
    env = environment(device_of(args.device))
    steps, images = args.steps or (8 if args.smoke else 300), args.images or (1 if args.smoke else 8)
    seeds = (1, 2)
    probe = {
        model: {prec: probe_step(8 if args.smoke else N, prec, 1 if args.smoke else 3) for prec in PRECISIONS}
        for model, N in MODELS.items()
    }
    slower = {m: p["bf16-mixed"] / p["32-true"] for m, p in probe.items()}
    if (
        not args.smoke and not args.quality_anyway and max(slower.values()) > 1.5
    ):  # hours of runs to learn what the probe already says
        return skipped(args, env, steps, images, probe, slower)
    runs = [
        one_run(model, precision, seed, steps, images, args.smoke, args.device)
        for model in MODELS
        for seed in seeds
        for precision in PRECISIONS
    ]

    def pick(model: str, precision: str, seed: int) -> dict[str, Any]:
        return next(r for r in runs if (r["model"], r["precision"], r["seed"]) == (model, precision, seed))

    ratios, absolute, notes = {}, {}, []
    for model in MODELS:
        fp32 = [pick(model, "32-true", s) for s in seeds]
        bf16 = [pick(model, "bf16-mixed", s) for s in seeds]
        t32, t16 = statistics.median(r["s_per_batch"] for r in fp32), statistics.median(r["s_per_batch"] for r in bf16)
        j32 = [rd_cost(r["metrics"], r["lmbda"]) for r in fp32]
        j16 = [rd_cost(r["metrics"], r["lmbda"]) for r in bf16]
        gap = abs(statistics.mean(j16) - statistics.mean(j32))  # precision, averaged over seeds
        seed_spread = statistics.mean([abs(j32[0] - j32[1]), abs(j16[0] - j16[1])])  # seeds, within a precision
        ratios[f"bf16_step_speedup_{model}"] = ratio(
            t32, t16, what="seconds per batch, 32-true / bf16-mixed (> 1: bf16 faster)"
        )
        ratios[f"bf16_quality_gap_vs_seeds_{model}"] = ratio(
            gap,
            max(seed_spread, 1e-12),
            goal_value=1.0,
            what="|J(bf16) - J(fp32)| (mean over seeds) / |J(seed 1) - J(seed 2)| (mean over precisions); <= 1: the "
            "precision changes the result less than the seed does",
        )
        absolute[model] = {
            "s_per_batch_fp32": t32,
            "s_per_batch_bf16": t16,
            "J_fp32": j32,
            "J_bf16": j16,
            "psnr_fp32": [r["metrics"]["psnr"] for r in fp32],
            "psnr_bf16": [r["metrics"]["psnr"] for r in bf16],
            "bpp_fp32": [r["metrics"]["bpp"] for r in fp32],
            "bpp_bf16": [r["metrics"]["bpp"] for r in bf16],
            "batches_per_s_fp32": spread([1 / r["s_per_batch"] for r in fp32]),
            "batches_per_s_bf16": spread([1 / r["s_per_batch"] for r in bf16]),
        }
        notes.append(
            f"{model}: bf16-mixed {t32 / t16:.2f}x the batches/s of 32-true; PSNR "
            f"{statistics.mean(absolute[model]['psnr_bf16']):.3f} vs "
            f"{statistics.mean(absolute[model]['psnr_fp32']):.3f} dB, "
            f"RD cost gap {gap:.4g} vs seed spread {seed_spread:.4g}"
        )
    absolute["probe_s"] = probe
    settings = {
        "cpu_bf16": cpu_has_bf16(),
        "steps": steps,
        "images": images,
        "seeds": list(seeds),
        "models": MODELS,
        "precisions": list(PRECISIONS),
        "runs": [{k: r[k] for k in ("model", "precision", "seed", "overrides", "wall_s")} for r in runs],
    }
    return finish("precision", args, env, settings, ratios, absolute, notes)


def skipped(args: Any, env: dict[str, Any], steps: int, images: int, probe: dict, slower: dict) -> dict[str, Any]:
    """bf16 is slower than float32 here: the step ratios from the probe, the quality runs not made, and why."""
    why = (
        "this CPU has no AVX-512 BF16 (nor AMX): bfloat16 convolutions are emulated"
        if not cpu_has_bf16()
        else "bfloat16 is slower than float32 on this machine"
    )
    ratios = {}
    for model in MODELS:
        ratios[f"bf16_step_speedup_{model}"] = ratio(
            probe[model]["32-true"],
            probe[model]["bf16-mixed"],
            what="forward+backward seconds, 32-true / bf16-mixed (probe)",
        )
        ratios[f"bf16_quality_gap_vs_seeds_{model}"] = ratio(float("nan"), float("nan"), what=f"not measured: {why}")
    notes = [
        f"bf16-mixed is {max(slower.values()):.1f}x slower than 32-true at worst ({why}): the quality runs "
        f"({steps} batches x 2 seeds x 2 models) were not made, and the long targets train in 32-true here"
    ]
    settings = {
        "steps": steps,
        "images": images,
        "models": MODELS,
        "precisions": list(PRECISIONS),
        "cpu_bf16": cpu_has_bf16(),
    }
    return finish("precision", args, env, settings, ratios, {"probe_s": probe, "bf16_over_fp32_time": slower}, notes)


if __name__ == "__main__":
    main()
