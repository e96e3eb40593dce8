"""Structured channel pruning: a narrower network that starts from a wider trained one.

`prune_into(source, target, images)` copies a trained CompressAI model into a freshly built one of the same
family whose widths (N, M, hyper width) are at most the source's. Each layer keeps the output channels of
largest importance, and every consumer of those channels keeps the same ones: the next convolution's inputs,
GDN/IGDN's beta and gamma rows and columns, the entropy bottleneck's per-channel density of z, and the scales (and
means) that h_s predicts for each kept channel of y. The result is a dense network with fewer channels, not a mask.
mbt2018 keeps its latent width M (as prune=channels does): its context model and entropy parameters, which
read y and h_s's features, are copied whole.

Importance: with calibration images, a channel's contribution to the next convolution, the mean magnitude
of its activation (after GDN or ReLU) on those images times the L1 norm of the next layer's weights that read
it (the data-driven criterion of channel pruning, e.g. NISP, Yu et al. 2018); without images, or for a layer
whose outputs leave its transform, the L1 norm of the channel's own filter (Li et al. 2017). The filter norm
alone is a poor guide behind GDN, which rescales every channel: measured on the shipped N=64 teacher, keeping
48 of 64 channels gives 8.3 dB by filter norm and 22.1 dB by contribution (CBSD68 crops, before fine-tuning).
"""

from __future__ import annotations

import torch
from compressai.layers import GDN
from compressai.models import (
    FactorizedPrior,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from torch import nn

from lic_kd.errors import ConfigError

# The classes pruned here, by their conf/model name, and their family (a source and its target share one).
# Exact classes, not subclasses: Cheng2020Anchor subclasses mbt2018 with residual blocks in its transforms,
# and the VBR models add gains, which this code would leave at their initial values.
SUPPORTED: dict[type, str] = {
    FactorizedPrior: "bmshj2018-factorized",
    ScaleHyperprior: "bmshj2018-hyperprior",
    MeanScaleHyperprior: "mbt2018-mean",
    JointAutoregressiveHierarchicalPriors: "mbt2018",
}


def _family(net: nn.Module) -> type | None:
    """The model family: the hyper-width scale hyperprior is a scale hyperprior (one initialises the other)."""
    cls = type(net)
    # a lic_kd network that is pruned as one of these says so (ScaleHyperpriorHyperWidth: a scale hyperprior)
    return cls if cls in SUPPORTED else getattr(cls, "prune_family", None)


def _check_family(net: nn.Module) -> None:
    if _family(net) is None:
        names = ", ".join([*SUPPORTED.values(), "bmshj2018-hyperprior-hyperwidth"])
        raise ConfigError(f"channel pruning supports {names}, not {type(net).__name__}")


def filter_importance(layer: nn.Module) -> torch.Tensor:
    """L1 norm of each output channel's filter (Conv2d weights are out x in, ConvTranspose2d in x out)."""
    weight = layer.weight.detach().abs()
    return weight.sum(dim=(1, 2, 3)) if isinstance(layer, nn.Conv2d) else weight.sum(dim=(0, 2, 3))


def input_weight_norm(layer: nn.Module) -> torch.Tensor:
    """L1 norm of the weights that read each input channel of a convolution."""
    weight = layer.weight.detach().abs()
    return weight.sum(dim=(0, 2, 3)) if isinstance(layer, nn.Conv2d) else weight.sum(dim=(1, 2, 3))


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))


def _transforms(net: nn.Module) -> list[str]:
    return [name for name in ("g_a", "g_s", "h_a", "h_s") if isinstance(getattr(net, name, None), nn.Sequential)]


@torch.no_grad()
def activation_magnitudes(net: nn.Module, images: torch.Tensor) -> dict[int, torch.Tensor]:
    """Mean |output| of each channel of every module of the network's transforms on `images`, keyed by the
    module's id; the network runs as at inference (eval mode, rounded latents)."""
    magnitudes: dict[int, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(
            lambda m, inputs, out: magnitudes.__setitem__(id(m), out.abs().mean(dim=(0, 2, 3)))
        )
        for name in _transforms(net)
        for module in getattr(net, name)
    ]
    was_training = net.training
    net.eval()
    try:
        net(images)
    finally:
        net.train(was_training)
        for hook in hooks:
            hook.remove()
    return magnitudes


def channel_importance(
    chain: nn.Sequential, position: int, magnitudes: dict[int, torch.Tensor] | None, consumer: nn.Module | None = None
) -> torch.Tensor:
    """Importance of the output channels of the convolution at `position` of `chain`: their contribution to
    the next convolution (in the chain, else `consumer`, the first layer of the transform that reads the
    chain's output) when activations were measured, else their filters' L1 norm."""
    following = next((j for j in range(position + 1, len(chain)) if _is_conv(chain[j])), None)
    if magnitudes is None or (following is None and consumer is None):
        return filter_importance(chain[position])
    if following is None:
        return magnitudes[id(chain[-1])] * input_weight_norm(consumer)
    return magnitudes[id(chain[following - 1])] * input_weight_norm(chain[following])


def most_important(layer: nn.Module, keep: int, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (in their original order) of the `keep` output channels of largest `scores` (default: filter
    L1 norm)."""
    scores = filter_importance(layer) if scores is None else scores
    if keep > scores.numel():
        raise ValueError(f"cannot keep {keep} channels of a layer that has {scores.numel()}")
    return torch.sort(torch.topk(scores, keep).indices).values


def _out_in_dims(layer: nn.Module) -> tuple[int, int]:
    return (1, 0) if isinstance(layer, nn.ConvTranspose2d) else (0, 1)


@torch.no_grad()
def _prune_chain(
    source: nn.Sequential,
    target: nn.Sequential,
    in_idx: torch.Tensor,
    out_idx: torch.Tensor | None = None,
    magnitudes: dict[int, torch.Tensor] | None = None,
    consumer: nn.Module | None = None,
) -> torch.Tensor:
    """Copy one Sequential of convolutions, GDNs and activations; `in_idx` are the kept input channels,
    `out_idx` (optional) forces the last convolution's kept outputs. Returns the last kept outputs."""
    convs = [i for i, m in enumerate(source) if _is_conv(m)]
    idx = in_idx
    for i, (src, dst) in enumerate(zip(source, target)):
        if _is_conv(src):
            out_dim, in_dim = _out_in_dims(src)
            n_out = dst.weight.shape[out_dim]
            keep = (
                out_idx
                if (i == convs[-1] and out_idx is not None)
                else most_important(src, n_out, channel_importance(source, i, magnitudes, consumer))
            )
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


CRITERIA = ("contribution", "l1")


def pruned_widths(source: nn.Module, keep: float) -> dict[str, int]:
    """The widths of `source` with `keep` of its transforms' channels (N, and hyper_N where the family has
    its own), rounded, at least one each. The latent width M stays: it is what the entropy coder codes and
    what KD on y compares with the teacher, and it is a small part of the decoder's work."""
    _check_family(source)
    if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not 0 < keep <= 1:
        raise ConfigError(f"prune.keep must be the fraction of channels kept, in (0, 1], got {keep!r}")
    names = ("N", "hyper_N") if hasattr(source, "hyper_N") else ("N",)
    return {"M": source.M} | {name: max(1, round(keep * getattr(source, name))) for name in names}


def prune_into(source: nn.Module, target: nn.Module, images: torch.Tensor | None = None) -> None:
    """Initialise `target` from `source` (same family), keeping the most important channels of every layer,
    measured on `images` (a batch of training crops) when given. Equal widths copy the weights unchanged; a
    target at least as wide everywhere starts as the source itself (widen_into)."""
    _check_family(source)
    if _family(target) is not _family(source):
        raise ConfigError(
            f"cannot initialise a {type(target).__name__} from a {type(source).__name__}: same family needed"
        )
    src_shapes = {k: v.shape for k, v in source.named_parameters()}
    tgt_shapes = {k: v.shape for k, v in target.named_parameters()}
    if src_shapes.keys() != tgt_shapes.keys():
        raise ConfigError(f"{type(target).__name__} and {type(source).__name__} have different layers")
    too_wide = [k for k in src_shapes if any(t > s for t, s in zip(tgt_shapes[k], src_shapes[k]))]
    too_narrow = [k for k in src_shapes if any(t < s for t, s in zip(tgt_shapes[k], src_shapes[k]))]
    if too_wide and too_narrow:
        raise ConfigError(
            f"the network to initialise is wider than its source at {too_wide[0]} and narrower at {too_narrow[0]}: "
            f"a student started from its teacher is at most or at least as wide as it in every width "
            f"(the teacher's N={source.N}, M={source.M}): set student.M={source.M}"
        )
    if too_wide:
        widen_into(source, target)
        return
    joint = _family(source) is JointAutoregressiveHierarchicalPriors
    if joint and target.M != source.M:
        # its context model and entropy parameters mix y's channels with h_s's 2M features: no per-channel
        # selection of them is exact, and prune=channels keeps M anyway (pruned_widths)
        raise ConfigError(
            f"pruning mbt2018 (JointAutoregressiveHierarchicalPriors) keeps the latent width M: "
            f"got M={target.M} from M={source.M}; set student.M={source.M}"
        )
    if src_shapes == tgt_shapes:
        with torch.no_grad():
            for name, param in source.named_parameters():
                dict(target.named_parameters())[name].copy_(param)
        return

    magnitudes = activation_magnitudes(source, images) if images is not None else None
    rgb = torch.arange(3)
    y_idx = _prune_chain(source.g_a, target.g_a, rgb, magnitudes=magnitudes, consumer=source.g_s[0])
    _prune_chain(source.g_s, target.g_s, y_idx, magnitudes=magnitudes)
    if isinstance(source, ScaleHyperprior):
        z_idx = _prune_chain(source.h_a, target.h_a, y_idx, magnitudes=magnitudes, consumer=source.h_s[0])
        _prune_entropy_bottleneck(source.entropy_bottleneck, target.entropy_bottleneck, z_idx)
        if joint:  # h_s's 2M features all feed entropy_parameters, which (as context_prediction) keeps M: copied
            h_s_out = torch.arange(2 * source.M)
            with torch.no_grad():
                for name in ("context_prediction", "entropy_parameters"):
                    getattr(target, name).load_state_dict(getattr(source, name).state_dict())
        elif isinstance(source, MeanScaleHyperprior):  # a scale and a mean per channel of y: those of the kept ones
            h_s_out = torch.cat([y_idx, y_idx + source.M])
        else:  # a scale per channel of y
            h_s_out = y_idx
        _prune_chain(source.h_s, target.h_s, z_idx, out_idx=h_s_out, magnitudes=magnitudes)
    else:
        _prune_entropy_bottleneck(source.entropy_bottleneck, target.entropy_bottleneck, y_idx)


@torch.no_grad()
def widen_into(source: nn.Module, target: nn.Module) -> None:
    """Initialise `target` (same family, every width at least the source's) so that it computes what `source`
    does: the source's weights fill the first channels of every layer, the extra channels keep their random
    initialisation, and whatever reads them (the next convolution, GDN's normalisation of the old channels)
    starts with zero weights, so they join in as training gives those weights a gradient (as Net2Net's
    function-preserving widening, Chen et al. 2016). New hyper-latent channels are coded from the start: they
    cost a few bits until trained. The latent width M stays the source's (what KD on y compares, and h_s
    interleaves scales and means by it)."""
    if target.M != source.M:
        raise ConfigError(
            f"a student wider than its teacher (N={target.N} > {source.N}) keeps the teacher's latent width: "
            f"set student.M={source.M}"
        )
    params = dict(source.named_parameters())
    for name, param in target.named_parameters():
        param[tuple(slice(0, n) for n in params[name].shape)] = params[name]
    for name, layer in target.named_modules():
        old = source.get_submodule(name)
        if _is_conv(layer):
            in_dim = _out_in_dims(layer)[1]
            n_in = old.weight.shape[in_dim]
            layer.weight.narrow(in_dim, n_in, layer.weight.shape[in_dim] - n_in).zero_()
        elif isinstance(layer, GDN):
            n = old.beta.numel()
            layer.gamma[:n, n:] = layer.gamma_reparam.init(torch.zeros_like(layer.gamma[:n, n:]))
