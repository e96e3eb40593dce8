"""The comparisons of a report: BD-rate against an anchor, over repeats, teachers against classical codecs,
learned JPEG against JPEG, what distillation buys, complexity."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from lic_kd.errors import ConfigError
from lic_kd.reporting.bd import MIN_POINTS, bd_row, curve_points, repeated_bd, verdict

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


def bd_table(
    df: pd.DataFrame, anchor: str | None, method: str = "pchip", rate: str = "bpp", metric: str = "psnr"
) -> pd.DataFrame:
    columns = [
        "curve",
        "anchor",
        "method",
        "rate",
        "metric",
        "points",
        "anchor_points",
        "bd_rate_pct",
        "bd_psnr_db",
        "overlap_dist",
        "overlap_rate",
        "delta_quality",
        "reason",
    ]
    if method not in MIN_POINTS:
        raise ConfigError(f"method must be one of {sorted(MIN_POINTS)}, got {method!r}")
    curves = list(dict.fromkeys(df["curve"]))
    if anchor is not None and anchor not in curves:
        raise ConfigError(f"anchor {anchor!r} is not a curve of this report; curves: {', '.join(curves)}")
    # Autoencoders (no entropy model: no bpp at all) are compared among themselves, against their widest
    # teacher; codecs against the anchor. A codec lacking only the chosen rate column still goes to bd_row.
    no_rate = {c for c in curves if df.loc[df["curve"] == c, "bpp"].isna().all()}
    anchors = {
        group: anchor
        if anchor is not None and (anchor in no_rate) == group
        else default_anchor(df[df["curve"].isin(no_rate) == group])
        for group in (False, True)
    }
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
            row |= bd_row(
                curve_points(df[df["curve"] == a], pair_rate, metric),
                curve_points(df[df["curve"] == c], pair_rate, metric),
                method,
            )
            row["reason"] = "; ".join(r for r in (row["reason"], note) if r)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def bd_with_repeats(df: pd.DataFrame, bd: pd.DataFrame, method: str, rate: str, metric: str) -> pd.DataFrame:
    """The BD table's values as mean, 95 % interval and n over the seeds of each curve (against the anchor's
    mean curve): repeats of one configuration are grouped, not treated as separate curves."""
    rows = []
    for row in bd.itertuples():
        if row.anchor is None or pd.isna(row.anchor) or df.loc[df["curve"] == row.curve, "bpp"].isna().all():
            continue
        rows.append(
            {
                "curve": row.curve,
                "anchor": row.anchor,
                **repeated_bd(df[df["curve"] == row.anchor], df[df["curve"] == row.curve], method, rate, metric),
            }
        )
    columns = [
        "curve",
        "anchor",
        "n",
        "bd_rate_pct",
        "bd_rate_pct_ci95",
        "bd_psnr_db",
        "bd_psnr_db_ci95",
        "overlap_dist",
        "reason",
    ]
    return pd.DataFrame(rows, columns=columns)


def codec_comparison(
    df: pd.DataFrame, method: str, rate: str, curves: Sequence[str] | None = None, codecs: Sequence[str] | None = None
) -> pd.DataFrame:
    """BD-rate of every teacher curve (or of `curves`) against every classical codec measured in the same report
    (or `codecs`; same images, real files): the credibility check of a learned codec. PSNR and MS-SSIM (dB)."""
    rows = []
    learned = list(dict.fromkeys(df.loc[df["role"] == "teacher", "curve"])) if curves is None else list(curves)
    codecs = list(dict.fromkeys(df.loc[df["role"] == "codec", "curve"])) if codecs is None else list(codecs)
    for curve in learned:
        for codec in codecs:
            row = {"curve": curve, "anchor": codec}
            for metric, tag in (("psnr", "psnr"), ("ms_ssim_db", "ms_ssim")):
                bd = bd_row(
                    curve_points(df[df["curve"] == codec], rate, metric),
                    curve_points(df[df["curve"] == curve], rate, metric),
                    method,
                )
                row |= {f"bd_rate_pct_{tag}": bd["bd_rate_pct"], f"overlap_{tag}": bd["overlap_dist"]}
                if bd["reason"]:
                    row[f"reason_{tag}"] = bd["reason"]
            rows.append(row)
    columns = [
        "curve",
        "anchor",
        "bd_rate_pct_psnr",
        "overlap_psnr",
        "bd_rate_pct_ms_ssim",
        "overlap_ms_ssim",
        "reason_psnr",
        "reason_ms_ssim",
    ]
    return pd.DataFrame(rows, columns=columns)


def distillation_table(df: pd.DataFrame, teacher: str | None, method: str, rate: str, metric: str) -> pd.DataFrame:
    """What distillation buys, per width: each KD curve against the plain student that matches it in everything
    but the role and the KD loss (network, initialisation, data, budget, objective, optimizer: rd_table's
    pair_key), paired seed by seed (same data, same batches), beside what the width saves against the teacher
    (decoder kMAC/px, parameters, decode fps). BD-rate < 0: KD saves rate. A KD curve with no such partner is
    listed with the reason, never paired with a student trained otherwise."""
    # frugal settings (pruning, word lengths) are part of the pairing; a table without them has none
    learned = df[df["role"].isin(["student", "kd"])].reindex(
        columns=[*df.columns, *(c for c in ("prune_keep", "quant") if c not in df)]
    )
    if "pair_key" not in learned:  # a table built without run settings: pair on the shown keys
        learned = learned.assign(
            pair_key=learned[["architecture", "N", "M", "init", "prune_keep", "quant", "steps"]].apply(
                lambda r: "|".join(map(str, r)), axis=1
            )
        )
    t_rows = df[df["curve"] == teacher] if teacher is not None else df.iloc[0:0]
    t_kmac = t_rows["kmac_decoder"].mean() if not t_rows.empty else float("nan")
    t_params = t_rows["params"].mean() if not t_rows.empty else float("nan")
    t_fps = t_rows["decoder_fps"].mean() if not t_rows.empty else float("nan")
    rows = []
    keys = ["architecture", "N", "M", "init", "prune_keep", "quant", "steps"]
    for kd_curve, kd in learned[learned["role"] == "kd"].groupby("curve", sort=True):
        plain = learned[(learned["role"] == "student") & learned["pair_key"].isin(set(kd["pair_key"]))]
        row = {k: kd[k].iloc[0] for k in keys} | {
            "kd_curve": kd_curve,
            "plain_curve": plain["curve"].iloc[0] if not plain.empty else None,
        }
        if plain.empty:
            rows.append(
                row
                | {
                    "verdict": "no plain student trained the same way (network, init, data, budget, objective) "
                    "to pair with"
                }
            )
            continue
        paired = repeated_bd(plain, kd, method, rate, metric, paired=True)
        row |= {
            "n": paired["n"],
            "bd_rate_kd_vs_plain_pct": paired["bd_rate_pct"],
            "ci95": paired["bd_rate_pct_ci95"],
            "bd_psnr_kd_vs_plain_db": paired["bd_psnr_db"],
            "bd_psnr_ci95": paired["bd_psnr_db_ci95"],
            "verdict": verdict(
                paired["bd_rate_pct"], paired["bd_rate_pct_ci95"], paired["n"], "KD saves rate", "KD costs rate"
            ),
            "reason": paired["reason"],
        }
        if not t_rows.empty:
            row["bd_rate_plain_vs_teacher_pct"] = repeated_bd(t_rows, plain, method, rate, metric)["bd_rate_pct"]
            row["bd_rate_kd_vs_teacher_pct"] = repeated_bd(t_rows, kd, method, rate, metric)["bd_rate_pct"]
        kmac, params, fps = kd["kmac_decoder"].mean(), kd["params"].mean(), kd["decoder_fps"].mean()
        row |= {
            "kmac_decoder": kmac,
            "teacher_kmac_ratio": t_kmac / kmac if kmac else None,
            "params": params,
            "teacher_params_ratio": t_params / params if params else None,
            "decoder_fps": fps,
            "fps_vs_teacher": fps / t_fps if t_fps else None,
        }
        rows.append(row)
    columns = keys + [
        "kd_curve",
        "plain_curve",
        "n",
        "bd_rate_kd_vs_plain_pct",
        "ci95",
        "bd_psnr_kd_vs_plain_db",
        "bd_psnr_ci95",
        "verdict",
        "bd_rate_plain_vs_teacher_pct",
        "bd_rate_kd_vs_teacher_pct",
        "kmac_decoder",
        "teacher_kmac_ratio",
        "params",
        "teacher_params_ratio",
        "decoder_fps",
        "fps_vs_teacher",
        "reason",
    ]
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


def complexity_table(rd: pd.DataFrame) -> pd.DataFrame:
    """One row per learned curve (role, N, M, and its pruning or word lengths): size, compute and speed;
    `weight_bits` is empty for float networks, `model_bytes` is the size at the stored word lengths."""
    learned = rd[rd["role"].isin(["teacher", "student", "kd"])]
    columns = [
        "params",
        "params_encoder",
        "params_decoder",
        "size_mb",
        "weight_bits",
        "model_bytes",
        "kmac_encoder",
        "kmac_decoder",
        "encode_s",
        "decode_s",
        "decoder_fps",
        "decode_peak_mb",
        "decode_energy_j",
    ]
    if learned.empty:
        return pd.DataFrame(columns=["curve", "role", "N", "M"] + columns)
    table = learned.groupby(["curve", "role", "N", "M"], sort=False)[columns].mean().reset_index()
    return table.sort_values(["N", "role"], ascending=[False, True], ignore_index=True)


def to_markdown(df: pd.DataFrame, title: str, missing: Sequence[dict[str, str]] = ()) -> str:
    text = f"# {title}\n\n" + (df.to_markdown(index=False, floatfmt=".4g") if not df.empty else "(no runs)") + "\n"
    if missing:
        text += "\n## Runs without results\n\n" + pd.DataFrame(missing).to_markdown(index=False) + "\n"
    return text
