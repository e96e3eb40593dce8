"""RD figures show the runs' own rates: published curves reaching 4-5 bpp are cut where the runs end."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lic_kd.reporting.figures import _zoom_on_own_curves


def _rd() -> pd.DataFrame:
    own = pd.DataFrame({"role": "student", "bpp": [0.1, 0.2, 0.4], "psnr": [25.0, 27.0, 29.0]})
    published = pd.DataFrame({"role": "reference", "bpp": [0.2, 0.45, 1.0, 4.7], "psnr": [29.0, 32.0, 37.0, 47.0]})
    return pd.concat([own, published], ignore_index=True)


def test_the_axes_end_past_the_runs_highest_rate_and_fit_what_is_shown_there():
    fig, ax = plt.subplots()
    _zoom_on_own_curves(ax, _rd(), "bpp", "psnr")
    assert ax.get_xlim() == (0.0, 0.5)  # 1.25 x the runs' 0.4 bpp, not the reference's 4.7
    low, high = ax.get_ylim()
    assert low < 25.0 and 32.0 < high < 37.0  # the reference's 0.45-bpp point is shown, its 1-bpp one is not
    plt.close(fig)


def test_an_infinite_quality_is_left_out_and_references_alone_change_nothing():
    rd = _rd().assign(psnr=lambda d: d["psnr"].where(d["bpp"] != 0.45, np.inf))
    fig, ax = plt.subplots()
    _zoom_on_own_curves(ax, rd, "bpp", "psnr")
    assert np.isfinite(ax.get_ylim()).all() and ax.get_ylim()[1] < 32.0
    plt.close(fig)
    only_references = _rd()[lambda d: d["role"] == "reference"]
    fig, ax = plt.subplots()
    before = ax.get_xlim()
    _zoom_on_own_curves(ax, only_references, "bpp", "psnr")
    assert ax.get_xlim() == before
    plt.close(fig)
