"""What every benchmark shares: the machine it ran on, interleaved timing with medians, ratios with their goals,
a printed table and the JSON file."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
TEACHERS = REPO / "teachers" / "bmshj2018-hyperprior-N64-M96"
TEACHER_LMBDA = 0.0067
KODAK = REPO / "data" / "kodak"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--smoke", action="store_true", help="tiny settings (seconds): checks that the benchmark runs, measures nothing"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="folder of the JSON files (default benchmarks/results[/smoke])"
    )
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (medians are taken over them)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    return p


def out_dir(args: argparse.Namespace) -> Path:
    return args.out or (RESULTS_DIR / "smoke" if args.smoke else RESULTS_DIR)


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and libraries: absolute figures mean nothing without them."""
    import compressai

    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu_model()})",
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }
    try:
        import lightning

        env["lightning"] = lightning.__version__
    except ImportError:
        pass
    return env


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and the relative spread (max - min) / median of repeated measurements."""
    m = statistics.median(values)
    return {
        "median": m,
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "rel_spread": (max(values) - min(values)) / m if m else float("nan"),
    }


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleave(variants: dict[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every variant once per repeat, in rotating order (A B C, B C A, ...) so that no variant always
    follows the same one; each callable returns its own measurement. Warm-up rounds are discarded."""
    names = list(variants)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            value = variants[name]()
            if r >= warmup:
                out[name].append(value)
    return out


def ratio(
    value: float,
    baseline: float,
    *,
    goal: str | None = None,
    goal_value: float | None = None,
    higher_is_better: bool = False,
    what: str = "",
    paired: float | None = None,
    met: bool | None = None,
) -> dict[str, Any]:
    """A ratio against a baseline of the same run, with its goal (`<= 1.05` style) and whether it is met.
    `paired`: the ratio itself when it is the median of paired ratios rather than value / baseline (medians);
    `goal` with `met`: a goal that is not a bound on the ratio (e.g. an absolute difference)."""
    r = paired if paired is not None else (value / baseline if baseline else float("nan"))
    entry: dict[str, Any] = {"ratio": r, "value": value, "baseline": baseline, "what": what}
    if met is not None:
        entry["goal"], entry["met"] = goal, bool(met)
    elif goal_value is not None:
        entry["goal"] = goal or (f">= {goal_value:g}" if higher_is_better else f"<= {goal_value:g}")
        entry["met"] = bool(r >= goal_value if higher_is_better else r <= goal_value) if math.isfinite(r) else False
    return entry


def finish(
    name: str,
    args: argparse.Namespace,
    env: dict[str, Any],
    settings: dict[str, Any],
    ratios: dict[str, dict[str, Any]],
    absolute: dict[str, Any],
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Print the table and write `<out>/<name>.json`; returns the record."""
    env = env | {"loadavg_end": list(os.getloadavg()), "torch_threads_end": torch.get_num_threads()}
    record = {
        "benchmark": name,
        "mode": "smoke" if args.smoke else "full",
        "args": {k: str(v) for k, v in vars(args).items()},
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "environment": env,
        "settings": settings,
        "ratios": ratios,
        "absolute": absolute,
        "notes": list(notes),
    }
    folder = out_dir(args)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    print(table(record))
    print(f"-> {path}")
    return record


def _jsonable(value: Any) -> Any:
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    if isinstance(value, torch.Size):
        return list(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def table(record: dict[str, Any]) -> str:
    """The ratios of one benchmark as a Markdown table, with the machine line under it."""
    env = record["environment"]
    lines = [
        f"### {record['benchmark']} ({record['mode']})",
        "",
        "| figure | value | baseline | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in record["ratios"].items():
        met = "" if "met" not in r else ("yes" if r["met"] else "NO")
        lines.append(
            f"| {key} | {_fmt(r['value'])} | {_fmt(r['baseline'])} | {_fmt(r['ratio'])} | {r.get('goal', '')} | {met} |"
        )
    lines.append("")
    lines.append(
        f"{env['device']}, {env['torch_threads']} torch threads, torch {env['torch']}, "
        f"load average {env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}"
    )
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def compose_train(overrides: Sequence[str]) -> Any:
    """The configuration `python -m lic_kd.train OVERRIDES` would run, composed from conf/ (no Hydra run dir:
    set paths.output_dir)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import lic_kd.models.zoo  # noqa: F401  (its config resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def median_ratio(values: Sequence[float], baselines: Sequence[float]) -> float:
    """Median of the ratios of paired measurements (taken next to each other, so under the same load)."""
    return statistics.median(v / b for v, b in zip(values, baselines))
