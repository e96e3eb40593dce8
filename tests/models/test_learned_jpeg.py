"""Learned JPEG: the differentiable JPEG against Pillow/libjpeg, its tables and rate proxy, and a run through
the entry points users run (train, sweep, KD, report) that writes real JPEG files."""

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import KODAK, REPO, train
from lic_kd.data import load_rgb, to_tensor
from lic_kd.evaluation.classical import run_codec
from lic_kd.evaluation.jpeg_files import decode_jpeg, encode_jpeg, proxy_samples, tables_text
from lic_kd.metrics import psnr_8bit, to_8bit
from lic_kd.models.learned_jpeg import (
    LearnedJPEG,
    blocks_dct,
    blocks_idct,
    dct_matrix,
    quality_tables,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
    zigzag_order,
)
from lic_kd.reporting.writer import write_report
from lic_kd.training.losses import make_rd_loss


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """A 256x192 crop of a Kodak image (detail and flat areas), as a file and as the image."""
    path = tmp_path_factory.mktemp("img") / "crop.png"
    Image.open(KODAK / "kodim23.png").crop((256, 128, 512, 320)).save(path)
    return path, load_rgb(path)


def test_dct_is_orthonormal_and_inverts():
    d = dct_matrix()
    assert torch.allclose(d @ d.T, torch.eye(8), atol=1e-6)
    x = torch.rand(2, 3, 16, 24) * 255
    coefficients = blocks_dct(x, d)
    assert coefficients.shape == (2, 3, 2, 3, 64)
    assert torch.allclose(blocks_idct(coefficients, d), x, atol=1e-3)
    # JPEG's FDCT: the DC of a constant block is 8 x its value
    assert blocks_dct(torch.full((1, 1, 8, 8), 10.0), d)[0, 0, 0, 0, 0].item() == pytest.approx(80, abs=1e-4)


def test_ycbcr_round_trip_and_pillows_conversion(crop):
    _, img = crop
    rgb = to_tensor(img)[None] * 255
    ycc = rgb_to_ycbcr(rgb)
    assert torch.allclose(ycbcr_to_rgb(ycc), rgb, atol=1e-3)
    pillow = torch.from_numpy(np.asarray(img.convert("YCbCr"), dtype=np.float32)).permute(2, 0, 1)[None]
    assert (ycc - pillow).abs().max().item() < 1.01  # Pillow rounds to 8 bits


def test_standard_tables_and_zigzag_are_libjpegs(crop):
    _, img = crop
    for quality in (10, 50, 90):
        tables = quality_tables(quality).int().tolist()
        data = encode_jpeg(img, tables, "4:2:0", optimize=False)
        reference = io.BytesIO()
        img.save(reference, format="JPEG", quality=quality)
        assert data == reference.getvalue()  # the same file as Pillow's quality=
    zz = zigzag_order()
    assert sorted(zz) == list(range(64)) and zz[:6] == [0, 1, 8, 16, 9, 2] and zz[-1] == 63


@pytest.mark.parametrize("subsampling, min_psnr", [("4:4:4", 38.0), ("4:2:0", 36.0)])
def test_forward_path_matches_pillows_decode(crop, subsampling, min_psnr):
    _, img = crop
    x = to_tensor(img)[None]
    for quality in (20, 75):
        net = LearnedJPEG(subsampling, init=quality).eval()
        decoded = to_tensor(decode_jpeg(encode_jpeg(img, net.integer_tables(), subsampling, optimize=False)))[None]
        with torch.no_grad():
            x_hat = to_8bit(net(x)["x_hat"])
        assert psnr_8bit(decoded, x_hat) > min_psnr, (subsampling, quality)  # model vs the real decoder
        assert abs(psnr_8bit(x, x_hat) - psnr_8bit(x, decoded)) < 0.25, (subsampling, quality)


def test_tables_stay_in_range_are_integers_and_are_what_the_file_holds(crop):
    _, img = crop
    net = LearnedJPEG("4:4:4", init="flat:16")
    with torch.no_grad():  # push entries far past both bounds
        net.scaled_log_tables[0, :32] = np.log(5000) / net.step_scale
        net.scaled_log_tables[0, 32:] = np.log(0.01) / net.step_scale
    tables = net.integer_tables()
    assert all(isinstance(v, int) and 1 <= v <= 255 for t in tables for v in t)
    assert tables[0][0] == 255 and tables[0][63] == 1 and tables[1] == [16] * 64
    used = net.tables()
    assert torch.equal(used, used.round()) and used.min() >= 1 and used.max() <= 255
    # straight through the clamp: an entry at a bound still gets a gradient and can come back
    net(to_tensor(img)[None])["bpp"].backward()
    assert net.scaled_log_tables.grad[0, 0] != 0 and net.scaled_log_tables.grad[0, 63] != 0
    with Image.open(io.BytesIO(encode_jpeg(img, tables, "4:4:4", optimize=True))) as jpeg:
        assert jpeg.quantization[0] == tables[0] and jpeg.quantization[1] == tables[1]
    text = tables_text(tables)
    assert "zig-zag" in text and text.count("\n255") >= 1


@pytest.mark.parametrize("rounding", ["ste", "cubic"])
def test_rd_loss_charges_the_proxy_and_trains_the_tables(crop, rounding):
    _, img = crop
    x = to_tensor(img)[None, :, :128, :128]
    net = LearnedJPEG(init=50, rounding=rounding)
    loss_fn = make_rd_loss(lmbda=0.001)
    out = net(x)
    loss = loss_fn(out, x)
    assert loss["bpp_loss"] is out["bpp"]
    assert loss["loss"].item() == pytest.approx(0.001 * 255**2 * loss["mse_loss"].item() + out["bpp"].item(), rel=1e-5)
    loss["loss"].backward()
    grad = net.scaled_log_tables.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # at a low lambda the rate dominates: gradient descent coarsens the tables on average
    assert grad.mean() < 0


def test_rate_proxy_tracks_real_file_sizes():
    features, bits = proxy_samples(sorted(KODAK.glob("*.png"))[:2], tables=(10, 40, 80, "flat:4", "flat:30"))
    net = LearnedJPEG()
    predicted = features @ np.array(list(net.rate_proxy.values()))
    assert np.corrcoef(predicted, bits)[0, 1] > 0.99
    assert np.abs(predicted / bits - 1).mean() < 0.1


def test_learned_jpeg_sweep_kd_and_report_write_real_jpeg_files(tmp_path):
    sweep = tmp_path / "sweep"
    budget = ["model=learned-jpeg", "steps=6", "val_every=3"]
    train("-m", *budget, "lmbda=0.002,0.02", f"hydra.sweep.dir={sweep}")
    runs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert len(runs) == 2
    for run in runs:
        r = json.loads((run / "results.json").read_text())
        assert r["run"]["architecture"] == "LearnedJPEG" and r["run"]["loss"] == "rd"
        assert r["run"]["model_options"]["subsampling"] == "4:2:0"
        tables = [r["codec"]["tables"]["luma"], r["codec"]["tables"]["chroma"]]
        assert (run / "tables.txt").read_text() == tables_text(tables)
        for row in r["images"]:
            path = run / "bitstreams" / row["image"].replace(".png", ".jpg")
            data = path.read_bytes()
            assert row["bytes"] == len(data) and row["bpp"] == pytest.approx(
                8 * len(data) / (row["height"] * row["width"])
            )
            assert data[:2] == b"\xff\xd8" and b"\xff\xc0" in data  # a baseline JPEG (SOF0)
            with Image.open(path) as jpeg:  # the standard decoder reads it, with the learned tables
                assert jpeg.format == "JPEG" and jpeg.size == (row["width"], row["height"])
                assert [jpeg.quantization[0], jpeg.quantization[1]] == tables
                jpeg.convert("RGB")
            optimized = run / "bitstreams" / "huffman-optimized" / path.name
            assert row["bpp_huffman_optimized"] == pytest.approx(
                8 * optimized.stat().st_size / (row["height"] * row["width"])
            )
            assert row["bpp_huffman_optimized"] < row["bpp_huffman_standard"] == row["bpp"]
            assert row["psnr"] > 20 and row["bpp_estimated"] > 0
        assert r["metrics"]["n_images"] == 2 and r["codec"]["rate_proxy"]["mean_proxy_over_real"] > 0
        assert r["params"] == 128 and 0 < r["complexity"]["kmac_per_pixel_decoder"] < 0.1  # DCT and colour transforms
    bpp = {
        r["run"]["lmbda"]: r["metrics"]["bpp"] for r in (json.loads((run / "results.json").read_text()) for run in runs)
    }
    assert bpp[0.002] < bpp[0.02]  # a few batches already move the tables apart

    kd = tmp_path / "kd"  # distilled from the shipped teacher's reconstructions (it has no latent y to match)
    train(
        *budget,
        "role=kd",
        "loss.w_y=0",
        "loss.x_in_task_units=true",
        "lmbda=0.0067",
        f"teacher.checkpoint={REPO / 'teachers' / 'bmshj2018-hyperprior-N64-M96'}",
        f"hydra.run.dir={kd}",
    )
    r = json.loads((kd / "results.json").read_text())
    assert r["run"]["role"] == "kd" and r["run"]["loss_weights"]["x_in_task_units"] is True
    assert len(list((kd / "bitstreams").glob("*.jpg"))) == 2

    codecs = tmp_path / "codecs"  # Pillow's JPEG at the standard tables on the same images (make codecs), in-process
    run_codec("JPEG", sorted(KODAK.glob("*.png"))[:2], codecs, [5, 30, 90])
    out = write_report([sweep, kd, codecs], "lj", tmp_path / "rep")
    table = pd.read_csv(out / "learned_jpeg_vs_jpeg.csv")
    assert set(table["curve"]) == {"student-LearnedJPEG", "kd-LearnedJPEG"} and (table["anchor"] == "JPEG").all()
    student = table.set_index("curve").loc["student-LearnedJPEG"]
    assert student["images"] == 4 and -1 <= student["proxy_pearson_r"] <= 1
    assert (table["bd_rate_pct_psnr"].notna() | table["reason_psnr"].fillna("").str.len().gt(0)).all()
    bd = pd.read_csv(out / "bd_rate.csv")
    assert (bd["anchor"] == "JPEG").all() and "student-LearnedJPEG" in set(bd["curve"])
    report = (out / "report.md").read_text()
    assert "Learned JPEG against Pillow's JPEG" in report and "(visual_comparison.png)" in report
