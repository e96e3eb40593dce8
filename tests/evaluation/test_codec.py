"""Real bitstreams: bpp accounting, round trips, and the images users actually have."""

import numpy as np
import pytest
import torch
from compressai.entropy_models import GaussianConditional
from compressai.models import ScaleHyperprior
from PIL import Image

from conftest import KODAK
from lic_kd.data import DataError, load_rgb, to_tensor
from lic_kd.evaluation.coding import (
    code_image,
    estimated_bpp,
    evaluate_net,
    pad,
    prepare_for_coding,
    read_bitstream,
    write_bitstream,
)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ScaleHyperprior(8, 16).eval()


def test_bitstream_file_round_trip(tmp_path):
    strings = [[b"\x01\x02\x03"], [b"hello"]]
    n = write_bitstream(tmp_path / "a.lkd", strings, {"y": [2, 3], "hyper": [1, 1]}, (70, 50))
    assert n == (tmp_path / "a.lkd").stat().st_size
    assert read_bitstream(tmp_path / "a.lkd") == (strings, {"y": [2, 3], "hyper": [1, 1]}, (70, 50))


def test_bpp_counts_every_byte_written_over_the_original_pixels(net, tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8))
    img.save(tmp_path / "odd.png")
    coder = prepare_for_coding(net)
    row = code_image(coder, tmp_path / "odd.png", tmp_path / "odd.lkd", torch.device("cpu"))
    size = (tmp_path / "odd.lkd").stat().st_size
    assert row["bytes"] == size
    assert row["bpp"] == pytest.approx(8 * size / (70 * 100))
    assert (row["height"], row["width"]) == (70, 100)
    assert row["bpp_estimated"] > 0


def test_decoded_image_equals_the_eval_mode_reconstruction(net, tmp_path):
    """The bitstream carries exactly what the model's own rounding-quantized forward pass reconstructs."""
    x = to_tensor(load_rgb(KODAK / "kodim23.png"))[None, :, :128, :192]
    coder = prepare_for_coding(net)
    with torch.no_grad():
        expected = coder(pad(x))["x_hat"].clamp(0, 1)
        enc = coder.compress(pad(x))
        write_bitstream(tmp_path / "k.lkd", enc["strings"], enc["shape"], x.shape[-2:])
        strings, shape, _ = read_bitstream(tmp_path / "k.lkd")
        decoded = coder.decompress(strings, shape)["x_hat"].clamp(0, 1)
    assert torch.allclose(decoded, expected, atol=1e-4)


def test_searchsorted_indexes_are_compressai_own(net):
    """The coder's one-pass CDF indexes equal CompressAI's loop over the scale table, on the table's own values,
    between them, below and above it."""
    coder = prepare_for_coding(net)
    conditional = coder.gaussian_conditional
    table = conditional.scale_table
    scales = torch.cat(
        [table, (table[1:] + table[:-1]) / 2, torch.tensor([0.0, 1e-6, 0.05, 1e3]), torch.rand(5000) * 30]
    )
    scales = torch.cat([scales, torch.nextafter(table, torch.zeros_like(table)), torch.nextafter(table, table + 1)])
    reshaped = scales[: 4 * (scales.numel() // 4)].reshape(1, 4, -1, 1)
    assert torch.equal(conditional.build_indexes(reshaped), GaussianConditional.build_indexes(conditional, reshaped))


def test_estimated_bpp_is_the_forward_likelihoods(net):
    x = pad(to_tensor(load_rgb(KODAK / "kodim23.png"))[None, :, :128, :192])
    coder = prepare_for_coding(net)
    with torch.no_grad():
        expected = sum(p.log2().sum().neg().item() for p in coder(x)["likelihoods"].values()) / (128 * 192)
        assert estimated_bpp(coder, x, 128 * 192) == pytest.approx(expected, rel=1e-6)
    assert not isinstance(coder.g_s, torch.nn.Identity)


def test_update_happens_on_a_copy(net):
    before = {k: v.shape for k, v in net.state_dict().items()}
    prepare_for_coding(net)
    assert {k: v.shape for k, v in net.state_dict().items()} == before


def make_odd_images(folder):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (200, 230, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray((rng.integers(0, 65536, (180, 190))).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=90)
    Image.fromarray(rgb[:20, :30]).save(folder / "tiny.png")
    Image.fromarray(rgb[:1, :1]).save(folder / "pixel.png")


def test_any_image_a_user_has_is_coded(net, tmp_path):
    make_odd_images(tmp_path)
    paths = sorted(tmp_path.glob("*.*"))
    result = evaluate_net(net, paths, tmp_path / "bits", device="cpu")
    rows = {r["image"]: r for r in result["images"]}
    assert set(rows) == {"gray.png", "rgba.png", "deep16.png", "photo.jpg", "tiny.png", "pixel.png"}
    for row in rows.values():
        assert row["bpp"] > 0 and row["psnr"] is not None
    assert rows["photo.jpg"]["ms_ssim"] is not None
    assert rows["tiny.png"]["ms_ssim"] is None and "smaller than 161 px" in rows["tiny.png"]["ms_ssim_missing"]
    # dataset values are means of the per-image values, skipping images where a metric is missing
    ms = [r["ms_ssim"] for r in result["images"] if r["ms_ssim"] is not None]
    assert result["metrics"]["ms_ssim"] == pytest.approx(sum(ms) / len(ms))
    assert result["metrics"]["bpp"] == pytest.approx(sum(r["bpp"] for r in result["images"]) / 6)


def test_16_bit_images_are_rescaled_not_clipped(tmp_path):
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "white16.png")
    assert np.asarray(load_rgb(tmp_path / "white16.png")).min() == 255


def test_a_corrupt_image_is_an_error_that_names_it(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match="broken.png"):
        load_rgb(tmp_path / "broken.png")
