"""Curves in CompressAI's results JSON format (`{"name", "description", "results": {"bpp": [...],
"psnr-rgb": [...], "ms-ssim-rgb": [...], "encoding_time", "decoding_time"}}`): published curves come in as
named anchors, and every curve of a report goes out in the same format, for CompressAI's own plot tool."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from lic_kd.errors import ConfigError
from lic_kd.io import write_json_atomic
from lic_kd.results import results_record

KEYS = {
    "bpp": "bpp",
    "psnr": "psnr-rgb",
    "ms_ssim": "ms-ssim-rgb",
    "encode_s": "encoding_time",
    "decode_s": "decoding_time",
}


def load_reference(path: Path) -> list[dict[str, Any]]:
    """One results-like record per point of a CompressAI results file (role "reference")."""
    try:
        data = json.loads(Path(path).read_text())
        name, curves = data["name"], data["results"]
        n = len(curves["bpp"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is not a CompressAI results file (needs name and results.bpp): {err}") from err
    for ours, theirs in KEYS.items():
        if theirs in curves and len(curves[theirs]) != n:
            raise ConfigError(f"{path}: results.{theirs} has {len(curves[theirs])} values, results.bpp has {n}")
    records = []
    for i in range(n):
        metrics = {ours: curves[theirs][i] if theirs in curves else None for ours, theirs in KEYS.items()}
        records.append(
            results_record(
                {"role": "reference", "architecture": name, "quality": i + 1, "run_dir": str(path)},
                metrics | {"bpp_estimated": None, "n_images": None},
            )
        )
    return records


def export_curve(points: pd.DataFrame, name: str, path: Path, description: str) -> None:
    """Write one curve's rows (sorted by rate) as a CompressAI results file."""
    points = points.sort_values("bpp")
    results = {
        theirs: [None if pd.isna(v) else float(v) for v in points[ours]]
        for ours, theirs in KEYS.items()
        if ours in points
    }
    write_json_atomic(path, {"name": name, "description": description, "results": results})


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")
