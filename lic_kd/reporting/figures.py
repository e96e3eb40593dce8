"""Report figures from the report's tables: RD curves, BD-rate against decoder complexity (with the Pareto
front), complexity and latency against width, and a visual comparison of what the runs decoded from their real
bitstreams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display here or on a cluster
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from lic_kd.data import load_rgb
from lic_kd.evaluation.classical import CODECS

ROLE_STYLE = {
    "teacher": {"color": "black", "marker": "s", "linestyle": "-"},
    "student": {"cmap": "Blues", "marker": "o", "linestyle": "-"},
    "kd": {"cmap": "Reds", "marker": "^", "linestyle": "-"},
    "codec": {"cmap": "Greys", "marker": "x", "linestyle": "--"},
    "reference": {"cmap": "Greens", "marker": ".", "linestyle": ":"},
}


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _styles(rd: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """One colour per curve, shaded within its role so that wider students are darker."""
    styles = {}
    for role, group in rd.groupby("role", sort=False):
        base = ROLE_STYLE.get(role, {"cmap": "Purples", "marker": "d", "linestyle": "-"})
        curves = group.sort_values(["N", "curve"], na_position="last")["curve"].unique()
        for i, curve in enumerate(curves):
            color = base.get("color") or plt.get_cmap(base["cmap"])(0.45 + 0.5 * (i + 1) / (len(curves) + 1))
            # curves of a one-colour role (two teacher ladders) differ by line and marker fill instead
            linestyle = ("-", "--", ":", "-.")[i % 4] if base.get("color") else base["linestyle"]
            fill = "full" if not base.get("color") or i == 0 else "none"
            styles[curve] = {"color": color, "marker": base["marker"], "linestyle": linestyle, "fillstyle": fill}
    return styles


def rd_curves(rd: pd.DataFrame, path: Path, rate: str = "bpp") -> None:
    styles = _styles(rd)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, metric, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ms_ssim_db", "MS-SSIM (dB)")):
        for curve, group in rd.dropna(subset=[rate, metric]).groupby("curve", sort=False):
            # repeats (seeds) of one point are averaged: one marker per lambda or quality
            group = (
                group.assign(point=group["lmbda"].fillna(group["quality"]))
                .groupby("point")[[rate, metric]]
                .mean()
                .sort_values(rate)
            )
            ax.plot(group[rate], group[metric], label=curve, markersize=5, **styles[curve])
        _zoom_on_own_curves(ax, rd, rate, metric)
        ax.set_xlabel(f"{rate} (bits per pixel{', from the bitstream' if rate == 'bpp' else ''})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("Rate-distortion: PSNR")
    axes[1].set_title("Rate-distortion: MS-SSIM")
    axes[1].legend(fontsize=7, loc="lower right", ncol=2)
    _save(fig, path)


def _zoom_on_own_curves(ax: plt.Axes, rd: pd.DataFrame, rate: str, metric: str) -> None:
    """The rates of the runs themselves, not the published curves' up to 4-5 bpp (which would crowd every run
    into a corner): the axes end past the highest rate a run reached, the references cut there."""
    own = rd[~rd["role"].isin(["reference", "codec"])].dropna(subset=[rate, metric])
    if own.empty:
        return
    right = 1.25 * own[rate].max()
    shown = rd.loc[rd[rate] <= right, metric]
    shown = shown[np.isfinite(shown.astype(float))]
    if not right > 0 or shown.empty:
        return
    pad = 0.05 * (shown.max() - shown.min() or 1.0)
    ax.set_xlim(0, right)
    ax.set_ylim(shown.min() - pad, shown.max() + pad)


def pareto_front(points: pd.DataFrame, x: str, y: str, lower_is_better: bool = True) -> pd.DataFrame:
    """Points that no other point beats on both x (lower is better) and y."""
    sign = 1 if lower_is_better else -1
    points = points.assign(_y=sign * points[y]).sort_values([x, "_y"])
    front, best = [], np.inf
    for idx, row in points.iterrows():
        if row["_y"] < best:
            front.append(idx)
            best = row["_y"]
    return points.loc[front].drop(columns="_y")


COST_AXES = {
    "kmac_decoder": "decoder complexity (kMAC / pixel, log scale)",
    "model_bytes": "model size at its word lengths (bytes, log scale)",
}


def bd_vs_complexity(bd: pd.DataFrame, rd: pd.DataFrame, path: Path, cost: str = "kmac_decoder") -> bool:
    """BD-rate and BD-PSNR of each learned curve against what it costs (`cost`: decoder kMAC/px, or model
    bytes at its word lengths), Pareto fronts marked; False when no curve has either value."""
    cost_of = rd.groupby("curve")[cost].first()
    anchor = bd["anchor"].dropna().iloc[0] if bd["anchor"].notna().any() else None
    points = bd.assign(cost=lambda d: d["curve"].map(cost_of)).dropna(subset=["cost"])
    if anchor in cost_of.index and not pd.isna(cost_of[anchor]):
        points = pd.concat(
            [points, pd.DataFrame([{"curve": anchor, "bd_rate_pct": 0.0, "bd_psnr_db": 0.0, "cost": cost_of[anchor]}])],
            ignore_index=True,
        )
    panels = [
        ("bd_rate_pct", f"BD-rate vs {anchor} (%), lower is better", True),
        ("bd_psnr_db", f"BD-PSNR vs {anchor} (dB), higher is better", False),
    ]
    if all(points[column].isna().all() or len(points[column].dropna()) <= 1 for column, _, _ in panels):
        return False
    styles = _styles(rd)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (column, label, lower) in zip(axes, panels):
        have = points.dropna(subset=[column])
        for _, row in have.iterrows():
            style = styles.get(row["curve"], {})
            ax.scatter(
                row["cost"],
                row[column],
                color=style.get("color"),
                marker=style.get("marker", "o"),
                s=50,
                label=row["curve"],
            )
        if len(have) > 1:
            front = pareto_front(have, "cost", column, lower)
            ax.plot(front["cost"], front[column], "k--", alpha=0.6, label="Pareto front")
        else:
            ax.text(
                0.5,
                0.5,
                "no curve has a value: see bd_rate.md for the reasons",
                ha="center",
                transform=ax.transAxes,
                color="grey",
            )
        ax.set_xscale("log")
        ax.set_xlabel(COST_AXES[cost])
        ax.set_ylabel(label)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    _save(fig, path)
    return True


def quality_vs_complexity(runs: pd.DataFrame, path: Path) -> bool:
    """PSNR and MS-SSIM of runs without a rate (autoencoders) against decoder kMAC/px: what each width costs
    and what distillation buys at that cost."""
    runs = runs.dropna(subset=["kmac_decoder", "psnr"])
    if runs.empty:
        return False
    styles = _styles(runs)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, metric, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ms_ssim_db", "MS-SSIM (dB)")):
        for curve, group in runs.dropna(subset=[metric]).groupby("curve", sort=False):
            ax.scatter(
                group["kmac_decoder"],
                group[metric],
                label=curve,
                color=styles[curve]["color"],
                marker=styles[curve]["marker"],
                s=50,
            )
            for _, row in group.iterrows():
                ax.annotate(
                    f"N{row['N']:g}",
                    (row["kmac_decoder"], row[metric]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_xscale("log")
        ax.set_xlabel("decoder complexity (kMAC / pixel, log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("Autoencoders without entropy model: quality vs decoder complexity")
    axes[0].legend(fontsize=8)
    _save(fig, path)
    return True


def complexity_vs_width(rd: pd.DataFrame, path: Path) -> bool:
    learned = rd[rd["role"].isin(["teacher", "student", "kd"])].dropna(subset=["N"])
    if learned.empty:
        return False
    per_width = (
        learned.groupby(["role", "N"])
        .agg(
            params=("params", "first"),
            kmac_decoder=("kmac_decoder", "first"),
            kmac_encoder=("kmac_encoder", "first"),
            decode_s=("decode_s", "mean"),
            energy=("decode_energy_j", "mean"),
        )
        .reset_index()
    )
    panels = [
        ("params", "parameters"),
        ("kmac_decoder", "decoder kMAC / pixel"),
        ("kmac_encoder", "encoder kMAC / pixel"),
        ("decode_s", "decode time per Kodak image (s)"),
        ("energy", "decoder energy per image (J)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.8))
    for ax, (column, label) in zip(axes, panels):
        for role, group in per_width.groupby("role"):
            group = group.dropna(subset=[column]).sort_values("N")
            style = ROLE_STYLE[role]
            ax.plot(
                group["N"],
                group[column],
                marker=style["marker"],
                label=role,
                color=style.get("color") or plt.get_cmap(style["cmap"])(0.8),
            )
        if per_width[column].isna().all():
            ax.text(
                0.5, 0.5, "not measured on this machine", ha="center", va="center", transform=ax.transAxes, color="grey"
            )
        ax.set_xlabel("N (channels)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, path)
    return True


def _decoded(run_dir: Path, row: dict[str, Any] | None, codec: str | None = None) -> tuple[np.ndarray | None, str]:
    """One image as a run decoded it, from the file its results.json lists (`decoded`: the reconstruction it
    saved, or a real JPEG/WebP file a standard decoder reads), and what to say of it: its rate, or that the file
    is missing."""
    if row is None:
        return None, "not coded"
    listed = row.get("decoded") or _conventional_file(row, codec)
    rate = f"{row['bpp']:.3f} bpp" if row.get("bpp") is not None else "no entropy model"
    path = run_dir / listed
    if not path.is_file():
        return None, f"{listed} missing"
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")), rate


def _conventional_file(row: dict[str, Any], codec: str | None = None) -> str:
    """Where evaluations recorded before results.json listed its files kept the decoded image: a classical codec's
    own file, a learned JPEG's .jpg, a learned codec's reconstruction."""
    stem = Path(row["image"]).stem
    if codec in CODECS:
        return f"bitstreams/{stem}{CODECS[codec][0]}"
    return f"bitstreams/{stem}.jpg" if row.get("psnr_model_vs_file") is not None else f"reconstructions/{stem}.png"


def _closest(group: pd.DataFrame, bpp: float) -> pd.Series:
    """The row of a curve nearest in rate to `bpp` (the first row of a curve without rates)."""
    if pd.isna(bpp) or group["bpp"].isna().all():
        return group.iloc[0]
    return group.iloc[(group["bpp"] - bpp).abs().argmin()]


def visual_comparison(
    rd: pd.DataFrame,
    images: dict[str, Path],
    coded: dict[str, dict[str, dict[str, Any]]],
    path: Path,
    image: str = "kodim23.png",
    crop: int = 192,
) -> bool:
    """The same crop of one image: the original, the teacher, each student (at the rate closest to the
    teacher's median-lambda run), and the codec rows (e.g. JPEG) at the rate closest to it, each from the files
    its results.json lists (`coded`: per run directory read, the image rows). Autoencoders show the
    reconstructions they saved; a listed file that is missing is said so in its panel."""
    learned = rd[rd["role"].isin(["teacher", "student", "kd"]) & rd["read_from"].isin(list(coded))]
    if learned.empty:
        return False
    first = coded[learned.iloc[0]["read_from"]]
    kept = [name for name, row in first.items() if row.get("decoded") or "psnr_model_vs_file" in row]
    if image not in kept:  # runs that coded a subset: take the first image they all have
        image = next((name for name in images if name in kept[:1]), image)
    if image not in images:
        return False
    rated = learned.dropna(subset=["bpp"])
    teachers = rated[rated["role"] == "teacher"]
    reference = (teachers if not teachers.empty else rated if not rated.empty else learned).sort_values("lmbda")
    target_bpp = reference.iloc[len(reference) // 2]["bpp"]
    panels: list[tuple[str, np.ndarray | None]] = []
    original = np.asarray(load_rgb(images[image]))
    panels.append(("original", original))
    for curve, group in learned.groupby("curve", sort=False):
        row = _closest(group, target_bpp)
        pixels, said = _decoded(Path(row["read_from"]), coded[row["read_from"]].get(image))
        setting = "" if pd.isna(row["lmbda"]) or pixels is None else f"lmbda={row['lmbda']:g}, "
        panels.append((f"{curve}\n{setting}{said}", pixels))
    codecs = rd[(rd["role"] == "codec") & rd["read_from"].isin(list(coded))]
    for codec, group in codecs.groupby("curve") if not pd.isna(target_bpp) else ():
        row = _closest(group, target_bpp)
        pixels, said = _decoded(Path(row["read_from"]), coded[row["read_from"]].get(image), row["architecture"])
        panels.append((f"{codec} q={row['quality']:g}\n{said}", pixels))
    h, w = original.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, pixels) in zip(axes.flat, panels):
        if pixels is None:  # a listed file that is not there: the panel says so
            ax.text(0.5, 0.5, "file missing", ha="center", va="center", transform=ax.transAxes, color="0.4")
        else:
            ax.imshow(pixels[top : top + crop, left : left + crop], interpolation="nearest")
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"{image}: centre crop {crop}x{crop}", fontsize=10)
    _save(fig, path)
    return True


def distillation(table: pd.DataFrame, path: Path) -> bool:
    """What distillation buys: per width, the KD student's BD-rate against its paired plain student (95 %
    interval when there are seeds), and both against the teacher as a function of decoder kMAC/px."""
    rows = table.dropna(subset=["bd_rate_kd_vs_plain_pct"])
    if rows.empty:
        return False

    def variant(curve: str) -> str:  # what the curve's name adds beyond width and init (prune, quant, ...)
        extra = " ".join(t for t in curve.split(" ")[1:] if not t.startswith("init="))
        return f"\n{extra}" if extra else ""

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [
        (r.architecture if pd.isna(r.N) else f"N={int(r.N)}")
        + f"\ninit={r.init}\nn={int(r.n)} seed(s)"
        + variant(r.kd_curve)
        for r in rows.itertuples()
    ]
    colors = ["tab:red" if v > 0 else "tab:green" for v in rows["bd_rate_kd_vs_plain_pct"]]
    axes[0].bar(range(len(rows)), rows["bd_rate_kd_vs_plain_pct"], yerr=rows["ci95"].fillna(0), capsize=4, color=colors)
    axes[0].axhline(0, color="black", linewidth=0.8)
    axes[0].set_xticks(range(len(rows)), labels, fontsize=8)
    axes[0].set_ylabel("BD-rate of KD vs plain student (%)")
    axes[0].set_title("What KD buys at each width (< 0: KD saves rate; bars: 95 % interval)", fontsize=10)
    axes[0].grid(alpha=0.3, axis="y")
    without = table[table["bd_rate_kd_vs_plain_pct"].isna()]
    if not without.empty:  # say which pairs have no value rather than leave them out silently
        names = ", ".join(
            f"N={int(r.N)} init={r.init}" if not pd.isna(r.N) else str(r.kd_curve) for r in without.itertuples()
        )
        axes[0].text(
            0.01, 0.01, f"no value (see the table): {names}", transform=axes[0].transAxes, fontsize=7, va="bottom"
        )
    for role, column, style in (
        ("plain", "bd_rate_plain_vs_teacher_pct", ROLE_STYLE["student"]),
        ("KD", "bd_rate_kd_vs_teacher_pct", ROLE_STYLE["kd"]),
    ):
        if column in rows and rows[column].notna().any():
            points = rows.dropna(subset=[column])
            axes[1].scatter(
                points["kmac_decoder"],
                points[column],
                marker=style["marker"],
                s=60,
                label=f"{role} student",
                color=plt.get_cmap(style["cmap"])(0.8),
            )
    for r in rows.itertuples():
        if not pd.isna(getattr(r, "bd_rate_plain_vs_teacher_pct", np.nan)) and not pd.isna(
            getattr(r, "bd_rate_kd_vs_teacher_pct", np.nan)
        ):
            axes[1].annotate(
                "",
                xy=(r.kmac_decoder, r.bd_rate_kd_vs_teacher_pct),
                xytext=(r.kmac_decoder, r.bd_rate_plain_vs_teacher_pct),
                arrowprops={"arrowstyle": "->", "color": "grey"},
            )
    axes[1].set_xscale("log")
    axes[1].set_xlabel("decoder kMAC / pixel")
    axes[1].set_ylabel("BD-rate against the teacher (%)")
    axes[1].set_title("Cost of thinness, with and without KD", fontsize=10)
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    _save(fig, path)
    return True


def base_training(points: pd.DataFrame, path: Path) -> bool:
    """A ladder base's Kodak PSNR and bpp against its training batches: where more batches stop paying."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ladder, group in points.sort_values("batches").groupby("ladder", sort=False):
        for ax, metric in ((axes[0], "psnr"), (axes[1], "bpp")):
            ax.plot(group["batches"], group[metric], marker="o", label=ladder)
    for ax, label in ((axes[0], "Kodak PSNR (dB)"), (axes[1], "Kodak bpp (from the bitstream)")):
        ax.set_xlabel("training batches of the base")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Base teacher during training (lambda {points['lmbda'].iloc[0]:g})", fontsize=10)
    axes[1].legend(fontsize=8)
    _save(fig, path)
    return True
