"""Distillation variants beyond single-teacher KD: hybrid KD (two teachers) and autoencoder KD (no entropy
model), each through the same train, sweep and report entry points."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import KODAK, refused, run_module, task_config, train
from lic_kd.data import load_rgb, to_tensor
from lic_kd.evaluation.coding import pad, reconstruct_image
from lic_kd.metrics import to_8bit
from lic_kd.models.checkpoints import load_net
from lic_kd.models.networks import Autoencoder, capture_latents
from lic_kd.training.parts import build_module
from lic_kd.training.spec import parse_run


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def val_losses(run_dir):
    return pd.read_csv(run_dir / "csv" / "metrics.csv")["val/loss"].dropna().to_numpy()


def test_autoencoder_reconstruction_file_is_its_eval_mode_output(tmp_path):
    torch.manual_seed(0)
    net = Autoencoder(8, 16).eval()
    Image.open(KODAK / "kodim23.png").crop((300, 200, 400, 270)).save(tmp_path / "crop.png")  # 100x70: padded
    row = reconstruct_image(net, tmp_path / "crop.png", tmp_path / "rec.png", torch.device("cpu"))
    x = to_tensor(load_rgb(tmp_path / "crop.png"))[None]
    with torch.no_grad():
        expected = to_8bit(net(pad(x))["x_hat"][..., :70, :100])
    saved = np.asarray(Image.open(tmp_path / "rec.png"))
    assert saved.shape == (70, 100, 3)
    assert np.array_equal(saved, (expected[0].permute(1, 2, 0) * 255).round().byte().numpy())
    assert "bpp" not in row and row["psnr"] > 0 and "ms_ssim_missing" in row


def test_autoencoder_kd_sweep_reports_quality_without_rate(tmp_path):
    teacher = tmp_path / "teacher"
    budget = ["model=autoencoder", "steps=30", "val_every=10", "optimizer.main.lr=1e-3"]
    train("role=teacher", *budget, f"hydra.run.dir={teacher}")
    sweep = tmp_path / "sweep"
    train("-m", "role=student,kd", "student.N=4", f"teacher.checkpoint={teacher}", *budget, f"hydra.sweep.dir={sweep}")
    runs = [teacher, *sorted(p.parent for p in sweep.glob("*/results.json"))]
    assert len(runs) == 3
    for run in runs:
        r = results(run)
        assert r["run"]["architecture"] == "Autoencoder" and r["run"]["lmbda"] is None
        assert "bpp" not in r["metrics"] and r["metrics"]["psnr"] > 0 and r["complexity"]["kmac_per_pixel_decoder"] > 0
        assert len(list((run / "reconstructions").glob("*.png"))) == r["metrics"]["n_images"] == 2
        assert not (run / "bitstreams").exists()
        val = val_losses(run)
        assert len(val) == 3 and val[-1] < val[0], f"{r['run']['role']} did not reduce its reconstruction loss: {val}"
        # one optimizer (no entropy bottleneck): Lightning's step count is the batch count
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 30
    kd = next(results(run)["run"] for run in runs if results(run)["run"]["role"] == "kd")
    assert kd["loss"] == "kd" and kd["objective"] == {"metric": "mse"}
    assert "train/kd_y" in pd.read_csv(sweep / "1" / "csv" / "metrics.csv").columns

    run_module("lic_kd.report", str(teacher), str(sweep), "--name", "ae", "--out-root", str(tmp_path / "rep"))
    out = tmp_path / "rep" / "ae"
    rd = pd.read_csv(out / "rd_table.csv")
    assert len(rd) == 3 and not {"bpp", "bpp_estimated", "lmbda"} & set(rd.columns)
    bd = pd.read_csv(out / "bd_rate.csv")
    assert set(bd["curve"]) == {"student-Autoencoder-N4-M16", "kd-Autoencoder-N4-M16"}
    assert bd["bd_rate_pct"].isna().all() and bd["delta_quality"].notna().all()
    student_psnr = rd.loc[rd["role"] == "student", "psnr"].item() - rd.loc[rd["role"] == "teacher", "psnr"].item()
    assert bd.loc[bd["curve"] == "student-Autoencoder-N4-M16", "delta_quality"].item() == pytest.approx(student_psnr)
    assert (out / "quality_vs_kmac.png").is_file() and (out / "visual_comparison.png").is_file()
    assert not (out / "rd_curves.png").exists() and "bpp" not in (out / "rd_table.md").read_text()


def test_autoencoder_trained_for_ms_ssim(tmp_path):
    run = tmp_path / "msssim"
    train(
        "model=autoencoder",
        "role=teacher",
        "objective.metric=ms-ssim",
        "data.crop_size=192",
        "data.val_crop_size=192",
        "steps=20",
        "val_every=10",
        "optimizer.main.lr=1e-3",
        f"hydra.run.dir={run}",
    )
    assert results(run)["run"]["objective"] == {"metric": "ms-ssim"}
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    val = metrics["val/loss"].dropna().to_numpy()  # 1 - MS-SSIM
    assert len(val) == 2 and 0 < val[-1] < val[0] < 1
    assert metrics["val/ms_ssim"].dropna().iloc[-1] == pytest.approx(1 - val[-1], rel=1e-5)


def test_codec_trained_for_ms_ssim_rate_distortion(tmp_path):
    run = tmp_path / "codec_msssim"
    train(
        "role=teacher",
        "objective.metric=ms-ssim",
        "lmbda=8",
        "data.crop_size=192",
        "data.val_crop_size=192",
        "steps=4",
        "val_every=2",
        f"hydra.run.dir={run}",
    )
    r = results(run)
    assert r["run"]["objective"] == {"lmbda": 8, "metric": "ms-ssim"} and r["metrics"]["bpp"] > 0
    assert {"val/ms_ssim", "val/bpp"} <= set(pd.read_csv(run / "csv" / "metrics.csv").columns)


def test_hybrid_kd_takes_z_from_the_low_rate_teacher_and_y_from_the_other(teacher_sweep, tmp_path):
    spec = parse_run(
        task_config(
            [
                "experiment=smoke",
                "role=kd_hybrid",
                "model=bmshj2018-hyperprior-hyperwidth",
                "student.N=4",
                "model.hyper_N=8",
                "lmbda=0.02",
                f"teacher.checkpoint={teacher_sweep}",
                f"teacher.z_checkpoint={teacher_sweep}",
                "teacher.z_lmbda=0.005",
                f"paths.output_dir={tmp_path}",
            ]
        )
    )
    module = build_module(spec, calibration=None)  # the KD shapes checked: z_hat of the student and the z teacher
    high, _ = load_net(teacher_sweep, lmbda=0.02)
    low, _ = load_net(teacher_sweep, lmbda=0.005)
    for loaded, expected in ((module.teachers.main, high), (module.teachers.z, low)):
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), expected.state_dict().values()))
    x = torch.rand(1, 3, 64, 64)
    _, targets = module.teachers.targets(x)
    with torch.no_grad(), capture_latents(high) as from_high, capture_latents(low) as from_low:
        high(x), low(x)
    assert torch.equal(targets["y_hat"], from_high["y_hat"]) and torch.equal(targets["z_hat"], from_low["z_hat"])


def test_hybrid_kd_run_reduces_its_loss_and_is_its_own_curve_in_the_report(teacher_sweep, tmp_path):
    run = tmp_path / "hybrid"
    train(
        "role=kd_hybrid",
        "lmbda=0.02",
        f"teacher.checkpoint={teacher_sweep}",
        f"teacher.z_checkpoint={teacher_sweep}",
        "teacher.z_lmbda=0.005",
        "model=bmshj2018-hyperprior-hyperwidth",
        "student.N=4",
        "model.hyper_N=8",
        "steps=30",
        "val_every=10",
        "optimizer.main.lr=1e-3",
        f"hydra.run.dir={run}",
    )
    r = results(run)["run"]
    assert r["kd_variant"] == "hybrid" and r["teacher"]["z_lmbda"] == 0.005 and r["loss_weights"]["w_z"] == 0.3
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    assert {"train/kd_z", "train/kd_y", "train/kd_x"} <= set(metrics.columns)
    kd_loss = metrics["val/kd_loss"].dropna().to_numpy()
    assert len(kd_loss) == 3 and kd_loss[-1] < kd_loss[0], kd_loss
    run_module(
        "lic_kd.report",
        str(teacher_sweep),
        str(run),
        "--name",
        "h",
        "--out-root",
        str(tmp_path / "rep"),
        "--no-figures",
    )
    rd = pd.read_csv(tmp_path / "rep" / "h" / "rd_table.csv")
    assert "kd-hybrid-ScaleHyperpriorHyperWidth-N4-M16" in set(rd["curve"])


def test_kd_on_y_z_and_x_hat_with_mse_and_kl_reduce_their_loss(teacher_sweep, tmp_path):
    sweep = tmp_path / "kd"
    train(
        "-m",
        "role=kd",
        "loss.latent_criterion=mse,kl",
        "loss.w_z=0.3",
        "lmbda=0.02",
        f"teacher.checkpoint={teacher_sweep}",
        "model=bmshj2018-hyperprior-hyperwidth",
        "student.N=4",
        "model.hyper_N=8",
        "steps=30",
        "val_every=10",
        "optimizer.main.lr=1e-3",
        f"hydra.sweep.dir={sweep}",
    )
    runs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert [results(run)["run"]["loss_weights"]["latent_criterion"] for run in runs] == ["mse", "kl"]
    for run in runs:
        kd_loss = pd.read_csv(run / "csv" / "metrics.csv")["val/kd_loss"].dropna().to_numpy()
        assert len(kd_loss) == 3 and kd_loss[-1] < kd_loss[0], kd_loss
    run_module("lic_kd.report", str(sweep), "--name", "kd", "--out-root", str(tmp_path / "rep"), "--no-figures")
    curves = set(pd.read_csv(tmp_path / "rep" / "kd" / "rd_table.csv")["curve"])
    assert curves == {f"kd-ScaleHyperpriorHyperWidth-N4-M16 latent_criterion={c}" for c in ("mse", "kl")}


def bad_run(tmp_path, *args):
    return refused(tmp_path / "bad", *args)


def test_variant_misconfigurations_fail_before_training(teacher_sweep, tmp_path):
    assert "this configuration needs teacher.z_checkpoint: set it on the command line" in bad_run(
        tmp_path, "role=kd_hybrid", f"teacher.checkpoint={teacher_sweep}"
    )
    assert "set loss.w_z > 0" in bad_run(
        tmp_path,
        "role=kd_hybrid",
        "loss.w_z=0",
        "lmbda=0.02",
        f"teacher.checkpoint={teacher_sweep}",
        f"teacher.z_checkpoint={teacher_sweep / '0'}",
    )
    assert "Autoencoder has no entropy model: train it with objective=reconstruction" in bad_run(
        tmp_path, "model=autoencoder", "objective=rd"
    )
    assert "ScaleHyperprior has an entropy model: train it with objective=rd" in bad_run(
        tmp_path, "objective=reconstruction"
    )
    assert "objective.metric=ms-ssim needs training and validation crops of at least 161 px" in bad_run(
        tmp_path, "model=autoencoder", "objective.metric=ms-ssim"
    )


def test_hybrid_kd_with_one_teacher_twice_is_kd_on_z_and_every_role_sees_the_same_batches(teacher_sweep, tmp_path):
    """Loading teachers leaves the run's random stream alone: a plain student, a KD student and a hybrid KD
    student whose two teachers are one train on the same crops, and the last two are the same run."""
    common = [
        "lmbda=0.02",
        f"teacher.checkpoint={teacher_sweep}",
        "model=bmshj2018-hyperprior-hyperwidth",
        "student.N=4",
        "model.hyper_N=8",
        "steps=6",
        "data.eval_limit=1",
    ]
    variants = {
        "student": ["role=student"],
        "kd_z": ["role=kd", "loss.w_z=0.3"],
        "hybrid": ["role=kd_hybrid", f"teacher.z_checkpoint={teacher_sweep}", "teacher.z_lmbda=0.02"],
    }
    logs = {}
    for name, args in variants.items():
        train(*common, *args, f"hydra.run.dir={tmp_path / name}")
        logs[name] = pd.read_csv(tmp_path / name / "csv" / "metrics.csv").dropna(subset=["train/loss"])
    assert logs["hybrid"]["train/loss"].tolist() == logs["kd_z"]["train/loss"].tolist()
    assert logs["student"]["train/mse"].iloc[0] == logs["kd_z"]["train/mse"].iloc[0]  # same first batch, same init
