"""Hydra's basic sweeper, as lic_kd sweeps: the command read as the study it means, every job composed and checked
before the first starts, the plan printed, the sweep directory named by the command, and the report written at
the end even when a job failed (lic_kd.sweep). conf/hydra/sweeper/lic_kd_study.yaml selects it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from omegaconf import OmegaConf, open_dict


class StudySweeper(BasicSweeper):
    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.task_function = task_function

    def sweep(self, arguments: List[str]) -> Any:
        from lic_kd import sweep

        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        loader = self.hydra_context.config_loader
        given = list(arguments)
        arguments = sweep.study_arguments(given)
        first = loader.load_sweep_config(self.config, self._jobs(arguments)[0])
        arguments = sweep.teacher_arguments(arguments, first)
        with open_dict(self.config):
            if "${now:" in str(OmegaConf.to_container(self.config.hydra, resolve=False)["sweep"]["dir"]):
                sweep_dir = str(Path("outputs/sweeps") / sweep.sweep_name(given))
                self.config.hydra.sweep.dir = sweep_dir
                # every job's config is composed again from the hydra overrides (in the launcher's workers too)
                self.config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{sweep_dir}'")
            if arguments != given and first.hydra.launcher != self.config.hydra.launcher:
                # the study's preset chose its launcher (experiment=study: joblib): the sweep runs on it
                self.config.hydra.launcher = first.hydra.launcher
                self.launcher = Plugins.instance().instantiate_launcher(
                    hydra_context=self.hydra_context, task_function=self.task_function, config=self.config
                )
        jobs = self._jobs(arguments)
        checked = sweep.preflight(jobs, lambda o: loader.load_sweep_config(self.config, o), self.config)
        print(sweep.plan(checked, self.config), flush=True)
        if self.config.get("plan_only"):
            return []
        Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, Path(self.config.hydra.sweep.dir) / "multirun.yaml")
        returns = [self.launcher.launch(jobs, initial_job_idx=0)]
        failed = [r for r in returns[0] if r.status.name == "FAILED"]
        if failed:  # Hydra skips the end-of-multirun callbacks when a sweep raises: the report first
            sweep.SweepReport().on_multirun_end(self.config)
            _ = failed[0].return_value  # raises the first failure, as Hydra's own sweeper does
        return returns

    def _jobs(self, arguments: List[str]) -> List[List[str]]:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        batches = self.split_arguments(parser.parse_overrides(self._parse_config() + list(arguments)), None)
        return [list(job) for batch in batches for job in batch]
