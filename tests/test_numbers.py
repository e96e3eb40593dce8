"""Numbers that cannot be silently wrong: curves never merge configurations, KD is paired with a student trained
the same way, diverging runs stop at the batch where they diverge, schedules follow the budget, the last batches
are validated, presets do not silently override each other, a bug keeps its traceback, payload bpp against
published curves."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_config as make
from conftest import run_module, train
from lic_kd.errors import ConfigError, run_cli
from lic_kd.reporting.curves import rd_table
from lic_kd.reporting.tables import bd_table, distillation_table


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


# 1. A curve is everything that can change a result but lambda and seed.
def test_kd_sweeps_that_differ_only_in_steps_or_in_the_teachers_content_are_separate_curves(tmp_path):
    teachers = tmp_path / "teachers"
    train("-m", "role=teacher", "lmbda=0.005", f"hydra.sweep.dir={teachers}")  # one point per curve is enough here
    kd = ("-m", "role=kd", "lmbda=0.005", f"teacher.checkpoint={teachers}")
    train(*kd, f"hydra.sweep.dir={tmp_path / 'kd4'}")
    train(*kd, "steps=6", f"hydra.sweep.dir={tmp_path / 'kd6'}")
    shutil.rmtree(teachers)  # the same path, retrained: another teacher
    train("-m", "role=teacher", "lmbda=0.005", "seed=7", f"hydra.sweep.dir={teachers}")
    train(*kd, f"hydra.sweep.dir={tmp_path / 'kd4_retrained'}")

    sweeps = [str(tmp_path / d) for d in ("kd4", "kd6", "kd4_retrained")]
    run_module("lic_kd.report", *sweeps, "--name", "r", "--out-root", str(tmp_path / "rep"), "--no-figures")
    rd = pd.read_csv(tmp_path / "rep" / "r" / "rd_table.csv")
    curves = rd.groupby("curve")["run_dir"].apply(lambda dirs: {d.split("/")[-2] for d in dirs})
    assert sorted(curves.map(sorted).map(tuple)) == [("kd4",), ("kd4_retrained",), ("kd6",)]
    assert all(n == 1 for n in rd.groupby("curve").size())  # each curve: its own run, nothing merged into it
    assert any("steps=6" in c for c in curves.index) and any("teacher.checkpoint_sha256=" in c for c in curves.index)
    assert all(len(c) < 120 for c in curves.index)  # short: only what differs within the report is named


def record(role, metric, N=16, seed=1, scale=1.0, data="cbsd68"):
    """A results.json-like record of one run at each of 4 lambdas: rates `scale` times a reference curve."""
    settings = {
        "role": role,
        "model.N": N,
        "model.M": 96,
        "objective.metric": metric,
        "data.train_dir": data,
        "steps": 200,
        "student.init": "random",
    } | ({"loss.w_y": 0.3, "teacher.checkpoint": "t"} if role == "kd" else {})
    return [
        {
            "run": {
                "role": role,
                "architecture": "ScaleHyperprior",
                "N": N,
                "M": 96,
                "lmbda": lmbda,
                "seed": seed,
                "steps": 200,
                "init": "random",
                "settings": settings,
                "run_dir": f"{role}-{metric}-{data}-{seed}-{lmbda}",
            },
            "metrics": {"bpp": bpp * scale, "bpp_payload": bpp * scale, "psnr": psnr, "ms_ssim": 0.9},
        }
        for lmbda, bpp, psnr in zip((0.001, 0.002, 0.004, 0.008), (0.2, 0.4, 0.8, 1.6), (28.0, 31.0, 34.0, 37.0))
    ]


# 2. KD is paired with the plain student that matches it in everything but the role and the KD loss.
def test_kd_is_paired_with_the_plain_student_of_its_own_objective_and_data():
    runs = (
        record("kd", "mse", scale=0.9)
        + record("student", "mse", scale=1.0)
        + record("student", "ms-ssim", scale=0.5)
        + record("kd", "mse", scale=0.9, data="wikipedia")
        + record("student", "mse", scale=1.0, data="vimeo")
    )
    rd = rd_table(runs)
    assert rd["curve"].nunique() == 5  # objective and data make curves of their own
    table = distillation_table(rd, None, "pchip", "bpp", "psnr").set_index("kd_curve")
    paired = table[table["plain_curve"].notna()]
    assert len(paired) == 1 and paired["bd_rate_kd_vs_plain_pct"].iloc[0] == pytest.approx(-10.0, abs=1e-6)
    assert (
        "objective.metric=mse" in paired["plain_curve"].iloc[0]
        or "data.train_dir=cbsd68" in paired["plain_curve"].iloc[0]
    )
    alone = table[table["plain_curve"].isna()]
    assert len(alone) == 1 and alone["verdict"].iloc[0].startswith("no plain student trained the same way")


# 3. A diverging run stops at the batch where it diverges, saves and evaluates nothing non-finite.
def test_a_diverging_run_stops_at_once_with_one_line(tmp_path):
    run = tmp_path / "run"
    proc = train("steps=40", "val_every=10", "optimizer.main.lr=1e3", f"hydra.run.dir={run}", check=False)
    assert proc.returncode == 2
    line = [s for s in proc.stderr.splitlines() if s.startswith("error:")]
    assert (
        len(line) == 1
        and "training diverged at batch" in line[0]
        and "is nan" in line[0]
        and "last finite loss" in line[0]
    )
    assert "Traceback" not in proc.stderr
    record = results(run)  # the run's results.json says where it stopped, and it has no metrics
    assert record["status"] == "diverged" and "metrics" not in record
    assert record["diverged"]["batch"] < 40 and record["diverged"]["lr"] == 1e3
    assert not (run / "checkpoints" / "best.ckpt").exists()


def test_a_sweep_goes_on_past_a_diverged_run_and_its_report_says_so(tmp_path):
    sweep = tmp_path / "sweep"
    train("-m", "steps=12", "val_every=4", "optimizer.main.lr=1e-4,1e3", f"hydra.sweep.dir={sweep}")  # exit 0
    assert [results(sweep / n)["status"] for n in ("0", "1")] == ["complete", "diverged"]
    run_module("lic_kd.report", str(sweep), "--name", "d", "--out-root", str(tmp_path / "rep"))
    missing = pd.read_csv(tmp_path / "rep" / "d" / "missing_runs.csv")
    assert len(missing) == 1 and missing["reason"].iloc[0].startswith("diverged at batch")

    # results.json is the one contract: the sweep stripped to its results.json files reports the same
    stripped = tmp_path / "stripped"
    for path in sweep.rglob("results.json"):
        (stripped / path.relative_to(sweep)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, stripped / path.relative_to(sweep))
    assert sorted(p.name for p in stripped.rglob("*") if p.is_file()) == ["results.json", "results.json"]
    run_module("lic_kd.report", str(stripped), "--name", "s", "--out-root", str(tmp_path / "rep"))
    full, bare = tmp_path / "rep" / "d", tmp_path / "rep" / "s"
    for table in ("rd_table.csv", "bd_rate.csv", "complexity.csv", "distillation.csv"):
        assert (full / table).read_text() == (bare / table).read_text(), table
    again = pd.read_csv(bare / "missing_runs.csv")
    assert list(again["reason"]) == list(missing["reason"]) and Path(again["run_dir"].iloc[0]).name == "1"
    figures = sorted(p.name for p in full.glob("*.png"))
    assert figures and figures == sorted(p.name for p in bare.glob("*.png"))
    crops = (bare / "report.md").read_text()
    assert "(visual_comparison.png)" in crops and (full / "visual_comparison.png").stat().st_size > 10_000
    # each crop says what it shows: the decoded image's rate, or the file its results.json lists and that is missing
    assert visual_panel_titles(sweep).endswith(" bpp")
    assert visual_panel_titles(stripped) == "reconstructions/kodim01.png missing"


def visual_panel_titles(sweep):
    """What the visual comparison says of each run's crop: its rate, or that its file is missing."""
    from lic_kd.reporting import figures
    from lic_kd.reporting.curves import find_runs, rd_table

    found, _ = find_runs([sweep])
    rd = rd_table(found)
    coded = {r["read_from"]: {i["image"]: i for i in r["images"]} for r in found}
    row = rd.iloc[0]
    return figures._decoded(Path(row["read_from"]), coded[row["read_from"]]["kodim01.png"])[1]


def test_in_a_group_the_diverging_student_stops_and_the_others_go_on(tmp_path):
    source = tmp_path / "source"
    train(f"hydra.run.dir={source}")
    ckpt = torch.load(source / "checkpoints" / "best.ckpt", weights_only=False)
    for key in [k for k in ckpt["state_dict"] if k.startswith("net.g_a.") and k.endswith("weight")]:
        ckpt["state_dict"][key] = ckpt["state_dict"][key] * 1e30  # finite weights whose loss is not
    torch.save(ckpt, tmp_path / "exploding.ckpt")
    group = tmp_path / "group"
    proc = train(
        "steps=6",
        "val_every=3",
        f"student.init=[random,{tmp_path / 'exploding.ckpt'}]",
        f"hydra.run.dir={group}",
        check=False,
    )
    assert proc.returncode == 2 and "student(s) N8-init1 diverged" in proc.stderr
    assert results(group / "N8-random")["run"]["steps"] == 6  # the other student trained its whole budget ...
    logged = pd.read_csv(group / "csv" / "metrics.csv")["N8-random/train/loss"].notna().sum()
    assert logged == 6  # ... and no more, though the stopped student's optimizers no longer step
    failure = results(group / "N8-init1")
    assert failure["status"] == "diverged" and "metrics" not in failure
    assert failure["diverged"]["batch"] == 1 and failure["diverged"]["last_finite_loss"] is None


# 6. Schedules are fractions of the budget: changing steps keeps their meaning.
@pytest.mark.parametrize("steps", [200, 2000])
def test_the_demo_schedule_drops_the_rate_at_three_quarters_of_any_budget(steps):
    cfg = make(["experiment=demo", f"steps={steps}"])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = instantiate(cfg.scheduler, optimizer=optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs.index(0.1) == round(0.75 * steps)  # the batch after three quarters of the budget


def test_the_default_plateau_patience_is_a_fifth_of_the_budget_and_old_milestones_are_refused():
    cfg = make([])  # 2000 batches, a validation every 200
    scheduler = instantiate(cfg.scheduler, optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
    assert scheduler.patience == 2  # it can act within the default budget's 10 validations
    with pytest.raises(Exception, match="fractions of the training budget"):  # Hydra wraps it; the CLI prints it
        instantiate(
            make(["experiment=demo", "scheduler.milestones=[3]"]).scheduler,
            optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
        )


# 7. A budget that is not a multiple of val_every ends with a validation.
def test_the_last_batches_are_validated(tmp_path):
    run = tmp_path / "run"
    train("steps=5", "val_every=2", f"hydra.run.dir={run}")
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    assert sorted(metrics.dropna(subset=["val/loss"])["step"].tolist()) == [
        1,
        3,
        4,
    ]  # after batches 2, 4 and 5 (logged 0-based)


# 8. A quality preset and an experiment that both set the widths: an error, not a silent winner.
def test_rate_preset_and_experiment_conflict_is_an_error(tmp_path):
    proc = train("rate=q1", "experiment=demo", f"hydra.run.dir={tmp_path / 'r'}", check=False)
    assert proc.returncode == 2 and "rate=q1 sets student.N=128 but student.N=64 won (experiment=demo" in proc.stderr


# 9. One user-error type: a bug keeps its traceback, a user error is one line with one exit status.
def test_a_bug_keeps_its_traceback_and_a_user_error_is_one_line(capsys):
    def bug():
        raise ValueError("an internal invariant")

    def mistake():
        raise ConfigError("student.N must be positive, got -1")

    with pytest.raises(ValueError, match="an internal invariant"):
        run_cli(bug)
    with pytest.raises(SystemExit) as exit_:
        run_cli(mistake)
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: student.N must be positive, got -1\n")


@pytest.mark.parametrize(
    "module, args",
    [("lic_kd.report", ["does-not-exist", "--name", "x"]), ("lic_kd.teachers.export", ["does-not-exist", "out.pth"])],
)
def test_every_command_exits_with_the_same_status_on_a_user_error(module, args, tmp_path):
    proc = run_module(module, *args, cwd=tmp_path, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr


# 11. bpp of the file and of the payload (the strings alone, as eval_model counts); published curves use payload.
def test_payload_bpp_counts_the_strings_and_is_used_against_published_curves(tmp_path):
    from lic_kd.data import load_rgb
    from lic_kd.evaluation.coding import read_bitstream

    run = tmp_path / "run"
    train(f"hydra.run.dir={run}")
    r = results(run)
    for image in r["images"]:
        strings, _, (h, w) = read_bitstream(run / "bitstreams" / image["image"].replace(".png", ".lkd"))
        assert load_rgb(f"data/kodak/{image['image']}").size == (w, h)
        assert image["bpp_payload"] == pytest.approx(8 * sum(len(s[0]) for s in strings) / (h * w), rel=1e-12)
        assert 0 < image["bpp"] - image["bpp_payload"] < 8 * 40 / (h * w)  # lic_kd's header: tens of bytes
    ours = record("teacher", "mse")
    for rec in ours:
        rec["metrics"]["bpp_payload"] = rec["metrics"]["bpp"] * 0.5
    published = [
        {
            "run": {"role": "reference", "architecture": "published", "quality": i + 1, "run_dir": "ref"},
            "metrics": {"bpp": rec["metrics"]["bpp"] * 0.5, "psnr": rec["metrics"]["psnr"]},
        }
        for i, rec in enumerate(ours)
    ]
    bd = bd_table(rd_table(ours + published), rd_table(ours)["curve"].iloc[0], "pchip", "bpp", "psnr")
    row = bd[bd["curve"] == "published [ref]"].iloc[0]
    assert row["rate"] == "bpp_payload" and row["bd_rate_pct"] == pytest.approx(0.0, abs=1e-6)


def test_scheduler_none_beside_a_preset_that_tunes_its_schedule_is_a_constant_rate(tmp_path):
    """experiment=demo sets scheduler.milestones; scheduler=none with it trains at a constant rate (it used to
    crash inside Lightning on a schedule config without a _target_)."""
    run = tmp_path / "run"
    run_module(
        "lic_kd.train",
        "experiment=demo",
        "scheduler=none",
        "steps=2",
        "val_every=2",
        "student.N=8",
        "student.M=16",
        "data.crop_size=64",
        "data.val_crop_size=64",
        "data.batch_size=2",
        "data.eval_limit=1",
        f"hydra.run.dir={run}",
    )
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["lr_schedulers"] == [] and last["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-3
    assert (run / "results.json").is_file()
