"""Speed, energy and memory of a codec, measured for real or recorded as unavailable with the reason."""

from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from compressai.models import CompressionModel
from torch import nn

from lic_kd.errors import ConfigError

RAPL = Path("/sys/class/powercap/intel-rapl:0")  # CPU package domain


def use_threads(threads: int | None) -> None:
    """Run torch on `threads` CPU threads (None: leave torch's default, one per core)."""
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"threads must be a positive number of CPU threads or null, got {threads}")
        torch.set_num_threads(int(threads))


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer around it measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class EnergyMeter:
    """Cumulative energy counter of the device: NVML on an NVIDIA GPU, RAPL on a CPU that exposes it."""

    def __init__(self, device: torch.device) -> None:
        self.reason = ""
        self._read: Callable[[], float] | None = None  # joules
        self._wrap = 0.0
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                self._read = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3  # mJ
                self.source = "nvml"
            except Exception as err:  # no driver, or a GPU older than Volta
                self.reason = f"NVML energy counter unavailable: {err}"
        else:
            energy = RAPL / "energy_uj"
            try:
                float(energy.read_text())
                self._wrap = float((RAPL / "max_energy_range_uj").read_text()) / 1e6
                self._read = lambda: float(energy.read_text()) / 1e6
                self.source = "rapl"
            except OSError as err:
                self.reason = f"no readable RAPL counter ({energy}: {err.strerror or err})"

    @property
    def available(self) -> bool:
        return self._read is not None

    def joules_per_call(self, fn: Callable[[], Any], device: torch.device, min_seconds: float = 2.0) -> float:
        """Energy of one call, averaged over as many calls as fill `min_seconds`: the counters update only
        every 20-100 ms."""
        assert self._read is not None
        sync(device)
        calls, start, e0 = 0, time.perf_counter(), self._read()
        while time.perf_counter() - start < min_seconds or calls == 0:
            fn()
            calls += 1
        sync(device)
        used = self._read() - e0
        if used < 0:  # RAPL wrapped around
            used += self._wrap
        return used / calls


def peak_rss_during(fn: Callable[[], Any]) -> int | None:
    """Extra resident memory (bytes) at the peak of fn, from Linux's VmHWM after resetting it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident set size
        baseline = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - baseline) * 1024
    except OSError:
        return None


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


@torch.inference_mode()
def profile(
    encode: Callable[[], Any],
    decode: Callable[..., Any],
    decode_args: tuple,
    x_padded: torch.Tensor,
    device: torch.device,
    repeats: int = 3,
) -> dict[str, Any]:
    """Latency after a warm-up, decoder throughput, energy and peak decode memory of `encode()` and
    `decode(*decode_args)` on the padded image `x_padded`."""
    encode(), decode(*decode_args)  # warm-up
    decode_once = lambda: decode(*decode_args)  # noqa: E731
    latency = {
        "encode_s": _median_seconds(encode, device, repeats),
        "decode_s": _median_seconds(decode_once, device, repeats),
        "height": x_padded.shape[-2],
        "width": x_padded.shape[-1],
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
    }
    latency["decoder_fps"] = 1.0 / latency["decode_s"]

    meter = EnergyMeter(device)
    if meter.available:
        decode_j = meter.joules_per_call(decode_once, device)
        energy = {
            "available": True,
            "source": meter.source,
            "decode_j": decode_j,
            "encode_decode_j": meter.joules_per_call(lambda: (encode(), decode_once()), device),
        }
    else:
        energy = {"available": False, "reason": meter.reason, "decode_j": None, "encode_decode_j": None}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        decode_once()
        memory = {"decode_peak_bytes": torch.cuda.max_memory_allocated(device) - base, "source": "torch.cuda"}
    else:
        memory = decode_peak_memory(decode, decode_args)
    return {"latency": latency, "energy": energy, "memory": memory}


@torch.inference_mode()
def profile_codec(
    coder: CompressionModel, x_padded: torch.Tensor, device: torch.device, repeats: int = 3
) -> dict[str, Any]:
    """profile() of real entropy coding: compress, and decompress from the strings. `coder` comes from
    prepare_for_coding."""
    encoded = coder.compress(x_padded)
    return profile(
        lambda: coder.compress(x_padded),
        coder.decompress,
        (encoded["strings"], encoded["shape"]),
        x_padded,
        device,
        repeats,
    )


@torch.inference_mode()
def profile_autoencoder(
    net: nn.Module, x_padded: torch.Tensor, device: torch.device, repeats: int = 3
) -> dict[str, Any]:
    """profile() of an autoencoder without an entropy model: g_a, and g_s from the float latent."""
    return profile(lambda: net.g_a(x_padded), net.g_s, (net.g_a(x_padded),), x_padded, device, repeats)


def decode_peak_memory(decode: Callable[..., Any], decode_args: tuple, repeats: int = 3) -> dict[str, Any]:
    """Peak extra resident memory of one CPU `decode(*decode_args)`: the median over `repeats` calls of
    peak_rss_during, each after malloc_trim has handed the allocator's free pages back to the system, so
    that memory freed by earlier work must be faulted in again and counts (without the trim it would hide
    the decoder's own needs). Cheaper and steadier than a fresh process, whose figure also counts the
    first touch of library code."""
    peaks = []
    for _ in range(repeats):
        _release_free_memory()
        peak = peak_rss_during(lambda: decode(*decode_args))
        if peak is None:
            return {"decode_peak_bytes": None, "source": "unavailable", "reason": "no /proc/self/clear_refs or VmHWM"}
        peaks.append(peak)
    return {
        "decode_peak_bytes": int(statistics.median(peaks)),
        "source": f"VmHWM after malloc_trim, median of {repeats}",
    }


def _release_free_memory() -> None:
    """glibc's malloc_trim(0); a no-op where the C library has none."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def profile_image(images: Sequence[Path], rows: Sequence[dict[str, Any]]) -> Path:
    """The image a codec's speed, energy and memory are measured on: the first 768x512 one (a Kodak image in
    landscape, so that runs on different image sets compare), else the first."""
    sizes = [(r["width"], r["height"]) for r in rows]
    return images[sizes.index((768, 512))] if (768, 512) in sizes else images[0]
