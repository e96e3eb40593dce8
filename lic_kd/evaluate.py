"""`python -m lic_kd.evaluate checkpoint=PATH images=FOLDER`: code every image of a folder with a trained
network (real bitstreams) and write results.json in the run directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

import lic_kd  # noqa: F401  (registers the config resolvers)

from lic_kd.errors import run_cli
from lic_kd.codec import evaluate_net, summary
from lic_kd.data import check_images, list_images
from lic_kd.models import load_net
from lic_kd.profiling import use_threads
from lic_kd.results import RESULTS_FILE, build_results, run_identity, write_json_atomic

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    start = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    if (run_dir / RESULTS_FILE).is_file():  # re-running a sweep of evaluations resumes it
        log.info("%s exists: this evaluation is complete, nothing to do", run_dir / RESULTS_FILE)
        return
    use_threads(cfg.get("threads"))
    net, meta = load_net(cfg.checkpoint, cfg.architecture, lmbda=cfg.get("lmbda"))
    images = list_images(cfg.images, cfg.limit)
    check_images(images)  # a corrupt file fails here, by name, before any coding
    evaluation = evaluate_net(net, images, run_dir, cfg.device)
    identity = run_identity(meta) | {"run_dir": str(run_dir.resolve()), "images_dir": str(Path(cfg.images).resolve())}
    write_json_atomic(run_dir / RESULTS_FILE, build_results(identity, net, evaluation, time.perf_counter() - start))
    log.info("%d images: %s -> %s", evaluation["metrics"]["n_images"], summary(evaluation["metrics"]), run_dir / RESULTS_FILE)
    shipped = meta.get("shipped_kodak")
    if shipped and shipped.get("n_images") == evaluation["metrics"]["n_images"]:
        # a shipped teacher re-coded: its record and this machine's numbers side by side
        log.info("recorded when it was trained: bpp %.4f, PSNR %.2f dB (here: bpp %.4f, PSNR %.2f dB)", shipped["bpp"],
                 shipped["psnr"], evaluation["metrics"]["bpp"], evaluation["metrics"]["psnr"])


if __name__ == "__main__":
    run_cli(main)
