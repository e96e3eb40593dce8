"""A report directory from sweep directories: the tables as CSV and markdown, the figures, report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from lic_kd import REPO_ROOT
from lic_kd.errors import ConfigError
from lic_kd.reporting import figures
from lic_kd.reporting.curves import base_training, find_runs, ladder_records, rate_warnings, rd_table, table_columns
from lic_kd.reporting.references import export_curve, load_reference, safe_name
from lic_kd.reporting.tables import (
    bd_table,
    bd_with_repeats,
    codec_comparison,
    complexity_table,
    default_anchor,
    distillation_table,
    learned_jpeg_table,
    to_markdown,
)
from lic_kd.results import RESULTS_FILE


def write_report(
    sweep_dirs: Sequence[Path],
    name: str,
    out_root: Path = Path("multirun_reports"),
    anchor: str | None = None,
    method: str = "pchip",
    rate: str = "bpp",
    metric: str = "psnr",
    references: Sequence[Path] = (),
    figures: bool = True,
    images_dir: Path = REPO_ROOT / "data" / "kodak",
    ladders: Sequence[Path] = (),
) -> Path:
    results, missing = find_runs(sweep_dirs)
    for ladder in ladders:  # a shipped ladder's teacher curve, from its record
        results += ladder_records(ladder)
    for path in references:
        results += load_reference(path)
    if not results and not missing:
        raise ConfigError(f"no runs ({RESULTS_FILE}) under {', '.join(map(str, sweep_dirs))}")
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
    (out / "rd_table.md").write_text(
        to_markdown(rd[columns].drop(columns="run_dir"), f"Rate-distortion: {name}", missing) + warnings_md
    )
    complexity = complexity_table(rd)
    complexity.to_csv(out / "complexity.csv", index=False)
    (out / "bd_rate.md").write_text(to_markdown(bd, f"BD-rate ({method}, {rate} vs {metric}): {name}"))
    extra = {
        "bd_repeats": bd_with_repeats(rd, bd, method, rate, metric),
        "teacher_vs_codecs": codec_comparison(rd, method, rate),
        "learned_jpeg_vs_jpeg": learned_jpeg_table(rd, results, method, rate),
        "distillation": distillation_table(rd, anchor or default_anchor(rd), method, rate, metric),
        "base_training": pd.DataFrame([point for ladder in ladders for point in base_training(ladder)]),
    }
    for table_name, table in extra.items():
        table.to_csv(out / f"{table_name}.csv", index=False)
    for curve, points in rd[(rd["role"] != "reference") & rd["bpp"].notna()].groupby("curve"):
        export_curve(
            points,
            curve,
            out / "curves" / f"{safe_name(curve)}.json",
            f"lic_kd report {name}: Kodak, real bitstream bpp",
        )
    if figures:
        coded = {r["read_from"]: {i["image"]: i for i in r.get("images", [])} for r in results if "read_from" in r}
        write_figures(rd, bd, complexity, missing, out, name, images_dir, coded, warnings_md, extra)
    return out


def write_figures(
    rd: pd.DataFrame,
    bd: pd.DataFrame,
    complexity: pd.DataFrame,
    missing: Sequence[dict[str, str]],
    out: Path,
    name: str,
    images_dir: Path,
    coded: dict[str, dict[str, dict]],
    warnings_md: str = "",
    extra: dict[str, pd.DataFrame] | None = None,
) -> None:
    """The figures, and report.md that shows every table and figure. `coded`: each run's image rows (the files
    its results.json lists), by the directory it was read from."""

    rated = rd["bpp"].notna().any()
    unrated = rd[rd["role"].isin(["teacher", "student", "kd"]) & rd["bpp"].isna()]
    made = {"rd_curves.png": rated}
    if rated:
        figures.rd_curves(rd, out / "rd_curves.png")
    made["quality_vs_kmac.png"] = not unrated.empty and figures.quality_vs_complexity(
        unrated, out / "quality_vs_kmac.png"
    )
    made["bd_rate_vs_kmac.png"] = figures.bd_vs_complexity(bd, rd, out / "bd_rate_vs_kmac.png")
    quantized = "quant" in rd and rd["quant"].notna().any()  # word lengths differ: size in bytes is the cost axis
    made["bd_rate_vs_bytes.png"] = quantized and figures.bd_vs_complexity(
        bd, rd, out / "bd_rate_vs_bytes.png", "model_bytes"
    )
    made["complexity_vs_width.png"] = figures.complexity_vs_width(rd, out / "complexity_vs_width.png")
    images = {p.name: p for p in images_dir.glob("*")} if images_dir.is_dir() else {}
    made["visual_comparison.png"] = figures.visual_comparison(rd, images, coded, out / "visual_comparison.png")
    extra = extra or {}
    distill = extra.get("distillation", pd.DataFrame())
    made["distillation.png"] = not distill.empty and figures.distillation(distill, out / "distillation.png")
    sections = [f"# lic_kd report: {name}\n"]
    if rated:
        sections += [
            "Bitrates are real: 8 x bytes of each coded file / original pixels, averaged over images.\n",
            "## Rate-distortion curves\n",
            "![RD curves](rd_curves.png)\n",
            "## BD-rate against decoder complexity\n",
            "![BD-rate vs kMAC](bd_rate_vs_kmac.png)\n"
            if made["bd_rate_vs_kmac.png"]
            else "(no curve has a BD-rate value: see the table)\n",
            "Fixed-point curves (ptq-/qat-w<weight bits>a<activation bits>-<parts>) against model size at their word "
            "lengths:\n\n![BD-rate vs model bytes](bd_rate_vs_bytes.png)\n"
            if made["bd_rate_vs_bytes.png"]
            else "",
            bd.to_markdown(index=False, floatfmt=".4g") + "\n",
        ]
    codecs = extra.get("teacher_vs_codecs", pd.DataFrame())
    if not codecs.empty:
        sections += [
            "## Teachers against classical codecs (same images, real files)\n",
            "BD-rate (%) of each teacher curve against each codec's curve, bitstream bpp; negative: the teacher "
            "needs fewer bits for the same quality.\n",
            codecs.dropna(axis=1, how="all").to_markdown(index=False, floatfmt=".4g") + "\n",
        ]
    jpeg = extra.get("learned_jpeg_vs_jpeg", pd.DataFrame())
    if not jpeg.empty:
        sections += [
            "## Learned JPEG against Pillow's JPEG (standard tables)\n",
            "BD-rate (%) of each learned-JPEG curve against JPEG at libjpeg's standard tables, both real baseline "
            "JPEG files decoded by the standard decoder; negative: the learned tables need fewer bits for the same "
            "quality. proxy_pearson_r: correlation of the training rate proxy with the real file sizes over the "
            "curve's coded images (proxy_over_real: their mean ratio).\n",
            jpeg.dropna(axis=1, how="all").to_markdown(index=False, floatfmt=".4g") + "\n",
        ]
    repeats = extra.get("bd_repeats", pd.DataFrame())
    if not repeats.empty and (repeats["n"] > 1).any():
        sections += [
            "## BD values over repeats (seeds)\n",
            "Mean over the seeds of each curve, 95 % Student-t interval (ci95: half-width), n seeds.\n",
            repeats.to_markdown(index=False, floatfmt=".4g") + "\n",
        ]
    if not distill.empty:
        sections += [
            "## What distillation buys\n",
            "Each KD student against the plain student of the same width, initialisation and budget, paired seed "
            "by seed (same data and batches): BD-rate < 0 means KD saves rate at equal PSNR. Beside it, what the "
            "width saves against the teacher: decoder kMAC/px and parameters (teacher / student) and decode "
            "speed (student fps / teacher fps).\n",
            "![what distillation buys](distillation.png)\n" if made["distillation.png"] else "",
            distill.dropna(axis=1, how="all").to_markdown(index=False, floatfmt=".4g") + "\n",
        ]
    training = extra.get("base_training", pd.DataFrame())
    if not training.empty and figures.base_training(training, out / "base_training.png"):
        sections += [
            "## The ladders' base teachers during their training\n",
            "Each base teacher coded on Kodak (real bitstreams) at points of its training, at its own lambda "
            "(ladder.json's base.kodak_during_training); batches counted from the first base's start.\n",
            "![base training](base_training.png)\n",
            training.to_markdown(index=False, floatfmt=".4g") + "\n",
        ]
    if made["quality_vs_kmac.png"]:
        sections += [
            "## Autoencoders (no entropy model, no rate): quality against decoder complexity\n",
            "![quality vs kMAC](quality_vs_kmac.png)\n",
            bd.dropna(subset=["delta_quality"])[["curve", "anchor", "metric", "delta_quality"]].to_markdown(
                index=False, floatfmt=".4g"
            )
            + "\n",
        ]
    sections += [
        "## Complexity\n",
        complexity.to_markdown(index=False, floatfmt=".4g") + "\n",
        "![complexity vs width](complexity_vs_width.png)\n" if made["complexity_vs_width.png"] else "",
        "## Visual comparison\n",
        "![visual comparison](visual_comparison.png)\n"
        if made["visual_comparison.png"]
        else "(no decodable run for the chosen image)\n",
        "## All runs\n",
        rd[table_columns(rd)].drop(columns="run_dir").to_markdown(index=False, floatfmt=".4g") + "\n",
    ]
    if missing:
        sections += ["## Runs without results\n", pd.DataFrame(missing).to_markdown(index=False) + "\n"]
    (out / "report.md").write_text("\n".join(sections) + warnings_md)
