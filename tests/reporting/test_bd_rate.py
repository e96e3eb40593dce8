"""BD-rate through the report's path, against the public VCEG-M33 test vector."""

import numpy as np
import pytest

from lic_kd.reporting.bd import bd_row, overlap

ANCHOR = (np.array([90.33, 181.03, 332.99, 547.79]), np.array([27.95, 31.17, 34.44, 38.11]))
TEST = (np.array([127.1719, 186.14, 307.2924, 481.5588]), np.array([29.9286, 32.4165, 34.7013, 37.4561]))


def test_vceg_m33_vector_cubic():
    row = bd_row(ANCHOR, TEST, "cubic")
    assert row["bd_rate_pct"] == pytest.approx(-13.261773, abs=1e-5)
    assert row["bd_psnr_db"] == pytest.approx(0.800713, abs=1e-5)
    assert row["overlap_dist"] == pytest.approx(0.74, abs=0.01)
    assert "overlap below 75 %" in row["reason"]


def test_pchip_is_close_to_cubic_on_a_smooth_curve():
    row = bd_row(ANCHOR, TEST, "pchip")
    assert row["bd_rate_pct"] == pytest.approx(-13.26, abs=1.5)


def test_identical_curves_give_zero():
    row = bd_row(ANCHOR, ANCHOR, "pchip")
    assert row["bd_rate_pct"] == pytest.approx(0.0, abs=1e-9)
    assert row["bd_psnr_db"] == pytest.approx(0.0, abs=1e-9)
    assert row["reason"] == ""


def test_too_few_points_gives_no_number_and_the_reason():
    row = bd_row(ANCHOR, (TEST[0][:3], TEST[1][:3]), "cubic")
    assert row["bd_rate_pct"] is None and "cubic needs >= 4 points" in row["reason"]


def test_non_monotonic_curve_gives_no_number():
    row = bd_row(ANCHOR, (TEST[0], TEST[1][[0, 2, 1, 3]]), "pchip")
    assert row["bd_rate_pct"] is None and "not monotonic" in row["reason"]


def test_disjoint_curves_give_no_number():
    far = (ANCHOR[0] * 100, ANCHOR[1] + 20)
    row = bd_row(ANCHOR, far, "pchip")
    assert row["bd_rate_pct"] is None and row["bd_psnr_db"] is None
    assert "no overlap" in row["reason"]


def test_overlap_fraction():
    assert overlap(np.array([0.0, 2.0]), np.array([1.0, 3.0])) == pytest.approx(1 / 3)


def test_rate_warning_flags_a_bitstream_far_over_its_estimate():
    import pandas as pd

    from lic_kd.reporting.curves import rate_warnings

    rd = pd.DataFrame(
        {
            "curve": ["ok", "header only", "gap"],
            "lmbda": [0.01, 0.01, 0.01],
            "bpp": [0.205, 0.012, 0.63],
            "bpp_estimated": [0.2, 0.009, 0.19],
        }
    )
    warned = rate_warnings(rd)
    assert len(warned) == 1 and warned[0].startswith("gap (lmbda=0.01): bitstream 0.6300 bpp is +232% over")


def test_a_mixed_report_compares_autoencoders_among_themselves_and_codecs_by_bd():
    import pandas as pd

    from lic_kd.reporting.tables import bd_table, default_anchor

    nan = float("nan")
    rows = [
        ("teacher-N8-M16", "teacher", 0.01, 0.10, 0.11, 20.0),
        ("teacher-N8-M16", "teacher", 0.02, 0.20, 0.21, 22.0),
        ("student-N4-M16", "student", 0.01, 0.10, 0.11, 19.0),
        ("student-N4-M16", "student", 0.02, 0.20, 0.21, 21.0),
        ("teacher-Autoencoder-N8-M16", "teacher", nan, nan, nan, 21.0),
        ("kd-Autoencoder-N4-M16", "kd", nan, nan, nan, 19.5),
        ("JPEG", "codec", nan, 0.15, nan, 20.5),
        ("JPEG", "codec", nan, 0.25, nan, 22.5),
    ]
    df = pd.DataFrame(rows, columns=["curve", "role", "lmbda", "bpp", "bpp_estimated", "psnr"]).assign(
        N=[8, 8, 4, 4, 8, 4, nan, nan], M=[16] * 6 + [nan, nan], quality=[nan] * 6 + [10, 20]
    )
    for rate in ("bpp", "bpp_estimated"):
        bd = bd_table(df, default_anchor(df), rate=rate).set_index("curve")
        assert bd.loc["kd-Autoencoder-N4-M16", "anchor"] == "teacher-Autoencoder-N8-M16"
        assert bd.loc["kd-Autoencoder-N4-M16", "delta_quality"] == pytest.approx(-1.5)
        assert bd.loc["student-N4-M16", "anchor"] == "teacher-N8-M16" and bd.loc[
            "student-N4-M16", "bd_psnr_db"
        ] == pytest.approx(-1.0)
        assert pd.isna(bd.loc["JPEG", "delta_quality"])  # a codec without an estimate is not an autoencoder
    assert "needs >= 2 points" in bd.loc["JPEG", "reason"]
