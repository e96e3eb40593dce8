"""KD step against a plain student step of the same width, for a sweep of students; and what one teacher forward
shared by a list of students costs (lic_kd.training.module: `student.N=[16,32,48]` trains them in one process, one
teacher forward per batch), measured for the list's prefixes and derived for k students of one width.

Students: ScaleHyperprior N=16 and 32, M=96, started from the shipped teacher (student.init=teacher); teacher:
the shipped ladder's N=64 M=96 rung at lambda 0.0067; demo batches (8 crops of 128x128 from CBSD68). Both
modules are lic_kd's, built from the configuration `python -m lic_kd.train experiment=demo
role=kd|student ...` composes, and stepped the way its training_step steps them (`Student.losses`, backward, clipping,
main and auxiliary Adam), without a Trainer: the Trainer's own cost is benchmarks.train_step's. Every variant
runs once per round, in rotating order; the ratios are medians over rounds of same-round ratios.

    python -m benchmarks.kd_step [--smoke] [--repeats R] [--widths 16,32]
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import torch

from benchmarks.common import (
    TEACHER_LMBDA,
    TEACHERS,
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

GOAL_KD = 1.15
SHARED_K = (1, 2, 4, 8)


def build(role: str, width: int, smoke: bool) -> Any:
    """A run's LightningModule exactly as lic_kd.train builds it for this role and width (one student)."""

    from lic_kd.training.parts import build_module
    from lic_kd.training.spec import parse_run

    cfg = compose_train(
        [
            "experiment=smoke" if smoke else "experiment=demo",
            f"role={role}",
            f"student.N={width}",
            "student.M=96",
            f"lmbda={TEACHER_LMBDA}",
            "student.init=teacher",
            f"teacher.checkpoint={TEACHERS}",
            "paths.output_dir=/nonexistent",
        ]
    )
    module = build_module(parse_run(cfg), calibration=None)
    module.train()
    return module, cfg


class Stepper:
    """One training batch of a run's one student as the module's training_step does it, minus the Trainer."""

    def __init__(self, module: Any, clip: float | None) -> None:
        self.module = module
        self.student = next(iter(module.students.values()))
        (self.optimizer, self.aux_optimizer), _ = self.student.configure_optimizers()
        self.main = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.clip = clip

    def _update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.main, self.clip)
        self.optimizer.step()
        aux = self.student.net.aux_loss()
        self.aux_optimizer.zero_grad()
        aux.backward()
        self.aux_optimizer.step()

    def step(self, x: torch.Tensor) -> None:
        targets = self.module.teachers.targets(x) if self.module.teachers is not None else None
        self._update(self.student.losses(x, targets)["loss"])

    def step_with_targets(self, x: torch.Tensor, targets: tuple[dict, dict]) -> None:
        """A KD step whose teacher targets were computed already (shared by several students)."""
        self._update(self.student.losses(x, targets)["loss"])


@torch.no_grad()
def teacher_latents_only(teacher: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What KD on y_hat and x_hat needs of an eval-mode scale hyperprior: g_a, rounding, g_s (no hyperprior,
    no likelihoods). Gives the same y_hat and x_hat as its forward."""
    y_hat = torch.round(teacher.g_a(x))
    return y_hat, teacher.g_s(y_hat)


def batches(cfg: Any, n: int, device: torch.device) -> list[torch.Tensor]:
    from hydra.utils import instantiate

    data = instantiate(cfg.data)
    loader = data.train_dataloader()
    out = list(itertools.islice(itertools.cycle(loader), n))
    return [b.to(device) for b in out]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="16,32,48", help="student widths N (M=96, the teacher's): the study's")
    p.add_argument("--steps", type=int, default=None, help="batches per timed block")
    args = p.parse_args(argv)
    device = device_of(args.device)
    env = environment(device)
    torch.manual_seed(0)
    widths = [int(w) for w in args.widths.split(",")]
    repeats = args.repeats or (1 if args.smoke else 5)
    steps = args.steps or (1 if args.smoke else 3)

    plain, kd = {}, {}
    for n in widths:
        module, cfg = build("student", n, args.smoke)
        plain[n] = Stepper(module.to(device), cfg.optimizer.get("clip_max_norm"))
        module, cfg = build("kd", n, args.smoke)
        kd[n] = Stepper(module.to(device), cfg.optimizer.get("clip_max_norm"))
    data = batches(cfg, steps, device)
    first = kd[widths[0]].module
    teacher = first.teachers.main

    # the minimal teacher gives the forward's own targets (checked, not assumed)
    t_out, t_lat = first.teachers.targets(data[0])
    y_hat, x_hat = teacher_latents_only(teacher, data[0])
    same_targets = bool(torch.equal(y_hat, t_lat["y_hat"]) and torch.allclose(x_hat, t_out["x_hat"], atol=1e-6))
    targets = [first.teachers.targets(x) for x in data]  # for the given-targets variants

    def block(fn: Callable[[torch.Tensor, int], Any]) -> Callable[[], float]:
        return lambda: timed(lambda: [fn(x, i) for i, x in enumerate(data)], device) / len(data)

    variants: dict[str, Callable[[], float]] = {}
    for n in widths:
        variants[f"plain_N{n}"] = block(lambda x, i, n=n: plain[n].step(x))
        variants[f"kd_N{n}"] = block(lambda x, i, n=n: kd[n].step(x))
        variants[f"kd_given_targets_N{n}"] = block(lambda x, i, n=n: kd[n].step_with_targets(x, targets[i]))
    variants["teacher_forward"] = block(lambda x, i: first.teachers.targets(x))
    variants["teacher_latents_only"] = block(lambda x, i: teacher_latents_only(teacher, x))

    lists = [widths[:k] for k in range(2, len(widths) + 1)]  # the demo's [16,32], the study's [16,32,48]

    def shared(members: list[int]) -> Callable[[torch.Tensor, int], None]:
        def step(x: torch.Tensor, i: int) -> None:  # CodecModule.training_step: one teacher forward, every student
            t = first.teachers.targets(x)
            for n in members:
                kd[n].step_with_targets(x, t)

        return step

    for members in lists:
        variants[f"shared_teacher_N{','.join(map(str, members))}"] = block(shared(members))
    # make study's KD groups: every width from random and from teacher init (student.init=[random,teacher]), 2k
    # students per teacher forward; a student's step costs the same from either init, so each module steps twice
    variants["shared_teacher_study"] = block(shared(widths + widths))
    t = interleave(variants, repeats)
    med = {k: spread(v)["median"] for k, v in t.items()}

    ratios: dict[str, dict[str, Any]] = {}
    for n in widths:
        ratios[f"kd_step_N{n}"] = ratio(
            med[f"kd_N{n}"],
            med[f"plain_N{n}"],
            paired=median_ratio(t[f"kd_N{n}"], t[f"plain_N{n}"]),
            goal_value=GOAL_KD,
            what=f"seconds per batch, KD step / plain step, student N={n}",
        )
    for members in lists:
        name = ",".join(map(str, members))
        plain_sum = [sum(t[f"plain_N{n}"][r] for n in members) for r in range(repeats)]
        ratios[f"kd_group_N{name}"] = ratio(
            med[f"shared_teacher_N{name}"],
            sum(med[f"plain_N{n}"] for n in members),
            paired=median_ratio(t[f"shared_teacher_N{name}"], plain_sum),
            goal_value=GOAL_KD,
            what=f"students N=[{name}] trained together: one teacher forward + their KD steps / their plain steps",
        )
    plain_twice = [2 * sum(t[f"plain_N{n}"][r] for n in widths) for r in range(repeats)]
    ratios["kd_group_study"] = ratio(
        med["shared_teacher_study"],
        2 * sum(med[f"plain_N{n}"] for n in widths),
        paired=median_ratio(t["shared_teacher_study"], plain_twice),
        goal_value=GOAL_KD,
        what=f"make study's KD groups, students N=[{','.join(map(str, widths))}] x init=[random,teacher] "
        "trained together: one teacher forward + their KD steps / their plain steps",
    )
    for n in widths:
        for k in SHARED_K:
            per_student = [(t["teacher_forward"][r] / k + t[f"kd_given_targets_N{n}"][r]) for r in range(repeats)]
            ratios[f"kd_shared_k{k}_N{n}"] = ratio(
                (med["teacher_forward"] / k + med[f"kd_given_targets_N{n}"]),
                med[f"plain_N{n}"],
                paired=median_ratio(per_student, t[f"plain_N{n}"]),
                goal_value=GOAL_KD,
                what=f"derived: per-student cost when one teacher forward serves {k} students N={n} / plain step",
            )
    for n in widths:
        ratios[f"teacher_share_N{n}"] = ratio(
            med["teacher_forward"],
            med[f"kd_N{n}"],
            paired=median_ratio(t["teacher_forward"], t[f"kd_N{n}"]),
            what=f"teacher forward / whole KD step, N={n}",
        )
    ratios["teacher_latents_only_vs_forward"] = ratio(
        med["teacher_latents_only"],
        med["teacher_forward"],
        paired=median_ratio(t["teacher_latents_only"], t["teacher_forward"]),
        what="g_a + round + g_s alone / the teacher's full forward (what KD on y_hat, x_hat needs)",
    )

    shape = tuple(data[0].shape)
    settings = {
        "widths": widths,
        "M": 96,
        "teacher": f"{TEACHERS.name} lambda {TEACHER_LMBDA} (N=64, M=96)",
        "student_init": "teacher (pruned)",
        "batch": shape,
        "batches_per_block": steps,
        "repeats": repeats,
        "device": str(device),
        "shared_k": SHARED_K,
    }
    absolute = {
        "seconds_per_batch": {k: spread(v) for k, v in t.items()},
        "teacher_latents_only_same_targets": same_targets,
    }
    notes = [
        f"teacher forward {med['teacher_forward'] * 1e3:.1f} ms per batch of {shape}: "
        + ", ".join(
            f"N={n} plain {med[f'plain_N{n}'] * 1e3:.1f} ms, KD {med[f'kd_N{n}'] * 1e3:.1f} ms" for n in widths
        ),
        "kd_shared_k* are derived from measured parts (teacher forward / k + a KD step on given targets); "
        "kd_group_N* are measured directly",
    ]
    return finish("kd_step", args, env, settings, ratios, absolute, notes)


if __name__ == "__main__":
    main()
