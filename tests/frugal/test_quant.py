"""Fixed-point quantization (lic_kd.frugal.quant): the maths, the network surgery, exact decoding, and the quant
group through the entry points."""

import json

import pytest
import torch
from compressai.models import ScaleHyperprior

from conftest import run_module, train
from lic_kd.evaluation.determinism import decode_determinism
from lic_kd.frugal.quant import calibrate, fixed_point_quantize, float_twin, fraction_bits, model_bytes, quantize

SPEC = {"mode": "ptq", "weight_bits": 8, "activation_bits": 8, "rounding": "nearest", "parts": "decoder"}


def test_nearest_rounds_to_multiples_of_two_to_the_minus_fl_and_saturates():
    x = torch.tensor([0.1, -0.3, 0.26, 5.0, -5.0])
    q = fixed_point_quantize(x, bits=4, fl=torch.tensor(2.0))  # steps of 0.25, integers -8..7: -2.0..1.75
    assert q.tolist() == [0.0, -0.25, 0.25, 1.75, -2.0]


def test_per_channel_fractional_lengths():
    w = torch.tensor([[0.3, -0.6], [3.0, 2.2]])
    q = fixed_point_quantize(w, bits=8, fl=torch.tensor([7.0, 5.0]), axis=0)
    assert torch.allclose(q, torch.round(w * torch.tensor([[128.0], [32.0]])) / torch.tensor([[128.0], [32.0]]))


def test_fraction_bits_is_the_largest_that_holds_the_range():
    for max_abs, bits in ((1.0, 8), (0.01, 8), (300.0, 16), (1.0, 4)):
        fl = fraction_bits(torch.tensor(max_abs), bits)
        top = 2 ** (bits - 1) - 1
        assert max_abs <= top * 2.0**-fl and max_abs > top * 2.0 ** -(fl + 1)


def test_stochastic_rounding_is_unbiased_and_lands_on_neighbours():
    torch.manual_seed(0)
    x = torch.full((200_000,), 0.3)
    q = fixed_point_quantize(x, bits=8, fl=torch.tensor(2.0), rounding="stochastic")  # 0.25 or 0.5
    assert set(q.unique().tolist()) == {0.25, 0.5}
    assert abs(q.mean().item() - 0.3) < 2e-3


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_gradient_passes_straight_through_inside_the_range_only(rounding):
    x = torch.tensor([0.3, 10.0], requires_grad=True)  # 10 saturates at 8 bits, fl=4 (max 7.94)
    fixed_point_quantize(x, bits=8, fl=torch.tensor(4.0), rounding=rounding).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]


def test_quantized_network_has_few_weight_levels_reloads_and_keeps_its_float_twin():
    torch.manual_seed(0)
    net = ScaleHyperprior(8, 16).eval()
    float_out = net(torch.rand(1, 3, 64, 64))["x_hat"]
    x = torch.rand(2, 3, 64, 64)
    before = model_bytes(net)
    quantize(net, dict(SPEC, weight_bits=4))
    calibrate(net, x)
    w = net.g_s[2].weight  # ConvTranspose2d: output channels on dim 1
    assert all(w[:, c].unique().numel() <= 16 for c in range(w.shape[1]))
    assert model_bytes(net) < before
    again = quantize(ScaleHyperprior(8, 16), dict(SPEC, weight_bits=4))
    again.load_state_dict(net.state_dict())
    assert torch.equal(again.eval()(x)["x_hat"], net(x)["x_hat"])
    twin = float_twin(net)
    assert type(twin.g_s[0]) is torch.nn.ConvTranspose2d and not hasattr(twin.g_s[0], "input_quantizer")
    torch.manual_seed(0)
    assert torch.allclose(twin(torch.rand(1, 3, 64, 64))["x_hat"], float_out)
    net(x)  # the original still runs quantized: the twin took nothing from it


def test_fixed_point_hyper_synthesis_is_exact_in_float64():
    """h_s's outputs are exact sums of fixed-point products: the same bits from another convolution
    implementation (oneDNN or PyTorch's own) and another thread count, i.e. another summation order."""
    torch.manual_seed(0)
    net = quantize(ScaleHyperprior(16, 32).eval(), dict(SPEC, parts="h_s"))
    calibrate(net, torch.rand(2, 3, 128, 128))
    z = torch.randn(1, 16, 8, 8).round()
    threads = torch.get_num_threads()
    outputs = []
    try:
        for mkldnn, n in ((True, 1), (False, 2), (True, 2)):
            torch.set_num_threads(n)
            with torch.backends.mkldnn.flags(enabled=mkldnn), torch.inference_mode():
                outputs.append(net.h_s(z))
    finally:
        torch.set_num_threads(threads)
    assert outputs[0].dtype == torch.float32 and all(torch.equal(outputs[0], o) for o in outputs[1:])
    check = decode_determinism(net, torch.rand(1, 3, 128, 128))
    assert check["fixed_point"]["scales_identical"] and set(check["float"]) == {
        "identical",
        "max_abs_diff",
        "scales_identical",
    }


def test_quant_group_codes_with_the_quantized_network(teacher_sweep, tmp_path):
    sweep = tmp_path / "quant"
    train(
        "-m",
        "quant=ptq",
        "quant.weight_bits=6,8",
        "student.init=teacher",
        f"teacher.checkpoint={teacher_sweep}",
        "lmbda=0.005",
        f"hydra.sweep.dir={sweep}",
    )
    kd = tmp_path / "kd"
    train(
        "quant=qat",
        "role=kd",
        "quant.rounding=stochastic",
        "quant.parts=h_s",
        "student.init=teacher",
        f"teacher.checkpoint={teacher_sweep}",
        "lmbda=0.005",
        f"hydra.run.dir={kd}",
    )
    results = [json.loads(p.read_text()) for p in [*sweep.glob("*/results.json"), kd / "results.json"]]
    teacher = next(
        json.loads(p.read_text())
        for p in teacher_sweep.glob("*/results.json")
        if json.loads(p.read_text())["run"]["lmbda"] == 0.005
    )
    assert sorted((r["run"]["quant"]["mode"], r["run"]["quant"]["weight_bits"]) for r in results) == [
        ("ptq", 6),
        ("ptq", 8),
        ("qat", 8),
    ]
    for r in results:
        assert r["metrics"]["bpp"] > 0 and r["complexity"]["model_bytes"] < teacher["complexity"]["model_bytes"]
        assert r["complexity"]["bits"]["h_s"]["activations"] == 8 and r["complexity"]["bits"]["g_a"]["weights"] == 32
        assert r["determinism"]["fixed_point"]["scales_identical"]  # h_s is exact; g_s's images may differ
    ptq = next(r for r in results if r["run"]["quant"]["weight_bits"] == 6)
    assert ptq["run"]["steps"] == 0 and ptq["complexity"]["bits"]["g_s"]["weights"] == 6
    run_module(
        "lic_kd.report",
        str(teacher_sweep),
        str(sweep),
        str(kd),
        "--name",
        "q",
        "--out-root",
        str(tmp_path / "rep"),
        "--no-figures",
    )
    import pandas as pd

    curves = set(pd.read_csv(tmp_path / "rep" / "q" / "rd_table.csv")["curve"])
    assert {"ptq-w6a8-decoder-student-N8-M16", "ptq-w8a8-decoder-student-N8-M16", "qat-w8a8-h_s-kd-N8-M16"} <= curves
    proc = run_module("lic_kd.teachers.export", str(kd), str(tmp_path / "x.pth.tar"), check=False)
    assert proc.returncode == 2 and "is a fixed-point run (quant.mode=qat)" in proc.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("quant.weight_bits=1", "quant.weight_bits must be an integer word length from 2 to 24 bits, got 1"),
        ("quant.parts=encoder", "quant.parts must be one of h_s, g_s, decoder, all, got 'encoder'"),
        ("quant.rounding=up", "quant.rounding must be one of nearest, stochastic, got 'up'"),
        ("student.init=random", "quant=ptq quantizes a trained network: set student.init=CHECKPOINT"),
    ],
)
def test_a_bad_quant_setting_is_one_line(teacher_sweep, tmp_path, override, message):
    from conftest import refused

    args = ["quant=ptq", "student.init=teacher", override, f"teacher.checkpoint={teacher_sweep}", "lmbda=0.005"]
    assert message in refused(tmp_path / "run", *args)


def test_pruned_distilled_quantized_student_is_one_command(teacher_sweep, tmp_path):
    run = tmp_path / "all3"
    train(
        "prune=channels",
        "prune.keep=0.5",
        "role=kd",
        "quant=qat",
        "quant.weight_bits=8",
        f"teacher.checkpoint={teacher_sweep}",
        "lmbda=0.005",
        f"hydra.run.dir={run}",
    )
    r = json.loads((run / "results.json").read_text())
    assert r["run"]["role"] == "kd" and r["run"]["N"] == 4 and r["run"]["prune"]["keep"] == 0.5
    assert r["run"]["quant"]["mode"] == "qat" and r["run"]["steps"] == 4 and r["metrics"]["bpp"] > 0
