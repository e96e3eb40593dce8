"""Fixed-point quantization of a codec's transforms: weights and activations become signed integers of
`bits` bits times a power of two 2^-fl (word length `bits`, fractional length `fl`), the fixed-point
quantizer of the hardware literature (QPyTorch's `fixed_point_quantize(x, wl, fl, rounding)`): rounded to
the nearest multiple or stochastically, and saturated at the word's range.

Nearest rounding is PyTorch's own fake quantization (`torch.fake_quantize_per_*_affine`, power-of-two scale,
zero point 0: round half to even, gradient straight through inside the range); stochastic rounding, which
PyTorch does not offer, is written here. Each layer's fractional length comes from the data: per output
channel from the weights themselves, per tensor from the activations seen on calibration images (the largest
fl whose range holds the largest magnitude). Stochastic rounding applies in training only; a network that
codes always rounds to nearest, so that encoder and decoder compute the same values.

Quantized: the convolutions of the chosen parts (weights per output channel, biases at 24 bits, inputs per
tensor). GDN/IGDN's beta and gamma stay float: quantizing their square roots is a study of its own.

Exact hyper-synthesis: a fixed-point h_s runs its convolutions in float64, where every product of two
fixed-point numbers and every sum of them is exact (while weight bits + activation bits + log2 of the
layer's fan-in stay within float64's 53: 8 + 8 + 11 for an N=64 h_s), so the
scales it predicts are the same bits in any summation order: on any thread count or machine. That is why
fixed point matters for entropy coding (Balle et al. 2019, "Integer networks for data compression with
latent-variable models"): a decoder whose scales differ in the last bit from the encoder's derails the rANS
decoder. `decode_determinism` checks it, for the fixed-point network and for its float twin. A fixed-point
g_s runs in float32: its images can differ by a quantization step between thread counts (a last-bit
difference in one layer's output can cross a rounding boundary of the next layer's input quantizer);
measured, and recorded beside the scales.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from lic_kd.errors import ConfigError

PARTS = {"h_s": ("h_s",), "g_s": ("g_s",), "decoder": ("g_s", "h_s"), "all": ("g_a", "h_a", "g_s", "h_s")}


ROUNDING = ("nearest", "stochastic")


MODES = ("ptq", "qat")


BIAS_BITS = 24  # biases are added to the accumulator; 24 bits: what a float32 holds exactly


EXACT_PARTS = ("h_s",)  # run in float64: exact, hence the same on every machine (see above)


def check_spec(spec: dict[str, Any]) -> None:
    """A quant group's settings, checked before any work: one line naming what is wrong."""
    if spec.get("mode") not in MODES:
        raise ConfigError(f"quant.mode must be one of {', '.join(MODES)}, got {spec.get('mode')!r}")
    for key in ("weight_bits", "activation_bits"):
        bits = spec.get(key)
        if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 24:
            raise ConfigError(f"quant.{key} must be an integer word length from 2 to 24 bits, got {bits!r}")
    if spec.get("rounding") not in ROUNDING:
        raise ConfigError(f"quant.rounding must be one of {', '.join(ROUNDING)}, got {spec.get('rounding')!r}")
    if spec.get("parts") not in PARTS:
        raise ConfigError(f"quant.parts must be one of {', '.join(PARTS)}, got {spec.get('parts')!r}")


def fraction_bits(max_abs: torch.Tensor, bits: int) -> torch.Tensor:
    """The largest fractional length whose signed `bits`-bit range, up to (2^(bits-1) - 1) 2^-fl, holds
    `max_abs` (elementwise); an all-zero tensor gets fl = bits."""
    top = 2.0 ** (bits - 1) - 1
    fl = torch.floor(torch.log2(top / max_abs.clamp_min(torch.finfo(torch.float32).tiny)))
    return torch.where(max_abs > 0, fl, torch.full_like(fl, float(bits))).clamp(-64, 64)


def fixed_point_quantize(
    x: torch.Tensor, bits: int, fl: torch.Tensor, rounding: str = "nearest", axis: int | None = None
) -> torch.Tensor:
    """`x` as signed `bits`-bit integers times 2^-fl, saturated; `fl` is a scalar tensor, or one value per
    slice along `axis`. The gradient passes straight through inside the range and is zero outside."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = torch.exp2(-fl.float())
    if rounding == "nearest":
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(
                x, scale.reshape(()), torch.zeros((), dtype=torch.int32), qmin, qmax
            )
        zero = torch.zeros(scale.numel(), dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_channel_affine(x, scale, zero, axis, qmin, qmax)
    if rounding != "stochastic":
        raise ValueError(f"rounding must be one of {', '.join(ROUNDING)}, got {rounding!r}")
    if axis is not None:
        scale = scale.reshape([-1 if d == axis % x.dim() else 1 for d in range(x.dim())])
    scaled = x / scale
    q = torch.floor(scaled + torch.rand_like(x)).clamp(qmin, qmax) * scale  # E[q] = x inside the range
    inside = (scaled >= qmin) & (scaled <= qmax)
    return torch.where(inside, x + (q - x).detach(), q.detach())


class FixedPointWeight(nn.Module):
    """A parametrization: the layer's weight (or bias) as fixed point, its fractional length from its own
    magnitude, per output channel along `axis` (None: per tensor)."""

    def __init__(self, bits: int, rounding: str, axis: int | None, exact: bool = False) -> None:
        super().__init__()
        self.bits, self.rounding, self.axis, self.exact = bits, rounding, axis, exact

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            max_abs = w.detach().abs().max()
        else:
            max_abs = w.detach().abs().amax(dim=[d for d in range(w.dim()) if d != self.axis])
        q = fixed_point_quantize(
            w, self.bits, fraction_bits(max_abs, self.bits), self.rounding if self.training else "nearest", self.axis
        )
        return q.double() if self.exact else q


class InputQuantizer(nn.Module):
    """Fixed point for a layer's input, per tensor, its fractional length fixed by calibration (a buffer:
    it is saved and loaded with the network)."""

    def __init__(self, bits: int, rounding: str, exact: bool = False) -> None:
        super().__init__()
        self.bits, self.rounding, self.exact, self.calibrating = bits, rounding, exact, False
        self.register_buffer("fl", torch.tensor(float("nan")))
        self.register_buffer("max_abs", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.max_abs = torch.maximum(self.max_abs, x.detach().abs().max())
            return x
        if torch.isnan(self.fl):
            raise RuntimeError("an input quantizer was not calibrated: run lic_kd.quant.calibrate first")
        return fixed_point_quantize(x, self.bits, self.fl, self.rounding if self.training else "nearest")


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    # a module-level hook that reads the module's own quantizer, so that a deep copy quantizes with its copy
    x = module.input_quantizer(args[0])
    return (x.double() if module.input_quantizer.exact else x, *args[1:])


def _back_to_float32(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out.float()


def quantized_convs(net: nn.Module, parts: str) -> list[tuple[str, nn.Module]]:
    """(name, module) of every convolution of the parts `parts` names."""
    modules = []
    for part in PARTS[parts]:
        root = getattr(net, part, None)
        if root is None:
            continue
        modules += [
            (f"{part}.{name}", m) for name, m in root.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
        ]
    return modules


def quantize(net: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Make the convolutions of `spec["parts"]` fixed point in place (their inputs still need `calibrate`).
    The state dict's keys change (PyTorch's parametrization keeps the float weight as `original`): build,
    quantize, then load."""
    check_spec(spec)
    convs = quantized_convs(net, spec["parts"])
    if not convs:
        raise ConfigError(f"{type(net).__name__} has no convolutions in quant.parts={spec['parts']}")
    for name, conv in convs:
        axis = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
        exact = name.split(".")[0] in EXACT_PARTS
        # unsafe: an exact layer's parametrization returns float64
        parametrize.register_parametrization(
            conv, "weight", FixedPointWeight(spec["weight_bits"], spec["rounding"], axis, exact), unsafe=True
        )
        if conv.bias is not None:
            parametrize.register_parametrization(
                conv, "bias", FixedPointWeight(BIAS_BITS, "nearest", None, exact), unsafe=True
            )
        conv.input_quantizer = InputQuantizer(spec["activation_bits"], spec["rounding"], exact)
        conv.register_forward_pre_hook(_quantize_input)
        if exact:
            conv.register_forward_hook(_back_to_float32)
    return net


def float_twin(net: nn.Module) -> nn.Module:
    """A copy of a quantized network with its float weights and no quantizers: what it was before. Each
    quantized layer is rebuilt as its own class (not with remove_parametrizations, which would also strip
    the original network: PyTorch's parametrized class is shared by deep copies)."""
    twin = copy.deepcopy(net)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if not parametrize.is_parametrized(child):
                continue
            base = type(child).__bases__[0]  # the layer's class, which parametrize subclassed
            plain = base.__new__(base)
            plain.__dict__.update({k: copy.copy(v) if isinstance(v, dict) else v for k, v in child.__dict__.items()})
            for tensor_name, plist in plain._modules.pop("parametrizations").items():
                plain._parameters[tensor_name] = plist.original
            plain._modules.pop("input_quantizer", None)
            for hooks in (plain._forward_pre_hooks, plain._forward_hooks):
                for key in [k for k, fn in hooks.items() if fn in (_quantize_input, _back_to_float32)]:
                    del hooks[key]
            setattr(parent, name, plain)
    return twin


@torch.no_grad()
def calibrate(net: nn.Module, images: torch.Tensor) -> None:
    """Fix every input quantizer's fractional length from the largest magnitude its layer sees on `images`
    (the network as at inference: eval mode, rounded latents)."""
    quantizers = [m for m in net.modules() if isinstance(m, InputQuantizer)]
    was_training = net.training
    net.eval()
    try:
        for q in quantizers:
            q.calibrating, q.max_abs = True, torch.zeros_like(q.max_abs)
        net(images)
    finally:
        for q in quantizers:
            q.calibrating = False
        net.train(was_training)
    for q in quantizers:
        q.fl = fraction_bits(q.max_abs, q.bits)


def bits_by_part(net: nn.Module, spec: dict[str, Any] | None) -> dict[str, dict[str, int]]:
    """Weight and activation word lengths of each part of the network (32: float)."""
    parts = [p for p in ("g_a", "h_a", "h_s", "g_s") if hasattr(net, p)]
    quantized = set(PARTS[spec["parts"]]) if spec else set()
    return {
        p: {"weights": spec["weight_bits"], "activations": spec["activation_bits"]}
        if p in quantized
        else {"weights": 32, "activations": 32}
        for p in parts
    }


def model_bytes(net: nn.Module) -> int:
    """The network's parameters at their stored word lengths: fixed-point weights at their bits, biases at
    BIAS_BITS, everything else as float32 (the calibration buffers are a few numbers and not counted)."""
    total_bits = 0
    for module in net.modules():
        if isinstance(module, parametrize.ParametrizationList):  # counted with its layer, at its bits
            continue
        total_bits += sum(p.numel() * 32 for p in module.parameters(recurse=False))
        if parametrize.is_parametrized(module):
            total_bits += sum(plist.original.numel() * plist[0].bits for plist in module.parametrizations.values())
    return total_bits // 8
