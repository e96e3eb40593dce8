"""Every model family trains, codes for real and reports like the scale hyperprior."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from compressai.models import (
    Cheng2020AnchorCheckerboard,
    FactorizedPrior,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from PIL import Image

from conftest import KODAK, run_module, train
from lic_kd.evaluation.coding import pad, prepare_for_coding, read_bitstream, write_bitstream
from lic_kd.evaluation.complexity import complexity
from lic_kd.models.networks import ScaleHyperpriorHyperWidth, capture_latents

FAMILIES = {
    "bmshj2018-factorized": lambda: FactorizedPrior(8, 16),
    "bmshj2018-hyperprior": lambda: ScaleHyperprior(8, 16),
    "mbt2018-mean": lambda: MeanScaleHyperprior(8, 16),
    "mbt2018": lambda: JointAutoregressiveHierarchicalPriors(8, 16),
    "cheng2020-anchor-checkerboard": lambda: Cheng2020AnchorCheckerboard(16),
}
# Plus the scale hyperprior whose hyper-latent is wider than its N (for KD on z).
CODERS = {**FAMILIES, "bmshj2018-hyperprior-hyperwidth": lambda: ScaleHyperpriorHyperWidth(8, 16, hyper_N=32)}


@pytest.mark.parametrize("family", CODERS)
def test_round_trip_decodes_the_eval_mode_reconstruction(family, tmp_path):
    torch.manual_seed(0)
    coder = prepare_for_coding(CODERS[family]())
    x = pad(torch.rand(1, 3, 70, 100))
    with torch.no_grad(), capture_latents(coder) as latents:
        expected = coder(x)["x_hat"].clamp(0, 1)
        enc = coder.compress(x)
        write_bitstream(tmp_path / "x.lkd", enc["strings"], enc["shape"], x.shape[-2:])
        strings, shape, _ = read_bitstream(tmp_path / "x.lkd")
        decoded = coder.decompress(strings, shape)["x_hat"].clamp(0, 1)
    assert "y_hat" in latents and ("z_hat" in latents) == hasattr(coder, "h_s")
    # CompressAI's mbt2018 forward rounds y without subtracting the predicted means, while its coder
    # rounds y - mean: the two reconstructions differ by that quantization offset, nothing more.
    atol = 2 / 255 if family == "mbt2018" else 1e-5
    assert torch.allclose(decoded, expected, atol=atol)


def _conv(c_in: int, c_out: int, k: int, scale: int) -> float:
    """MACs per image pixel of a k x k convolution on a grid 1/scale of the image's side: per output position,
    or per input position when transposed (as PyTorch counts it). GDN is a 1x1 convolution of the squares."""
    return c_in * c_out * k * k / scale**2


def analytic_kmac(family: str, N: int, M: int = 0) -> tuple[float, float]:
    """kMAC per pixel of one forward pass, encoder side (g_a, h_a, h_s, context) and decoder side (h_s, g_s,
    context), written out layer by layer from the papers' architectures as CompressAI builds them (cheng2020
    has one width: M is N)."""
    if family == "cheng2020-anchor-checkerboard":  # residual blocks of 3x3 convs, sub-pixel (4x channels) upsampling
        M, H = N, N * 3 // 2
        g_a = (
            _conv(3, N, 3, 2)
            + _conv(N, N, 3, 2)
            + _conv(N, N, 1, 2)
            + _conv(3, N, 1, 2)
            + 2 * _conv(N, N, 3, 2)
            + sum(4 * _conv(N, N, 3, s) + 2 * _conv(N, N, 1, s) for s in (4, 8))
            + _conv(N, N, 3, 16)
        )
        g_s = (
            sum(
                2 * _conv(N, N, 3, s) + 2 * _conv(N, 4 * N, 3, s) + _conv(N, N, 3, s // 2) + _conv(N, N, 1, s // 2)
                for s in (16, 8, 4)
            )
            + 2 * _conv(N, N, 3, 2)
            + _conv(N, 12, 3, 2)
        )
        h_a = 2 * _conv(N, N, 3, 16) + 2 * _conv(N, N, 3, 32) + _conv(N, N, 3, 64)
        h_s = (
            _conv(N, N, 3, 64)
            + _conv(N, 4 * N, 3, 64)
            + _conv(N, H, 3, 32)
            + _conv(H, 4 * H, 3, 32)
            + _conv(H, 2 * N, 3, 16)
        )
        h_s += 2 * 33 * N / 64**2  # z's density (filters 1-3-3-3-1, lower and upper bound), inside latent_codec
        passes = 2  # the checkerboard forward runs the context model twice: anchors, then non-anchors
    else:
        g_a = g_s = (
            _conv(3, N, 5, 2)
            + _conv(N, N, 1, 2)
            + _conv(N, N, 5, 4)
            + _conv(N, N, 1, 4)
            + _conv(N, N, 5, 8)
            + _conv(N, N, 1, 8)
            + _conv(N, M, 5, 16)
        )  # g_s mirrors g_a
        h_a = 0 if family == "bmshj2018-factorized" else _conv(M, N, 3, 16) + _conv(N, N, 5, 32) + _conv(N, N, 5, 64)
        h_s = {
            "bmshj2018-factorized": 0,
            "bmshj2018-hyperprior": _conv(N, N, 5, 64) + _conv(N, N, 5, 32) + _conv(N, M, 3, 16),
        }.get(family, _conv(N, M, 5, 64) + _conv(M, M * 3 // 2, 5, 32) + _conv(M * 3 // 2, 2 * M, 3, 16))
        passes = int(family == "mbt2018")
    context = passes * (
        _conv(M, 2 * M, 5, 16)
        + _conv(4 * M, M * 10 // 3, 1, 16)
        + _conv(M * 10 // 3, M * 8 // 3, 1, 16)
        + _conv(M * 8 // 3, 2 * M, 1, 16)
    )
    return (g_a + h_a + h_s + context) / 1e3, (g_s + h_s + context) / 1e3


@pytest.mark.parametrize("family", FAMILIES)
def test_complexity_counts_every_family(family):
    net = FAMILIES[family]()
    c = complexity(net)
    N = net.g_a[0].conv1.out_channels if family == "cheng2020-anchor-checkerboard" else net.N
    encoder, decoder = analytic_kmac(family, N, getattr(net, "M", N))
    assert c["kmac_per_pixel_encoder"] == pytest.approx(encoder, abs=1e-6)
    assert c["kmac_per_pixel_decoder"] == pytest.approx(decoder, abs=1e-6)
    assert 0 < c["params_decoder"] < c["params"] and 0 < c["params_encoder"] < c["params"]


def test_each_family_trains_codes_and_reports(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("kodim05.png", "kodim23.png"):  # small: mbt2018 decodes position by position
        Image.open(KODAK / name).crop((200, 200, 328, 296)).save(images / name)
    sweep = tmp_path / "sweep"
    # 150 batches: enough for every family to beat a constant grey image (30 left them below it, 9-11.5 dB)
    train(
        "-m",
        f"model={','.join(FAMILIES)}",
        "steps=150",
        "val_every=50",
        "optimizer.main.lr=1e-3",
        f"data.eval_dir={images}",
        f"hydra.sweep.dir={sweep}",
        timeout=900,
    )
    grey_psnr = {
        p.name: -10 * math.log10(((np.asarray(Image.open(p), dtype=np.float64) / 255 - 0.5) ** 2).mean())
        for p in images.iterdir()
    }
    family_of = {type(make()).__name__: family for family, make in FAMILIES.items()}
    runs = sorted(sweep.glob("*/results.json"))
    assert len(runs) == len(FAMILIES)
    for path in runs:
        r = json.loads(path.read_text())
        name = r["run"]["architecture"]
        assert r["metrics"]["n_images"] == 2 and [i["image"] for i in r["images"]] == sorted(grey_psnr)
        for image in r["images"]:
            # a codec at lambda 0.013 on a 128x96 crop: well under 1 bpp (0.10-0.33 measured), the coded payload
            # near the likelihoods' estimate (rANS flushes a few bytes per string), better than flat grey
            assert 0.01 < image["bpp"] < 1, f"{name} {image['image']}: {image['bpp']} bpp"
            assert 0.95 * image["bpp_estimated"] <= image["bpp_payload"] <= 1.3 * image["bpp_estimated"] + 0.02, name
            assert image["psnr"] > grey_psnr[image["image"]], f"{name} {image['image']}: {image['psnr']:.2f} dB"
        encoder, decoder = analytic_kmac(family_of[name], r["run"]["N"], r["run"]["M"])
        assert r["complexity"]["kmac_per_pixel_encoder"] == pytest.approx(encoder, abs=1e-6)
        assert r["complexity"]["kmac_per_pixel_decoder"] == pytest.approx(decoder, abs=1e-6)
        # validation RD loss on the same held-out crops, after 50 and after 150 batches
        val = pd.read_csv(path.parent / "csv" / "metrics.csv")["val/loss"].dropna().to_numpy()
        assert len(val) == 3 and val[-1] < val[0], f"{r['run']['architecture']} did not reduce its loss: {val}"
    run_module("lic_kd.report", str(sweep), "--name", "fam", "--out-root", str(tmp_path / "rep"), "--no-figures")
    rd = pd.read_csv(tmp_path / "rep" / "fam" / "rd_table.csv")
    assert set(rd["architecture"]) == {
        "FactorizedPrior",
        "ScaleHyperprior",
        "MeanScaleHyperprior",
        "JointAutoregressiveHierarchicalPriors",
        "Cheng2020AnchorCheckerboard",
    }
