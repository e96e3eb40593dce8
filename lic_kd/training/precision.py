"""Mixed precision for training (trainer.precision=bf16-mixed, or 16-mixed on CUDA): the transforms run under
Lightning's autocast, the entropy models do not. Likelihoods, hence the rate and bpp, are computed in float32:
in bfloat16 a likelihood keeps 8 bits of mantissa, and the rounding of latents above 256 would be wrong."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import nn

from lic_kd.errors import ConfigError

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def check_precision(precision: Any, accelerator: str | None) -> None:
    """32-true, bf16-mixed (CPU or GPU), 16-mixed (CUDA only: float16 autocast needs a GradScaler and a GPU)."""
    if str(precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if str(precision) == "16-mixed" and (accelerator == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("trainer.precision=16-mixed needs a CUDA GPU; on a CPU use bf16-mixed")


class _Float32Forward:
    """The entropy model's forward in float32, outside any autocast region."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with ExitStack() as stack:
            for device in ("cpu", "cuda"):
                stack.enter_context(torch.autocast(device_type=device, enabled=False))
            args = tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
            return super().forward(*args, **kwargs)


class Float32EntropyBottleneck(_Float32Forward, EntropyBottleneck):
    pass


class Float32GaussianConditional(_Float32Forward, GaussianConditional):
    pass


FLOAT32_CLASSES = {EntropyBottleneck: Float32EntropyBottleneck, GaussianConditional: Float32GaussianConditional}


def entropy_models_in_float32(net: nn.Module) -> nn.Module:
    """Make `net`'s entropy models run in float32 under autocast (same parameters, buffers and state-dict keys:
    only their class changes, to a subclass that CompressAI's own code treats as the original)."""
    for module in net.modules():
        float32 = FLOAT32_CLASSES.get(type(module))
        if float32 is not None:
            module.__class__ = float32
    return net
