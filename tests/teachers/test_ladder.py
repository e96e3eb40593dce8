"""Teacher ladders: a sweep of teachers shipped as CompressAI-format weights with provenance and hashes,
named like a sweep directory by KD runs, evaluated by lambda, and read by CompressAI itself."""

import csv
import json

import pytest
import torch
from compressai.models import ScaleHyperprior

from conftest import KODAK, run_module, train
from lic_kd.data import load_rgb, to_tensor
from lic_kd.errors import CheckpointError
from lic_kd.evaluation.coding import prepare_for_coding
from lic_kd.io import sha256
from lic_kd.models.checkpoints import load_net
from lic_kd.models.ladder import LADDER_FILE

# enough training that rate and quality follow lambda (a 4-step smoke model codes every image alike)
BUDGET = ["steps=40", "val_every=20", "optimizer.main.lr=2e-3"]


@pytest.fixture(scope="module")
def teacher_sweep(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("ladder_teachers")
    train("-m", "role=teacher", "lmbda=0.005,0.05", *BUDGET, f"hydra.sweep.dir={sweep}")
    return sweep


@pytest.fixture(scope="module")
def ladder(teacher_sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped") / "smoke-ladder"
    # the first teacher stands in for the base that a real ladder's rungs are fine-tuned from
    proc = run_module(
        "lic_kd.teachers.ladder",
        str(teacher_sweep),
        str(out),
        "--base",
        str(teacher_sweep / "0"),
        "--command",
        "python -m lic_kd.train -m role=teacher ...",
        "--note",
        "smoke",
    )
    assert "lmbda 0.005" in proc.stdout and "lmbda 0.05" in proc.stdout
    return out


def test_ladder_records_provenance_and_hashes(ladder, teacher_sweep):
    record = json.loads((ladder / LADDER_FILE).read_text())
    assert record["architecture"] == "compressai.models.ScaleHyperprior" and (record["N"], record["M"]) == (8, 16)
    assert record["command"].startswith("python -m lic_kd.train") and record["machine"]["cores"] >= 1
    assert record["data"]["train"]["folders"] == ["cbsd68"]
    assert [r["lmbda"] for r in record["rungs"]] == [0.005, 0.05]
    base = record["base"]
    assert (
        base["file"].startswith("smoke-ladder-base-lmbda") and base["steps_total"] == 40 and record["notes"] == "smoke"
    )
    assert f"{base['sha256']}  {base['file']}" in (ladder / "SHA256SUMS").read_text()
    net, _ = load_net(ladder / base["file"])  # what continuing the base (student.init=FILE) loads
    assert net.N == 8
    sums = (ladder / "SHA256SUMS").read_text().splitlines()
    for rung, line in zip(record["rungs"], sums):
        path = ladder / rung["file"]
        assert sha256(path) == rung["sha256"] and line == f"{rung['sha256']}  {rung['file']}"
        assert path.name.endswith(f"-{rung['sha256'][:8]}.pth.tar")  # CompressAI's naming
        assert rung["kodak"]["n_images"] == 2 and rung["kodak"]["bpp"] > 0 and rung["seed"] == 42
        shipped = json.loads(
            next(
                p
                for p in teacher_sweep.glob("*/results.json")
                if json.loads(p.read_text())["run"]["lmbda"] == rung["lmbda"]
            ).read_text()
        )
        assert rung["kodak"]["psnr"] == shipped["metrics"]["psnr"]


def test_ladder_rung_by_lambda_and_compressai_reads_the_file(ladder, teacher_sweep):
    net, meta = load_net(ladder, lmbda=0.05)
    assert meta["role"] == "teacher" and meta["loss"]["lmbda"] == 0.05
    trained, _ = load_net(teacher_sweep, lmbda=0.05)
    for (k, a), b in zip(trained.named_parameters(), net.parameters()):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError, match="no teacher at lmbda=0.01; its rungs: 0.005, 0.05"):
        load_net(ladder, lmbda=0.01)
    # CompressAI's own loader takes the file as it is (CDF tables included) and codes with it
    file = ladder / json.loads((ladder / LADDER_FILE).read_text())["rungs"][1]["file"]
    model = ScaleHyperprior.from_state_dict(torch.load(file, map_location="cpu")).eval()
    x = to_tensor(load_rgb(KODAK / "kodim01.png"))[None, :, :256, :256]
    with torch.inference_mode():
        ours = prepare_for_coding(trained).compress(x)["strings"]
        assert model.compress(x)["strings"] == ours


def test_damaged_ladder_file_is_named(ladder, tmp_path):
    import shutil

    copy = tmp_path / "ladder"
    shutil.copytree(ladder, copy)
    file = copy / json.loads((copy / LADDER_FILE).read_text())["rungs"][0]["file"]
    data = bytearray(file.read_bytes())
    data[-100] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{file.name} is damaged: sha256"):
        load_net(copy, lmbda=0.005)


def test_an_evaluation_of_a_ladder_since_retrained_is_named_not_kept(ladder, tmp_path):
    """make demo and make study code the shipped ladder into a fixed directory: after the ladder is retrained,
    the same command must not keep the old rungs' numbers as the new ones'."""
    run_dir = tmp_path / "teacher"
    evaluate = ("lic_kd.evaluate", f"checkpoint={ladder}", "lmbda=0.005", "limit=1", f"hydra.run.dir={run_dir}")
    run_module(*evaluate)
    assert "complete, nothing to do" in (again := run_module(*evaluate)).stdout + again.stderr
    results = json.loads((run_dir / "results.json").read_text())
    results["run"]["settings"]["ladder.fingerprint"] = "0123456789ab"  # what the ladder before its retraining had
    (run_dir / "results.json").write_text(json.dumps(results))
    proc = run_module(*evaluate, check=False)
    assert proc.returncode == 2 and "another configuration (ladder.fingerprint=0123456789ab there," in proc.stderr
    assert json.loads((run_dir / "results.json").read_text()) == results


def test_students_start_from_the_ladder_and_report_what_kd_buys(ladder, tmp_path):
    teachers = tmp_path / "teachers"
    # as make demo runs them: jobs in two parallel processes of one torch thread each (launcher=joblib)
    run_module(
        "lic_kd.evaluate",
        "-m",
        "launcher=joblib",
        f"checkpoint={ladder}",
        "lmbda=0.005,0.05",
        "limit=2",
        f"hydra.sweep.dir={teachers}",
    )
    evaluated = sorted(json.loads(p.read_text())["run"]["lmbda"] for p in teachers.glob("*/results.json"))
    assert evaluated == [0.005, 0.05]
    students = tmp_path / "students"
    train(
        "-m",
        "launcher=joblib",
        "role=student,kd",
        "student.N=4",
        "lmbda=0.005,0.05",
        *BUDGET,
        "student.init=teacher",
        f"teacher.checkpoint={ladder}",
        "seed=1,2",
        f"hydra.sweep.dir={students}",
    )
    results = [json.loads(p.read_text()) for p in [*students.glob("*/results.json"), *teachers.glob("*/results.json")]]
    assert {r["environment"]["cpu_threads"] for r in results} == {1}
    runs = [r["run"] for r in results[:-2]]
    assert len(runs) == 8 and {r["init"] for r in runs} == {"teacher"} and {r["N"] for r in runs} == {4}
    run_module(
        "lic_kd.report", str(teachers), str(students), "--name", "ladder", "--out-root", str(tmp_path / "reports")
    )
    out = tmp_path / "reports" / "ladder"
    import pandas as pd

    distill = pd.read_csv(out / "distillation.csv")
    assert len(distill) == 1 and distill.loc[0, "N"] == 4 and distill.loc[0, "init"] == "teacher"
    assert distill.loc[0, "teacher_kmac_ratio"] > 1 and distill.loc[0, "plain_curve"] == "student-N4-M16"
    # 40-step models give curves too rough for a BD value at times: then the reason is given (the maths is
    # tested on known curves in test_repeats.py)
    assert distill.loc[0, "n"] == 2 or "monotonic" in distill.loc[0, "reason"] or "overlap" in distill.loc[0, "reason"]
    report = (out / "report.md").read_text()
    assert "## What distillation buys" in report and "## Teachers against classical codecs" not in report


def test_init_teacher_without_teacher_is_an_error(tmp_path):
    from conftest import refused

    message = "student.init=teacher needs a teacher: set teacher.checkpoint=PATH"
    assert message in refused(tmp_path / "run", "role=student", "student.init=teacher")


def test_compressai_eval_model_reads_an_export_and_agrees(teacher_sweep, tmp_path):
    """Parity: CompressAI's own evaluation of an exported run gives lic_kd's PSNR and MS-SSIM, and its bpp
    (strings only) differs from lic_kd's (the whole file) by lic_kd's header alone."""
    import shutil

    run = next(
        p.parent for p in teacher_sweep.glob("*/results.json") if json.loads(p.read_text())["run"]["lmbda"] == 0.05
    )
    proc = run_module("lic_kd.teachers.export", str(run), str(tmp_path / "smoke-teacher.pth.tar"))
    exported = next(tmp_path.glob("smoke-teacher-*.pth.tar"))
    assert str(exported) in proc.stdout and exported.name == f"smoke-teacher-{sha256(exported)[:8]}.pth.tar"
    images = tmp_path / "images"
    images.mkdir()
    for name in ("kodim01.png", "kodim02.png"):  # the two images the smoke run coded
        shutil.copy(KODAK / name, images / name)
    run_module(
        "compressai.utils.eval_model",
        "checkpoint",
        str(images),
        "-a",
        "bmshj2018-hyperprior",
        "-p",
        str(exported),
        "-d",
        str(tmp_path),
        "-o",
        "theirs",
    )
    theirs = {k: v[0] for k, v in json.loads((tmp_path / "theirs.json").read_text())["results"].items()}
    ours = json.loads((run / "results.json").read_text())["metrics"]
    assert ours["psnr"] == pytest.approx(theirs["psnr-rgb"], abs=1e-4)
    assert ours["ms_ssim"] == pytest.approx(theirs["ms-ssim-rgb"], abs=1e-4)
    header_bytes = (ours["bpp"] - theirs["bpp"]) * 768 * 512 / 8
    assert 0 < header_bytes < 64, (
        f"lic_kd's file = CompressAI's strings + its header, got {header_bytes:.1f} bytes more"
    )


def test_rungs_fine_tuned_from_the_base_are_appended(ladder, tmp_path):
    import shutil

    copy = tmp_path / "smoke-ladder"
    shutil.copytree(ladder, copy)
    base = json.loads((copy / LADDER_FILE).read_text())["base"]["file"]
    sweep = tmp_path / "low"
    train("-m", "role=teacher", "lmbda=0.002", f"student.init={copy / base}", f"hydra.sweep.dir={sweep}")
    run_module(
        "lic_kd.teachers.ladder",
        str(sweep),
        str(copy),
        "--append",
        "--command",
        "python -m lic_kd.train lmbda=0.002 ...",
    )
    record = json.loads((copy / LADDER_FILE).read_text())
    assert [r["lmbda"] for r in record["rungs"]] == [0.002, 0.005, 0.05]
    new = record["rungs"][0]
    assert new["init"] == "base" and new["command"].endswith("lmbda=0.002 ...") and new["steps_total"] == 40 + 4
    assert f"{new['sha256']}  {new['file']}" in (copy / "SHA256SUMS").read_text()
    net, meta = load_net(copy, lmbda=0.002)
    assert meta["loss"]["lmbda"] == 0.002
    # a run that did not start from the ladder's base is refused, by name
    other = tmp_path / "other"
    train("-m", "role=teacher", "lmbda=0.003", f"hydra.sweep.dir={other}")
    proc = run_module("lic_kd.teachers.ladder", str(other), str(copy), "--append", "--command", "x", check=False)
    assert proc.returncode != 0 and "not from this ladder's base" in proc.stderr


def test_a_base_trained_on_from_the_shipped_base_counts_its_batches_and_keeps_the_previous_numbers(ladder, tmp_path):
    """The stronger-ladder path: the shipped base file, copied out of its ladder (a plain CompressAI file: the run
    takes its own class), trained on and shipped over the old ladder. The new base counts the old base's batches
    and time (continued_from), its rungs count the whole base, and the replaced ladder's Kodak numbers stay in
    `previous`."""
    import shutil

    copy = tmp_path / "smoke-ladder"
    shutil.copytree(ladder, copy)
    old = json.loads((copy / LADDER_FILE).read_text()) | {"student_lmbdas": [0.05]}
    (copy / LADDER_FILE).write_text(json.dumps(old))
    start = shutil.copy(copy / old["base"]["file"], tmp_path / "base-start.pth.tar")  # no ladder.json beside it
    base = tmp_path / "base"
    for steps in (6, 9):  # trained on in two segments, each coded on the images
        train(
            "role=teacher",
            "lmbda=0.005",
            f"steps={steps}",
            "val_every=3",
            f"student.init={start}",
            f"hydra.run.dir={base}",
        )
    rungs = tmp_path / "rungs"
    train("-m", "role=teacher", "lmbda=0.005,0.05", "steps=2", f"student.init={base}", f"hydra.sweep.dir={rungs}")
    run_module("lic_kd.teachers.ladder", str(rungs), str(copy), "--base", str(base), "--command", "x")
    new = json.loads((copy / LADDER_FILE).read_text())
    assert new["base"]["steps_total"] == 40 + 9 and new["base"]["continued_from"]["sha256"] == old["base"]["sha256"]
    assert new["base"]["wall_time_s"] > old["base"]["wall_time_s"]
    assert [r["steps_total"] for r in new["rungs"]] == [40 + 9 + 2] * 2
    # the base's Kodak curve: the old base where it started, then each segment's evaluation
    during = new["base"]["kodak_during_training"]
    assert [p["batches"] for p in during] == [40, 46, 49] and during[0]["psnr"] == old["base"]["kodak"]["psnr"]
    segment = json.loads((base / "results-6.json").read_text())["metrics"]
    assert during[1]["psnr"] == segment["psnr"] and during[-1]["psnr"] == new["base"]["kodak"]["psnr"]
    reports = tmp_path / "reports"
    # the new ladder beside the one it replaced: two curves, each named by its fingerprint, neither dropped
    run_module(
        "lic_kd.report", "--ladder", str(copy), "--ladder", str(ladder), "--name", "base", "--out-root", str(reports)
    )
    curves = {r["curve"] for r in csv.DictReader(open(reports / "base" / "rd_table.csv"))}
    assert len({c for c in curves if "[ladder record" in c}) == 2
    table = list(csv.DictReader(open(reports / "base" / "base_training.csv")))
    by_ladder = {
        name: [int(r["batches"]) for r in table if r["ladder"] == name] for name in {r["ladder"] for r in table}
    }
    assert sorted(by_ladder.values()) == [[40], [40, 46, 49]]  # the old base coded once, the new one on the way
    assert (reports / "base" / "base_training.png").is_file()
    assert "![base training](base_training.png)" in (reports / "base" / "report.md").read_text()
    assert new["previous"]["rungs"] == [{k: r[k] for k in ("lmbda", "steps_total", "kodak")} for r in old["rungs"]]
    assert new["previous"]["base"]["kodak"] == old["base"]["kodak"]
    assert new["student_lmbdas"] == [0.05]  # the students' default lambdas, still rungs: kept
    # a base trained from scratch continues nothing
    scratch = tmp_path / "scratch"
    train("role=teacher", "lmbda=0.005", f"hydra.run.dir={scratch}")
    run_module("lic_kd.teachers.ladder", str(rungs), str(copy), "--base", str(scratch), "--command", "x")
    again = json.loads((copy / LADDER_FILE).read_text())
    assert "continued_from" not in again["base"] and again["base"]["steps_total"] == 4
    assert [p["batches"] for p in again["base"]["kodak_during_training"]] == [4]
    assert again["previous"]["base"]["steps_total"] == 49  # the ladder it replaced
