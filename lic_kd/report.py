"""`python -m lic_kd.report SWEEP_DIR [SWEEP_DIR ...] --name NAME`: the rate-distortion table of every run
and the BD-rate / BD-PSNR of every curve against an anchor, into multirun_reports/NAME/."""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import bjontegaard
import numpy as np
import pandas as pd

from lic_kd import REPO_ROOT
from lic_kd.reference import export_curve, load_reference, safe_name
from lic_kd.results import FAILURE_FILE, RESULTS_FILE, read_results

# The fewest points each interpolation needs to mean something: a cubic through fewer than 4 points is
# underdetermined; pchip and akima are piecewise and degrade to a line through 2.
MIN_POINTS = {"cubic": 4, "pchip": 2, "akima": 2}

RATE_COLUMNS = ["lmbda", "bpp", "bpp_estimated"]  # left out of a report whose runs have no rate (autoencoders)
RD_COLUMNS = [
    "curve", "role", "architecture", "N", "M", "lmbda", "quality", "steps", "bpp", "bpp_estimated", "psnr", "ms_ssim",
    "ms_ssim_db", "encode_s", "decode_s", "params", "kmac_encoder", "kmac_decoder", "n_images", "run_dir",
]
# Columns for the figures and the complexity table that the RD table does not print.
EXTRA_COLUMNS = ["checkpoint", "params_encoder", "params_decoder", "size_mb", "decode_energy_j", "decoder_fps", "decode_peak_mb"]


def ms_ssim_db(value: float | None) -> float | None:
    """MS-SSIM on CompressAI's dB scale: -10 log10(1 - MS-SSIM)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value >= 1:
        return None
    return -10 * math.log10(1 - value)


def find_runs(sweep_dirs: Sequence[Path]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Every results.json under the sweep dirs, and every run directory (Hydra's `.hydra/` marks one)
    that has none, with the reason read from its log when there is one."""
    results, missing = [], []
    for sweep in sweep_dirs:
        if not sweep.is_dir():
            raise FileNotFoundError(f"sweep directory does not exist: {sweep}")
        run_dirs = sorted({p.parent for p in sweep.rglob(".hydra")} | {p.parent for p in sweep.rglob(RESULTS_FILE)})
        for run_dir in run_dirs:
            path = run_dir / RESULTS_FILE
            if path.is_file():
                try:
                    results.append(read_results(path))
                except json.JSONDecodeError as err:
                    missing.append({"run_dir": str(run_dir), "reason": f"unreadable {RESULTS_FILE}: {err}"})
            else:
                missing.append({"run_dir": str(run_dir), "reason": failure_reason(run_dir)})
    return results, missing


def failure_reason(run_dir: Path) -> str:
    """The error a failed run recorded, else the last error line it logged (Hydra's job log or submitit's
    stderr), else what is there."""
    if (run_dir / FAILURE_FILE).is_file():
        return f"failed: {read_results(run_dir / FAILURE_FILE)['error']}"
    logs = sorted(run_dir.glob("*.log")) + sorted(run_dir.parent.glob(".submitit/*/*.err")) + sorted(run_dir.glob(".submitit/*/*.err"))
    for log in logs:
        lines = [l for l in log.read_text(errors="replace").splitlines() if "Error" in l or "error" in l]
        if lines:
            return f"no {RESULTS_FILE}; {log.name}: {lines[-1].strip()[:300]}"
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return f"no {RESULTS_FILE}: training stopped after a checkpoint (re-run the same command to resume)"
    return f"no {RESULTS_FILE}: the run did not finish"


def curve_label(run: dict[str, Any]) -> str:
    if run["role"] == "codec":
        return run["architecture"]
    if run["role"] == "reference":  # published: kept apart from our own run of the same codec
        return f"{run['architecture']} [ref]"
    arch = "" if run["architecture"] == "ScaleHyperprior" else f"{run['architecture']}-"
    role = "kd-hybrid" if run.get("kd_variant") == "hybrid" else run["role"]
    return f"{role}-{arch}N{run['N']}" + (f"-M{run['M']}" if run.get("M") is not None else "")


def curve_settings(run: dict[str, Any]) -> dict[str, Any]:
    """What besides role and width makes a run's curve: KD weights, the objective's metric, the z teacher."""
    teacher = run.get("teacher") or {}
    return {**(run.get("loss_weights") or {}), **{k: v for k, v in (run.get("objective") or {}).items() if k != "lmbda"},
            **{k: teacher[k] for k in ("z_checkpoint", "z_lmbda") if teacher.get(k) is not None}}


def rd_table(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in results:
        run, m = r["run"], r["metrics"]
        rows.append({
            **{k: run.get(k) for k in ("role", "architecture", "N", "M", "lmbda", "quality", "steps", "run_dir")},
            "curve": curve_label(run),
            "weights": json.dumps(curve_settings(run), sort_keys=True),
            **{k: m.get(k) for k in ("bpp", "bpp_estimated", "psnr", "ms_ssim", "encode_s", "decode_s", "n_images")},
            "ms_ssim_db": ms_ssim_db(m.get("ms_ssim")),
            "params": r.get("params"),
            "checkpoint": run.get("checkpoint"),
            **{k: (r.get("complexity") or {}).get(k) for k in ("params_encoder", "params_decoder", "size_mb")},
            "kmac_encoder": (r.get("complexity") or {}).get("kmac_per_pixel_encoder"),
            "kmac_decoder": (r.get("complexity") or {}).get("kmac_per_pixel_decoder"),
            "decode_energy_j": (r.get("energy") or {}).get("decode_j"),
            "decoder_fps": (r.get("latency") or {}).get("decoder_fps"),
            "decode_peak_mb": ((r.get("memory") or {}).get("decode_peak_bytes") or float("nan")) / 1e6,
        })
    df = pd.DataFrame(rows, columns=RD_COLUMNS + EXTRA_COLUMNS + ["weights"])
    # Runs of one role and width but different KD weights are different curves.
    for label, group in df.groupby("curve"):
        if group["weights"].nunique() > 1:  # name each curve by the weights in which it differs
            weights = group["weights"].map(json.loads)
            differ = sorted({k for w in weights for k in w if len({json.dumps(x.get(k)) for x in weights}) > 1})
            df.loc[group.index, "curve"] = label + " " + weights.map(lambda w: ",".join(f"{k}={w.get(k)}" for k in differ))
    return df.drop(columns="weights").sort_values(["curve", "lmbda", "quality", "bpp"], ignore_index=True)


def table_columns(rd: pd.DataFrame) -> list[str]:
    """The RD table's columns, less the rate columns when no run has a rate (an autoencoder report)."""
    return [c for c in RD_COLUMNS if not (c in RATE_COLUMNS and rd[c].isna().all())]


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
    row: dict[str, Any] = {"points": len(rt), "anchor_points": len(ra), "bd_rate_pct": None, "bd_psnr_db": None,
                           "overlap_dist": None, "overlap_rate": None, "reason": ""}
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
            row["bd_rate_pct"] = float(bjontegaard.bd_rate(ra, da, rt, dt, method=method, require_matching_points=False, min_overlap=0))
        else:
            reasons.append("no overlap in quality: no BD-rate")
        if row["overlap_rate"] > 0:
            row["bd_psnr_db"] = float(bjontegaard.bd_psnr(ra, da, rt, dt, method=method, require_matching_points=False, min_overlap=0))
        else:
            reasons.append("no overlap in rate: no BD-PSNR")
    if min(row["overlap_dist"], row["overlap_rate"]) < 0.75 and not reasons:
        reasons.append("overlap below 75 %: read with care")
    row["reason"] = "; ".join(reasons)
    return row


RATE_GAP = 0.10  # bitstream over estimate beyond headers and coder overhead: the two disagree


def rate_warnings(rd: pd.DataFrame) -> list[str]:
    """Runs whose bitstream rate exceeds the entropy model's own estimate by more than RATE_GAP (and 0.01 bpp):
    the coder and the forward pass that trained the model disagree."""
    rows = rd.dropna(subset=["bpp", "bpp_estimated"])
    rows = rows[(rows["bpp"] > (1 + RATE_GAP) * rows["bpp_estimated"]) & (rows["bpp"] - rows["bpp_estimated"] > 0.01)]
    return [f"{r.curve}{'' if pd.isna(r.lmbda) else f' (lmbda={r.lmbda:g})'}: bitstream {r.bpp:.4f} bpp is {r.bpp / r.bpp_estimated - 1:+.0%} over the "
            f"estimate {r.bpp_estimated:.4f}: its coder and its forward pass disagree (e.g. an undertrained "
            f"autoregressive context model); read its point with care" for r in rows.itertuples()]


def default_anchor(df: pd.DataFrame) -> str | None:
    """The teacher curve (the widest one when there are several), else None."""
    teachers = df[df["role"] == "teacher"]
    if teachers.empty:
        return None
    return teachers.sort_values(["N", "M"]).iloc[-1]["curve"]


def bd_table(df: pd.DataFrame, anchor: str | None, method: str = "pchip", rate: str = "bpp", metric: str = "psnr") -> pd.DataFrame:
    columns = ["curve", "anchor", "method", "rate", "metric", "points", "anchor_points", "bd_rate_pct", "bd_psnr_db",
               "overlap_dist", "overlap_rate", "delta_quality", "reason"]
    if method not in MIN_POINTS:
        raise ValueError(f"method must be one of {sorted(MIN_POINTS)}, got {method!r}")
    curves = list(dict.fromkeys(df["curve"]))
    if anchor is not None and anchor not in curves:
        raise ValueError(f"anchor {anchor!r} is not a curve of this report; curves: {', '.join(curves)}")
    # Autoencoders (no entropy model: no bpp at all) are compared among themselves, against their widest
    # teacher; codecs against the anchor. A codec lacking only the chosen rate column still goes to bd_row.
    no_rate = {c for c in curves if df.loc[df["curve"] == c, "bpp"].isna().all()}
    anchors = {group: anchor if anchor is not None and (anchor in no_rate) == group
               else default_anchor(df[df["curve"].isin(no_rate) == group]) for group in (False, True)}
    rows = []
    for c in curves:
        a = anchors[c in no_rate]
        if c == a:
            continue
        row = {"curve": c, "anchor": a, "method": method, "rate": rate, "metric": metric}
        if a is None:
            row["reason"] = "no anchor: no teacher runs of this kind; name one with --anchor"
        elif c in no_rate:  # the plain difference in quality is what there is without a rate
            row["delta_quality"] = df.loc[df["curve"] == c, metric].mean() - df.loc[df["curve"] == a, metric].mean()
            row["reason"] = f"no rate (no entropy model): delta_quality is the difference of mean {metric}"
        else:
            row |= bd_row(curve_points(df[df["curve"] == a], rate, metric), curve_points(df[df["curve"] == c], rate, metric), method)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def to_markdown(df: pd.DataFrame, title: str, missing: Sequence[dict[str, str]] = ()) -> str:
    text = f"# {title}\n\n" + (df.to_markdown(index=False, floatfmt=".4g") if not df.empty else "(no runs)") + "\n"
    if missing:
        text += "\n## Runs without results\n\n" + pd.DataFrame(missing).to_markdown(index=False) + "\n"
    return text


def write_report(sweep_dirs: Sequence[Path], name: str, out_root: Path = Path("multirun_reports"), anchor: str | None = None,
                 method: str = "pchip", rate: str = "bpp", metric: str = "psnr", references: Sequence[Path] = (),
                 figures: bool = True, images_dir: Path = REPO_ROOT / "data" / "kodak") -> Path:
    results, missing = find_runs(sweep_dirs)
    for path in references:
        results += load_reference(path)
    if not results and not missing:
        raise FileNotFoundError(f"no runs ({RESULTS_FILE} or .hydra/) under {', '.join(map(str, sweep_dirs))}")
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    rd = rd_table(results)
    bd = bd_table(rd, anchor or default_anchor(rd), method, rate, metric)
    columns = table_columns(rd)
    rd[columns].to_csv(out / "rd_table.csv", index=False)
    bd.to_csv(out / "bd_rate.csv", index=False)
    pd.DataFrame(missing, columns=["run_dir", "reason"]).to_csv(out / "missing_runs.csv", index=False)
    warned = rate_warnings(rd)
    warnings_md = "".join(["\n## Warnings\n\n", *(f"- {w}\n" for w in warned)]) if warned else ""
    (out / "rd_table.md").write_text(to_markdown(rd[columns].drop(columns="run_dir"), f"Rate-distortion: {name}", missing) + warnings_md)
    complexity = complexity_table(rd)
    complexity.to_csv(out / "complexity.csv", index=False)
    (out / "bd_rate.md").write_text(to_markdown(bd, f"BD-rate ({method}, {rate} vs {metric}): {name}"))
    for curve, points in rd[(rd["role"] != "reference") & rd["bpp"].notna()].groupby("curve"):
        export_curve(points, curve, out / "curves" / f"{safe_name(curve)}.json", f"lic_kd report {name}: Kodak, real bitstream bpp")
    if figures:
        write_figures(rd, bd, complexity, missing, out, name, images_dir, warnings_md)
    return out


def complexity_table(rd: pd.DataFrame) -> pd.DataFrame:
    """One row per learned architecture (role, N, M): size, compute and speed."""
    learned = rd[rd["role"].isin(["teacher", "student", "kd"])]
    columns = ["params", "params_encoder", "params_decoder", "size_mb", "kmac_encoder", "kmac_decoder", "encode_s", "decode_s",
               "decoder_fps", "decode_peak_mb", "decode_energy_j"]
    if learned.empty:
        return pd.DataFrame(columns=["curve", "role", "N", "M"] + columns)
    table = learned.groupby(["curve", "role", "N", "M"], sort=False)[columns].mean().reset_index()
    return table.sort_values(["N", "role"], ascending=[False, True], ignore_index=True)


def write_figures(rd: pd.DataFrame, bd: pd.DataFrame, complexity: pd.DataFrame, missing: Sequence[dict[str, str]],
                  out: Path, name: str, images_dir: Path, warnings_md: str = "") -> None:
    """The figures, and report.md that shows every table and figure."""
    from lic_kd import figures

    rated = rd["bpp"].notna().any()
    unrated = rd[rd["role"].isin(["teacher", "student", "kd"]) & rd["bpp"].isna()]
    made = {"rd_curves.png": rated}
    if rated:
        figures.rd_curves(rd, out / "rd_curves.png")
    made["quality_vs_kmac.png"] = not unrated.empty and figures.quality_vs_complexity(unrated, out / "quality_vs_kmac.png")
    made["bd_rate_vs_kmac.png"] = figures.bd_vs_complexity(bd, rd, out / "bd_rate_vs_kmac.png")
    made["complexity_vs_width.png"] = figures.complexity_vs_width(rd, out / "complexity_vs_width.png")
    images = {p.name: p for p in images_dir.glob("*")} if images_dir.is_dir() else {}
    made["visual_comparison.png"] = figures.visual_comparison(rd, images, out / "visual_comparison.png")
    sections = [f"# lic_kd report: {name}\n"]
    if rated:
        sections += ["Bitrates are real: 8 x bytes of each coded file / original pixels, averaged over images.\n",
                     "## Rate-distortion curves\n", "![RD curves](rd_curves.png)\n",
                     "## BD-rate against decoder complexity\n",
                     "![BD-rate vs kMAC](bd_rate_vs_kmac.png)\n" if made["bd_rate_vs_kmac.png"] else "(no curve has a BD-rate value: see the table)\n",
                     bd.to_markdown(index=False, floatfmt=".4g") + "\n"]
    if made["quality_vs_kmac.png"]:
        sections += ["## Autoencoders (no entropy model, no rate): quality against decoder complexity\n",
                     "![quality vs kMAC](quality_vs_kmac.png)\n",
                     bd.dropna(subset=["delta_quality"])[["curve", "anchor", "metric", "delta_quality"]].to_markdown(index=False, floatfmt=".4g") + "\n"]
    sections += [
        "## Complexity\n", complexity.to_markdown(index=False, floatfmt=".4g") + "\n",
        "![complexity vs width](complexity_vs_width.png)\n" if made["complexity_vs_width.png"] else "",
        "## Visual comparison\n",
        "![visual comparison](visual_comparison.png)\n" if made["visual_comparison.png"] else "(no decodable run for the chosen image)\n",
        "## All runs\n", rd[table_columns(rd)].drop(columns="run_dir").to_markdown(index=False, floatfmt=".4g") + "\n",
    ]
    if missing:
        sections += ["## Runs without results\n", pd.DataFrame(missing).to_markdown(index=False) + "\n"]
    (out / "report.md").write_text("\n".join(sections) + warnings_md)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lic_kd.report", description=__doc__)
    parser.add_argument("sweep_dirs", nargs="*", type=Path, help="sweep (or run) directories to aggregate (also codec outputs)")
    parser.add_argument("--name", required=True, help="report name: writes multirun_reports/NAME/")
    parser.add_argument("--out-root", type=Path, default=Path("multirun_reports"))
    parser.add_argument("--anchor", default=None, help="curve label to compare against (default: the teacher curve)")
    parser.add_argument("--method", default="pchip", choices=sorted(MIN_POINTS), help="BD interpolation")
    parser.add_argument("--rate", default="bpp", choices=["bpp", "bpp_estimated"], help="bitstream or estimated bpp")
    parser.add_argument("--metric", default="psnr", choices=["psnr", "ms_ssim_db"])
    parser.add_argument("--reference", type=Path, nargs="*", default=[], metavar="JSON",
                        help="published curves in CompressAI's results format, added as named curves (anchors)")
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    parser.add_argument("--images", type=Path, default=REPO_ROOT / "data" / "kodak", help="evaluation images (visual comparison)")
    args = parser.parse_args(argv)
    try:
        out = write_report(args.sweep_dirs, args.name, args.out_root, args.anchor, args.method, args.rate, args.metric,
                           args.reference, not args.no_figures, args.images)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print((out / "rd_table.md").read_text())
    print((out / "bd_rate.md").read_text())
    print(f"report written to {out}/")


if __name__ == "__main__":
    main()
