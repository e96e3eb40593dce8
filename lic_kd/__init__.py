"""lic_kd: knowledge distillation for learned image compression, measured with real bitstreams."""

from pathlib import Path

from omegaconf import OmegaConf

# The repository root (holds conf/ and data/): lets configs find the shipped data from any working directory.
REPO_ROOT = Path(__file__).resolve().parent.parent
if not OmegaConf.has_resolver("lic_kd_root"):
    OmegaConf.register_new_resolver("lic_kd_root", lambda: str(REPO_ROOT))
if not OmegaConf.has_resolver("lic_kd_zoo"):
    # ${lic_kd_zoo:MODEL,QUALITY,FIELD}: CompressAI's zoo N, M or lambda (conf/rate/)
    OmegaConf.register_new_resolver("lic_kd_zoo", lambda model, quality, field: _zoo(model, int(quality), field))


def _zoo(model: str, quality: int, field: str):  # imported lazily: configs load before torch is needed
    from lic_kd.models import zoo_preset

    return zoo_preset(model, quality, field)
