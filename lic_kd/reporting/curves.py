"""Runs into curves: every results.json of the sweeps read into one table, each run on the curve of its
settings, named by what sets it apart."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from lic_kd.errors import ConfigError
from lic_kd.models.ladder import ladder_fingerprint, read_ladder
from lic_kd.reporting.bd import ms_ssim_db
from lic_kd.results import (
    DIVERGED,
    FAILED,
    RESULTS_FILE,
    TRAINED,
    current_targets,
    is_complete,
    read_results,
    results_record,
    status_of,
)

RATE_COLUMNS = [
    "lmbda",
    "bpp",
    "bpp_payload",
    "bpp_estimated",
]  # left out of a report whose runs have no rate (autoencoders)


RD_COLUMNS = [
    "curve",
    "role",
    "architecture",
    "N",
    "M",
    "init",
    "lmbda",
    "quality",
    "steps",
    "seed",
    "bpp",
    "bpp_payload",
    "bpp_estimated",
    "psnr",
    "ms_ssim",
    "ms_ssim_db",
    "encode_s",
    "decode_s",
    "params",
    "kmac_encoder",
    "kmac_decoder",
    "n_images",
    "run_dir",
]


# Columns for the figures and the complexity table that the RD table does not print.
EXTRA_COLUMNS = [
    "prune_keep",
    "quant",
    "weight_bits",
    "model_bytes",
    "checkpoint",
    "params_encoder",
    "params_decoder",
    "size_mb",
    "decode_energy_j",
    "decoder_fps",
    "decode_peak_mb",
]


def find_runs(sweep_dirs: Sequence[Path]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Every complete results.json under the sweep dirs, and every run whose results.json says it is not complete,
    with its reason (failed, diverged, killed while training or evaluating)."""
    results, missing = [], []
    for sweep in sweep_dirs:
        if not sweep.is_dir():
            raise ConfigError(f"sweep directory does not exist: {sweep}")
        run_dirs = sorted(p.parent for p in sweep.rglob(RESULTS_FILE))
        # students trained together (student.N=[...]) are run dirs inside their group's: the group is not one
        run_dirs = [d for d in run_dirs if not any(o != d and d in o.parents for o in run_dirs)]
        for run_dir in run_dirs:
            try:
                record = read_results(run_dir / RESULTS_FILE)
            except json.JSONDecodeError as err:
                missing.append({"run_dir": str(run_dir), "reason": f"unreadable {RESULTS_FILE}: {err}"})
                continue
            if is_complete(record):
                results.append(record | {"read_from": str(run_dir)})  # where its listed files are, wherever it ran
            else:
                missing.append({"run_dir": str(run_dir), "reason": failure_reason(record)})
    return results, missing


def failure_reason(record: dict[str, Any]) -> str:
    """Why a run has no metrics, from its results.json: the error it raised, where it diverged, or how far it got
    when it was killed from outside (SLURM's time limit, out of memory)."""
    status = status_of(record)
    if status == DIVERGED:
        d = record["diverged"]
        last = "" if d.get("last_finite_loss") is None else f", last finite loss {d['last_finite_loss']:.6g}"
        return f"diverged at batch {d['batch']}: {d['what']} (lr {d.get('lr'):g}{last}): not evaluated"
    if status == FAILED:
        return f"failed: {record['error']}"
    if status == TRAINED and record.get("error"):
        return f"trained, not evaluated: {record['error']}"
    if status == TRAINED:
        return "trained, not evaluated: killed while coding its images? (re-run the same command to evaluate it)"
    return "training did not finish: killed? (its log says; re-run the same command to resume)"


def quant_label(quant: dict[str, Any] | None) -> str | None:
    """ptq-w8a8-decoder: how a fixed-point run got there, its weight and activation bits, and where."""
    return None if not quant else f"{quant['mode']}-w{quant['weight_bits']}a{quant['activation_bits']}-{quant['parts']}"


def ladder_records(ladder_dir: Path) -> list[dict[str, Any]]:
    """A shipped ladder's teacher curve as its ladder.json records it (each rung's Kodak evaluation when it was
    trained), one results record per rung: a report of students from the ladder has its teacher without coding
    Kodak again. Labelled as a record; an evaluation of the ladder in the report is a curve of its own."""
    ladder = read_ladder(ladder_dir)
    settings = {"ladder": ladder["name"], "ladder.fingerprint": ladder_fingerprint(ladder)}
    return [
        results_record(
            {
                "role": "teacher",
                "architecture": ladder["architecture"].rsplit(".", 1)[-1],
                "N": ladder["N"],
                "M": ladder["M"],
                "lmbda": rung["lmbda"],
                "steps": rung.get("steps_total"),
                "settings": settings,
                "source": "ladder record",
                "ladder_base_steps": (ladder.get("base") or {}).get("steps_total"),
                "run_dir": str(ladder_dir),
            },
            rung["kodak"],
        )  # fmt: skip
        for rung in ladder["rungs"]
    ]


def base_training(ladder_dir: Path) -> list[dict[str, Any]]:
    """A shipped ladder's base teacher coded on Kodak at points of its training (ladder.json's
    base.kodak_during_training), one row per point: whether more batches still paid."""
    ladder = read_ladder(ladder_dir)
    points = (ladder.get("base") or {}).get("kodak_during_training") or []
    name = f"{ladder['name']} ({ladder_fingerprint(ladder)})"
    return [{"ladder": name, "lmbda": ladder["base"]["lmbda"], **p} for p in points]


def curve_label(run: dict[str, Any]) -> str:
    if run.get("source") == "ladder record":  # its base's batches tell a retrained ladder from the one it replaced
        base = f", base {run['ladder_base_steps']} batches" if run.get("ladder_base_steps") else ""
        return curve_label({**run, "source": None}) + f" [ladder record{base}]"
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
        return current_targets(dict(run["settings"]))
    teacher = run.get("teacher") or {}
    return {
        **(run.get("loss_weights") or {}),
        **{k: v for k, v in (run.get("objective") or {}).items() if k != "lmbda"},
        **{k: teacher[k] for k in ("z_checkpoint", "z_lmbda") if teacher.get(k) is not None},
        **{f"model.{k}": v for k, v in (run.get("model_options") or {}).items()},
        **({"quant.rounding": run["quant"]["rounding"]} if run.get("quant") else {}),
        "init": _init_label(run.get("init")) or "random",
        "steps": run.get("steps_planned", run.get("steps")),
    }


def pairing_settings(run: dict[str, Any]) -> dict[str, Any]:
    """A KD student's settings less what makes it KD (its role, its loss, a teacher used only for the KD
    terms): equal to its plain partner's, which trained the same network on the same data, budget and objective."""
    settings = curve_settings(run)
    if run.get("settings") is None:  # recorded before run.settings: the legacy pairing keys
        keep = ("steps",) + tuple(
            k for k in settings if k.startswith("model.") or k in ("init", "metric", "quant.rounding")
        )
        return {k: settings[k] for k in keep if k in settings}
    uses_teacher_weights = settings.get("student.init") == "teacher" or any(k.startswith("prune.") for k in settings)
    return {
        k: v
        for k, v in settings.items()
        if k != "role" and not k.startswith("loss.") and (uses_teacher_weights or not k.startswith("teacher."))
    }


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
    keys = _telling_keys(keys, settings)  # in the order given: sorted
    labels = [base + " " + ",".join(f"{label_key(k)}={short_value(s.get(k))}" for k in keys) for s in settings]
    by_label: dict[str, set[str]] = {}
    for label, s in zip(labels, settings):
        by_label.setdefault(label, set()).add(json.dumps(s, sort_keys=True))
    return [
        label
        + (
            f" #{hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:6]}"
            if len(by_label[label]) > 1
            else ""
        )
        for label, s in zip(labels, settings)
    ]


def _telling_keys(keys: Sequence[str], settings: Sequence[dict[str, Any]]) -> list[str]:
    """The keys less those set in some runs and unset (None) in the others, with one value wherever set, when the
    other keys already say which runs set them: a plain student's teacher.checkpoint follows from its init."""

    def on_off(key: str) -> bool:
        values = {json.dumps(s.get(key), sort_keys=True) for s in settings if s.get(key) is not None}
        return len(values) == 1 and any(s.get(key) is None for s in settings)

    switched_keys = [k for k in keys if on_off(k)]
    kept = [k for k in keys if k not in switched_keys]
    switched: dict[str, set[bool]] = {}
    for s in settings:
        shown = json.dumps([s.get(k) for k in kept], sort_keys=True)
        switched.setdefault(shown, set()).update(s.get(k) is None for k in switched_keys)
    told = all(len(states) <= 1 for states in switched.values())
    return kept if told and kept else list(keys)


def rd_table(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in results:
        run, m = r["run"], r["metrics"]
        rows.append(
            {
                **{
                    k: run.get(k)
                    for k in ("role", "architecture", "N", "M", "lmbda", "quality", "steps", "seed", "run_dir")
                },
                "init": _init_label(run.get("init")),
                "prune_keep": (run.get("prune") or {}).get("keep"),
                "weight_bits": (run.get("quant") or {}).get("weight_bits"),
                "quant": quant_label(run.get("quant")),
                "model_bytes": (r.get("complexity") or {}).get("model_bytes"),
                "curve": curve_label(run),
                "settings": json.dumps(curve_settings(run), sort_keys=True),
                "pair_key": json.dumps(pairing_settings(run), sort_keys=True),
                **{
                    k: m.get(k) for k in ("bpp", "bpp_estimated", "psnr", "ms_ssim", "encode_s", "decode_s", "n_images")
                },
                # the entropy coder's strings alone, as CompressAI's eval_model counts; a file's own size for the
                # classical codecs and the published number for references (their payload is what they report)
                "bpp_payload": m.get("bpp_payload", m.get("bpp") if run["role"] in ("codec", "reference") else None),
                "ms_ssim_db": ms_ssim_db(m.get("ms_ssim")),
                "params": r.get("params"),
                "checkpoint": run.get("checkpoint"),
                "read_from": r.get("read_from", run.get("run_dir")),
                **{k: (r.get("complexity") or {}).get(k) for k in ("params_encoder", "params_decoder", "size_mb")},
                "kmac_encoder": (r.get("complexity") or {}).get("kmac_per_pixel_encoder"),
                "kmac_decoder": (r.get("complexity") or {}).get("kmac_per_pixel_decoder"),
                "decode_energy_j": (r.get("energy") or {}).get("decode_j"),
                "decoder_fps": (r.get("latency") or {}).get("decoder_fps"),
                "decode_peak_mb": ((r.get("memory") or {}).get("decode_peak_bytes") or float("nan")) / 1e6,
            }
        )
    df = pd.DataFrame(rows, columns=RD_COLUMNS + EXTRA_COLUMNS + ["settings", "pair_key", "read_from"])
    # Runs of one role and width that differ in any setting are different curves, named by what differs.
    for label, group in df.groupby("curve"):
        if group["settings"].nunique() > 1:
            df.loc[group.index, "curve"] = distinct_labels(label, list(group["settings"].map(json.loads)))
    return df.sort_values(["curve", "lmbda", "quality", "bpp"], ignore_index=True)


def table_columns(rd: pd.DataFrame) -> list[str]:
    """The RD table's columns, less the rate columns when no run has a rate (an autoencoder report)."""
    return [c for c in RD_COLUMNS if not (c in RATE_COLUMNS and rd[c].isna().all())]


RATE_GAP = 0.10  # bitstream over estimate beyond headers and coder overhead: the two disagree


def rate_warnings(rd: pd.DataFrame) -> list[str]:
    """Runs whose bitstream rate exceeds the entropy model's own estimate by more than RATE_GAP (and 0.01 bpp):
    the coder and the forward pass that trained the model disagree."""
    rows = rd.dropna(subset=["bpp", "bpp_estimated"])
    rows = rows[(rows["bpp"] > (1 + RATE_GAP) * rows["bpp_estimated"]) & (rows["bpp"] - rows["bpp_estimated"] > 0.01)]
    return [
        f"{r.curve}{'' if pd.isna(r.lmbda) else f' (lmbda={r.lmbda:g})'}: bitstream {r.bpp:.4f} bpp is "
        f"{r.bpp / r.bpp_estimated - 1:+.0%} over the "
        f"estimate {r.bpp_estimated:.4f}: its coder and its forward pass disagree (e.g. an undertrained "
        f"autoregressive context model); read its point with care"
        for r in rows.itertuples()
    ]
