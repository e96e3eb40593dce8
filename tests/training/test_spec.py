"""The run spec (lic_kd.training.spec): a composed configuration parsed once into typed values, every check made
where the value enters, the same for a run alone and for each job of a sweep."""

import pytest
import torch
from compressai.models import ScaleHyperprior
from omegaconf import OmegaConf

from conftest import REPO, compose_config, task_config
from lic_kd.errors import ConfigError
from lic_kd.models.checkpoints import SourceKind
from lic_kd.training.spec import InitKind, Role, parse_run

LADDER = REPO / "teachers" / "bmshj2018-hyperprior-N64-M96"


def spec(*overrides, run_dir="/runs/g"):
    return parse_run(task_config(["experiment=smoke", f"paths.output_dir={run_dir}", *overrides]))


def test_a_run_of_one_network_is_a_group_of_one_in_the_runs_own_directory():
    one = spec("student.N=16")
    assert one.role is Role.STUDENT and not one.grouped and one.teacher is None
    assert [(s.name, str(s.run_dir), s.init.kind) for s in one.students] == [("student", "/runs/g", InitKind.RANDOM)]
    assert (one.budget.steps, one.budget.val_every, one.seed) == (4, 2, 42)


def test_widths_and_inits_listed_are_every_combination_named_by_run_directory(tmp_path):
    run = spec("student.N=[16,32]")
    assert [s.name for s in run.students] == ["N16", "N32"] and run.grouped
    assert [s.cfg.student.N for s in run.students] == [16, 32]
    assert [str(s.run_dir) for s in run.students] == ["/runs/g/N16", "/runs/g/N32"]
    listed = spec(
        "student.N=[16]", f"student.init=[random,teacher,{tmp_path / 'a.ckpt'}]", f"teacher.checkpoint={tmp_path}"
    )
    assert [s.name for s in listed.students] == ["N16-random", "N16-teacher", "N16-init2"]
    assert [s.init.kind for s in listed.students] == [InitKind.RANDOM, InitKind.TEACHER, InitKind.CHECKPOINT]
    assert listed.students[2].init.path == str(tmp_path / "a.ckpt")
    assert listed.teacher.source.kind is SourceKind.SWEEP  # a directory without checkpoints/: runs by lambda


def test_each_student_has_the_command_line_as_its_own():
    cfg = compose_config(["experiment=smoke", "student.N=[16,32]", "lmbda=0.01", "paths.output_dir=/runs/g"])
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    assert parse_run(task).students[1].overrides == (
        "experiment=smoke",
        "student.N=32",
        "lmbda=0.01",
        "paths.output_dir=/runs/g",
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["student.N=[8,8]"], "distinct positive widths"),
        (["student.N=[]"], "distinct positive widths"),
        (["student.N=[0,8]"], "distinct positive widths"),
        (["student.init=[random,random]"], "distinct initialisations"),
        (["student.N=[8,12]", "prune=channels", "teacher.checkpoint=x"], "prune and quant runs are one network each"),
        (["student.N=[8,12]", "trainer.devices=2"], "set trainer.devices=1"),
        (["role=kd"], "role=kd needs a teacher"),
        (["student.init=teacher"], "student.init=teacher needs a teacher"),
        (["steps=0"], "steps must be a positive integer"),
        (["val_every=-1"], "val_every must be a positive integer"),
        (["quant=ptq"], "quantizes a trained network"),
        (["objective.metric=ms-ssim"], "needs training and validation crops of at least"),
    ],
)
def test_a_value_that_cannot_work_is_one_line_naming_it(overrides, message):
    with pytest.raises(ConfigError, match=message):
        spec(*overrides)


def one_teacher_run(run_dir, lmbda):
    """A lic_kd run directory holding one teacher trained at `lmbda`, as its checkpoint records it."""
    net = ScaleHyperprior(8, 16)
    record = {
        "net": {"_target_": "compressai.models.ScaleHyperprior", "N": 8, "M": 16},
        "loss": {"_target_": "lic_kd.training.losses.make_rd_loss", "lmbda": lmbda, "metric": "mse"},
        "role": "teacher",
    }
    (run_dir / "checkpoints").mkdir(parents=True)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save(
        {"state_dict": state, "hyper_parameters": record, "global_step": 8}, run_dir / "checkpoints" / "best.ckpt"
    )
    return run_dir


def test_a_kd_run_whose_teacher_is_one_run_at_another_lambda_is_refused_unless_the_user_says_so(tmp_path):
    teacher = one_teacher_run(tmp_path / "teacher", lmbda=0.005)
    with pytest.raises(ConfigError, match="trained at lmbda=0.005, this run's is 0.02: give a sweep dir or a ladder"):
        spec("role=kd", "lmbda=0.02", f"teacher.checkpoint={teacher}")
    assert spec("role=kd", "lmbda=0.02", f"teacher.checkpoint={teacher}", "teacher.any_lmbda=true").role is Role.KD
    assert spec("role=kd", "lmbda=0.005", f"teacher.checkpoint={teacher}").teacher.source.kind is SourceKind.RUN
    # one weights file of a ladder is one network too; the ladder itself gives each run its own lambda's rung
    rung = next(LADDER.glob("*-lmbda0.0004-*.pth.tar"))
    with pytest.raises(ConfigError, match="trained at lmbda=0.0004, this run's is 0.0018"):
        spec("role=kd", "lmbda=0.0018", f"teacher.checkpoint={rung}")
    assert spec("role=kd", "lmbda=0.0018", f"teacher.checkpoint={LADDER}").teacher.source.kind is SourceKind.LADDER


def test_pruning_sets_the_widths_from_the_teacher(tmp_path):
    teacher = one_teacher_run(tmp_path / "teacher", lmbda=0.013)
    pruned = spec("prune=channels", "prune.keep=0.5", f"teacher.checkpoint={teacher}")
    (student,) = pruned.students
    assert (student.cfg.student.N, student.cfg.student.M, student.init.kind) == (4, 16, InitKind.TEACHER)
    with pytest.raises(ConfigError, match="prune.criterion must be one of"):
        spec("prune=channels", "prune.criterion=size", f"teacher.checkpoint={teacher}")
