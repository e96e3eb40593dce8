"""Hydra's submitit SLURM launcher, with lic_kd's checks: the request is compared with what its partition
can give before anything is submitted, and the jobs are watched while the sweep waits (lic_kd.slurm).
Hydra only loads launchers from the hydra_plugins package, hence this thin class here."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class CheckedSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lic_kd.slurm import JobWatcher, SlurmRequestError, check_processes, check_request, partitions

        check_request(dict(self.params), partitions())  # before anything is submitted
        if self.config is not None and "trainer" in self.config:  # lic_kd.train (lic_kd.evaluate has no trainer)
            check_processes(self.config.trainer, dict(self.params))
        watcher = JobWatcher(Path(str(self.params["submitit_folder"]).replace("%j", "")).resolve(), len(job_overrides))
        watcher.start()
        try:
            return super().launch(job_overrides, initial_job_idx)
        except Exception:
            if watcher.fatal:  # the watcher cancelled the jobs: say why, not submitit's "job was cancelled"
                raise SlurmRequestError(watcher.fatal) from None
            raise
        finally:
            watcher.stop()
