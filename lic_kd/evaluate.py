"""`python -m lic_kd.evaluate checkpoint=PATH images=FOLDER`: code every image of a folder with a trained
network (real bitstreams) and write results.json in the run directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

import lic_kd.models.zoo  # noqa: F401  (the config resolvers)
from lic_kd.data import check_images, list_images
from lic_kd.errors import run_cli
from lic_kd.evaluation.profiling import use_threads
from lic_kd.evaluation.run import evaluate_run
from lic_kd.models.checkpoints import checkpoint_fingerprint
from lic_kd.models.ladder import is_ladder
from lic_kd.results import RESULTS_FILE, check_same_run, is_complete, read_record

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    recorded = read_record(run_dir)
    if recorded is not None and is_complete(recorded):  # re-running a sweep of evaluations resumes it
        if is_ladder(cfg.checkpoint):  # a ladder retrained since: its new rungs are not the ones coded there
            check_same_run(run_dir / RESULTS_FILE, {"ladder.fingerprint": checkpoint_fingerprint(cfg.checkpoint)})
        log.info("%s exists: this evaluation is complete, nothing to do", run_dir / RESULTS_FILE)
        return
    use_threads(cfg.get("threads"))
    images = list_images(cfg.images, cfg.limit)
    check_images(images)  # a corrupt file fails here, by name, before any coding
    evaluate_run(
        cfg.checkpoint,
        images,
        run_dir,
        cfg.device,
        architecture=cfg.architecture,
        lmbda=cfg.get("lmbda"),
        started=started,
    )


if __name__ == "__main__":
    run_cli(main)
