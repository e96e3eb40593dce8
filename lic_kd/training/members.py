"""Students trained together (student.N=[16,32], student.init=[random,teacher]): who they are, and the
configuration and run directory of each."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from lic_kd.errors import ConfigError
from lic_kd.training.setup import hydra_overrides


def _is_list(value: Any) -> bool:
    return isinstance(value, (ListConfig, list))


def group_members(cfg: DictConfig) -> dict[str, dict[str, Any]] | None:
    """student.N=[16,32,48] and/or student.init=[random,teacher]: every combination, students trained together
    (lic_kd.training.group), by run-directory name (N16, or N16-teacher when inits are listed); None for one network."""
    widths, inits = cfg.student.get("N"), cfg.student.get("init")
    if not _is_list(widths) and not _is_list(inits):
        return None
    width_list = list(widths) if _is_list(widths) else [widths]
    if (
        not width_list
        or len(set(width_list)) != len(width_list)
        or not all(isinstance(n, int) and n > 0 for n in width_list)
    ):
        raise ConfigError(
            f"student.N=[...] lists the distinct positive widths of students trained together, got {width_list}"
        )
    init_list = [i or "random" for i in inits] if _is_list(inits) else [inits or "random"]
    if not init_list or len(set(init_list)) != len(init_list):
        raise ConfigError(
            f"student.init=[...] lists distinct initialisations of students trained together, got {init_list}"
        )

    def name(width: int, index: int, init: str) -> str:
        if not _is_list(inits):
            return f"N{width}"
        return f"N{width}-{init if init in ('random', 'teacher') else f'init{index}'}"

    return {name(n, i, init): {"N": n, "init": init} for n in width_list for i, init in enumerate(init_list)}


def member_config(cfg: DictConfig, name: str, student: dict[str, Any]) -> DictConfig:
    """The configuration of one student of a group: its width and init, its run directory inside the group's."""
    member = copy.deepcopy(cfg)
    with open_dict(member):
        member.student.N, member.student.init = student["N"], student["init"]
        member.paths.output_dir = str(Path(cfg.paths.output_dir) / name)
    return member


def member_overrides(overrides: list[str], student: dict[str, Any]) -> list[str]:
    """The group's command-line overrides as this student's own: student.N=16, student.init=teacher."""
    own = {f"student.{k}": f"student.{k}={v}" for k, v in student.items()}
    return [own.get(o.lstrip("+").split("=", 1)[0], o) for o in overrides]


def write_member_hydra_dir(member_cfg: DictConfig, member_dir: Path, student: dict[str, Any]) -> None:
    """A student's run directory looks like any run's: its own configuration in .hydra/."""
    hydra_dir = member_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(member_cfg))
    (hydra_dir / "overrides.yaml").write_text(
        OmegaConf.to_yaml(OmegaConf.create(member_overrides(hydra_overrides(), student)))
    )
