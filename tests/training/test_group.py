"""Students trained together (student.N=[...]): one process, one teacher forward per batch, and each student
ends exactly where it would have ended trained alone (a run of one network is a group of one: the same path), in
its own run directory, resumable and reported."""

import json

import pandas as pd
import torch

from conftest import run_module, train

QUALITY = ("bpp", "bpp_estimated", "psnr", "ms_ssim")


def net_state(path, student=None):
    """A student's weights: its own best.ckpt, or its part of the run's trainer state (last.ckpt)."""
    prefix = "net." if student is None else f"students.{student}.net."
    state = torch.load(path, weights_only=False)["state_dict"]
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_a_group_trains_each_student_as_it_would_be_trained_alone(teacher_sweep, tmp_path):
    role = "kd"  # the shared teacher's path; a plain group is the same loop without it (test_a_group_resumes...)
    common = ("steps=6", "val_every=3", f"role={role}", "lmbda=0.005", f"teacher.checkpoint={teacher_sweep}")
    group = tmp_path / "group"
    train(*common, "student.N=[4,8]", "student.init=[random,teacher]", f"hydra.run.dir={group}")
    names = ["N4-random", "N4-teacher", "N8-random", "N8-teacher"]
    assert sorted(p.parent.name for p in group.glob("*/results.json")) == sorted(names)
    for width, init in ((4, "random"), (8, "teacher")):  # the teacher is N=8
        alone = tmp_path / f"alone{width}"
        train(*common, f"student.N={width}", f"student.init={init}", f"hydra.run.dir={alone}")
        member = group / f"N{width}-{init}"
        # same batches, same noise, same teacher targets: the same weights, at the best validation and at the end
        pairs = [
            (net_state(alone / "checkpoints" / "best.ckpt"), net_state(member / "checkpoints" / "best.ckpt")),
            (
                net_state(alone / "checkpoints" / "last.ckpt", "student"),
                net_state(group / "checkpoints" / "last.ckpt", member.name),
            ),
        ]
        for a, b in pairs:
            assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), width
        r, m = results(alone), results(member)
        assert {k: r["metrics"][k] for k in QUALITY} == {k: m["metrics"][k] for k in QUALITY}
        assert (m["run"]["N"], m["run"]["init"], m["run"]["role"], m["run"]["steps"]) == (width, init, role, 6)
        assert m["run"]["trained_with"] == names and "trained_with" not in r["run"]
        assert f"student.N={width}" in m["run"]["overrides"] and f"student.init={init}" in m["run"]["overrides"]
        assert r["run"]["teacher"] == m["run"]["teacher"]

    report = run_module("lic_kd.report", str(group), "--name", "g", "--out-root", str(tmp_path / "rep"))
    rd = pd.read_csv(tmp_path / "rep" / "g" / "rd_table.csv")
    assert sorted(rd["N"]) == [4, 4, 8, 8]
    assert "did not finish" not in report.stdout + report.stderr  # the group's own dir is not a run of its own


def test_a_group_resumes_and_evaluates_only_what_is_missing(tmp_path):
    group = tmp_path / "group"
    train("steps=4", "val_every=2", "student.N=[8,12]", f"hydra.run.dir={group}")
    for width in (8, 12):
        (group / f"N{width}" / "results.json").unlink()  # as if killed before the students were evaluated
    proc = train("steps=8", "val_every=2", "student.N=[8,12]", f"hydra.run.dir={group}")  # a longer budget: it goes on
    assert f"resuming from {group / 'checkpoints' / 'last.ckpt'} at batch 4 of 8" in proc.stdout + proc.stderr
    assert [results(group / f"N{w}")["run"]["steps"] for w in (8, 12)] == [8, 8]

    first = results(group / "N8")
    (group / "N8" / "results.json").unlink()  # killed after the run's last.ckpt, before N8 was evaluated
    proc = train("steps=8", "val_every=2", "student.N=[8,12]", f"hydra.run.dir={group}")
    assert "at batch 8 of 8" in proc.stdout + proc.stderr  # nothing left to train
    assert f"evaluating 2 images with {group / 'N8'}" in proc.stdout + proc.stderr
    assert f"evaluating 2 images with {group / 'N12'}" not in proc.stdout + proc.stderr
    assert {k: results(group / "N8")["metrics"][k] for k in QUALITY} == {k: first["metrics"][k] for k in QUALITY}
    assert results(group / "N8")["run"]["steps"] == 8
    again = train("steps=8", "val_every=2", "student.N=[8,12]", f"hydra.run.dir={group}")
    assert "complete, nothing to do" in again.stdout + again.stderr


def test_a_group_that_fails_while_building_records_why_in_each_student(teacher_sweep, tmp_path):
    group = tmp_path / "group"
    proc = train(
        "role=kd",
        "student.M=8",
        "student.N=[4,8]",
        f"teacher.checkpoint={teacher_sweep}",
        "lmbda=0.005",
        f"hydra.run.dir={group}",
        check=False,
    )
    assert proc.returncode != 0 and "KD on y_hat needs equal student and teacher shapes" in proc.stderr + proc.stdout
    for name in ("N4", "N8"):  # each student's results.json says why it has no metrics, as a run of its own would
        failure = results(group / name)
        assert failure["status"] == "failed" and "equal student and teacher shapes" in failure["error"]
        assert failure["run"]["N"] == int(name[1:]) and failure["run"]["trained_with"] == ["N4", "N8"]
    assert not (group / "checkpoints").exists()
