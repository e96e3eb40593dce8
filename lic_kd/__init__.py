"""lic_kd: knowledge distillation for learned image compression, measured with real bitstreams.

Stages, each importing only from those before it: leaves (errors, io, metrics, results, data, slurm) ->
frugal -> models -> training -> evaluation -> teachers -> reporting -> entry points (train, evaluate, report)."""

from pathlib import Path

from omegaconf import OmegaConf

# The repository root (holds conf/ and data/): lets configs find the shipped data from any working directory.
REPO_ROOT = Path(__file__).resolve().parent.parent
if not OmegaConf.has_resolver("lic_kd_root"):
    OmegaConf.register_new_resolver("lic_kd_root", lambda: str(REPO_ROOT))
