"""Learned JPEG: baseline JPEG whose two 8x8 quantization tables are trained end to end through a
differentiable model of the codec, then written into real JPEG files (Pillow's `qtables=`) that any decoder
reads. The network is trained like every codec of lic_kd (`objective=rd`, sweeps over lambda, `role=kd`);
its rate is a differentiable proxy of the entropy-coded size, calibrated against real file sizes.

The model follows libjpeg's path: RGB -> YCbCr (JFIF), optional 4:2:0 chroma subsampling (2x2 mean; the
decoder's "fancy" upsampling is a bilinear filter), level shift, orthonormal 8x8 DCT-II (JPEG's FDCT),
division by the tables and rounding, dequantization and the inverse path. Tables are in natural (row-major)
order, as Pillow's `qtables=` and libjpeg take them; the file's DQT marker stores them in zig-zag order.

kornia's differentiable JPEG was considered: it is not installed, scales its tables by a quality factor
and has no rate model, so this small implementation (checked against Pillow/libjpeg in the tests) is used."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lic_kd.errors import ConfigError

# The example tables of the JPEG standard (ITU-T T.81, Annex K), natural order: libjpeg scales them by quality.
STANDARD_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


STANDARD_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    *(99,) * 32,
)  # fmt: skip


SUBSAMPLING = {"4:2:0": 2, "4:4:4": 0}  # Pillow's subsampling codes


ROUNDING = ("ste", "cubic")


def zigzag_order() -> list[int]:
    """Natural (row-major) index of each coefficient in zig-zag order: the order of the DQT marker and of
    the entropy-coded coefficients."""
    cells = [(i, j) for i in range(8) for j in range(8)]
    # anti-diagonals i + j; odd ones run top to bottom, even ones bottom to top
    cells.sort(key=lambda c: (c[0] + c[1], c[0] if (c[0] + c[1]) % 2 else c[1]))
    return [8 * i + j for i, j in cells]


def quality_tables(quality: int) -> torch.Tensor:
    """libjpeg's tables at `quality` 1..100 (IJG scaling of the Annex K tables, baseline: 1..255), as a (2, 64)
    float tensor: luma, chroma. These are the tables of Pillow's `quality=`."""
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor([STANDARD_LUMA, STANDARD_CHROMA], dtype=torch.float64)
    return torch.floor((base * scale + 50) / 100).clamp(1, 255).float()


def dct_matrix(n: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (rows are basis vectors): D @ block @ D.T is JPEG's FDCT of a block."""
    k = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


# JFIF's full-range BT.601 conversion (what libjpeg uses), on 0..255 values.
_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


_YCBCR_OFFSET = torch.tensor([0.0, 128.0, 128.0])


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in 0..255 -> YCbCr in 0..255 (JFIF)."""
    m = _RGB_TO_YCBCR.to(rgb)
    return torch.einsum("ij,bjhw->bihw", m, rgb) + _YCBCR_OFFSET.to(rgb)[None, :, None, None]


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """Inverse of rgb_to_ycbcr."""
    m = torch.linalg.inv(_RGB_TO_YCBCR.double()).to(ycc)
    return torch.einsum("ij,bjhw->bihw", m, ycc - _YCBCR_OFFSET.to(ycc)[None, :, None, None])


def blocks_dct(plane: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with H, W multiples of 8 -> DCT coefficients (B, C, H/8, W/8, 64), natural order."""
    b, c, h, w = plane.shape
    blocks = plane.reshape(b, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)
    return torch.einsum("ui,bcyxij,vj->bcyxuv", d, blocks, d).reshape(b, c, h // 8, w // 8, 64)


def blocks_idct(coefficients: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Inverse of blocks_dct: (B, C, H/8, W/8, 64) -> (B, C, H, W)."""
    b, c, by, bx, _ = coefficients.shape
    blocks = torch.einsum("ui,bcyxuv,vj->bcyxij", d, coefficients.reshape(b, c, by, bx, 8, 8), d)
    return blocks.permute(0, 1, 2, 4, 3, 5).reshape(b, c, by * 8, bx * 8)


def straight_through_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity gradient."""
    return x + (torch.round(x) - x).detach()


def cubic_round(x: torch.Tensor) -> torch.Tensor:
    """Shin & Song's (2017) smooth rounding, round(x) + (x - round(x))^3: differentiable, gradient
    3 (x - round(x))^2; used in training only (evaluation rounds exactly, as the file does)."""
    r = torch.round(x).detach()
    return r + (x - r) ** 3


def _hard_value_soft_gradient(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """The value of `hard` (what the file holds), the gradient of `soft` (a differentiable stand-in)."""
    return soft + (hard - soft).detach()


class JPEGAnalysis(nn.Module):
    """JPEG's encoder transform, the g_a of a learned codec (so that complexity counts it as the encoder's):
    RGB in [0, 1] -> level-shifted YCbCr, chroma subsampled (4:2:0: 2x2 mean), 8x8 DCT of each plane. Returns
    the (luma, chroma) coefficients, (B, C, H/8, W/8, 64) each."""

    def __init__(self, subsampling: str) -> None:
        super().__init__()
        self.subsampling = subsampling
        self.register_buffer("dct", dct_matrix(), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ycc = rgb_to_ycbcr(x * 255) - 128
        luma, chroma = ycc[:, :1], ycc[:, 1:]
        if self.subsampling == "4:2:0":
            chroma = F.avg_pool2d(chroma, 2)
        return blocks_dct(luma, self.dct), blocks_dct(chroma, self.dct)


class JPEGSynthesis(nn.Module):
    """JPEG's decoder transform (g_s): inverse DCT of the dequantized coefficients, chroma upsampling with
    libjpeg's "fancy" filter (bilinear), YCbCr -> RGB in [0, 1]."""

    def __init__(self, subsampling: str) -> None:
        super().__init__()
        self.subsampling = subsampling
        self.register_buffer("dct", dct_matrix(), persistent=False)

    def forward(self, luma: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
        luma, chroma = blocks_idct(luma, self.dct), blocks_idct(chroma, self.dct)
        if self.subsampling == "4:2:0":
            chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
        return ycbcr_to_rgb(torch.cat([luma, chroma], 1) + 128) / 255


class LearnedJPEG(nn.Module):
    """Differentiable baseline JPEG with trainable luma and chroma quantization tables.

    `forward` returns {"x_hat", "bpp", "rate_features"}: the decoded image, the rate proxy in bits per pixel
    (bits over the batch's pixels, as CompressAI counts bpp), which RateDistortionLoss charges instead of
    likelihoods, and the features it is computed from.
    Tables are learned as (scaled) log-tables; the forward pass uses them clamped to 1..255 and rounded to integers
    (straight-through), exactly the tables `integer_tables()` writes into the files."""

    has_rate = True  # a rate without an entropy model: CodecModule trains it with objective=rd

    def __init__(
        self,
        subsampling: str = "4:2:0",
        init: str | int = 50,
        rounding: str = "ste",
        optimize_huffman: bool = False,
        rate_proxy: dict[str, float] | None = None,
        step_scale: float = 100.0,
    ) -> None:
        """`subsampling`: 4:2:0 (Pillow's default) or 4:4:4; `init`: a JPEG quality 1..100 (libjpeg's tables
        at it) or `flat:V` (every entry V); `rounding`: gradient through the rounding, `ste` (straight
        through) or `cubic` (smooth approximation in training); `optimize_huffman`: the file whose size is
        the run's bpp (False: the standard Huffman tables, as Pillow's JPEG anchor); `rate_proxy`: bits =
        log_bits * log + run_bits * run + blocks_bits * blocks, the features of rate_features;
        `step_scale`: the parameters are log-tables / step_scale, because Adam moves each parameter by about
        lr per batch: the project's lr (1e-4, sized for network weights) then moves an entry by about 1 %."""
        super().__init__()
        if subsampling not in SUBSAMPLING:
            raise ConfigError(f"model.subsampling must be one of {', '.join(SUBSAMPLING)}, got {subsampling!r}")
        if rounding not in ROUNDING:
            raise ConfigError(f"model.rounding must be one of {ROUNDING}, got {rounding!r}")
        self.subsampling, self.rounding, self.optimize_huffman = subsampling, rounding, bool(optimize_huffman)
        unknown = set(rate_proxy or {}) - set(DEFAULT_RATE_PROXY)
        if unknown:
            raise ConfigError(
                f"model.rate_proxy has unknown keys {sorted(unknown)}; known: {', '.join(DEFAULT_RATE_PROXY)}"
            )
        self.rate_proxy = {**DEFAULT_RATE_PROXY, **(rate_proxy or {})}
        if not step_scale > 0:
            raise ConfigError(f"model.step_scale must be > 0, got {step_scale}")
        self.step_scale = float(step_scale)
        self.scaled_log_tables = nn.Parameter(initial_tables(init).log() / self.step_scale)
        self.g_a, self.g_s = JPEGAnalysis(subsampling), JPEGSynthesis(subsampling)

    def tables(self) -> torch.Tensor:
        """(2, 64) tables used by the forward pass: in 1..255 and integer-valued, gradients straight through
        the clamp and the rounding (so an entry at a bound can come back)."""
        t = (self.scaled_log_tables * self.step_scale).exp()
        return _hard_value_soft_gradient(t.clamp(1, 255).round(), t)

    def integer_tables(self) -> list[list[int]]:
        """[luma, chroma]: 64 integers each in 1..255, natural order: what Pillow's `qtables=` writes."""
        return self.tables().detach().cpu().round().int().tolist()

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.rounding == "cubic" and self.training:
            return cubic_round(x)
        return straight_through_round(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        mcu = 16 if self.subsampling == "4:2:0" else 8
        x = F.pad(x, (0, -w % mcu, 0, -h % mcu), mode="replicate")  # libjpeg also replicates the edge
        dequantized, features = [], {}
        for coefficients, table in zip(self.g_a(x), self.tables()):  # luma with table 0, chroma with table 1
            scaled = coefficients / table
            q = self._quantize(scaled)
            for key, value in rate_features(scaled, q).items():
                features[key] = features.get(key, 0) + value
            dequantized.append(q * table)
        x_hat = self.g_s(*dequantized)
        # the proxy of the entropy-coded size: a linear function of the features, fitted to real files
        bits = sum(self.rate_proxy[f"{key}_bits"] * value for key, value in features.items())
        return {"x_hat": x_hat[..., :h, :w].clamp(0, 1), "bpp": bits / (x.shape[0] * h * w), "rate_features": features}


def rate_features(scaled: torch.Tensor, q: torch.Tensor) -> dict[str, torch.Tensor]:
    """What JPEG's entropy coder spends bits on, for one component's blocks (B, C, by, bx, 64), summed:

    - `log`: sum of log2(1 + |v|) over the AC coefficients and the DC differences between consecutive blocks
      (the size category, and as many extra bits);
    - `run`: sum over the nonzero AC coefficients of log2(1 + the zero run before them in zig-zag order): each
      is coded with a Huffman (run, size) symbol whose standard code grows with the run (2 bits for (0, 1),
      9 for (10, 1));
    - `blocks`: the blocks, each with a DC symbol and an end-of-block symbol.

    `scaled` are the coefficients divided by the tables, `q` their rounded values. Each feature takes its value
    from `q` (what is coded) and its gradient from `scaled`, so that a coefficient rounded to zero still feels
    the rate; a nonzero's gradient is concentrated where rounding switches between 0 and 1, weighted by its
    run's bits (run lengths themselves are constants for the gradient)."""
    zigzag = torch.tensor(zigzag_order()[1:], device=q.device)
    ac_hard, ac_soft = q[..., zigzag].detach(), scaled[..., zigzag]

    def dc_diff(v: torch.Tensor) -> torch.Tensor:  # DC is coded as the difference to the previous block
        dc = v[..., 0].flatten(2)
        return torch.cat([dc[..., :1], dc.diff(dim=-1)], -1)

    magnitude_hard = torch.cat([ac_hard.flatten(2), dc_diff(q).detach()], -1).abs()
    magnitude_soft = torch.cat([ac_soft.flatten(2), dc_diff(scaled)], -1).abs()
    log = _hard_value_soft_gradient(torch.log2(1 + magnitude_hard), torch.log2(1 + magnitude_soft))

    nonzero = _hard_value_soft_gradient((ac_hard.abs() >= 0.5).float(), torch.sigmoid(4 * (ac_soft.abs() - 0.5)))
    position = torch.arange(63, device=q.device).expand_as(ac_hard)
    last_nonzero = torch.where(ac_hard != 0, position, -1).cummax(-1).values
    previous = torch.cat([torch.full_like(last_nonzero[..., :1], -1), last_nonzero[..., :-1]], -1)
    run_bits = torch.log2(position - previous).float()  # log2(1 + zeros since the previous nonzero)
    return {
        "log": log.sum(),
        "run": (nonzero * run_bits).sum(),
        "blocks": torch.tensor(float(q[..., 0].numel()), device=q.device),
    }


# Fitted by `python -m lic_kd.evaluation.jpeg_files data/cbsd68` (never on Kodak): Pillow's files with libjpeg's
# tables at 8 qualities and 5 flat tables (so that the fit holds for tables unlike the standard ones), 4:2:0 and 4:4:4,
# standard Huffman tables; least squares of the files' bits on the features.
DEFAULT_RATE_PROXY = {"log_bits": 2.376, "run_bits": 2.959, "blocks_bits": 4.676}


def initial_tables(init: str | int) -> torch.Tensor:
    """(2, 64) starting tables: libjpeg's at a quality (an int, or its digits), or `flat:V`."""
    if isinstance(init, str) and init.startswith("flat:"):
        value = float(init.split(":", 1)[1])
        if not 1 <= value <= 255:
            raise ConfigError(f"model.init=flat:V needs V in 1..255, got {value:g}")
        return torch.full((2, 64), value)
    if isinstance(init, int) or (isinstance(init, str) and init.isdigit()):
        return quality_tables(int(init))
    raise ConfigError(f"model.init must be a JPEG quality 1..100 or flat:V (V in 1..255), got {init!r}")
