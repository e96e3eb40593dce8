"""Images per second of lic_kd's training data pipeline against the model's own step rate: the loader must never be
the limit. With `data.num_workers=0` (lic_kd's default on few cores) loading is serial with the step, so the
loader's share of a training batch is (model images/s) / (loader images/s): the goal, loader >= 20x the model's
rate, keeps it under 5 %.

The loader is `ImageDataModule.train_dataloader()` of the configuration `python -m lic_kd.train experiment=demo`
composes (CBSD68, 128x128 random crops and flips, batch 8), with its images cached in memory (the default for a
folder of up to 2000 images) and, for comparison, decoded from PNG for every crop (`data.cache_images=false`);
the model step is a plain training step (CompressAI's recipe) of ScaleHyperprior N=64 M=96 on those batches.
Every variant runs once per round, in rotating order; ratios are medians of same-round ratios.

    python -m benchmarks.data_pipeline [--smoke] [--repeats R]
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from benchmarks.common import (
    compose_train,
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

GOAL_LOADER = 20.0  # loader images/s over model images/s: the loader adds at most 5 % to a step


def endless(loader: Any) -> Iterator[torch.Tensor]:
    while True:  # a new epoch (a new shuffled iterator) whenever one ends, as training does
        yield from loader


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from hydra.utils import instantiate

    from benchmarks.train_step import PlainLoop

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=None, help="batches per timed block")
    args = p.parse_args(argv)
    device = device_of(args.device)
    env = environment(device)
    repeats = args.repeats or (1 if args.smoke else 5)
    n_batches = args.batches or (2 if args.smoke else 14)  # 14: two epochs of the demo's 7 batches
    cfg = compose_train(["experiment=smoke" if args.smoke else "experiment=demo", "paths.output_dir=/nonexistent"])
    torch.manual_seed(0)

    loaders = {}
    for name, cache in (("cached", True), ("uncached", False)):
        data = instantiate(cfg.data, cache_images=cache, num_workers=0)  # serial with the step, as on few cores
        loaders[name] = endless(data.train_dataloader())
    bs = int(cfg.data.batch_size)
    net = instantiate(cfg.model).to(device)
    loop = PlainLoop(
        net,
        lmbda=float(cfg.lmbda),
        lr=float(cfg.optimizer.main.lr),
        aux_lr=float(cfg.optimizer.aux.lr),
        clip=cfg.optimizer.get("clip_max_norm"),
    )
    batch = next(loaders["cached"]).to(device)

    def load(name: str) -> Callable[[], float]:
        return lambda: (
            timed(lambda: [next(loaders[name]) for _ in range(n_batches)], torch.device("cpu")) / (n_batches * bs)
        )

    steps = max(1, n_batches // 4)
    variants = {
        "loader_cached": load("cached"),
        "loader_uncached": load("uncached"),
        "model_step": lambda: timed(lambda: [loop.step(batch) for _ in range(steps)], device) / (steps * bs),
    }
    t = interleave(variants, repeats)  # seconds per image
    med = {k: spread(v)["median"] for k, v in t.items()}
    ips = {k: 1 / v for k, v in med.items()}
    ratios = {
        "loader_vs_model": ratio(
            ips["loader_cached"],
            ips["model_step"],
            paired=median_ratio(t["model_step"], t["loader_cached"]),
            goal_value=GOAL_LOADER,
            higher_is_better=True,
            what="images/s of lic_kd's training loader (cached, the default) / images/s of the model's training step",
        ),
        "loader_uncached_vs_model": ratio(
            ips["loader_uncached"],
            ips["model_step"],
            paired=median_ratio(t["model_step"], t["loader_uncached"]),
            goal_value=GOAL_LOADER,
            higher_is_better=True,
            what="the same, decoding the PNG for every crop (data.cache_images=false)",
        ),
        "cache_speedup": ratio(
            ips["loader_cached"],
            ips["loader_uncached"],
            paired=median_ratio(t["loader_uncached"], t["loader_cached"]),
            what="loader images/s, cached / decoded per crop",
        ),
    }
    settings = {
        "preset": "smoke" if args.smoke else "demo",
        "crop_size": int(cfg.data.crop_size),
        "batch_size": bs,
        "num_workers": data.num_workers,
        "train_images": len(data.train_paths),
        "model": dict(cfg.model),
        "batches_per_block": n_batches,
        "repeats": repeats,
        "device": str(device),
    }
    absolute = {
        "images_per_s": ips,
        "seconds_per_image": {k: spread(v) for k, v in t.items()},
        "loader_share_of_step": {
            "cached": ips["model_step"] / ips["loader_cached"],
            "uncached": ips["model_step"] / ips["loader_uncached"],
        },
    }
    notes = [
        f"loader {ips['loader_cached']:.0f} images/s cached, {ips['loader_uncached']:.0f} decoding PNGs; model "
        f"{ips['model_step']:.1f} images/s: the cached loader adds "
        f"{100 * ips['model_step'] / ips['loader_cached']:.1f} % to a "
        f"step (num_workers=0: loading is serial with the step)"
    ]
    return finish("data_pipeline", args, env, settings, ratios, absolute, notes)


if __name__ == "__main__":
    main()
