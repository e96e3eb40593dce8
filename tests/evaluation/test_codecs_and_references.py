"""Classical codecs as rows of the same tables, and published curves in CompressAI's JSON format."""

import json

import pandas as pd
import pytest
from PIL import Image

from conftest import KODAK, REPO, run_module
from lic_kd.evaluation.classical import available_codecs, run_codec
from lic_kd.reporting.curves import rd_table
from lic_kd.reporting.references import export_curve, load_reference

HYPERPRIOR = REPO / "data" / "reference" / "compressai-bmshj2018-hyperprior_mse_cuda.json"


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crops")
    for name in ("kodim01.png", "kodim23.png"):
        Image.open(KODAK / name).crop((100, 100, 300, 280)).save(folder / name)
    return sorted(folder.glob("*.png"))


@pytest.mark.parametrize("codec", ["JPEG", "WebP", "JPEG2000", "AVIF"])
def test_codec_rate_rises_with_quality_and_files_are_real(codec, crops, tmp_path):
    assert codec in available_codecs()
    ladder = {"JPEG2000": (28, 34, 40)}.get(codec, (10, 50, 90))
    paths = run_codec(codec, crops, tmp_path, ladder)
    results = [json.loads(p.read_text()) for p in paths]
    bpps = [r["metrics"]["bpp"] for r in results]
    psnrs = [r["metrics"]["psnr"] for r in results]
    assert bpps == sorted(bpps) and bpps[0] < bpps[-1]
    assert psnrs[0] < psnrs[-1]
    for r in results:
        for row in r["images"]:
            files = list(
                (tmp_path / codec / f"q{r['run']['quality']}" / "bitstreams").glob(row["image"].replace(".png", ".*"))
            )
            assert len(files) == 1 and files[0].stat().st_size == row["bytes"]


def test_reference_import_export_round_trip(tmp_path):
    records = load_reference(HYPERPRIOR)
    assert len(records) == 8 and records[4]["metrics"]["psnr"] == pytest.approx(34.526, abs=1e-3)
    df = rd_table(records)
    assert set(df["curve"]) == {"bmshj2018-hyperprior [ref]"}
    export_curve(df, "bmshj2018-hyperprior", tmp_path / "out.json", "round trip")
    again = rd_table(load_reference(tmp_path / "out.json"))
    cols = ["bpp", "psnr", "ms_ssim", "encode_s", "decode_s"]
    pd.testing.assert_frame_equal(df[cols], again[cols])
    original = json.loads(HYPERPRIOR.read_text())["results"]
    exported = json.loads((tmp_path / "out.json").read_text())["results"]
    assert exported["bpp"] == pytest.approx(original["bpp"]) and exported["psnr-rgb"] == pytest.approx(
        original["psnr-rgb"]
    )


def test_a_file_that_is_not_compressai_json_is_named(tmp_path):
    (tmp_path / "x.json").write_text('{"name": "x"}')
    with pytest.raises(ValueError, match="x.json is not a CompressAI results file"):
        load_reference(tmp_path / "x.json")


def test_report_against_a_published_anchor(tmp_path, crops):
    run_codec("JPEG", crops, tmp_path / "codecs", (10, 30, 50, 70, 90))
    out = tmp_path / "rep"
    run_module(
        "lic_kd.report",
        str(tmp_path / "codecs"),
        "--name",
        "r",
        "--out-root",
        str(out),
        "--reference",
        str(HYPERPRIOR),
        str(REPO / "data" / "reference" / "jpeg.json"),
        "--anchor",
        "JPEG",
    )
    bd = pd.read_csv(out / "r" / "bd_rate.csv").set_index("curve")
    # CompressAI's published hyperprior beats JPEG by a wide margin on Kodak
    assert bd.loc["bmshj2018-hyperprior [ref]", "bd_rate_pct"] < -30
    assert set(bd.index) == {"bmshj2018-hyperprior [ref]", "JPEG [ref]"}
    curves = json.loads((out / "r" / "curves" / "JPEG.json").read_text())
    assert curves["name"] == "JPEG" and len(curves["results"]["bpp"]) == 5
    # CompressAI's own plotting tool reads the exported curve beside a published one
    run_module(
        "compressai.utils.plot",
        "-f",
        str(out / "r" / "curves" / "JPEG.json"),
        str(HYPERPRIOR),
        "-m",
        "ms-ssim",
        "-o",
        str(tmp_path / "compressai_plot.png"),
        env={"MPLBACKEND": "Agg"},
    )
    assert (tmp_path / "compressai_plot.png").stat().st_size > 10_000
