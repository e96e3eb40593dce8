"""Students trained together: who they are from student.N=[...] and student.init=[...], and each one's config."""

import pytest
from omegaconf import OmegaConf

from lic_kd.errors import ConfigError
from lic_kd.training.members import group_members, member_config, member_overrides


def cfg(N, init="random"):
    return OmegaConf.create({"student": {"N": N, "init": init}, "paths": {"output_dir": "/runs/g"}})


def test_one_width_and_one_init_is_not_a_group():
    assert group_members(cfg(16)) is None


def test_widths_and_inits_listed_are_every_combination_named_by_run_directory():
    assert group_members(cfg([16, 32])) == {"N16": {"N": 16, "init": "random"}, "N32": {"N": 32, "init": "random"}}
    members = group_members(cfg([16], ["random", "teacher", "/ckpt/a.ckpt"]))
    assert list(members) == ["N16-random", "N16-teacher", "N16-init2"]
    assert members["N16-init2"] == {"N": 16, "init": "/ckpt/a.ckpt"}


@pytest.mark.parametrize("widths", [[16, 16], [], [0, 8], [8.5]])
def test_widths_that_cannot_make_a_group_are_one_line(widths):
    with pytest.raises(ConfigError, match="distinct positive widths"):
        group_members(cfg(widths))


def test_each_student_has_its_own_width_run_directory_and_overrides():
    member = member_config(cfg([16, 32]), "N32", {"N": 32, "init": "random"})
    assert (member.student.N, member.paths.output_dir) == (32, "/runs/g/N32")
    assert member_overrides(["student.N=[16,32]", "lmbda=0.01"], {"N": 32, "init": "random"}) == [
        "student.N=32",
        "lmbda=0.01",
    ]
