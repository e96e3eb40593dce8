"""Repeats and pairing in the report: BD values per seed with a 95 % interval, the paired "what
distillation buys" table, and teachers against classical codecs, on curves whose answers are known."""

import numpy as np
import pandas as pd
import pytest

from lic_kd.reporting.bd import mean_ci95, repeated_bd, verdict
from lic_kd.reporting.tables import codec_comparison, distillation_table

RATES = np.array([0.2, 0.4, 0.8, 1.6])
PSNR = np.array([28.0, 31.0, 34.0, 37.0])


def curve(name, role, N, scale, seed=1, kmac=10.0, fps=10.0, init="teacher"):
    """A curve whose rates are `scale` times the reference's at the same PSNR: BD-rate = (scale - 1) * 100 %."""
    return pd.DataFrame(
        {
            "curve": name,
            "role": role,
            "architecture": "ScaleHyperprior",
            "N": N,
            "M": 96,
            "lmbda": [0.001, 0.002, 0.004, 0.008],
            "quality": np.nan,
            "steps": 100,
            "seed": seed,
            "init": init,
            "bpp": RATES * scale,
            "psnr": PSNR,
            "ms_ssim_db": PSNR / 2,
            "kmac_decoder": kmac,
            "params": kmac * 1000,
            "decoder_fps": fps,
        }
    )


def test_mean_ci95_is_students_t():
    mean, half, n = mean_ci95([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-6)
    assert mean_ci95([5.0]) == (5.0, None, 1) and mean_ci95([]) == (None, None, 0)


def test_repeated_bd_pairs_seeds():
    plain = pd.concat([curve("p", "student", 16, 1.0, seed=1), curve("p", "student", 16, 1.2, seed=2)])
    kd = pd.concat([curve("k", "kd", 16, 0.9, seed=1), curve("k", "kd", 16, 1.08, seed=2)])
    paired = repeated_bd(plain, kd, "pchip", "bpp", "psnr", paired=True)
    assert paired["n"] == 2 and paired["bd_rate_pct"] == pytest.approx(-10.0, abs=1e-6)
    assert paired["bd_rate_pct_ci95"] == pytest.approx(0.0, abs=1e-6)  # the same -10 % in both pairs


def test_verdict_needs_an_interval_that_excludes_zero():
    assert verdict(-10.0, 2.0, 3, "KD saves rate", "KD costs rate") == "KD saves rate (n=3)"
    assert verdict(5.0, 1.0, 3, "KD saves rate", "KD costs rate") == "KD costs rate (n=3)"
    assert verdict(-1.0, 3.0, 3, "KD saves rate", "KD costs rate").startswith("no difference (95 % interval includes 0")
    assert "1 seed: no interval" in verdict(-1.0, None, 1, "KD saves rate", "KD costs rate")


def test_distillation_table_pairs_kd_with_the_plain_student_of_its_width():
    rd = pd.concat(
        [
            curve("teacher", "teacher", 64, 1.0, kmac=40.0, fps=5.0, init="random"),
            *[curve("student-N16", "student", 16, 1.5, seed=s, kmac=4.0, fps=20.0) for s in (1, 2)],
            curve("kd-N16", "kd", 16, 1.35, seed=1, kmac=4.0, fps=20.0),
            curve("kd-N16", "kd", 16, 1.5 * 0.85, seed=2, kmac=4.0, fps=20.0),
            curve("student-N32", "student", 32, 1.2, kmac=10.0, fps=10.0),
            curve("kd-N32", "kd", 32, 1.26, kmac=10.0, fps=10.0),
        ]
    )
    table = distillation_table(rd, "teacher", "pchip", "bpp", "psnr").set_index("N")
    n16, n32 = table.loc[16], table.loc[32]
    assert n16["n"] == 2 and n16["bd_rate_kd_vs_plain_pct"] == pytest.approx(-12.5, abs=1e-6)  # -10 % and -15 %
    assert n16["ci95"] == pytest.approx(12.706205 * np.std([-10, -15], ddof=1) / np.sqrt(2), rel=1e-5)
    assert n16["verdict"].startswith("no difference")  # two seeds that disagree by 5 points: not significant
    assert n16["bd_rate_plain_vs_teacher_pct"] == pytest.approx(50.0, abs=1e-6)
    assert n16["teacher_kmac_ratio"] == 10.0 and n16["fps_vs_teacher"] == 4.0 and n16["teacher_params_ratio"] == 10.0
    assert n32["n"] == 1 and n32["bd_rate_kd_vs_plain_pct"] == pytest.approx(5.0, abs=1e-6)
    assert n32["verdict"] == "KD costs rate (1 seed: no interval)"


def test_teacher_against_codecs():
    rd = pd.concat([curve("teacher", "teacher", 64, 0.7), curve("JPEG", "codec", np.nan, 1.0)])
    table = codec_comparison(rd, "pchip", "bpp")
    assert table.loc[0, "anchor"] == "JPEG" and table.loc[0, "bd_rate_pct_psnr"] == pytest.approx(-30.0, abs=1e-6)
    assert table.loc[0, "bd_rate_pct_ms_ssim"] == pytest.approx(-30.0, abs=1e-6)
