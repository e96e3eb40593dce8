"""Bjontegaard deltas between RD curves, and their mean and 95 % interval over seeds."""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import bjontegaard
import numpy as np
import pandas as pd

# The fewest points each interpolation needs to mean something: a cubic through fewer than 4 points is
# underdetermined; pchip and akima are piecewise and degrade to a line through 2.
MIN_POINTS = {"cubic": 4, "pchip": 2, "akima": 2}


def ms_ssim_db(value: float | None) -> float | None:
    """MS-SSIM on CompressAI's dB scale: -10 log10(1 - MS-SSIM)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value >= 1:
        return None
    return -10 * math.log10(1 - value)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Shared fraction of the union of two intervals: the bjontegaard package's own definition."""
    inter = min(a.max(), b.max()) - max(a.min(), b.min())
    union = max(a.max(), b.max()) - min(a.min(), b.min())
    return max(inter, 0.0) / union if union > 0 else 0.0


def curve_points(df: pd.DataFrame, rate: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(rate, distortion) of one curve, one point per lambda or quality (repeats averaged), sorted by rate."""
    df = df.dropna(subset=[rate, metric]).assign(point=lambda d: d["lmbda"].fillna(d["quality"]))
    points = df.groupby("point")[[rate, metric]].mean().sort_values(rate)
    return points[rate].to_numpy(float), points[metric].to_numpy(float)


def bd_row(anchor: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], method: str) -> dict[str, Any]:
    """BD-rate (%) and BD-PSNR (dB) of test against anchor, or empty values and the reason."""
    (ra, da), (rt, dt) = anchor, test
    row: dict[str, Any] = {
        "points": len(rt),
        "anchor_points": len(ra),
        "bd_rate_pct": None,
        "bd_psnr_db": None,
        "overlap_dist": None,
        "overlap_rate": None,
        "reason": "",
    }
    need = MIN_POINTS[method]
    if min(len(ra), len(rt)) < need:
        row["reason"] = f"{method} needs >= {need} points per curve (anchor {len(ra)}, curve {len(rt)})"
        return row
    for name, (r, d) in {"anchor": (ra, da), "curve": (rt, dt)}.items():
        if np.any(np.diff(d) <= 0):
            row["reason"] = f"{name} is not monotonic (quality does not rise with rate): no BD value means anything"
            return row
    row["overlap_dist"], row["overlap_rate"] = overlap(da, dt), overlap(np.log10(ra), np.log10(rt))
    reasons = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overlap is reported in its own columns
        if row["overlap_dist"] > 0:
            row["bd_rate_pct"] = float(
                bjontegaard.bd_rate(ra, da, rt, dt, method=method, require_matching_points=False, min_overlap=0)
            )
        else:
            reasons.append("no overlap in quality: no BD-rate")
        if row["overlap_rate"] > 0:
            row["bd_psnr_db"] = float(
                bjontegaard.bd_psnr(ra, da, rt, dt, method=method, require_matching_points=False, min_overlap=0)
            )
        else:
            reasons.append("no overlap in rate: no BD-PSNR")
    if min(row["overlap_dist"], row["overlap_rate"]) < 0.75 and not reasons:
        reasons.append("overlap below 75 %: read with care")
    row["reason"] = "; ".join(reasons)
    return row


def mean_ci95(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """(mean, half-width of the 95 % Student-t interval, n); no interval from a single value."""
    from scipy import stats

    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = float(np.mean(values))
    if n < 2:
        return mean, None, n
    return mean, float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n)), n


def repeated_bd(
    anchor: pd.DataFrame, test: pd.DataFrame, method: str, rate: str, metric: str, paired: bool = False
) -> dict[str, Any]:
    """BD-rate and BD-PSNR of `test` against `anchor` once per seed of `test` (paired: against the anchor's
    run of the same seed, when it has one), as mean, 95 % interval and n. One seed gives one value, no interval."""
    values: dict[str, list[float]] = {"bd_rate_pct": [], "bd_psnr_db": []}
    reasons, overlaps = [], []
    for seed, runs in test.groupby(test["seed"].fillna(-1)):
        base = anchor[anchor["seed"].fillna(-1) == seed] if paired else anchor
        if base.empty:
            reasons.append(f"seed {seed:g}: the anchor has no run of this seed")
            continue
        row = bd_row(curve_points(base, rate, metric), curve_points(runs, rate, metric), method)
        for key in values:
            if row[key] is not None:
                values[key].append(row[key])
        if row["reason"]:
            reasons.append(row["reason"])
        if row["overlap_dist"] is not None:
            overlaps.append(row["overlap_dist"])
    out: dict[str, Any] = {}
    counts = []
    for key, vals in values.items():
        out[key], out[f"{key}_ci95"], n = mean_ci95(vals)
        counts.append(n)
    out["n"] = max(counts)
    out["overlap_dist"] = min(overlaps) if overlaps else None
    out["reason"] = "; ".join(dict.fromkeys(reasons))
    return out


def verdict(mean: float | None, ci: float | None, n: int, better: str, worse: str) -> str:
    """Whether a BD-rate difference is a difference: its 95 % interval must exclude 0."""
    if mean is None:
        return "no value"
    if ci is None:
        return f"{better if mean < 0 else worse} ({n} seed: no interval)"
    if abs(mean) <= ci:
        return f"no difference (95 % interval includes 0, n={n})"
    return f"{better if mean < 0 else worse} (n={n})"
