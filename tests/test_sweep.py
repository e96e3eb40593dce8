"""The sweep a researcher types is the study (lic_kd.sweep): read as it is meant, checked before anything trains,
planned, named by the command (the same command resumes it), reported when the last job ends."""

import json
import time

from omegaconf import OmegaConf

from conftest import REPO, run_module
from lic_kd.sweep import study_arguments, sweep_name, teacher_arguments

LADDER = REPO / "teachers" / "bmshj2018-hyperprior-N64-M96"
# the study's preset at the smoke preset's size: 64x64 crops, 4 batches, 2 Kodak images
TINY = ["steps=4", "val_every=2", "data.crop_size=64", "data.val_crop_size=64", "data.batch_size=2",
        "data.val_batch_size=2", "data.eval_limit=2"]  # fmt: skip


def test_widths_swept_alone_mean_plain_and_kd_students_trained_together_from_the_study_preset():
    assert study_arguments(["student.N=16,32,64"]) == ["student.N=[16,32,64]", "role=student,kd", "experiment=study"]
    assert study_arguments(["student.N=16,32", "role=kd"]) == ["student.N=[16,32]", "role=kd", "experiment=study"]
    # a command that names its experiment is run as written
    assert study_arguments(["student.N=16,32", "experiment=demo"]) == ["student.N=16,32", "experiment=demo"]
    assert study_arguments(["student.N=[16,32]", "lmbda=0.01,0.02"]) == ["student.N=[16,32]", "lmbda=0.01,0.02"]


def test_a_ladder_brings_its_student_lambdas_and_its_latent_width_unless_given():
    cfg = OmegaConf.create({"teacher": {"checkpoint": str(LADDER)}, "role": "kd", "student": {"M": 192}})
    assert teacher_arguments(["role=kd"], cfg) == ["role=kd", "lmbda=0.0009,0.0018,0.0035", "student.M=96"]
    assert teacher_arguments(["lmbda=0.013", "student.M=192"], cfg) == ["lmbda=0.013", "student.M=192"]
    teacher_run = OmegaConf.create({"teacher": {"checkpoint": None}, "role": "student", "student": {"M": 192}})
    assert teacher_arguments([], teacher_run) == []


def test_the_same_command_is_the_same_sweep_and_another_command_another():
    assert sweep_name(["student.N=16,32,64,96,112"]) == "student.N=16,32,64,96,112"
    assert sweep_name(["lmbda=0.01", "student.N=8,16"]) == sweep_name(["student.N=8,16", "lmbda=0.01"])
    assert sweep_name(["student.N=8,16"]) != sweep_name(["student.N=8,16", "role=kd"])
    assert sweep_name(["student.N=8,16", "plan_only=true"]) == sweep_name(["student.N=8,16"])


def test_a_misconfigured_kd_sweep_fails_in_seconds_with_one_line_and_trains_nothing(tmp_path):
    start = time.perf_counter()
    proc = run_module("lic_kd.train", "-m", "role=kd", "student.M=192", "student.N=16,32", *TINY,
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", check=False, cwd=tmp_path)  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: job role=kd student.M=192 student.N=[16,32] steps=4")
    assert errors[0].endswith("(the teacher's N=64, M=96): set student.M=96")
    assert not (tmp_path / "sweep").exists() and time.perf_counter() - start < 120


def test_a_teacher_run_at_another_lambda_is_refused_unless_the_user_says_so(tmp_path, teacher_sweep):
    one_run = teacher_sweep / "0"  # trained at lmbda 0.005
    args = ["-m", "experiment=smoke", "role=kd", "student.M=16", "lmbda=0.005,0.02", f"teacher.checkpoint={one_run}"]
    proc = run_module("lic_kd.train", *args, "plan_only=true", check=False, cwd=tmp_path)
    assert proc.returncode == 2 and "trained at lmbda=0.005, this run's is 0.02" in proc.stderr
    proc = run_module("lic_kd.train", *args, "teacher.any_lmbda=true", "plan_only=true", cwd=tmp_path)
    assert "plan: 2 jobs, 2 students" in proc.stdout
    # a single run makes the same check, before any training: one line, exit 2
    single = ["experiment=smoke", "role=kd", "student.M=16", "lmbda=0.02", f"teacher.checkpoint={one_run}"]
    proc = run_module("lic_kd.train", *single, f"hydra.run.dir={tmp_path / 'one'}", check=False, cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "trained at lmbda=0.005, this run's is 0.02" in errors[0]
    assert not (tmp_path / "one" / "checkpoints").exists() and "Trainer.fit" not in proc.stdout + proc.stderr


def test_the_study_plans_trains_reports_and_resumes(tmp_path):
    command = ["-m", "student.N=8,12", "lmbda=0.0009,0.0018", *TINY]
    planned = run_module("lic_kd.train", *command, "plan_only=true", cwd=tmp_path)
    assert "plan: 4 jobs, 8 students, on joblib, 2 processes at once" in planned.stdout
    assert "plan_only" not in planned.stdout  # the jobs as they will run, without the flag that only plans them
    name = sweep_name(command[1:])
    assert f"sweep dir outputs/sweeps/{name}" in planned.stdout and not (tmp_path / "outputs").exists()

    run_module("lic_kd.train", *command, cwd=tmp_path, timeout=900)
    report = tmp_path / "multirun_reports" / name
    assert (report / "report.md").is_file()
    runs = sorted((tmp_path / "outputs" / "sweeps" / name).glob("*/N*/results.json"))
    assert len(runs) == 8
    rd = (report / "rd_table.csv").read_text()
    assert "teacher-N64-M96 [ladder record" in rd  # the teacher curve, from the ladder's record
    distillation = (report / "distillation.csv").read_text().splitlines()
    assert {line.split(",")[1] for line in distillation[1:]} == {"8.0", "12.0"}  # a paired row per width

    mtimes = [p.stat().st_mtime for p in runs]
    again = run_module("lic_kd.train", *command, cwd=tmp_path)  # the same command: the same sweep, nothing retrained
    assert [p.stat().st_mtime for p in runs] == mtimes
    assert "complete, nothing to do" in again.stderr + again.stdout
    assert json.loads(runs[0].read_text())["run"]["training"]["segments"]
    replanned = run_module("lic_kd.train", *command, "plan_only=true", cwd=tmp_path)
    assert "4 of 4 jobs done" in replanned.stdout and replanned.stdout.count(", done: ") == 4

    # the same sweep dir asked for with another setting (a make target's fixed STUDY_DIR, a retrained teacher):
    # refused before anything trains, the finished runs kept
    sweep_dir = f"hydra.sweep.dir='{tmp_path / 'outputs' / 'sweeps' / name}'"  # quoted: the name holds = and ,
    other = run_module("lic_kd.train", *command, "optimizer.main.lr=3e-4", sweep_dir, check=False, cwd=tmp_path)
    assert other.returncode == 2 and "finished run of another configuration (optimizer.main.lr=" in other.stderr
    assert [p.stat().st_mtime for p in runs] == mtimes
