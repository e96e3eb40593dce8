"""Crops of 256x256 per second that lic_kd's loader reads from PNG files on disk, per loader worker, against the
same loader decoding in the training process (num_workers=0, no cache): what `data=vimeo90k` or any large folder
does at scale. Beside it, on paper, the crops per second a GPU would consume: the training step's FLOPs for one
crop (counted by torch's FlopCounterMode on CompressAI's N=128/M=192 hyperprior, forward and backward) and an
assumed throughput (A100 bf16 dense peak 312 TFLOP/s at 30 % utilisation; `--gpu-tflops`, `--utilisation`),
hence the workers one GPU needs.

The images are the training folder's PNGs (CBSD68, 481x321, about a Vimeo-90K frame's 448x256), read without the
in-memory cache. Variants run once per round, in rotating order; ratios are medians of same-round ratios.

    python -m benchmarks.loader_workers [--smoke] [--repeats R] [--workers 1,2]
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import torch

from benchmarks.common import KODAK, REPO, environment, finish, interleave, median_ratio, parser, ratio, spread, timed
from benchmarks.data_pipeline import endless

A100_BF16_TFLOPS = 312.0  # dense peak, NVIDIA's A100 datasheet
CPU = torch.device("cpu")
UTILISATION = 0.30  # what a convolutional codec's training step typically reaches of the peak (assumed)


def training_flops_per_crop(N: int = 128, M: int = 192, crop: int = 256) -> float:
    """FLOPs of one training step on one crop: forward, the rate-distortion loss and backward."""
    from compressai.models import ScaleHyperprior
    from torch.utils.flop_counter import FlopCounterMode

    net = ScaleHyperprior(N, M)
    x = torch.rand(1, 3, crop, crop)
    with FlopCounterMode(display=False) as counter:
        out = net(x)
        bpp = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) / (crop * crop)
        (0.0067 * 255**2 * torch.nn.functional.mse_loss(out["x_hat"], x) + bpp).backward()
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from lic_kd.data import ImageDataModule

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated")
    p.add_argument("--gpu-tflops", type=float, default=A100_BF16_TFLOPS, help="assumed GPU peak, TFLOP/s")
    p.add_argument("--utilisation", type=float, default=UTILISATION, help="assumed share of that peak reached")
    args = p.parse_args(argv)
    env = environment(CPU)
    repeats = args.repeats or (1 if args.smoke else 5)
    crop, batch = (64, 2) if args.smoke else (256, 8)
    n_batches = 2 if args.smoke else 12
    workers = [int(w) for w in args.workers.split(",")]

    def loader(num_workers: int) -> Any:
        data = ImageDataModule(train_dir=str(REPO / "data" / "cbsd68"), eval_dir=str(KODAK), crop_size=crop,
                               batch_size=batch, num_workers=num_workers, cache_images=False, eval_limit=1)  # fmt: skip
        return endless(data.train_dataloader())

    loaders = {"in_process": loader(0)} | {f"workers_{w}": loader(w) for w in workers}

    def crops_per_s(name: str, num_workers: int) -> Callable[[], float]:
        def measure() -> float:
            # persistent workers prefetch 2 batches each while other variants run: take those first, untimed
            list(itertools.islice(loaders[name], 2 * num_workers))
            return n_batches * batch / timed(lambda: list(itertools.islice(loaders[name], n_batches)), CPU)

        return measure

    counts = {"in_process": 0} | {f"workers_{w}": w for w in workers}
    rates = interleave({name: crops_per_s(name, counts[name]) for name in loaders}, repeats)  # workers start here
    med = {k: spread(v)["median"] for k, v in rates.items()}
    ratios = {
        f"workers_{w}_vs_in_process": ratio(
            med[f"workers_{w}"],
            med["in_process"],
            paired=median_ratio(rates[f"workers_{w}"], rates["in_process"]),
            what=f"crops/s read by {w} loader worker(s) / crops/s decoded in the training process",
        )
        for w in workers
    }
    flops = training_flops_per_crop(crop=256) if not args.smoke else training_flops_per_crop(16, 24, 64)
    gpu_crops = args.gpu_tflops * 1e12 * args.utilisation / flops
    per_worker = med[f"workers_{workers[0]}"] / workers[0]
    workers_needed = math.ceil(gpu_crops / per_worker)
    ratios["gpu_need_vs_one_worker"] = ratio(
        gpu_crops,
        per_worker,
        what="crops/s one GPU would train on (on paper) / crops/s one loader worker reads: the workers it needs",
    )
    settings = {"crop_size": crop, "batch_size": batch, "batches_per_block": n_batches, "repeats": repeats,
                "images": "data/cbsd68 (PNG, 481x321), no cache", "workers": workers}  # fmt: skip
    absolute = {
        "crops_per_s": {k: spread(v) for k, v in rates.items()},
        "crops_per_s_per_worker": {f"workers_{w}": med[f"workers_{w}"] / w for w in workers},
        "on_paper": {
            "model": "compressai ScaleHyperprior N=128 M=192" if not args.smoke else "ScaleHyperprior N=16 M=24",
            "training_gflop_per_crop": flops / 1e9,
            "gpu_tflops_assumed": args.gpu_tflops,
            "utilisation_assumed": args.utilisation,
            "gpu_crops_per_s": gpu_crops,
            "workers_needed": workers_needed,
        },
    }
    notes = [
        f"one worker reads {per_worker:.0f} crops/s of {crop}x{crop} from PNG ({med['in_process']:.0f} in process); "
        f"one training crop is {flops / 1e9:.1f} GFLOP, so a GPU at {args.utilisation:.0%} of {args.gpu_tflops:g} "
        f"TFLOP/s trains {gpu_crops:.0f} crops/s: {workers_needed} workers of this CPU"
    ]
    return finish("loader_workers", args, env, settings, ratios, absolute, notes)


if __name__ == "__main__":
    main()
