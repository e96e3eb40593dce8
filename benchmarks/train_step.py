"""Training step of lic_kd (Lightning, logging, progress bar, data loader) against a plain PyTorch loop doing the
same maths on the same batches, CompressAI's recipe (main + aux Adam, gradient clipping).

lic_kd's side is `lic_kd.train.train(cfg)` itself, on the configuration `python -m lic_kd.train experiment=demo`
composes (ScaleHyperprior N=64 M=96, 128x128 crops, batch 8), with one more callback: after every `segment`
lic_kd batches it runs the plain loop on those same batches, timed apart. So the two alternate
(lic_kd, plain, lic_kd, plain, ...) in one process, on the same data, from the same initial weights; each
side's steps/s is the median over segments. Excluded from both: one-time setup (model, data cache, Trainer) and
the warm-up batches; validation and checkpoints are never reached (the run stops itself after the last
segment, before lic_kd's validation and evaluation). Included on lic_kd's side: everything between two
batches (data loader, Lightning's loop, manual optimization, clipping through Lightning, logging, progress bar,
epoch ends).

    python -m benchmarks.train_step [--smoke] [--repeats R] [--segment K]
"""

from __future__ import annotations

import copy
import tempfile
import time
from typing import Any

import lightning as L
import torch
from compressai.losses import RateDistortionLoss

from benchmarks.common import compose_train, device_of, environment, finish, median_ratio, parser, ratio, spread, sync

GOAL_OVERHEAD = 1.05  # lic_kd's step at most 5 % slower than the plain loop


class BenchmarkDone(Exception):
    """Raised by the timing callback after the last segment: ends the run before validation and evaluation."""


class PlainLoop:
    """CompressAI's examples/train.py `train_one_epoch`: main Adam on the network, auxiliary Adam on the entropy
    bottleneck quantiles, gradient clipping of the main parameters, `lmbda * 255^2 * MSE + bpp`."""

    def __init__(self, net: torch.nn.Module, lmbda: float, lr: float, aux_lr: float, clip: float | None) -> None:
        self.net = net.train()
        main = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
        aux = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
        self.main_params = main
        self.optimizer = torch.optim.Adam(main, lr=lr)
        self.aux_optimizer = torch.optim.Adam(aux, lr=aux_lr)
        self.criterion = RateDistortionLoss(lmbda=lmbda)
        self.clip = clip

    def step(self, x: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        self.aux_optimizer.zero_grad()
        out = self.criterion(self.net(x), x)
        out["loss"].backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.main_params, self.clip)
        self.optimizer.step()
        aux_loss = self.net.aux_loss()
        aux_loss.backward()
        self.aux_optimizer.step()


class Interleaver(L.Callback):
    """Times lic_kd's batches in segments of `segment` and runs the plain loop on each segment's batches
    between them. `Interleaver.last` is the instance of the latest run (Hydra instantiates it)."""

    last: "Interleaver | None" = None

    def __init__(
        self, warmup: int, segment: int, repeats: int, lmbda: float, lr: float, aux_lr: float, clip: float | None
    ) -> None:
        self.warmup, self.segment, self.repeats = warmup, segment, repeats
        self.hp = dict(lmbda=lmbda, lr=lr, aux_lr=aux_lr, clip=clip)
        self.lic: list[float] = []  # seconds per segment of lic_kd batches
        self.plain: list[float] = []  # seconds for the same batches through the plain loop
        self.between: list[float] = []  # per segment: time outside training_step (loader, loop, callbacks, logging)
        self.setup_s = None
        self._created = time.perf_counter()
        Interleaver.last = self

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.device = pl_module.device
        self.setup_s = time.perf_counter() - self._created
        net = copy.deepcopy(next(iter(pl_module.students.values())).net)  # the same initial weights
        net.requires_grad_(True)
        self.loop = PlainLoop(net, **self.hp)
        self.batches: list[torch.Tensor] = []
        self.count = 0
        self._between = 0.0
        self._end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._end is not None:
            self._between += now - self._end
        self.batches.append(batch)
        del self.batches[: -max(self.segment, self.warmup)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.count += 1
        done = self.count - self.warmup
        if done == 0:  # warm-up over: warm the plain loop up on the same batches, then start the clock
            for x in self.batches:
                self.loop.step(x)
        elif done > 0 and done % self.segment == 0:
            self.lic.append(now - self._t0)
            self.between.append(self._between)
            start = time.perf_counter()
            for x in self.batches[-self.segment :]:
                self.loop.step(x)
            sync(self.device)
            self.plain.append(time.perf_counter() - start)
            if len(self.lic) == self.repeats:
                raise BenchmarkDone
        else:
            self._end = time.perf_counter()
            return
        self._between = 0.0
        self._t0 = self._end = time.perf_counter()


def run(smoke: bool, repeats: int | None, segment: int | None, device: str) -> dict[str, Any]:
    from lic_kd.train import train

    repeats = repeats or (2 if smoke else 10)
    segment = segment or (2 if smoke else 4)
    warmup = 2 if smoke else 5
    steps = warmup + segment * repeats + 5  # never reached: the callback ends the run first
    preset = "experiment=smoke" if smoke else "experiment=demo"
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        overrides = [preset, "role=student", f"paths.output_dir={tmp}", f"steps={steps}", f"val_every={steps}"]
        if device != "auto":
            overrides.append(f"trainer.accelerator={device}")
        cfg = compose_train(overrides)
        bench = {
            "_target_": f"{__name__}.Interleaver",
            "warmup": warmup,
            "segment": segment,
            "repeats": repeats,
            "lmbda": float(cfg.lmbda),
            "lr": float(cfg.optimizer.main.lr),
            "aux_lr": float(cfg.optimizer.aux.lr),
            "clip": cfg.optimizer.get("clip_max_norm"),
        }
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.callbacks["benchmark"] = bench
        try:
            train(cfg)
            raise RuntimeError("the training run ended before the benchmark's segments were done")
        except BenchmarkDone:
            pass
    cb = Interleaver.last
    return {
        "overrides": overrides,
        "warmup": warmup,
        "segment": segment,
        "repeats": repeats,
        "setup_s": cb.setup_s,
        "lic_s": cb.lic,
        "plain_s": cb.plain,
        "between_s": cb.between,
        "device": str(cb.device),
        "batch_size": int(cfg.data.batch_size),
        "crop_size": int(cfg.data.crop_size),
        "N": int(cfg.student.N),
        "M": int(cfg.student.M),
        "num_workers": int(cfg.data.num_workers),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--segment", type=int, default=None, help="batches per timed segment")
    args = p.parse_args(argv)
    env = environment(device_of(args.device))
    m = run(args.smoke, args.repeats, args.segment, args.device)
    k = m["segment"]
    lic_rate = [k / t for t in m["lic_s"]]
    plain_rate = [k / t for t in m["plain_s"]]
    per_seg = [lic / plain for lic, plain in zip(m["lic_s"], m["plain_s"])]
    lic_med, plain_med = spread(lic_rate)["median"], spread(plain_rate)["median"]
    between_share = [b / t for b, t in zip(m["between_s"], m["lic_s"])]
    ratios = {
        "train_step_overhead": ratio(
            1 / lic_med,
            1 / plain_med,
            paired=median_ratio(m["lic_s"], m["plain_s"]),
            goal_value=GOAL_OVERHEAD,
            what="seconds per batch, lic_kd (Lightning, logging, progress bar, loader) / plain loop: "
            "median over adjacent segment pairs",
        ),
        "train_step_overhead_of_medians": ratio(
            1 / lic_med,
            1 / plain_med,
            goal_value=GOAL_OVERHEAD,
            what="median seconds per batch of lic_kd / of the plain loop",
        ),
    }
    absolute = {
        "lic_kd_batches_per_s": spread(lic_rate),
        "plain_batches_per_s": spread(plain_rate),
        "per_segment_ratio": spread(per_seg),
        "lic_kd_share_outside_training_step": spread(between_share),
        "setup_s": m["setup_s"],
        "raw": {k2: m[k2] for k2 in ("lic_s", "plain_s", "between_s")},
    }
    settings = {
        k2: m[k2]
        for k2 in (
            "overrides",
            "warmup",
            "segment",
            "repeats",
            "device",
            "N",
            "M",
            "batch_size",
            "crop_size",
            "num_workers",
        )
    }
    settings["excluded"] = "one-time setup, warm-up batches, validation, checkpoints, evaluation (from both sides)"
    notes = [
        f"lic_kd: {lic_med:.3f} batches/s, plain loop: {plain_med:.3f} batches/s; "
        f"{100 * spread(between_share)['median']:.1f} % of lic_kd's time is spent outside training_step "
        "(data loader, Lightning's loop, callbacks, logging, progress bar)"
    ]
    return finish("train_step", args, env, settings, ratios, absolute, notes)


if __name__ == "__main__":
    main()
