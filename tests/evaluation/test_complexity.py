"""Complexity counts against the analytic figures of the scale hyperprior (field notes)."""

import pytest
from compressai.models import ScaleHyperprior

from lic_kd.evaluation.complexity import complexity


@pytest.mark.parametrize(
    "N, M, enc, dec", [(128, 192, 44.9, 43.5), (192, 320, 100.3, 97.0), (64, 192, 12.9, 12.3), (16, 192, 1.4, 1.3)]
)
def test_kmac_per_pixel_matches_the_analytic_figures(N, M, enc, dec):
    c = complexity(ScaleHyperprior(N, M))
    assert c["kmac_per_pixel_encoder"] == pytest.approx(enc, abs=0.05)
    assert c["kmac_per_pixel_decoder"] == pytest.approx(dec, abs=0.05)


def test_kmac_per_pixel_does_not_depend_on_the_image_size():
    net = ScaleHyperprior(16, 32)
    assert complexity(net, 128, 192)["kmac_per_pixel_decoder"] == pytest.approx(
        complexity(net, 256, 256)["kmac_per_pixel_decoder"]
    )


def test_parameters_split_by_side():
    net = ScaleHyperprior(128, 192)
    c = complexity(net)
    # the published teacher has 5.08 M parameters
    assert c["params"] == pytest.approx(5.08e6, rel=0.01)
    g_a = sum(p.numel() for p in net.g_a.parameters())
    g_s = sum(p.numel() for p in net.g_s.parameters())
    assert c["params_encoder"] - c["params_decoder"] == g_a + sum(p.numel() for p in net.h_a.parameters()) - g_s
    assert c["size_mb"] == pytest.approx(4 * c["params"] / 1e6)
