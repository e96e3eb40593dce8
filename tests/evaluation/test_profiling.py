"""Latency, energy and memory: measured for real, or unavailable with the reason, never made up."""

import time

import pytest
import torch
from compressai.models import ScaleHyperprior

from lic_kd.evaluation.coding import prepare_for_coding
from lic_kd.evaluation.profiling import EnergyMeter, peak_rss_during, profile, profile_codec

CPU = torch.device("cpu")


@pytest.fixture
def one_thread():
    """Latency ratios measured on one thread: with two threads on a loaded 2-core machine a 12 ms encode took
    300 ms (a thread waiting for a busy core), which drowns the growth with size that these tests check."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_profile_of_a_small_codec_on_cpu(monkeypatch, tmp_path, one_thread):
    """Real entropy coding of a small and a 24x larger image: encode and decode latency and the decoder's peak
    memory grow with the image (latency 5.4-18.7x on one thread with both cores busy with other work; memory
    8.5-9.4x). An N=32 codec: an N=8 one's time is mostly the entropy coder's fixed cost. Without an energy
    counter, the record says why and holds no number."""
    monkeypatch.setattr("lic_kd.evaluation.profiling.RAPL", tmp_path / "no-rapl")
    coder = prepare_for_coding(ScaleHyperprior(32, 48))
    small, large = (profile_codec(coder, torch.rand(1, 3, h, w), CPU, repeats=5) for h, w in ((128, 128), (512, 768)))
    for key in ("encode_s", "decode_s"):
        assert large["latency"][key] > 3 * small["latency"][key], key
    lat = large["latency"]
    assert (lat["height"], lat["width"], lat["repeats"]) == (512, 768, 5) and lat["threads"] == torch.get_num_threads()
    assert large["memory"]["decode_peak_bytes"] > 3 * small["memory"]["decode_peak_bytes"] > 0
    assert large["memory"]["source"].startswith("VmHWM")
    energy = large["energy"]
    assert (energy["available"], energy["decode_j"], energy["encode_decode_j"]) == (False, None, None)
    assert energy["reason"].startswith(f"no readable RAPL counter ({tmp_path / 'no-rapl' / 'energy_uj'}: ")


def test_profile_times_and_meters_encode_and_decode_separately(monkeypatch, tmp_path):
    """Known work: an encoder that takes 20 ms and 0.5 J, a decoder that takes 100 ms and 2 J (a fake RAPL
    counter in sysfs's format). The latency of each side is at least its own sleep and less than the other's
    (sleep overshoot on a loaded machine stays well under those gaps), decoder_fps counts decodes per second,
    and energy per call is exact."""
    counter = tmp_path / "energy_uj"
    counter.write_text("0")
    (tmp_path / "max_energy_range_uj").write_text(str(10**15))
    monkeypatch.setattr("lic_kd.evaluation.profiling.RAPL", tmp_path)

    def work(seconds: float, joules: float) -> None:
        time.sleep(seconds)
        counter.write_text(str(int(counter.read_text()) + round(joules * 1e6)))

    p = profile(lambda: work(0.02, 0.5), work, (0.1, 2.0), torch.zeros(1, 3, 64, 128), CPU, repeats=3)
    lat = p["latency"]
    assert 0.02 <= lat["encode_s"] < 0.1 and 0.1 <= lat["decode_s"] < 0.3
    assert 1 / 0.3 < lat["decoder_fps"] <= 10 and (lat["height"], lat["width"]) == (64, 128)
    assert p["energy"] == {
        "available": True,
        "source": "rapl",
        "decode_j": pytest.approx(2.0),
        "encode_decode_j": pytest.approx(2.5),
    }


def test_energy_falls_back_with_a_reason_without_counters(monkeypatch, tmp_path):
    monkeypatch.setattr("lic_kd.evaluation.profiling.RAPL", tmp_path / "no-rapl")
    meter = EnergyMeter(torch.device("cpu"))
    assert not meter.available and "no readable RAPL counter" in meter.reason and "no-rapl" in meter.reason


def test_rapl_reader_handles_a_counter_that_wraps(monkeypatch, tmp_path):
    """A fake sysfs file stands in for the kernel's counter, which this machine does not expose."""
    (tmp_path / "energy_uj").write_text("999000000")
    (tmp_path / "max_energy_range_uj").write_text("1000000000")
    monkeypatch.setattr("lic_kd.evaluation.profiling.RAPL", tmp_path)
    meter = EnergyMeter(torch.device("cpu"))
    assert meter.available
    wrapped = lambda: (tmp_path / "energy_uj").write_text("1000000")  # +2 J across the wrap  # noqa: E731
    assert abs(meter.joules_per_call(wrapped, torch.device("cpu"), min_seconds=0) - 2.0) < 1e-9


def test_peak_rss_sees_a_large_allocation():
    """The extra memory of the call, not the process's: 268 MB of float32 ones (fresh pages from mmap) count
    once, a 4 kB tensor next to nothing."""
    assert 250e6 < peak_rss_during(lambda: torch.ones(64, 1024, 1024).sum()) < 400e6
    assert peak_rss_during(lambda: torch.ones(1024).sum()) < 20e6


def test_decode_peak_memory_without_a_peak_counter_says_why(monkeypatch):
    from lic_kd.evaluation.profiling import decode_peak_memory

    monkeypatch.setattr(
        "lic_kd.evaluation.profiling.peak_rss_during", lambda fn: None
    )  # no /proc/self/clear_refs (not Linux)
    assert decode_peak_memory(lambda: None, ()) == {
        "decode_peak_bytes": None,
        "source": "unavailable",
        "reason": "no /proc/self/clear_refs or VmHWM",
    }


def test_decode_peak_memory_grows_with_the_model():
    from lic_kd.evaluation.profiling import decode_peak_memory

    x = torch.rand(1, 3, 256, 384)
    peaks = []
    for n, m in ((8, 16), (64, 96)):
        coder = prepare_for_coding(ScaleHyperprior(n, m))
        encoded = coder.compress(x)
        peaks.append(decode_peak_memory(coder.decompress, (encoded["strings"], encoded["shape"]))["decode_peak_bytes"])
    assert peaks[0] > 0 and peaks[1] > peaks[0]


def test_profile_of_an_autoencoder_times_its_two_transforms(one_thread):
    """g_a and g_s of a network 8x wider (64x the MACs): both take longer and g_s needs more memory (measured
    2.8-14.6x the latency on one thread with both cores busy, 4.5-7.5x the memory)."""
    from lic_kd.evaluation.profiling import profile_autoencoder
    from lic_kd.models.networks import Autoencoder

    x = torch.rand(1, 3, 128, 192)
    thin, wide = (profile_autoencoder(Autoencoder(n, m).eval(), x, CPU, repeats=5) for n, m in ((8, 16), (64, 96)))
    for key in ("encode_s", "decode_s"):
        assert wide["latency"][key] > 1.5 * thin["latency"][key], key
    assert (wide["latency"]["height"], wide["latency"]["width"]) == (128, 192)
    assert wide["memory"]["decode_peak_bytes"] > 2 * thin["memory"]["decode_peak_bytes"] > 0
