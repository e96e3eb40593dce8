"""The entry points users run, end to end on tiny settings: train, sweep, resume, evaluate, report."""

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import CBSD68, REPO, refused, run_module, train


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_smoke_run_writes_results_with_real_bitstreams(tmp_path):
    run = tmp_path / "run"
    train(f"hydra.run.dir={run}")
    r = results(run)
    assert r["run"]["role"] == "student" and (r["run"]["N"], r["run"]["M"]) == (8, 16)
    assert r["run"]["steps"] == 4 and r["run"]["seed"] == 42 and r["run"]["lmbda"] == 0.013
    assert r["metrics"]["n_images"] == 2 and len(r["images"]) == 2
    for row in r["images"]:
        size = (run / "bitstreams" / row["image"].replace(".png", ".lkd")).stat().st_size
        assert row["bytes"] == size and row["bpp"] == pytest.approx(8 * size / (row["height"] * row["width"]))
    assert r["metrics"]["bpp"] == pytest.approx(sum(x["bpp"] for x in r["images"]) / 2)
    assert r["params"] > 0 and r["wall_time_s"] > 0
    # the steps budget counts training batches, though Lightning counts two optimizer steps per batch
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8
    # what the numbers were made with: the commit, whether the tree had changes, the packages
    import compressai
    import hydra
    import lightning

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    env = r["environment"]
    assert env["commit"] == commit and isinstance(env["uncommitted_changes"], bool)
    assert (env["torch"], env["compressai"], env["lightning"], env["hydra"]) == (
        torch.__version__,
        compressai.__version__,
        lightning.__version__,
        hydra.__version__,
    )
    assert r["status"] == "complete" and r["images"][0]["file"] == "bitstreams/kodim01.lkd"

    again = train(f"hydra.run.dir={run}")  # same command, same dir: nothing is redone or duplicated
    assert "is complete, nothing to do" in again.stdout + again.stderr
    assert results(run) == r


def test_sweep_of_students_and_kd_students_then_report(teacher_sweep, tmp_path):
    students = tmp_path / "students"
    proc = train(
        "-m",
        "role=student,kd",
        "student.N=8,16",
        "lmbda=0.005,0.02",
        f"teacher.checkpoint={teacher_sweep}",
        f"hydra.sweep.dir={students}",
    )
    runs = sorted(students.glob("*/results.json"))
    assert len(runs) == 8, proc.stderr[-2000:]
    kd = [json.loads(p.read_text())["run"] for p in runs if json.loads(p.read_text())["run"]["role"] == "kd"]
    assert len(kd) == 4
    for run in kd:  # each KD student was distilled from the teacher trained at its own lambda
        teacher_dir = [
            p.parent
            for p in teacher_sweep.glob("*/results.json")
            if json.loads(p.read_text())["run"]["lmbda"] == run["lmbda"]
        ][0]
        assert run["teacher"]["checkpoint"] == str(teacher_sweep)
        assert run["loss"] == "kd" and run["loss_weights"]["w_y"] == 0.3
        assert teacher_dir.is_dir()

    report = run_module(
        "lic_kd.report", str(teacher_sweep), str(students), "--name", "t", "--out-root", str(tmp_path / "rep")
    )
    out = tmp_path / "rep" / "t"
    rd = pd.read_csv(out / "rd_table.csv")
    assert len(rd) == 10 and set(rd["role"]) == {"teacher", "student", "kd"}
    bd = pd.read_csv(out / "bd_rate.csv")
    assert set(bd["curve"]) == {"student-N8-M16", "student-N16-M16", "kd-N8-M16", "kd-N16-M16"}
    assert (bd["anchor"] == "teacher-N8-M16").all() and (bd["points"] == 2).all()
    # every curve has a number or the reason it has none
    assert (bd["bd_rate_pct"].notna() | bd["reason"].fillna("").str.len().gt(0)).all()
    assert "BD-rate" in report.stdout and (out / "rd_table.md").is_file() and (out / "bd_rate.md").is_file()
    for figure in ("rd_curves.png", "complexity_vs_width.png", "visual_comparison.png"):
        assert (out / figure).stat().st_size > 10_000, figure
        assert f"({figure})" in (out / "report.md").read_text()
    complexity = pd.read_csv(out / "complexity.csv")
    assert (
        set(complexity["N"]) == {8, 16}
        and (complexity["kmac_decoder"] > 0).all()
        and (complexity["decoder_fps"] > 0).all()
    )
    exported = json.loads((out / "curves" / "kd-N16-M16.json").read_text())
    assert exported["name"] == "kd-N16-M16" and len(exported["results"]["bpp"]) == 2


def test_submitit_local_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    train("-m", "launcher=submitit_local", "student.N=8,12", f"hydra.sweep.dir={sweep}", timeout=900)
    found = sorted(sweep.glob("*/results.json"))
    assert len(found) == 2
    assert {json.loads(p.read_text())["run"]["N"] for p in found} == {8, 12}
    assert list(sweep.glob(".submitit/*/*_log.out"))  # ran as submitit jobs


def test_resume_after_the_process_is_killed(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "lic_kd.train", "experiment=smoke", "steps=60", "val_every=5", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            try:
                step = torch.load(last, weights_only=False)["global_step"]
            except Exception:  # caught mid-write
                step = 0
            if step >= 20:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < step < 120, f"the run was not caught mid-training (step {step})"
    assert results(run)["status"] == "running" and "metrics" not in results(run)  # a report lists it: killed?

    resumed = train("steps=60", "val_every=5", f"hydra.run.dir={run}")
    assert f"resuming from {last}" in resumed.stderr + resumed.stdout
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    r = results(run)
    assert r["run"]["steps"] == 60
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    assert metrics["step"].min() < step  # the log of the first attempt is kept


def test_evaluate_entry_point_codes_a_folder(teacher_sweep, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("101085.png", "101087.png"):
        Image.open(CBSD68 / name).crop((0, 0, 200, 170)).save(images / name)
    run_module(
        "lic_kd.evaluate", f"checkpoint={teacher_sweep / '0'}", f"images={images}", f"hydra.run.dir={tmp_path / 'ev'}"
    )
    r = results(tmp_path / "ev")
    assert r["run"]["role"] == "teacher" and r["metrics"]["n_images"] == 2
    assert len(list((tmp_path / "ev" / "bitstreams").glob("*.lkd"))) == 2


def bad_run(tmp_path, *args):
    return refused(tmp_path / "bad", *args)


def test_a_mistake_is_one_line_and_exit_status_2_before_any_training(tmp_path):
    proc = train(f"hydra.run.dir={tmp_path / 'bad'}", "student.N=0", check=False)
    assert proc.returncode == 2 and "Trainer.fit" not in proc.stdout + proc.stderr
    # one line a person reads, no traceback unless asked (HYDRA_FULL_ERROR=1)
    assert "Traceback" not in proc.stderr and proc.stderr.rstrip().splitlines()[-2] == (
        "error: network width N must be a positive integer, got 0"
    )
    record = json.loads((tmp_path / "bad" / "results.json").read_text())  # what a report lists for it
    assert record["status"] == "failed"
    assert record["error"].endswith("network width N must be a positive integer, got 0")


@pytest.mark.parametrize(
    "override, message",
    [
        ("student.M=-4", "network width M must be a positive integer, got -4"),
        ("lmbda=0", "lmbda must be > 0, got 0"),
        ("steps=0", "steps must be a positive integer"),
        ("data.train_dir=/no/such/dir", "image folder does not exist: /no/such/dir"),
        ("threads=0", "threads must be a positive number of CPU threads or null, got 0"),
    ],
)
def test_bad_values_fail_with_a_clear_message(tmp_path, override, message):
    assert message in bad_run(tmp_path, override)


def test_kd_without_teacher_or_with_a_missing_checkpoint(tmp_path):
    assert "role=kd needs a teacher" in bad_run(tmp_path, "role=kd")
    assert "checkpoint not found: /no/teacher.ckpt" in bad_run(
        tmp_path, "role=kd", "teacher.checkpoint=/no/teacher.ckpt"
    )


def test_kd_shape_mismatch_is_an_error_before_training(teacher_sweep, tmp_path):
    teacher = f"teacher.checkpoint={teacher_sweep / '0'}"  # trained at lmbda 0.005
    out = bad_run(tmp_path, "role=kd", teacher, "lmbda=0.005", "student.N=16", "loss.w_z=0.5")
    assert "KD on z_hat needs equal student and teacher shapes" in out
    out = bad_run(tmp_path, "role=kd", teacher, "lmbda=0.005", "student.M=24")
    assert "KD on y_hat needs equal student and teacher shapes" in out


def test_corrupt_training_image_is_named_before_training(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in sorted(p.name for p in CBSD68.glob("*.png"))[:6]:
        (data / name).write_bytes((CBSD68 / name).read_bytes())
    (data / "zz_corrupt.png").write_bytes((CBSD68 / "101085.png").read_bytes()[:500])
    assert "cannot read image" in (out := bad_run(tmp_path, f"data.train_dir={data}")) and "zz_corrupt.png" in out


def test_a_sweep_with_one_impossible_job_trains_nothing_and_names_it(tmp_path):
    sweep = tmp_path / "sweep"
    proc = train("-m", "student.N=8,0", f"hydra.sweep.dir={sweep}", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1
    assert errors[0] == "error: job experiment=smoke student.N=0: network width N must be a positive integer, got 0"
    assert not (sweep / "0").exists()  # checked before the first job: the good one did not train either


def test_kd_on_z_with_a_thin_student_whose_hyper_latent_matches_the_teacher(teacher_sweep, tmp_path):
    run = tmp_path / "run"
    train(
        "role=kd",
        f"teacher.checkpoint={teacher_sweep / '0'}",
        "lmbda=0.005",  # the teacher's
        "model=bmshj2018-hyperprior-hyperwidth",
        "student.N=4",
        "model.hyper_N=8",
        "loss.w_z=0.5",
        f"hydra.run.dir={run}",
    )
    r = results(run)
    assert r["run"]["N"] == 4 and r["run"]["loss_weights"]["w_z"] == 0.5
    assert r["run"]["architecture"] == "ScaleHyperpriorHyperWidth"
    assert "val/kd_loss" in pd.read_csv(run / "csv" / "metrics.csv").columns
