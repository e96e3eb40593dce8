"""Structured channel pruning: a narrower network that starts from a wider trained one.

`prune_into(source, target)` copies a trained CompressAI model into a freshly built one of the same family
whose widths (N, M, hyper width) are at most the source's. Each layer keeps the output channels of largest
importance, the L1 norm of their filters (Li et al. 2017, "Pruning filters for efficient ConvNets"), and
every consumer of those channels keeps the same ones: the next convolution's inputs, GDN/IGDN's beta and
gamma rows and columns, the entropy bottleneck's per-channel density of z, and the scales (and means) that
h_s predicts for each kept channel of y. The result is a dense network with fewer channels, not a mask.
"""

from __future__ import annotations

import torch
from compressai.layers import GDN
from compressai.models import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior
from torch import nn

SUPPORTED = (FactorizedPrior, ScaleHyperprior, MeanScaleHyperprior)


def _family(net: nn.Module) -> type | None:
    """The model family (mean-scale before scale: it is a subclass of it)."""
    return next((c for c in (MeanScaleHyperprior, ScaleHyperprior, FactorizedPrior) if isinstance(net, c)), None)


def filter_importance(layer: nn.Module) -> torch.Tensor:
    """L1 norm of each output channel's filter (Conv2d weights are out x in, ConvTranspose2d in x out)."""
    weight = layer.weight.detach().abs()
    return weight.sum(dim=(1, 2, 3)) if isinstance(layer, nn.Conv2d) else weight.sum(dim=(0, 2, 3))


def most_important(layer: nn.Module, keep: int) -> torch.Tensor:
    """Indices (in their original order) of the `keep` output channels of largest filter L1 norm."""
    scores = filter_importance(layer)
    if keep > scores.numel():
        raise ValueError(f"cannot keep {keep} channels of a layer that has {scores.numel()}")
    return torch.sort(torch.topk(scores, keep).indices).values


def _out_in_dims(layer: nn.Module) -> tuple[int, int]:
    return (1, 0) if isinstance(layer, nn.ConvTranspose2d) else (0, 1)


@torch.no_grad()
def _prune_chain(source: nn.Sequential, target: nn.Sequential, in_idx: torch.Tensor,
                 out_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Copy one Sequential of convolutions, GDNs and activations; `in_idx` are the kept input channels,
    `out_idx` (optional) forces the last convolution's kept outputs. Returns the last kept outputs."""
    convs = [i for i, m in enumerate(source) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    idx = in_idx
    for i, (src, dst) in enumerate(zip(source, target)):
        if isinstance(src, (nn.Conv2d, nn.ConvTranspose2d)):
            out_dim, in_dim = _out_in_dims(src)
            n_out = dst.weight.shape[out_dim]
            keep = out_idx if (i == convs[-1] and out_idx is not None) else most_important(src, n_out)
            dst.weight.copy_(src.weight.index_select(out_dim, keep).index_select(in_dim, idx))
            if src.bias is not None:
                dst.bias.copy_(src.bias[keep])
            idx = keep
        elif isinstance(src, GDN):
            dst.beta.copy_(src.beta[idx])
            dst.gamma.copy_(src.gamma[idx][:, idx])
    return idx


@torch.no_grad()
def _prune_entropy_bottleneck(source: nn.Module, target: nn.Module, idx: torch.Tensor) -> None:
    for name, param in source.named_parameters():
        dict(target.named_parameters())[name].copy_(param[idx])


def prune_into(source: nn.Module, target: nn.Module) -> None:
    """Initialise `target` from `source` (same family, widths at most the source's), keeping the channels of
    largest filter L1 norm in every layer. Equal widths copy the weights unchanged."""
    if _family(source) is None:
        raise ValueError(f"channel pruning supports {', '.join(c.__name__ for c in SUPPORTED)}, not {type(source).__name__}")
    if _family(target) is not _family(source):
        raise ValueError(f"cannot initialise a {type(target).__name__} from a {type(source).__name__}: same family needed")
    src_shapes = {k: v.shape for k, v in source.named_parameters()}
    tgt_shapes = {k: v.shape for k, v in target.named_parameters()}
    if src_shapes.keys() != tgt_shapes.keys():
        raise ValueError(f"{type(target).__name__} and {type(source).__name__} have different layers")
    too_wide = [k for k in src_shapes if any(t > s for t, s in zip(tgt_shapes[k], src_shapes[k]))]
    if too_wide:
        raise ValueError(f"the network to initialise is wider than its source at {too_wide[0]} "
                         f"({tuple(tgt_shapes[too_wide[0]])} > {tuple(src_shapes[too_wide[0]])}): its widths must be at most the source's")
    if src_shapes == tgt_shapes:
        with torch.no_grad():
            for name, param in source.named_parameters():
                dict(target.named_parameters())[name].copy_(param)
        return

    rgb = torch.arange(3)
    y_idx = _prune_chain(source.g_a, target.g_a, rgb)
    _prune_chain(source.g_s, target.g_s, y_idx)
    if isinstance(source, ScaleHyperprior):
        z_idx = _prune_chain(source.h_a, target.h_a, y_idx)
        _prune_entropy_bottleneck(source.entropy_bottleneck, target.entropy_bottleneck, z_idx)
        src_out = source.h_s[[i for i, m in enumerate(source.h_s) if isinstance(m, nn.Conv2d)][-1]].out_channels
        # h_s predicts a scale (and, mean-scale, a mean) per channel of y: keep those of the kept y channels
        h_s_out = y_idx if src_out == source.M else torch.cat([y_idx, y_idx + source.M])
        _prune_chain(source.h_s, target.h_s, z_idx, out_idx=h_s_out)
    else:
        _prune_entropy_bottleneck(source.entropy_bottleneck, target.entropy_bottleneck, y_idx)
