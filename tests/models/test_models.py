"""Networks: loading teachers from every kind of checkpoint, and the latents KD reads."""

import json

import pytest
import torch
from compressai.models import ScaleHyperprior

from lic_kd.errors import CheckpointError
from lic_kd.models.checkpoints import load_net
from lic_kd.models.networks import capture_latents

ARCH = "compressai.models.ScaleHyperprior"


@pytest.mark.parametrize("wrap", [False, True], ids=["raw_state_dict", "examples_train_dict"])
def test_compressai_checkpoint_files_load_with_inferred_widths(tmp_path, wrap):
    net = ScaleHyperprior(16, 24)
    state = net.state_dict()
    torch.save({"epoch": 3, "state_dict": state} if wrap else state, tmp_path / "ckpt.pth.tar")
    loaded, meta = load_net(tmp_path / "ckpt.pth.tar", ARCH)
    assert (loaded.N, loaded.M) == (16, 24)
    assert meta["net"] == {"_target_": ARCH, "N": 16, "M": 24} and meta["role"] == "external"
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x)["x_hat"], net.eval()(x)["x_hat"])


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.ckpt"):
        load_net(tmp_path / "nope.ckpt")


def test_run_dir_without_checkpoints_is_named(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="has no checkpoints/best.ckpt"):
        load_net(tmp_path)


def test_garbage_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / "bad.ckpt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_net(tmp_path / "bad.ckpt", ARCH)


def test_capture_latents_records_synthesis_inputs():
    net = ScaleHyperprior(8, 16).eval()
    with torch.no_grad(), capture_latents(net) as latents:
        out = net(torch.rand(1, 3, 128, 64))
    assert latents["y_hat"].shape == (1, 16, 8, 4) and latents["z_hat"].shape == (1, 8, 2, 1)
    with torch.no_grad():
        assert torch.allclose(net.g_s(latents["y_hat"]), out["x_hat"])
    assert not net.g_s._forward_pre_hooks  # hooks removed afterwards


def test_zoo_weights_load_offline_from_the_hub_cache_with_their_hash_checked(tmp_path, monkeypatch):
    """CompressAI's own weights are not available here: a file of ours under a zoo-style name stands in,
    named with its true hash; the real zoo name with other content must fail the hash check."""
    import hashlib

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="place bmshj2018-hyperprior-1-7eb97409.pth.tar .* in .*no download here"):
        load_net("zoo:bmshj2018-hyperprior:1")

    torch.save(ScaleHyperprior(8, 16).state_dict(), cache / "bmshj2018-hyperprior-1-7eb97409.pth.tar")
    with pytest.raises(CheckpointError, match="does not match the sha256 prefix 7eb97409"):
        load_net("zoo:bmshj2018-hyperprior:1")

    own = tmp_path / "own.pth.tar"
    torch.save(ScaleHyperprior(8, 16).state_dict(), own)
    named = tmp_path / f"bmshj2018-hyperprior-1-{hashlib.sha256(own.read_bytes()).hexdigest()[:8]}.pth.tar"
    own.rename(named)
    net, meta = load_net(named, ARCH)
    assert (net.N, net.M) == (8, 16) and meta["role"] == "external"
    with pytest.raises(CheckpointError, match="no nosuch"):
        load_net("zoo:nosuch:1")


def test_zoo_teacher_by_lambda_takes_each_runs_quality_from_files_lic_kd_exports(tmp_path):
    """teacher.checkpoint=zoo:MODEL: each KD run takes the quality CompressAI trained at its own lambda, from the
    hub cache, here holding a teacher of ours exported in the hub's layout; a lambda whose file is missing names
    the file and the folder in one line, before training."""
    from conftest import run_module, train

    teacher = tmp_path / "teacher"
    train("role=teacher", "lmbda=0.0018", f"hydra.run.dir={teacher}")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    run_module("lic_kd.teachers.export", str(teacher), str(hub / "bmshj2018-hyperprior-1.pth.tar"))
    env = {"TORCH_HOME": str(tmp_path / "torch")}
    kd = tmp_path / "kd"
    train(
        "-m", "role=kd", "lmbda=0.0018", "teacher.checkpoint=zoo:bmshj2018-hyperprior", f"hydra.sweep.dir={kd}", env=env
    )
    run = json.loads((kd / "0" / "results.json").read_text())["run"]
    assert run["teacher"]["checkpoint"] == "zoo:bmshj2018-hyperprior" and run["settings"]["teacher.checkpoint_sha256"]
    proc = train(
        "role=kd",
        "lmbda=0.0035",
        "teacher.checkpoint=zoo:bmshj2018-hyperprior",
        f"hydra.run.dir={tmp_path / 'q2'}",
        env=env,
        check=False,
    )
    assert (
        proc.returncode == 2
        and "(quality 2, mse): place bmshj2018-hyperprior-2-" in proc.stderr
        and str(hub) in proc.stderr
    )
    assert not (tmp_path / "q2" / "checkpoints").exists()
    proc = train(
        "role=kd",
        "lmbda=0.005",
        "teacher.checkpoint=zoo:bmshj2018-hyperprior",
        f"hydra.run.dir={tmp_path / 'x'}",
        env=env,
        check=False,
    )
    assert proc.returncode == 2 and "lmbda=0.005 is none of CompressAI's mse lambdas (q1 0.0018" in proc.stderr
