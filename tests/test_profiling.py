"""Latency, energy and memory: measured for real, or unavailable with the reason, never made up."""

import torch
from compressai.models import ScaleHyperprior

from lic_kd.codec import prepare_for_coding
from lic_kd.profiling import EnergyMeter, peak_rss_during, profile_codec


def test_profile_of_a_small_codec_on_cpu():
    coder = prepare_for_coding(ScaleHyperprior(8, 16))
    p = profile_codec(coder, torch.rand(1, 3, 128, 192), torch.device("cpu"), repeats=2)
    lat = p["latency"]
    assert lat["encode_s"] > 0 and lat["decode_s"] > 0 and lat["decoder_fps"] == 1 / lat["decode_s"]
    assert (lat["height"], lat["width"]) == (128, 192) and lat["threads"] == torch.get_num_threads()
    assert p["memory"]["decode_peak_bytes"] is None or p["memory"]["decode_peak_bytes"] >= 0
    if p["energy"]["available"]:
        assert p["energy"]["decode_j"] > 0
    else:
        assert p["energy"]["decode_j"] is None and p["energy"]["reason"]


def test_energy_falls_back_with_a_reason_without_counters(monkeypatch, tmp_path):
    monkeypatch.setattr("lic_kd.profiling.RAPL", tmp_path / "no-rapl")
    meter = EnergyMeter(torch.device("cpu"))
    assert not meter.available and "no readable RAPL counter" in meter.reason and "no-rapl" in meter.reason


def test_rapl_reader_handles_a_counter_that_wraps(monkeypatch, tmp_path):
    """A fake sysfs file stands in for the kernel's counter, which this machine does not expose."""
    (tmp_path / "energy_uj").write_text("999000000")
    (tmp_path / "max_energy_range_uj").write_text("1000000000")
    monkeypatch.setattr("lic_kd.profiling.RAPL", tmp_path)
    meter = EnergyMeter(torch.device("cpu"))
    assert meter.available
    wrapped = lambda: (tmp_path / "energy_uj").write_text("1000000")  # +2 J across the wrap  # noqa: E731
    assert abs(meter.joules_per_call(wrapped, torch.device("cpu"), min_seconds=0) - 2.0) < 1e-9


def test_peak_rss_sees_a_large_allocation():
    peak = peak_rss_during(lambda: torch.ones(64, 1024, 1024).sum())  # 256 MB
    assert peak is None or peak > 200e6


def test_decode_peak_memory_grows_with_the_model():
    from lic_kd.profiling import decode_peak_memory

    x = torch.rand(1, 3, 256, 384)
    peaks = []
    for n, m in ((8, 16), (64, 96)):
        coder = prepare_for_coding(ScaleHyperprior(n, m))
        encoded = coder.compress(x)
        peaks.append(decode_peak_memory(coder.decompress, (encoded["strings"], encoded["shape"]))["decode_peak_bytes"])
    assert peaks[0] > 0 and peaks[1] > peaks[0]


def test_profile_of_an_autoencoder_times_its_two_transforms():
    from lic_kd.models import Autoencoder
    from lic_kd.profiling import profile_autoencoder

    p = profile_autoencoder(Autoencoder(8, 16).eval(), torch.rand(1, 3, 64, 128), torch.device("cpu"), repeats=2)
    assert p["latency"]["decode_s"] > 0 and (p["latency"]["height"], p["latency"]["width"]) == (64, 128)
    assert p["memory"]["decode_peak_bytes"] is None or p["memory"]["decode_peak_bytes"] > 0
