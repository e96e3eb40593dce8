"""The networks lic_kd trains: CompressAI's models built from config, its own two (a hyperprior with a
hyper-latent width of its own, and an autoencoder without entropy model), and the latents KD reads."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from compressai.models import CompressionModel, FactorizedPrior, ScaleHyperprior
from hydra.utils import instantiate
from torch import nn

from lic_kd.errors import ConfigError


class ScaleHyperpriorHyperWidth(ScaleHyperprior):
    """A scale hyperprior whose hyper-latent z has its own width `hyper_N`, so that a thin student's z can
    match a wide teacher's for KD on z. The hyper layers are CompressAI's own, built at that width."""

    prune_family = ScaleHyperprior  # lic_kd.frugal.prune copies it layer by layer as a scale hyperprior

    def __init__(self, N: int, M: int, hyper_N: int | None = None, **kwargs: Any) -> None:
        super().__init__(N, M, **kwargs)
        self.hyper_N = int(hyper_N or N)
        if self.hyper_N != self.N:
            donor = ScaleHyperprior(self.hyper_N, M)
            self.h_a, self.h_s, self.entropy_bottleneck = donor.h_a, donor.h_s, donor.entropy_bottleneck


class Autoencoder(nn.Module):
    """Balle et al.'s analysis and synthesis transforms (CompressAI's own, taken from its factorized-prior
    model) with no quantization and no entropy model: the network of autoencoder KD, trained for
    reconstruction alone. Its latent y is what g_s receives, so KD on y hooks it like a codec's y_hat."""

    def __init__(self, N: int, M: int) -> None:
        super().__init__()
        donor = FactorizedPrior(N, M)
        self.N, self.M = N, M
        self.g_a, self.g_s = donor.g_a, donor.g_s

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x_hat": self.g_s(self.g_a(x))}


def optimizer_steps_per_batch(net: nn.Module) -> int:
    """Lightning counts every optimizer step: a codec steps its main and its auxiliary (entropy bottleneck
    quantiles) optimizer per batch, an autoencoder only its main one."""
    return 2 if isinstance(net, CompressionModel) else 1


def build_net(net_cfg: dict[str, Any]) -> nn.Module:
    """Instantiate a network from its `_target_` config after checking its widths."""
    for key in ("N", "M", "hyper_N"):
        value = net_cfg.get(key)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(f"network width {key} must be a positive integer, got {value!r}")
    return instantiate(net_cfg)


@contextmanager
def capture_latents(net: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the quantized latents a CompressAI model feeds its synthesis transforms during forward:
    `y_hat` (input of g_s) and, for hyperprior models, `z_hat` (input of h_s). Hooks, not a fork."""
    latents: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module_name in (("y_hat", "g_s"), ("z_hat", "h_s")):
        module = getattr(net, module_name, None)
        if module is not None:
            hooks.append(module.register_forward_pre_hook(lambda _m, args, key=name: latents.__setitem__(key, args[0])))
    try:
        yield latents
    finally:
        for hook in hooks:
            hook.remove()
