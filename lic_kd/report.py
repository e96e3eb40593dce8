"""`python -m lic_kd.report SWEEP_DIR [SWEEP_DIR ...] --name NAME`: the rate-distortion table of every run
and the BD-rate / BD-PSNR of every curve against an anchor, into multirun_reports/NAME/."""

from __future__ import annotations

import argparse
import hashlib
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
from lic_kd.errors import ConfigError, run_cli

# The fewest points each interpolation needs to mean something: a cubic through fewer than 4 points is
# underdetermined; pchip and akima are piecewise and degrade to a line through 2.
MIN_POINTS = {"cubic": 4, "pchip": 2, "akima": 2}

RATE_COLUMNS = ["lmbda", "bpp", "bpp_payload", "bpp_estimated"]  # left out of a report whose runs have no rate (autoencoders)
RD_COLUMNS = [
    "curve", "role", "architecture", "N", "M", "init", "lmbda", "quality", "steps", "seed", "bpp", "bpp_payload", "bpp_estimated", "psnr", "ms_ssim",
    "ms_ssim_db", "encode_s", "decode_s", "params", "kmac_encoder", "kmac_decoder", "n_images", "run_dir",
]
# Columns for the figures and the complexity table that the RD table does not print.
EXTRA_COLUMNS = ["prune_keep", "quant", "weight_bits", "model_bytes", "checkpoint", "params_encoder", "params_decoder", "size_mb", "decode_energy_j", "decoder_fps", "decode_peak_mb"]


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
            raise ConfigError(f"sweep directory does not exist: {sweep}")
        run_dirs = sorted({p.parent for p in sweep.rglob(".hydra")} | {p.parent for p in sweep.rglob(RESULTS_FILE)})
        # students trained together (student.N=[...]) are run dirs inside their group's: the group is not one
        run_dirs = [d for d in run_dirs if not any(o != d and d in o.parents for o in run_dirs)]
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
        failure = read_results(run_dir / FAILURE_FILE)
        if failure.get("diverged"):
            d = failure["diverged"]
            last = "" if d.get("last_finite_loss") is None else f", last finite loss {d['last_finite_loss']:.6g}"
            return f"diverged at batch {d['batch']}: {d['what']} (lr {d.get('lr'):g}{last}): not evaluated"
        return f"failed: {failure['error']}"
    logs = sorted(run_dir.glob("*.log")) + sorted(run_dir.parent.glob(".submitit/*/*.err")) + sorted(run_dir.glob(".submitit/*/*.err"))
    for log in logs:
        lines = [l for l in log.read_text(errors="replace").splitlines() if "Error" in l or "error" in l]
        if lines:
            return f"no {RESULTS_FILE}; {log.name}: {lines[-1].strip()[:300]}"
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return f"no {RESULTS_FILE}: training stopped after a checkpoint (re-run the same command to resume)"
    return f"no {RESULTS_FILE}: the run did not finish"


def quant_label(quant: dict[str, Any] | None) -> str | None:
    """ptq-w8a8-decoder: how a fixed-point run got there, its weight and activation bits, and where."""
    return None if not quant else f"{quant['mode']}-w{quant['weight_bits']}a{quant['activation_bits']}-{quant['parts']}"


def curve_label(run: dict[str, Any]) -> str:
    if run["role"] == "codec":
        return run["architecture"]
    if run["role"] == "reference":  # published: kept apart from our own run of the same codec
        return f"{run['architecture']} [ref]"
    arch = "" if run["architecture"] == "ScaleHyperprior" else f"{run['architecture']}-"
    role = "kd-hybrid" if run.get("kd_variant") == "hybrid" else run["role"]
    if run.get("prune"):  # a pruned copy of its teacher: a curve of its own
        role = f"pruned{run['prune']['keep']:g}-{role}"
    if run.get("quant"):  # fixed point: a curve of its own
        role = f"{quant_label(run['quant'])}-{role}"
    if run.get("N") is None:  # a network without widths (learned JPEG): its architecture names it
        return f"{role}-{run['architecture']}"
    return f"{role}-{arch}N{run['N']}" + (f"-M{run['M']}" if run.get("M") is not None else "")


def _init_label(init: str | None) -> str:
    """random, teacher, or the checkpoint a run started from (a fine-tuned ladder rung: its base run)."""
    return init if init in (None, "random", "teacher") else Path(str(init)).name


def curve_settings(run: dict[str, Any]) -> dict[str, Any]:
    """What besides role and width makes a run's curve: everything in its configuration that can change its
    result but lambda and seed (results.json's run.settings). Seeds are repeats of one curve, not curves of
    their own. Runs recorded before run.settings existed: the settings they recorded."""
    if run.get("settings") is not None:
        return dict(run["settings"])
    teacher = run.get("teacher") or {}
    return {**(run.get("loss_weights") or {}), **{k: v for k, v in (run.get("objective") or {}).items() if k != "lmbda"},
            **{k: teacher[k] for k in ("z_checkpoint", "z_lmbda") if teacher.get(k) is not None},
            **{f"model.{k}": v for k, v in (run.get("model_options") or {}).items()},
            **({"quant.rounding": run["quant"]["rounding"]} if run.get("quant") else {}),
            "init": _init_label(run.get("init")) or "random", "steps": run.get("steps_planned", run.get("steps"))}


def pairing_settings(run: dict[str, Any]) -> dict[str, Any]:
    """A KD student's settings less what makes it KD (its role, its loss, a teacher used only for the KD
    terms): equal to its plain partner's, which trained the same network on the same data, budget and objective."""
    settings = curve_settings(run)
    if run.get("settings") is None:  # recorded before run.settings: the legacy pairing keys
        keep = ("steps",) + tuple(k for k in settings if k.startswith("model.") or k in ("init", "metric", "quant.rounding"))
        return {k: settings[k] for k in keep if k in settings}
    uses_teacher_weights = settings.get("student.init") == "teacher" or any(k.startswith("prune.") for k in settings)
    return {k: v for k, v in settings.items() if k != "role" and not k.startswith("loss.")
            and (uses_teacher_weights or not k.startswith("teacher."))}


def short_value(value: Any) -> str:
    """A setting as a curve label shows it: paths by their last part, lists joined with +."""
    if isinstance(value, list):
        return "+".join(short_value(v) for v in value)
    if isinstance(value, str) and "/" in value:
        return Path(value).name or value
    return f"{value:g}" if isinstance(value, float) else str(value)


def label_key(key: str) -> str:
    """A setting's name in a label: the KD loss's and the student's own keys without their group."""
    return key.removeprefix("loss.").removeprefix("student.")


def distinct_labels(base: str, settings: Sequence[dict[str, Any]]) -> list[str]:
    """Labels for curves that share `base` (role and width): base plus the settings in which they differ,
    shortened; a short hash where shortening would merge two."""
    keys = sorted({k for s in settings for k in s if len({json.dumps(x.get(k), sort_keys=True) for x in settings}) > 1})
    keys = [k for k in keys if not (k.endswith("_sha256") and k.removesuffix("_sha256") in keys)]  # the path says it
    labels = [base + " " + ",".join(f"{label_key(k)}={short_value(s.get(k))}" for k in keys) for s in settings]
    by_label: dict[str, set[str]] = {}
    for label, s in zip(labels, settings):
        by_label.setdefault(label, set()).add(json.dumps(s, sort_keys=True))
    return [label + (f" #{hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:6]}" if len(by_label[label]) > 1 else "")
            for label, s in zip(labels, settings)]


def rd_table(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in results:
        run, m = r["run"], r["metrics"]
        rows.append({
            **{k: run.get(k) for k in ("role", "architecture", "N", "M", "lmbda", "quality", "steps", "seed", "run_dir")},
            "init": _init_label(run.get("init")),
            "prune_keep": (run.get("prune") or {}).get("keep"),
            "weight_bits": (run.get("quant") or {}).get("weight_bits"),
            "quant": quant_label(run.get("quant")),
            "model_bytes": (r.get("complexity") or {}).get("model_bytes"),
            "curve": curve_label(run),
            "settings": json.dumps(curve_settings(run), sort_keys=True),
            "pair_key": json.dumps(pairing_settings(run), sort_keys=True),
            **{k: m.get(k) for k in ("bpp", "bpp_estimated", "psnr", "ms_ssim", "encode_s", "decode_s", "n_images")},
            # the entropy coder's strings alone, as CompressAI's eval_model counts; a file's own size for the
            # classical codecs and the published number for references (their payload is what they report)
            "bpp_payload": m.get("bpp_payload", m.get("bpp") if run["role"] in ("codec", "reference") else None),
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
    df = pd.DataFrame(rows, columns=RD_COLUMNS + EXTRA_COLUMNS + ["settings", "pair_key"])
    # Runs of one role and width that differ in any setting are different curves, named by what differs.
    for label, group in df.groupby("curve"):
        if group["settings"].nunique() > 1:
            df.loc[group.index, "curve"] = distinct_labels(label, list(group["settings"].map(json.loads)))
    return df.sort_values(["curve", "lmbda", "quality", "bpp"], ignore_index=True)


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


LEARNED_JPEG = "LearnedJPEG"  # its curves are compared with Pillow's JPEG at the standard tables
JPEG_ANCHOR = "JPEG"


def default_anchor(df: pd.DataFrame) -> str | None:
    """The teacher curve (the widest one when there are several); without teachers, in a report of learned
    JPEG runs, Pillow's JPEG at its standard tables; else None."""
    teachers = df[df["role"] == "teacher"]
    if teachers.empty:
        learned_jpeg = "architecture" in df and (df["architecture"] == LEARNED_JPEG).any()
        return JPEG_ANCHOR if learned_jpeg and (df["curve"] == JPEG_ANCHOR).any() else None
    return teachers.sort_values(["N", "M"]).iloc[-1]["curve"]


def comparison_rate(df: pd.DataFrame, curves: Sequence[str], rate: str) -> tuple[str, str]:
    """The rate column for comparing `curves`: against a published CompressAI curve, the bitstream's payload
    (the entropy coder's strings, as eval_model counts it) instead of the file with lic_kd's header. Returns
    (column, a note when the payload was not recorded and the file's bpp stands in)."""
    rows = df[df["curve"].isin(curves)]
    if rate != "bpp" or not (rows["role"] == "reference").any():
        return rate, ""
    if rows["bpp_payload"].isna().any():
        return rate, "payload not recorded (results written before bpp_payload): file bpp against a published curve"
    return "bpp_payload", ""


def bd_table(df: pd.DataFrame, anchor: str | None, method: str = "pchip", rate: str = "bpp", metric: str = "psnr") -> pd.DataFrame:
    columns = ["curve", "anchor", "method", "rate", "metric", "points", "anchor_points", "bd_rate_pct", "bd_psnr_db",
               "overlap_dist", "overlap_rate", "delta_quality", "reason"]
    if method not in MIN_POINTS:
        raise ConfigError(f"method must be one of {sorted(MIN_POINTS)}, got {method!r}")
    curves = list(dict.fromkeys(df["curve"]))
    if anchor is not None and anchor not in curves:
        raise ConfigError(f"anchor {anchor!r} is not a curve of this report; curves: {', '.join(curves)}")
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
            pair_rate, note = comparison_rate(df, [a, c], rate)
            row["rate"] = pair_rate
            row |= bd_row(curve_points(df[df["curve"] == a], pair_rate, metric), curve_points(df[df["curve"] == c], pair_rate, metric), method)
            row["reason"] = "; ".join(r for r in (row["reason"], note) if r)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


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


def repeated_bd(anchor: pd.DataFrame, test: pd.DataFrame, method: str, rate: str, metric: str, paired: bool = False) -> dict[str, Any]:
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


def bd_with_repeats(df: pd.DataFrame, bd: pd.DataFrame, method: str, rate: str, metric: str) -> pd.DataFrame:
    """The BD table's values as mean, 95 % interval and n over the seeds of each curve (against the anchor's
    mean curve): repeats of one configuration are grouped, not treated as separate curves."""
    rows = []
    for row in bd.itertuples():
        if row.anchor is None or pd.isna(row.anchor) or df.loc[df["curve"] == row.curve, "bpp"].isna().all():
            continue
        rows.append({"curve": row.curve, "anchor": row.anchor,
                     **repeated_bd(df[df["curve"] == row.anchor], df[df["curve"] == row.curve], method, rate, metric)})
    columns = ["curve", "anchor", "n", "bd_rate_pct", "bd_rate_pct_ci95", "bd_psnr_db", "bd_psnr_db_ci95", "overlap_dist", "reason"]
    return pd.DataFrame(rows, columns=columns)


def codec_comparison(df: pd.DataFrame, method: str, rate: str, curves: Sequence[str] | None = None,
                     codecs: Sequence[str] | None = None) -> pd.DataFrame:
    """BD-rate of every teacher curve (or of `curves`) against every classical codec measured in the same report
    (or `codecs`; same images, real files): the credibility check of a learned codec. PSNR and MS-SSIM (dB)."""
    rows = []
    learned = list(dict.fromkeys(df.loc[df["role"] == "teacher", "curve"])) if curves is None else list(curves)
    codecs = list(dict.fromkeys(df.loc[df["role"] == "codec", "curve"])) if codecs is None else list(codecs)
    for curve in learned:
        for codec in codecs:
            row = {"curve": curve, "anchor": codec}
            for metric, tag in (("psnr", "psnr"), ("ms_ssim_db", "ms_ssim")):
                bd = bd_row(curve_points(df[df["curve"] == codec], rate, metric), curve_points(df[df["curve"] == curve], rate, metric), method)
                row |= {f"bd_rate_pct_{tag}": bd["bd_rate_pct"], f"overlap_{tag}": bd["overlap_dist"]}
                if bd["reason"]:
                    row[f"reason_{tag}"] = bd["reason"]
            rows.append(row)
    columns = ["curve", "anchor", "bd_rate_pct_psnr", "overlap_psnr", "bd_rate_pct_ms_ssim", "overlap_ms_ssim", "reason_psnr", "reason_ms_ssim"]
    return pd.DataFrame(rows, columns=columns)


def distillation_table(df: pd.DataFrame, teacher: str | None, method: str, rate: str, metric: str) -> pd.DataFrame:
    """What distillation buys, per width: each KD curve against the plain student that matches it in everything
    but the role and the KD loss (network, initialisation, data, budget, objective, optimizer: rd_table's
    pair_key), paired seed by seed (same data, same batches), beside what the width saves against the teacher
    (decoder kMAC/px, parameters, decode fps). BD-rate < 0: KD saves rate. A KD curve with no such partner is
    listed with the reason, never paired with a student trained otherwise."""
    # frugal settings (pruning, word lengths) are part of the pairing; a table without them has none
    learned = df[df["role"].isin(["student", "kd"])].reindex(columns=[*df.columns, *(c for c in ("prune_keep", "quant") if c not in df)])
    if "pair_key" not in learned:  # a table built without run settings: pair on the shown keys
        learned = learned.assign(pair_key=learned[["architecture", "N", "M", "init", "prune_keep", "quant", "steps"]]
                                 .apply(lambda r: "|".join(map(str, r)), axis=1))
    t_rows = df[df["curve"] == teacher] if teacher is not None else df.iloc[0:0]
    t_kmac = t_rows["kmac_decoder"].mean() if not t_rows.empty else float("nan")
    t_params = t_rows["params"].mean() if not t_rows.empty else float("nan")
    t_fps = t_rows["decoder_fps"].mean() if not t_rows.empty else float("nan")
    rows = []
    keys = ["architecture", "N", "M", "init", "prune_keep", "quant", "steps"]
    for kd_curve, kd in learned[learned["role"] == "kd"].groupby("curve", sort=True):
        plain = learned[(learned["role"] == "student") & learned["pair_key"].isin(set(kd["pair_key"]))]
        row = {k: kd[k].iloc[0] for k in keys} | {"kd_curve": kd_curve, "plain_curve": plain["curve"].iloc[0] if not plain.empty else None}
        if plain.empty:
            rows.append(row | {"verdict": "no plain student trained the same way (network, init, data, budget, objective) to pair with"})
            continue
        paired = repeated_bd(plain, kd, method, rate, metric, paired=True)
        row |= {"n": paired["n"], "bd_rate_kd_vs_plain_pct": paired["bd_rate_pct"], "ci95": paired["bd_rate_pct_ci95"],
                "bd_psnr_kd_vs_plain_db": paired["bd_psnr_db"], "bd_psnr_ci95": paired["bd_psnr_db_ci95"],
                "verdict": verdict(paired["bd_rate_pct"], paired["bd_rate_pct_ci95"], paired["n"], "KD saves rate", "KD costs rate"),
                "reason": paired["reason"]}
        if not t_rows.empty:
            row["bd_rate_plain_vs_teacher_pct"] = repeated_bd(t_rows, plain, method, rate, metric)["bd_rate_pct"]
            row["bd_rate_kd_vs_teacher_pct"] = repeated_bd(t_rows, kd, method, rate, metric)["bd_rate_pct"]
        kmac, params, fps = kd["kmac_decoder"].mean(), kd["params"].mean(), kd["decoder_fps"].mean()
        row |= {"kmac_decoder": kmac, "teacher_kmac_ratio": t_kmac / kmac if kmac else None, "params": params,
                "teacher_params_ratio": t_params / params if params else None, "decoder_fps": fps,
                "fps_vs_teacher": fps / t_fps if t_fps else None}
        rows.append(row)
    columns = keys + ["kd_curve", "plain_curve", "n", "bd_rate_kd_vs_plain_pct", "ci95", "bd_psnr_kd_vs_plain_db", "bd_psnr_ci95",
                      "verdict", "bd_rate_plain_vs_teacher_pct", "bd_rate_kd_vs_teacher_pct", "kmac_decoder", "teacher_kmac_ratio",
                      "params", "teacher_params_ratio", "decoder_fps", "fps_vs_teacher", "reason"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["architecture", "N", "kd_curve"], ignore_index=True) if not table.empty else table


def learned_jpeg_table(rd: pd.DataFrame, results: Sequence[dict[str, Any]], method: str, rate: str) -> pd.DataFrame:
    """Each learned-JPEG curve against Pillow's JPEG at the standard tables (PSNR and MS-SSIM BD-rates), with
    how well its rate proxy tracked the real file sizes: Pearson r over all its coded images."""
    curves = list(dict.fromkeys(rd.loc[rd["architecture"] == LEARNED_JPEG, "curve"]))
    if not curves or not (rd["curve"] == JPEG_ANCHOR).any():
        return pd.DataFrame()
    table = codec_comparison(rd, method, rate, curves, [JPEG_ANCHOR])
    by_dir = {r["run"].get("run_dir"): r for r in results}
    for i, curve in enumerate(table["curve"]):
        rows = [row for d in rd.loc[rd["curve"] == curve, "run_dir"] for row in by_dir.get(d, {}).get("images", [])]
        real, proxy = np.array([r["bpp"] for r in rows]), np.array([r["bpp_estimated"] for r in rows])
        table.loc[i, "proxy_pearson_r"] = float(np.corrcoef(real, proxy)[0, 1]) if len(rows) > 2 else None
        table.loc[i, "proxy_over_real"] = float(np.mean(proxy / real)) if rows else None
        table.loc[i, "images"] = len(rows)
    return table


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
        raise ConfigError(f"no runs ({RESULTS_FILE} or .hydra/) under {', '.join(map(str, sweep_dirs))}")
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
    extra = {
        "bd_repeats": bd_with_repeats(rd, bd, method, rate, metric),
        "teacher_vs_codecs": codec_comparison(rd, method, rate),
        "learned_jpeg_vs_jpeg": learned_jpeg_table(rd, results, method, rate),
        "distillation": distillation_table(rd, anchor or default_anchor(rd), method, rate, metric),
    }
    for table_name, table in extra.items():
        table.to_csv(out / f"{table_name}.csv", index=False)
    for curve, points in rd[(rd["role"] != "reference") & rd["bpp"].notna()].groupby("curve"):
        export_curve(points, curve, out / "curves" / f"{safe_name(curve)}.json", f"lic_kd report {name}: Kodak, real bitstream bpp")
    if figures:
        write_figures(rd, bd, complexity, missing, out, name, images_dir, warnings_md, extra)
    return out


def complexity_table(rd: pd.DataFrame) -> pd.DataFrame:
    """One row per learned curve (role, N, M, and its pruning or word lengths): size, compute and speed;
    `weight_bits` is empty for float networks, `model_bytes` is the size at the stored word lengths."""
    learned = rd[rd["role"].isin(["teacher", "student", "kd"])]
    columns = ["params", "params_encoder", "params_decoder", "size_mb", "weight_bits", "model_bytes", "kmac_encoder", "kmac_decoder",
               "encode_s", "decode_s", "decoder_fps", "decode_peak_mb", "decode_energy_j"]
    if learned.empty:
        return pd.DataFrame(columns=["curve", "role", "N", "M"] + columns)
    table = learned.groupby(["curve", "role", "N", "M"], sort=False)[columns].mean().reset_index()
    return table.sort_values(["N", "role"], ascending=[False, True], ignore_index=True)


def write_figures(rd: pd.DataFrame, bd: pd.DataFrame, complexity: pd.DataFrame, missing: Sequence[dict[str, str]],
                  out: Path, name: str, images_dir: Path, warnings_md: str = "", extra: dict[str, pd.DataFrame] | None = None) -> None:
    """The figures, and report.md that shows every table and figure."""
    from lic_kd import figures

    rated = rd["bpp"].notna().any()
    unrated = rd[rd["role"].isin(["teacher", "student", "kd"]) & rd["bpp"].isna()]
    made = {"rd_curves.png": rated}
    if rated:
        figures.rd_curves(rd, out / "rd_curves.png")
    made["quality_vs_kmac.png"] = not unrated.empty and figures.quality_vs_complexity(unrated, out / "quality_vs_kmac.png")
    made["bd_rate_vs_kmac.png"] = figures.bd_vs_complexity(bd, rd, out / "bd_rate_vs_kmac.png")
    quantized = "quant" in rd and rd["quant"].notna().any()  # word lengths differ: size in bytes is the cost axis
    made["bd_rate_vs_bytes.png"] = quantized and figures.bd_vs_complexity(bd, rd, out / "bd_rate_vs_bytes.png", "model_bytes")
    made["complexity_vs_width.png"] = figures.complexity_vs_width(rd, out / "complexity_vs_width.png")
    images = {p.name: p for p in images_dir.glob("*")} if images_dir.is_dir() else {}
    made["visual_comparison.png"] = figures.visual_comparison(rd, images, out / "visual_comparison.png")
    extra = extra or {}
    distill = extra.get("distillation", pd.DataFrame())
    made["distillation.png"] = not distill.empty and figures.distillation(distill, out / "distillation.png")
    sections = [f"# lic_kd report: {name}\n"]
    if rated:
        sections += ["Bitrates are real: 8 x bytes of each coded file / original pixels, averaged over images.\n",
                     "## Rate-distortion curves\n", "![RD curves](rd_curves.png)\n",
                     "## BD-rate against decoder complexity\n",
                     "![BD-rate vs kMAC](bd_rate_vs_kmac.png)\n" if made["bd_rate_vs_kmac.png"] else "(no curve has a BD-rate value: see the table)\n",
                     "Fixed-point curves (ptq-/qat-w<weight bits>a<activation bits>-<parts>) against model size at their word "
                     "lengths:\n\n![BD-rate vs model bytes](bd_rate_vs_bytes.png)\n" if made["bd_rate_vs_bytes.png"] else "",
                     bd.to_markdown(index=False, floatfmt=".4g") + "\n"]
    codecs = extra.get("teacher_vs_codecs", pd.DataFrame())
    if not codecs.empty:
        sections += ["## Teachers against classical codecs (same images, real files)\n",
                     "BD-rate (%) of each teacher curve against each codec's curve, bitstream bpp; negative: the teacher "
                     "needs fewer bits for the same quality.\n",
                     codecs.dropna(axis=1, how="all").to_markdown(index=False, floatfmt=".4g") + "\n"]
    jpeg = extra.get("learned_jpeg_vs_jpeg", pd.DataFrame())
    if not jpeg.empty:
        sections += ["## Learned JPEG against Pillow's JPEG (standard tables)\n",
                     "BD-rate (%) of each learned-JPEG curve against JPEG at libjpeg's standard tables, both real baseline "
                     "JPEG files decoded by the standard decoder; negative: the learned tables need fewer bits for the same "
                     "quality. proxy_pearson_r: correlation of the training rate proxy with the real file sizes over the "
                     "curve's coded images (proxy_over_real: their mean ratio).\n",
                     jpeg.dropna(axis=1, how="all").to_markdown(index=False, floatfmt=".4g") + "\n"]
    repeats = extra.get("bd_repeats", pd.DataFrame())
    if not repeats.empty and (repeats["n"] > 1).any():
        sections += ["## BD values over repeats (seeds)\n",
                     "Mean over the seeds of each curve, 95 % Student-t interval (ci95: half-width), n seeds.\n",
                     repeats.to_markdown(index=False, floatfmt=".4g") + "\n"]
    if not distill.empty:
        sections += ["## What distillation buys\n",
                     "Each KD student against the plain student of the same width, initialisation and budget, paired seed "
                     "by seed (same data and batches): BD-rate < 0 means KD saves rate at equal PSNR. Beside it, what the "
                     "width saves against the teacher: decoder kMAC/px and parameters (teacher / student) and decode "
                     "speed (student fps / teacher fps).\n",
                     "![what distillation buys](distillation.png)\n" if made["distillation.png"] else "",
                     distill.dropna(axis=1, how="all").to_markdown(index=False, floatfmt=".4g") + "\n"]
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
    out = write_report(args.sweep_dirs, args.name, args.out_root, args.anchor, args.method, args.rate, args.metric,
                       args.reference, not args.no_figures, args.images)
    print((out / "rd_table.md").read_text())
    print((out / "bd_rate.md").read_text())
    print(f"report written to {out}/")


if __name__ == "__main__":
    run_cli(main)
