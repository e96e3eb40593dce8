"""Mixed precision (trainer.precision): bf16-mixed runs the transforms in bfloat16 and the entropy models in
float32, on this CPU; 16-mixed is refused without a GPU; the precision is part of a run's record and its curve."""

import json

import pytest
import torch
from hydra.utils import instantiate

from conftest import task_config, train
from lic_kd.training.parts import build_module
from lic_kd.training.precision import Float32EntropyBottleneck, entropy_models_in_float32
from lic_kd.training.setup import make_trainer
from lic_kd.training.spec import parse_run


def test_bf16_mixed_trains_the_transforms_in_bfloat16_and_the_rates_in_float32(tmp_path):
    spec = parse_run(
        task_config(
            [
                "experiment=smoke",
                "trainer.precision=bf16-mixed",
                "steps=2",
                "val_every=2",
                f"paths.output_dir={tmp_path}",
            ]
        )
    )
    datamodule = instantiate(spec.cfg.data)
    module = build_module(spec, calibration=None)
    net = module.students["student"].net
    seen = {}

    def record(name, pick):
        def hook(module, inputs, out):
            seen.setdefault(name, pick(out).dtype)  # returns None: the output is left as it is

        return hook

    net.g_a.register_forward_hook(record("g_a", lambda out: out))
    net.entropy_bottleneck.register_forward_hook(record("z_likelihoods", lambda out: out[1]))
    net.gaussian_conditional.register_forward_hook(record("y_likelihoods", lambda out: out[1]))
    trainer = make_trainer(spec, module)
    trainer.fit(module, datamodule=datamodule)
    assert seen == {"g_a": torch.bfloat16, "z_likelihoods": torch.float32, "y_likelihoods": torch.float32}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in net.parameters())  # master weights


def test_float32_entropy_models_change_nothing_outside_autocast():
    from compressai.models import ScaleHyperprior

    torch.manual_seed(0)
    plain = ScaleHyperprior(8, 16).eval()
    x = torch.rand(1, 3, 64, 64)
    expected = plain(x)
    converted = entropy_models_in_float32(plain)
    assert isinstance(converted.entropy_bottleneck, Float32EntropyBottleneck)
    out = converted(x)
    assert torch.equal(out["x_hat"], expected["x_hat"]) and torch.equal(
        out["likelihoods"]["y"], expected["likelihoods"]["y"]
    )
    assert set(converted.state_dict()) == set(ScaleHyperprior(8, 16).state_dict())  # checkpoints keep their keys


def test_the_precision_is_recorded_and_makes_a_curve_of_its_own(tmp_path):
    run = tmp_path / "bf16"
    train("trainer.precision=bf16-mixed", f"hydra.run.dir={run}")
    r = json.loads((run / "results.json").read_text())["run"]
    assert r["precision"] == "bf16-mixed" and r["settings"]["trainer.precision"] == "bf16-mixed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="16-mixed is valid on a CUDA machine")
def test_16_mixed_without_a_gpu_is_one_line(tmp_path):
    proc = train("trainer.precision=16-mixed", f"hydra.run.dir={tmp_path / 'r'}", check=False)
    assert (
        proc.returncode == 2 and "trainer.precision=16-mixed needs a CUDA GPU; on a CPU use bf16-mixed" in proc.stderr
    )
    assert not (tmp_path / "r" / "checkpoints").exists()
