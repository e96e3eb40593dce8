"""`python -m lic_kd.evaluate checkpoint=PATH images=FOLDER`: code every image of a folder with a trained
network (real bitstreams) and write results.json in the run directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

import lic_kd  # noqa: F401  (registers the config resolvers)
from lic_kd.codec import evaluate_net, summary
from lic_kd.data import check_images, list_images
from lic_kd.models import load_net
from lic_kd.results import RESULTS_FILE, build_results, run_identity, write_json_atomic

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    start = time.perf_counter()
    net, meta = load_net(cfg.checkpoint, cfg.architecture)
    images = list_images(cfg.images, cfg.limit)
    check_images(images)  # a corrupt file fails here, by name, before any coding
    run_dir = Path(cfg.paths.output_dir)
    evaluation = evaluate_net(net, images, run_dir, cfg.device)
    identity = run_identity(meta) | {"run_dir": str(run_dir.resolve()), "images_dir": str(Path(cfg.images).resolve())}
    write_json_atomic(run_dir / RESULTS_FILE, build_results(identity, net, evaluation, time.perf_counter() - start))
    log.info("%d images: %s -> %s", evaluation["metrics"]["n_images"], summary(evaluation["metrics"]), run_dir / RESULTS_FILE)


if __name__ == "__main__":
    main()
