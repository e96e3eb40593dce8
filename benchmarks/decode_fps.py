"""Decode frames per second at 768x512 (kodim01) for ScaleHyperprior N = 16, 32, 64, 128 (all M=96, the shipped
ladder's width), entropy decoding included; goal: >= 30 fps for the N=16 student on 2 cores.

N=64 is the shipped teacher (lambda 0.0067); N=16 and 32 are students pruned from it (lic_kd.frugal.prune.prune_into,
what student.init=teacher trains from), so the entropy coder decodes realistic streams; N=128 cannot be pruned
from a narrower teacher and is randomly initialised (its timing is real, its stream is not a trained one).
Each coder is prepared as lic_kd.evaluate codes (lic_kd.evaluation.coding.prepare_for_coding, then
codec.on_device: g_s in channels_last on a CPU). The baseline is lic_kd's own decode (torch.inference_mode, torch's
default threads, `decompress` then clamp and crop); against it: the same coder all contiguous (lic_kd before on_device),
torch.no_grad (CompressAI's eval_model), the whole coder channels_last, the other thread count, and the parts of
a decode (entropy decoding of z and y, h_s, the scale indexes, g_s) timed apart: the entropy coder's share bounds
the fps that faster transforms can reach; an exact faster entropy model (indexes by one bucketize, CDF tables
listed once) is timed as a potential. Every variant runs once per round, in rotating order; medians over rounds.

    python -m benchmarks.decode_fps [--smoke] [--repeats R] [--widths 16,32,64,128] [--compile]
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from compressai.models import ScaleHyperprior

from benchmarks.common import (
    KODAK,
    TEACHER_LMBDA,
    TEACHERS,
    device_of,
    environment,
    finish,
    interleave,
    median_ratio,
    parser,
    ratio,
    spread,
    timed,
)

GOAL_FPS = 30.0
PARTS = ("entropy_z", "h_s", "indexes", "entropy_y", "g_s")
FAST_PARTS = ("entropy_z", "h_s", "indexes_bucketize", "entropy_y_cached_tables", "g_s")
M = 96
SMOKE_SIZE = (192, 128)  # width, height: multiples of 64 (no padding)


@contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def coders(widths: list[int]) -> dict[int, tuple[torch.nn.Module, str]]:
    from lic_kd.evaluation.coding import prepare_for_coding
    from lic_kd.frugal.prune import prune_into
    from lic_kd.models.checkpoints import load_net

    teacher, _ = load_net(TEACHERS, lmbda=TEACHER_LMBDA)
    out = {}
    for n in widths:
        if n == teacher.N and teacher.M == M:
            net, how = teacher, f"the shipped teacher (lambda {TEACHER_LMBDA})"
        elif n <= teacher.N:
            torch.manual_seed(0)
            net = ScaleHyperprior(n, M)
            prune_into(teacher, net)
            how = f"pruned from the shipped teacher (N={teacher.N})"
        else:
            torch.manual_seed(0)
            net, how = ScaleHyperprior(n, M), "random init (wider than the teacher: cannot be pruned from it)"
        out[n] = (prepare_for_coding(net), how)
    return out


def lic_kd_coder(prepared: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The coder as lic_kd.evaluate decodes with it (codec.on_device where this lic_kd has it)."""
    import lic_kd.evaluation.coding as codec

    coder = copy.deepcopy(prepared)
    return codec.on_device(coder, device) if hasattr(codec, "on_device") else coder.to(device)


def decoder(
    coder: Any, strings: list, shape: Any, h: int, w: int, grad_mode: Callable[[], Any] = torch.inference_mode
) -> Callable[[], torch.Tensor]:
    """One decode of `strings` by `coder`, cropped and clamped as lic_kd.evaluate decodes, under `grad_mode`."""

    def decode() -> torch.Tensor:
        with grad_mode():
            return coder.decompress(strings, shape)["x_hat"][..., :h, :w].clamp(0, 1)

    return decode


def decode_parts(coder: Any, strings: list, shape: Any) -> dict[str, Callable[[], Any]]:
    """The steps of ScaleHyperprior.decompress, each callable alone (on the previous steps' outputs)."""
    from lic_kd.evaluation.coding import searchsorted_indexes

    eb, gc = coder.entropy_bottleneck, coder.gaussian_conditional
    with torch.inference_mode():
        z_hat = eb.decompress(strings[1], shape)
        scales = coder.h_s(z_hat)
        indexes = gc.build_indexes(scales)
        y_hat = gc.decompress(strings[0], indexes, z_hat.dtype)
    # the entropy coder's own call, its arguments converted to lists beforehand (what gc.decompress does per call)
    tables = (
        gc._quantized_cdf.tolist(),
        gc._cdf_length.reshape(-1).int().tolist(),
        gc._offset.reshape(-1).int().tolist(),
    )
    args = (strings[0][0], indexes[0].reshape(-1).int().tolist(), *tables)

    def indexes_bucketize() -> torch.Tensor:
        """build_indexes in one pass (lic_kd's coders already index this way: codec.searchsorted_indexes)."""
        return searchsorted_indexes(gc, scales)

    def entropy_y_cached_tables() -> torch.Tensor:
        """gc.decompress with the CDF tables converted to lists once per model instead of once per call."""
        values = gc.entropy_coder.decode_with_indexes(strings[0][0], indexes[0].reshape(-1).int().tolist(), *tables)
        return gc.dequantize(torch.tensor(values, dtype=torch.float32).reshape(indexes.shape), None, z_hat.dtype)

    with torch.inference_mode():  # exact: the same indexes and the same y_hat, or the part is not offered
        exact = torch.equal(indexes_bucketize(), indexes) and torch.equal(entropy_y_cached_tables(), y_hat)
    if not exact:
        raise AssertionError("the exact fast path of the entropy model gave other indexes or y_hat")

    def inf(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return fn()

        return run

    return {
        "entropy_z": inf(lambda: eb.decompress(strings[1], shape)),
        "h_s": inf(lambda: coder.h_s(z_hat)),
        "indexes": inf(lambda: gc.build_indexes(scales)),
        "entropy_y": inf(lambda: gc.decompress(strings[0], indexes, z_hat.dtype)),
        "g_s": inf(lambda: coder.g_s(y_hat).clamp_(0, 1)),
        "entropy_y_coder_only": lambda: gc.entropy_coder.decode_with_indexes(*args),
        "indexes_bucketize": inf(indexes_bucketize),
        "entropy_y_cached_tables": inf(entropy_y_cached_tables),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from lic_kd.data import load_rgb, to_tensor
    from lic_kd.evaluation.coding import pad, read_bitstream, write_bitstream

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="16,32,64,128")
    p.add_argument("--compile", action="store_true", help="also torch.compile g_s (slow to compile on a CPU)")
    args = p.parse_args(argv)
    device = device_of(args.device)
    env = environment(device)
    widths = [int(w) for w in args.widths.split(",")]
    repeats = args.repeats or (1 if args.smoke else 7)
    default_threads = torch.get_num_threads()
    other_threads = 1 if default_threads > 1 else (os.cpu_count() or 1)

    img = load_rgb(KODAK / "kodim01.png")
    if args.smoke:
        img = img.crop((0, 0, *SMOKE_SIZE))
    x = pad(to_tensor(img)[None]).to(device)
    h, w = img.height, img.width

    models = coders(widths)
    variants: dict[str, Callable[[], float]] = {}
    checks: dict[str, Any] = {}
    stream_bytes: dict[int, int] = {}
    import tempfile
    from pathlib import Path

    for n, (prepared, _) in models.items():
        contiguous = copy.deepcopy(prepared).to(device)  # how lic_kd.evaluate decoded before codec.on_device
        coder = lic_kd_coder(prepared, device)
        with torch.inference_mode():
            enc = coder.compress(x)
        with tempfile.TemporaryDirectory() as tmp:  # through lic_kd's own file format, as lic_kd.evaluate decodes
            stream_bytes[n] = write_bitstream(Path(tmp) / "x.lkd", enc["strings"], enc["shape"], (h, w))
            strings, shape, _ = read_bitstream(Path(tmp) / "x.lkd")
        shape = tuple(shape)
        cl = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)

        lic = decoder(coder, strings, shape, h, w)
        before = decoder(contiguous, strings, shape, h, w)
        no_grad = decoder(coder, strings, shape, h, w, grad_mode=torch.no_grad)
        channels_last = decoder(cl, strings, shape, h, w)

        def other(lic=lic) -> torch.Tensor:
            with threads(other_threads):
                return lic()

        ref = lic()
        checks[f"N{n}"] = {
            name: {
                "max_abs_diff": float((fn() - ref).abs().max()),
                "same_8bit": bool(torch.equal((fn() * 255).round(), (ref * 255).round())),
            }
            for name, fn in (
                ("contiguous", before),
                ("no_grad", no_grad),
                ("channels_last_all", channels_last),
                ("other_threads", other),
            )
        }
        for name, fn in (
            ("lic_kd", lic),
            ("contiguous", before),
            ("no_grad", no_grad),
            ("channels_last_all", channels_last),
            ("other_threads", other),
        ):
            variants[f"N{n}/{name}"] = lambda fn=fn: timed(fn, device)
        for part, fn in decode_parts(coder, strings, shape).items():
            variants[f"N{n}/part/{part}"] = lambda fn=fn: timed(fn, device)
        if args.compile:
            compiled = copy.deepcopy(contiguous)
            compiled.g_s = torch.compile(compiled.g_s)

            comp = decoder(compiled, strings, shape, h, w)
            comp()  # compiles here, not in the timed rounds
            checks[f"N{n}"]["compiled_g_s"] = {"max_abs_diff": float((comp() - ref).abs().max())}
            variants[f"N{n}/compiled_g_s"] = lambda fn=comp: timed(fn, device)

    t = interleave(variants, repeats)
    med = {k: spread(v)["median"] for k, v in t.items()}
    ratios: dict[str, dict[str, Any]] = {}
    fps = {n: 1 / med[f"N{n}/lic_kd"] for n in widths}
    if 16 in widths:
        ratios["decode_fps_N16_vs_goal"] = ratio(
            fps[16],
            GOAL_FPS,
            goal_value=1.0,
            higher_is_better=True,
            what=f"decoded frames/s of the N=16 student at {w}x{h} / the {GOAL_FPS:g} fps goal",
        )
    base = max(widths)
    for n in [n for n in widths if n != base]:
        ratios[f"decode_fps_N{n}_vs_N{base}"] = ratio(
            fps[n],
            fps[base],
            paired=median_ratio(t[f"N{base}/lic_kd"], t[f"N{n}/lic_kd"]),
            what=f"decoded frames/s, N={n} / N={base}",
        )
    parts = PARTS
    for n in widths:
        rounds = range(repeats)
        total = [sum(t[f"N{n}/part/{q}"][r] for q in parts) for r in rounds]
        entropy = [t[f"N{n}/part/entropy_z"][r] + t[f"N{n}/part/entropy_y"][r] for r in rounds]
        ratios[f"entropy_share_N{n}"] = ratio(
            med[f"N{n}/part/entropy_z"] + med[f"N{n}/part/entropy_y"],
            sum(med[f"N{n}/part/{q}"] for q in parts),
            paired=median_ratio(entropy, total),
            what="entropy decoding of z and y / the whole decode (sum of its parts)",
        )
        ratios[f"synthesis_share_N{n}"] = ratio(
            med[f"N{n}/part/g_s"],
            sum(med[f"N{n}/part/{q}"] for q in parts),
            paired=median_ratio(t[f"N{n}/part/g_s"], total),
            what="g_s / the whole decode",
        )
        fast = [sum(t[f"N{n}/part/{q}"][r] for q in FAST_PARTS) for r in rounds]
        ratios[f"exact_fast_entropy_model_speedup_N{n}"] = ratio(
            sum(med[f"N{n}/part/{q}"] for q in parts),
            sum(med[f"N{n}/part/{q}"] for q in FAST_PARTS),
            paired=median_ratio(total, fast),
            what="potential: the decode's parts / the same with build_indexes as one bucketize and the CDF tables "
            "listed once (both exact: same indexes, same y_hat; CompressAI's coder unchanged)",
        )
        ratios[f"lic_kd_vs_contiguous_N{n}"] = ratio(
            med[f"N{n}/contiguous"],
            med[f"N{n}/lic_kd"],
            paired=median_ratio(t[f"N{n}/contiguous"], t[f"N{n}/lic_kd"]),
            what="decode time before (all contiguous) / lic_kd's decode now (codec.on_device: g_s "
            "channels_last): > 1 means lic_kd's change made it faster",
        )
        for name, what in (
            ("no_grad", "torch.no_grad (as eval_model)"),
            ("channels_last_all", "the whole coder channels_last"),
            ("other_threads", f"{other_threads} thread(s) instead of {default_threads}"),
        ):
            ratios[f"{name}_speedup_N{n}"] = ratio(
                med[f"N{n}/lic_kd"],
                med[f"N{n}/{name}"],
                paired=median_ratio(t[f"N{n}/lic_kd"], t[f"N{n}/{name}"]),
                what=f"decode time of lic_kd's decode / with {what}: > 1 means it is faster",
            )
        if args.compile:
            ratios[f"compiled_g_s_speedup_N{n}"] = ratio(
                med[f"N{n}/lic_kd"],
                med[f"N{n}/compiled_g_s"],
                paired=median_ratio(t[f"N{n}/lic_kd"], t[f"N{n}/compiled_g_s"]),
                what="decode time of lic_kd's decode / with torch.compile(g_s)",
            )
    absolute = {
        "fps": fps,
        "decode_s": {k: spread(v) for k, v in t.items()},
        "entropy_y_python_overhead_s": {
            n: med[f"N{n}/part/entropy_y"] - med[f"N{n}/part/entropy_y_coder_only"] for n in widths
        },
        "stream_bytes": stream_bytes,
        "bpp": {n: 8 * b / (h * w) for n, b in stream_bytes.items()},
        "variant_outputs_vs_lic_kd": checks,
        "fps_with_exact_fast_entropy_model": {n: 1 / sum(med[f"N{n}/part/{q}"] for q in FAST_PARTS) for n in widths},
        "parts_s": {
            n: {q: med[f"N{n}/part/{q}"] for q in PARTS + FAST_PARTS[2:4] + ("entropy_y_coder_only",)} for n in widths
        },
        "max_fps_if_transforms_were_free": {
            n: 1 / (med[f"N{n}/part/entropy_z"] + med[f"N{n}/part/entropy_y"]) for n in widths
        },
    }
    settings = {
        "widths": widths,
        "M": M,
        "image": f"kodim01 {w}x{h}" + (" (crop)" if args.smoke else ""),
        "repeats": repeats,
        "models": {n: how for n, (_, how) in models.items()},
        "device": str(device),
        "threads": {"default": default_threads, "other": other_threads},
    }
    n0 = min(widths)
    notes = [
        f"N={n0}: {fps[n0]:.1f} fps; entropy decoding is "
        f"{100 * ratios[f'entropy_share_N{n0}']['ratio']:.0f} % of its decode, "
        f"so free transforms would give at most {absolute['max_fps_if_transforms_were_free'][n0]:.1f} fps; "
        f"of the y decoding, {1e3 * absolute['entropy_y_python_overhead_s'][n0]:.1f} ms is CompressAI's Python-side "
        "conversion of tensors to lists around the coder's call"
    ]
    return finish("decode_fps", args, env, settings, ratios, absolute, notes)


if __name__ == "__main__":
    main()
