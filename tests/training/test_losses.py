"""The loss maths, checked by hand."""

import math

import pytest
import torch

from lic_kd.training.losses import DistillationLoss, ReconstructionLoss, latent_kl, make_rd_loss


def fake_output(x_hat, likelihoods):
    return {"x_hat": x_hat, "likelihoods": likelihoods}


def test_rd_loss_is_lambda_255sq_mse_plus_bpp():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    x_hat = x + 0.01 * torch.randn_like(x)
    lik = {"y": torch.full((2, 4, 2, 2), 0.5), "z": torch.full((2, 2, 1, 1), 0.25)}
    out = make_rd_loss(0.01)(fake_output(x_hat, lik), x)
    pixels = 2 * 8 * 8
    bpp = (2 * 4 * 2 * 2 * 1 + 2 * 2 * 1 * 1 * 2) / pixels  # -log2(0.5) = 1 bit, -log2(0.25) = 2 bits
    mse = ((x - x_hat) ** 2).mean()
    assert out["bpp_loss"].item() == pytest.approx(bpp)
    assert out["loss"].item() == pytest.approx(0.01 * 255**2 * mse.item() + bpp, rel=1e-5)


@pytest.mark.parametrize("lmbda", [0, -0.1])
def test_rd_loss_rejects_non_positive_lambda(lmbda):
    with pytest.raises(ValueError, match="lmbda must be > 0"):
        make_rd_loss(lmbda)


def test_kd_loss_is_the_weighted_sum():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8)
    lik = {"y": torch.full((1, 4, 2, 2), 0.5)}
    s_out, t_out = fake_output(x * 0.9, lik), fake_output(x * 0.8, lik)
    s_lat = {"y_hat": torch.randn(1, 4, 2, 2), "z_hat": torch.randn(1, 2, 1, 1)}
    t_lat = {"y_hat": torch.randn(1, 4, 2, 2), "z_hat": torch.randn(1, 2, 1, 1)}
    loss = DistillationLoss(make_rd_loss(0.01), w_task=0.4, w_y=0.3, w_z=0.2, w_x=0.1)
    out = loss(s_out, s_lat, t_out, t_lat, x)
    rd = make_rd_loss(0.01)(s_out, x)["loss"]
    expected = (
        0.4 * rd
        + 0.3 * ((s_lat["y_hat"] - t_lat["y_hat"]) ** 2).mean()
        + 0.2 * ((s_lat["z_hat"] - t_lat["z_hat"]) ** 2).mean()
        + 0.1 * 0.01 * 255**2 * ((x * 0.9 - x * 0.8) ** 2).mean()
    )
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["task_loss"].item() == pytest.approx(rd.item())
    assert loss.required_latents() == ["y_hat", "z_hat"]


@pytest.mark.parametrize("lmbda", [0.0009, 0.0035, 0.013])
def test_kd_x_term_weighs_like_the_task_distortion_by_default(lmbda):
    """The x_hat term and the task's distortion are in the same units: with w_x = w_task, a teacher whose
    reconstruction is the original image pulls exactly as hard as the image itself, at every lambda."""
    x = torch.rand(1, 3, 8, 8, requires_grad=False)
    x_student = (x * 0.9).requires_grad_(True)
    lik = {"y": torch.full((1, 4, 2, 2), 0.5)}
    loss = DistillationLoss(make_rd_loss(lmbda), w_task=0.5, w_y=0.0, w_x=0.5)
    out = loss(fake_output(x_student, lik), {}, fake_output(x, lik), {}, x)
    (grad_x,) = torch.autograd.grad(out["loss"], x_student)
    (task_only,) = torch.autograd.grad(make_rd_loss(lmbda)(fake_output(x_student, lik), x)["loss"], x_student)
    assert torch.allclose(grad_x, task_only, rtol=1e-5)  # 0.5 * task + 0.5 * same distortion == task
    legacy = DistillationLoss(make_rd_loss(lmbda), w_task=0.5, w_y=0.0, w_x=0.5, x_in_task_units=False)
    legacy_x = legacy(fake_output(x_student, lik), {}, fake_output(x, lik), {}, x)["kd_x"]
    assert out["kd_x"].item() == pytest.approx(lmbda * 255**2 * legacy_x.item(), rel=1e-5)


def test_kd_weight_zero_drops_the_term_and_its_shape_requirement():
    loss = DistillationLoss(make_rd_loss(0.01), w_y=0.3, w_z=0.0, w_x=0.3)
    assert loss.required_latents() == ["y_hat"]


def test_latent_kl_is_zero_for_equal_latents_and_positive_otherwise():
    t = torch.randn(2, 8, 3, 3)
    assert latent_kl(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert latent_kl(t + torch.randn_like(t), t).item() > 0


def test_latent_kl_matches_a_hand_computed_distribution():
    s = torch.tensor([0.0, 0.0]).view(1, 2, 1, 1)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)  # softmax -> (0.75, 0.25)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert latent_kl(s, t).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, message", [({"w_y": -1}, "w_y must be >= 0"), ({"latent_criterion": "l1"}, "mse' or 'kl")]
)
def test_kd_loss_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationLoss(make_rd_loss(0.01), **kwargs)


def test_reconstruction_loss_is_mse_or_one_minus_ms_ssim():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 176, 176)
    x_hat = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    mse = ReconstructionLoss("mse")({"x_hat": x_hat}, x)
    assert mse["loss"].item() == pytest.approx(((x - x_hat) ** 2).mean().item(), rel=1e-6)
    msssim = ReconstructionLoss("ms-ssim")({"x_hat": x_hat}, x)
    assert 0 < msssim["loss"].item() < 1 and msssim["loss"].item() == pytest.approx(1 - msssim["ms_ssim_loss"].item())
    assert ReconstructionLoss("mse")({"x_hat": x}, x)["loss"].item() == 0


def test_rd_and_reconstruction_losses_reject_an_unknown_metric():
    for make in (lambda: make_rd_loss(0.01, metric="ssim"), lambda: ReconstructionLoss("ssim")):
        with pytest.raises(ValueError, match="metric must be one of"):
            make()


def test_kd_on_a_reconstruction_task_has_no_rate_term():
    x = torch.rand(1, 3, 8, 8)
    s_out, t_out = {"x_hat": x * 0.9}, {"x_hat": x * 0.8}
    lat_s, lat_t = {"y_hat": torch.zeros(1, 4, 1, 1)}, {"y_hat": torch.ones(1, 4, 1, 1)}
    out = DistillationLoss(ReconstructionLoss(), w_task=0.5, w_y=0.25, w_x=1.0)(s_out, lat_s, t_out, lat_t, x)
    expected = 0.5 * ((x * 0.1) ** 2).mean() + 0.25 * 1.0 + ((x * 0.1) ** 2).mean()
    assert "bpp_loss" not in out and out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
