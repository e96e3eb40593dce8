"""Model complexity: parameters and multiply-accumulates per pixel, for the encoder and the decoder side,
counted by PyTorch's own FLOP counter on the real modules."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# What each side runs. The encoder needs h_s too: it codes y with the scales the decoder will see.
# Models built on CompressAI's latent codecs keep the hyperprior and context model in `latent_codec`, whose
# hyper-analysis `latent_codec.hyper.h_a` only the encoder runs.
ENCODER_PARTS = ("g_a", "h_a", "h_s", "context_prediction", "entropy_parameters", "latent_codec")


DECODER_PARTS = ("h_s", "g_s", "context_prediction", "entropy_parameters", "latent_codec")


ENCODER_ONLY_INSIDE_DECODER_PARTS = ("latent_codec.hyper.h_a",)


ENTROPY_PARTS = ("entropy_bottleneck", "gaussian_conditional")


def _params(net: nn.Module, parts: tuple[str, ...]) -> int:
    modules = dict(net.named_modules())
    return sum(p.numel() for name in parts if name in modules for p in modules[name].parameters())


@torch.no_grad()
def complexity(net: nn.Module, height: int = 256, width: int = 256) -> dict[str, Any]:
    """Parameters (total, encoder side, decoder side; entropy models count on both), float32 size in MB,
    and kMAC per pixel of each side from one eval-mode forward pass (convolutions are exact per pixel at
    sizes that are multiples of 64)."""
    was_training = net.training
    net.eval()
    with FlopCounterMode(display=False, depth=3) as counter:
        net(torch.zeros(1, 3, height, width, device=next(net.parameters()).device))
    net.train(was_training)
    root = type(net).__name__
    macs = {
        name.split(".", 1)[1]: sum(ops.values()) / 2
        for name, ops in counter.get_flop_counts().items()
        if name.startswith(f"{root}.")
    }
    pixels = height * width
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "params_encoder": _params(net, ENCODER_PARTS + ENTROPY_PARTS),
        "params_decoder": _params(net, DECODER_PARTS + ENTROPY_PARTS) - _params(net, ENCODER_ONLY_INSIDE_DECODER_PARTS),
        "size_mb": sum(p.numel() * p.element_size() for p in net.parameters()) / 1e6,
        "kmac_per_pixel_encoder": sum(macs.get(p, 0) for p in ENCODER_PARTS) / pixels / 1e3,
        "kmac_per_pixel_decoder": (
            sum(macs.get(p, 0) for p in DECODER_PARTS) - sum(macs.get(p, 0) for p in ENCODER_ONLY_INSIDE_DECODER_PARTS)
        )
        / pixels
        / 1e3,
    }
