"""Channel pruning (student.init=teacher): the kept channels are those of largest contribution on calibration
images (else of largest filter L1 norm), consistent through GDN/IGDN, the hyperprior and the entropy bottleneck."""

import pytest
import torch
from compressai.models import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior
from torch import nn

from lic_kd.frugal.prune import most_important, prune_into


def _silence_channels(net: nn.Module, keep: int) -> None:
    """Zero every hidden channel beyond the first `keep` of each N-wide layer: its filter, its bias, and its
    weights in the layer that reads it. Such a network computes exactly what its first `keep` channels do."""
    with torch.no_grad():
        for seq in (net.g_a, net.g_s, net.h_a, net.h_s):
            layers = [m for m in seq if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
            for i, layer in enumerate(layers):
                transposed = isinstance(layer, nn.ConvTranspose2d)
                out_dim, in_dim = (1, 0) if transposed else (0, 1)
                if i < len(layers) - 1 and layer.weight.shape[out_dim] == net.N:  # a hidden N-wide output
                    layer.weight.narrow(out_dim, keep, net.N - keep).zero_()
                    layer.bias[keep:].zero_()
                if layer.weight.shape[in_dim] == net.N and not (seq is net.h_s and i == 0):
                    layer.weight.narrow(in_dim, keep, net.N - keep).zero_()
        # z: the last h_a layer's outputs beyond keep, and h_s's first layer's inputs from them
        net.h_a[-1].weight[keep:].zero_()
        net.h_a[-1].bias[keep:].zero_()
        net.h_s[0].weight[keep:].zero_()


@pytest.mark.parametrize("calibrated", [False, True])
def test_pruning_away_silent_channels_changes_nothing(calibrated):
    torch.manual_seed(0)
    wide = ScaleHyperprior(16, 24).eval()
    _silence_channels(wide, keep=8)
    thin = ScaleHyperprior(8, 24).eval()
    x = torch.rand(1, 3, 128, 128)
    prune_into(wide, thin, x if calibrated else None)
    with torch.no_grad():
        assert torch.allclose(thin(x)["x_hat"], wide(x)["x_hat"], atol=1e-5)
    # the entropy bottleneck kept the densities of the kept z channels
    assert torch.equal(thin.entropy_bottleneck.quantiles, wide.entropy_bottleneck.quantiles[:8])


def test_kept_channels_are_the_largest_filters_in_original_order():
    conv = nn.Conv2d(2, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 5.0, 0.5, 3.0])[:, None, None, None].expand(4, 2, 1, 1))
    assert most_important(conv, 2).tolist() == [1, 3]
    deconv = nn.ConvTranspose2d(2, 3, 1, bias=False)
    with torch.no_grad():
        deconv.weight.copy_(torch.tensor([2.0, 0.1, 4.0])[None, :, None, None].expand(2, 3, 1, 1))
    assert most_important(deconv, 2).tolist() == [0, 2]


@pytest.mark.parametrize("cls", [ScaleHyperprior, MeanScaleHyperprior, FactorizedPrior])
def test_equal_widths_copy_and_narrower_widths_run(cls):
    torch.manual_seed(0)
    source = cls(32, 48).eval()
    copy, thin = cls(32, 48).eval(), cls(8, 32).eval()
    prune_into(source, copy)
    prune_into(source, thin)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(copy(x)["x_hat"], source(x)["x_hat"])
        assert thin(x)["x_hat"].shape == x.shape
    # GDN's gamma keeps the rows and columns of the kept channels
    kept = most_important(source.g_a[0], 8)
    assert torch.equal(thin.g_a[1].gamma, source.g_a[1].gamma[kept][:, kept])


def test_with_images_a_large_filter_that_nothing_reads_is_pruned_first():
    torch.manual_seed(0)
    source = ScaleHyperprior(8, 16).eval()
    with torch.no_grad():
        source.g_a[0].weight[0] *= 10  # the largest filter by far ...
        source.g_a[2].weight[:, 0] = 0  # ... whose output the next layer ignores
    by_norm, by_contribution = ScaleHyperprior(7, 16), ScaleHyperprior(7, 16)
    prune_into(source, by_norm)
    prune_into(source, by_contribution, torch.rand(2, 3, 64, 64))
    assert torch.equal(by_norm.g_a[0].weight[0], source.g_a[0].weight[0, :, :, :])
    assert not any(torch.equal(w, source.g_a[0].weight[0]) for w in by_contribution.g_a[0].weight)


def test_wider_in_one_width_and_narrower_in_another_or_another_family_is_an_error():
    with pytest.raises(ValueError, match="wider than its source at .* and narrower .*: set student.M=16"):
        prune_into(ScaleHyperprior(8, 16), ScaleHyperprior(16, 8))
    with pytest.raises(ValueError, match="same family"):
        prune_into(ScaleHyperprior(8, 16), MeanScaleHyperprior(8, 16))


@pytest.mark.parametrize("family", [ScaleHyperprior, MeanScaleHyperprior, FactorizedPrior])
def test_a_wider_student_from_its_teacher_starts_as_the_teacher(family):
    torch.manual_seed(0)
    source, target = family(16, 16), family(24, 16)
    with torch.no_grad():
        for p in source.parameters():  # a trained-looking source, not its initialisation
            p.add_(0.05 * torch.randn_like(p))
    prune_into(source, target)
    source.eval(), target.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out_s, out_t = source(x), target(x)
    assert torch.allclose(out_s["x_hat"], out_t["x_hat"], atol=1e-6)
    # the same latent: every y channel is coded as by the teacher
    assert torch.allclose(out_s["likelihoods"]["y"], out_t["likelihoods"]["y"], atol=1e-6)
    with pytest.raises(ValueError, match="keeps the teacher's latent width: set student.M=16"):
        prune_into(source, family(24, 24))
    # the extra channels are live (random filters), only what reads them starts at zero
    assert target.g_a[0].weight[16:].abs().sum() > 0 and target.g_a[2].weight[:, 16:].abs().sum() == 0


def test_pruned_widths_round_and_refuse_a_bad_fraction():
    from lic_kd.frugal.prune import pruned_widths

    assert pruned_widths(ScaleHyperprior(64, 192), 0.5) == {"N": 32, "M": 192}  # the latent width stays
    assert pruned_widths(ScaleHyperprior(8, 16), 0.01) == {"N": 1, "M": 16}
    for bad in (0, 1.5, "half", True):
        with pytest.raises(ValueError, match="prune.keep must be the fraction of channels kept"):
            pruned_widths(ScaleHyperprior(8, 16), bad)


def test_prune_group_fine_tunes_a_smaller_dense_copy_with_and_without_kd(teacher_sweep, tmp_path):
    """prune=channels through the entry point: a genuinely smaller network (fewer parameters and MACs), coded
    for real, its own curve in the report, plain and KD fine-tuning paired in the distillation table."""
    import json

    import pandas as pd

    from conftest import run_module, train

    sweep = tmp_path / "pruned"
    train(
        "-m",
        "prune=channels",
        "prune.keep=0.5",
        "role=student,kd",
        "lmbda=0.005",
        f"teacher.checkpoint={teacher_sweep}",
        f"hydra.sweep.dir={sweep}",
    )
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    teacher = next(
        json.loads(p.read_text())
        for p in teacher_sweep.glob("*/results.json")
        if json.loads(p.read_text())["run"]["lmbda"] == 0.005
    )
    assert len(results) == 2
    for r in results:
        assert r["run"]["prune"] == {"keep": 0.5, "criterion": "contribution"} and r["run"]["init"] == "teacher"
        assert (r["run"]["N"], r["run"]["M"]) == (4, 16) and r["metrics"]["bpp"] > 0
        assert (
            r["params"] < teacher["params"]
            and r["complexity"]["kmac_per_pixel_decoder"] < teacher["complexity"]["kmac_per_pixel_decoder"]
        )
    run_module(
        "lic_kd.report",
        str(teacher_sweep),
        str(sweep),
        "--name",
        "p",
        "--out-root",
        str(tmp_path / "rep"),
        "--no-figures",
    )
    rd = pd.read_csv(tmp_path / "rep" / "p" / "rd_table.csv")
    assert {"pruned0.5-student-N4-M16", "pruned0.5-kd-N4-M16"} <= set(rd["curve"])
    distill = pd.read_csv(tmp_path / "rep" / "p" / "distillation.csv")
    assert distill.loc[0, "plain_curve"] == "pruned0.5-student-N4-M16" and distill.loc[0, "prune_keep"] == 0.5


@pytest.mark.parametrize(
    "override, message",
    [
        ("prune.keep=2", "prune.keep must be the fraction of channels kept, in (0, 1], got 2"),
        ("prune.criterion=random", "prune.criterion must be one of contribution, l1, got 'random'"),
    ],
)
def test_a_bad_prune_setting_is_one_line(teacher_sweep, tmp_path, override, message):
    from conftest import refused

    args = ["prune=channels", override, f"teacher.checkpoint={teacher_sweep}", "lmbda=0.005"]
    assert message in refused(tmp_path / "run", *args)


def test_prune_without_a_network_to_prune_is_an_error(tmp_path):
    from conftest import refused

    message = "prune needs the trained network to prune: set teacher.checkpoint=PATH"
    assert message in refused(tmp_path / "run", "prune=channels")


def _families():
    from compressai.models import JointAutoregressiveHierarchicalPriors

    from lic_kd.models.networks import ScaleHyperpriorHyperWidth

    # (family, source, narrower target of the same M): every family prune_into accepts
    return [
        ("bmshj2018-factorized", lambda: FactorizedPrior(16, 24), lambda: FactorizedPrior(8, 24)),
        ("bmshj2018-hyperprior", lambda: ScaleHyperprior(16, 24), lambda: ScaleHyperprior(8, 24)),
        (
            "bmshj2018-hyperprior-hyperwidth",
            lambda: ScaleHyperpriorHyperWidth(16, 24, hyper_N=20),
            lambda: ScaleHyperpriorHyperWidth(8, 24, hyper_N=10),
        ),
        ("mbt2018-mean", lambda: MeanScaleHyperprior(16, 24), lambda: MeanScaleHyperprior(8, 24)),
        (
            "mbt2018",
            lambda: JointAutoregressiveHierarchicalPriors(16, 24),
            lambda: JointAutoregressiveHierarchicalPriors(8, 24),
        ),
    ]


def _randomised(net: nn.Module) -> nn.Module:
    """A 'trained' network: every parameter moved off its initial value (GDN's beta of ones, the zero biases,
    the entropy bottleneck's initial quantiles), so that a value left at initialisation is told apart."""
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return net.eval()


@pytest.mark.parametrize("calibrated", [False, True], ids=["l1", "contribution"])
@pytest.mark.parametrize("family, make_source, make_target", _families(), ids=[f[0] for f in _families()])
def test_every_parameter_of_every_accepted_family_comes_from_the_source(family, make_source, make_target, calibrated):
    """Each target parameter is an index selection of the source's parameter of the same name (its values all
    appear there, none is the fresh initialisation), exactly equal where the width is unchanged (the latent
    width M: mbt2018's context model and entropy parameters); constant buffers (masks, bounds) equal."""
    import copy

    torch.manual_seed(0)
    source = _randomised(make_source())
    target = make_target().eval()
    fresh = copy.deepcopy(target)
    prune_into(source, target, torch.rand(2, 3, 64, 64) if calibrated else None)
    src, fresh_params = dict(source.named_parameters()), dict(fresh.named_parameters())
    assert src.keys() == dict(target.named_parameters()).keys()
    for name, param in target.named_parameters():
        assert torch.isin(param.flatten(), src[name].flatten()).all(), f"{family}: {name} is not from the source"
        assert not torch.equal(param, fresh_params[name]), f"{family}: {name} left at its initial value"
        if param.shape == src[name].shape:
            assert torch.equal(param, src[name]), f"{family}: {name} has its source's width but not its values"
    src_buffers = dict(source.named_buffers())
    for name, buffer in target.named_buffers():
        assert torch.equal(buffer, src_buffers[name]), f"{family}: buffer {name}"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = target(x)
    assert out["x_hat"].shape == x.shape and all(torch.isfinite(v).all() for v in out["likelihoods"].values())


@pytest.mark.parametrize(
    "make_source, make_target, message",
    [
        (
            lambda: _cheng2020(16),
            lambda: _cheng2020(8),
            "channel pruning supports bmshj2018-factorized, bmshj2018-hyperprior, mbt2018-mean, mbt2018, "
            "bmshj2018-hyperprior-hyperwidth, not Cheng2020Anchor",
        ),
        (
            lambda: _mbt2018(16, 24),
            lambda: _mbt2018(8, 16),
            "pruning mbt2018 (JointAutoregressiveHierarchicalPriors) keeps the latent width M: got M=16 from M=24",
        ),
    ],
    ids=["cheng2020", "mbt2018-narrower-M"],
)
def test_a_family_or_width_that_cannot_be_pruned_is_one_line(make_source, make_target, message):
    from lic_kd.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        prune_into(make_source(), make_target())
    assert message in str(err.value) and "\n" not in str(err.value)


def _cheng2020(n: int) -> nn.Module:
    from compressai.models import Cheng2020Anchor

    return Cheng2020Anchor(n)


def _mbt2018(n: int, m: int) -> nn.Module:
    from compressai.models import JointAutoregressiveHierarchicalPriors

    return JointAutoregressiveHierarchicalPriors(n, m)


def test_a_refused_family_is_refused_by_pruned_widths_too():
    from lic_kd.errors import ConfigError
    from lic_kd.frugal.prune import pruned_widths

    with pytest.raises(ConfigError, match="channel pruning supports .* not Cheng2020Anchor"):
        pruned_widths(_cheng2020(16), 0.5)


def test_prune_channels_on_an_mbt2018_teacher_through_the_model_config(tmp_path):
    """model=mbt2018 with prune=channels: pruned_widths keeps M, the student built from conf/model/mbt2018.yaml
    takes the teacher's context model and entropy parameters unchanged and its kept channels elsewhere."""

    from conftest import task_config
    from lic_kd.models.checkpoints import load_net
    from lic_kd.models.networks import build_net
    from lic_kd.training.spec import parse_run

    torch.manual_seed(0)
    overrides = ["experiment=smoke", "model=mbt2018", "student.N=16", "student.M=24", f"paths.output_dir={tmp_path}"]
    teacher = _randomised(build_net(task_config(overrides).model))
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    (pruned,) = parse_run(
        task_config([*overrides, "prune=channels", f"teacher.checkpoint={tmp_path / 'teacher.pth'}"])
    ).students
    cfg = pruned.cfg
    assert (cfg.student.N, cfg.student.M, cfg.student.init) == (8, 24, "teacher")
    source, _ = load_net(cfg.teacher.checkpoint, cfg.teacher.architecture)
    student = build_net(cfg.model)
    prune_into(source, student, torch.rand(2, 3, 64, 64))
    for name in ("context_prediction", "entropy_parameters"):
        source_state = getattr(source, name).state_dict()
        for key, param in getattr(student, name).state_dict().items():
            assert torch.equal(param, source_state[key]), f"{name}.{key}"
    assert student.g_a[0].weight.shape[0] == 8 and torch.isin(student.g_a[0].weight, source.g_a[0].weight).all()
