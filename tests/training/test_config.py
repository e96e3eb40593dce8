"""Config composition: every choice a user makes resolves to what it says."""

import re

import pytest
from hydra.utils import instantiate

from conftest import REPO
from conftest import compose_config as make


def test_default_is_a_plain_student_on_the_shipped_data():
    cfg = make([])
    assert cfg.role == "student" and cfg.loss._target_ == "lic_kd.training.losses.make_rd_loss"
    assert cfg.model._target_ == "compressai.models.ScaleHyperprior"
    assert cfg.data.train_dir == str(REPO / "data" / "cbsd68")
    assert cfg.data.eval_dir == str(REPO / "data" / "kodak")
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")


@pytest.mark.parametrize(
    "role, loss", [("teacher", "make_rd_loss"), ("student", "make_rd_loss"), ("kd", "DistillationLoss")]
)
def test_role_picks_the_loss(role, loss):
    cfg = make([f"role={role}"])
    assert cfg.role == role and cfg.loss._target_.endswith(loss)


def test_kd_weights_and_lambda_flow_into_the_loss():
    cfg = make(["role=kd", "lmbda=0.0035", "loss.w_z=0.5", "loss.latent_criterion=kl"])
    loss = instantiate(cfg.loss)
    assert loss.task.lmbda == 0.0035 and loss.weights["z"] == 0.5 and loss.latent_criterion == "kl"


@pytest.mark.parametrize("role, loss", [("teacher", "ReconstructionLoss"), ("kd", "DistillationLoss")])
def test_autoencoder_model_trains_for_reconstruction_in_every_role(role, loss):
    cfg = make(["model=autoencoder", f"role={role}", "objective.metric=ms-ssim"])
    assert cfg.model._target_ == "lic_kd.models.networks.Autoencoder" and cfg.loss._target_.endswith(loss)
    objective = cfg.loss.task if role == "kd" else cfg.loss
    assert objective._target_ == "lic_kd.training.losses.ReconstructionLoss" and objective.metric == "ms-ssim"


def test_hybrid_kd_takes_z_from_a_second_teacher():
    cfg = make(["role=kd_hybrid", "teacher.checkpoint=a", "teacher.z_checkpoint=b"])
    assert cfg.role == "kd" and cfg.loss.w_z > 0 and cfg.teacher.z_checkpoint == "b"
    with pytest.raises(Exception, match="z_checkpoint"):  # mandatory: no hybrid KD without the low-rate teacher
        _ = make(["role=kd_hybrid", "teacher.checkpoint=a"]).teacher.z_checkpoint


def test_quality_preset_sets_widths_and_lambda():
    cfg = make(["rate=q6"])
    assert (cfg.student.N, cfg.student.M, cfg.lmbda) == (192, 320, 0.0483)
    assert (cfg.model.N, cfg.model.M) == (192, 320)


@pytest.mark.parametrize(
    "model, quality, widths",
    [
        ("bmshj2018-factorized", 6, (192, 320)),
        ("mbt2018-mean", 5, (192, 320)),
        ("mbt2018", 2, (192, 192)),
        ("cheng2020-anchor-checkerboard", 4, (192, None)),
    ],
)
def test_quality_presets_follow_the_model_family(model, quality, widths):
    cfg = make([f"model={model}", f"rate=q{quality}"])
    assert (cfg.student.N, cfg.student.M) == widths and cfg.lmbda == [0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483][
        quality - 1
    ]


def test_the_paper_preset_is_compressais_recipe_and_leaves_rate_and_width_to_the_command(tmp_path):
    """experiment=paper: Vimeo-90K, 256x256 crops, batch 16, Adam 1e-4 / 1e-3, clipping, plateau halving, 2M
    batches, bf16 on the GPU, KD from the zoo teacher of each run's lambda with the published weights. It sets
    no lambda or width, so rate=qK gives a teacher at the zoo's widths without a conflict."""
    from test_data import make_noise_vimeo

    from lic_kd.training.spec import check_rate_preset

    make_noise_vimeo(tmp_path)
    teacher = make(["experiment=paper", "role=teacher", "rate=q3", f"data.train_dir={tmp_path}"])
    check_rate_preset(teacher)  # no conflict: the preset leaves lambda and widths to rate=q3
    assert (teacher.student.N, teacher.student.M, teacher.lmbda) == (128, 192, 0.0067)
    assert (teacher.data.layout, teacher.data.crop_size, teacher.data.batch_size) == ("vimeo90k", 256, 16)
    assert (teacher.optimizer.main.lr, teacher.optimizer.aux.lr, teacher.optimizer.clip_max_norm) == (1e-4, 1e-3, 1.0)
    assert teacher.scheduler.factor == 0.5 and teacher.steps == 2_000_000
    assert teacher.trainer.precision == "bf16-mixed"
    student = make(["experiment=paper", "role=kd", "student.N=32", "lmbda=0.013", f"data.train_dir={tmp_path}"])
    assert student.teacher.checkpoint == "zoo:bmshj2018-hyperprior" and student.student.M == 192
    assert (student.loss.w_y, student.loss.w_x, student.loss.w_task) == (0.3, 0.3, 0.4)
    data = instantiate(student.data, eval_limit=1)
    assert data.num_workers >= 1 and not data.cache_images  # read from disk by loader workers


def test_smoke_preset_is_tiny():
    cfg = make(["experiment=smoke"])
    assert cfg.model.N == 8 and cfg.data.crop_size == 64 and cfg.steps <= 10 and cfg.data.eval_limit == 2


def test_submitit_local_launcher():
    cfg = make(["launcher=submitit_local"])
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def test_joblib_launcher_runs_one_thread_jobs_in_parallel():
    cfg = make(["launcher=joblib"])
    assert (
        cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2 and cfg.threads == 1
    )


def test_wandb_logger_is_offline_and_keeps_csv():
    cfg = make(["logger=wandb"])
    assert cfg.logger.wandb.offline is True and "csv" in cfg.logger


def test_sweep_dirs_have_sub_second_resolution():
    assert re.search(r"_\d{2}-\d{2}-\d{2}-\d{6}$", make([]).hydra.sweep.dir)


def test_vimeo_layout_needs_its_root():
    cfg = make(["data=vimeo90k", "data.train_dir=/nowhere"])
    assert cfg.data.layout == "vimeo90k"


def test_evaluate_config():
    cfg = make(["checkpoint=x.ckpt"], name="evaluate")
    assert cfg.images == str(REPO / "data" / "kodak") and cfg.limit is None


def test_make_teachers_gives_base_and_rungs_budgets_of_their_own_through_the_launcher():
    """A cluster budget for the base no longer makes each rung's fine-tune that long, and the base goes through
    the launcher too (it used to be a single run that ignored launcher=slurm)."""
    import subprocess

    proc = subprocess.run(
        ["make", "-n", "teachers", "TEACHER_LAUNCHER=slurm", "TEACHER_BASE_STEPS=2000000", "TEACHER_RUNG_STEPS=100000",
         "INSTALLED="],  # fmt: skip
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    commands = [line for line in proc.stdout.splitlines() if "-m lic_kd.train" in line and "--command" not in line]
    base, rungs = (
        next(c for c in commands if f"experiment={e} " in c) for e in ("teacher_ladder", "teacher_ladder_finetune")
    )
    assert "-m experiment" in base and "steps=2000000 " in base and "launcher=slurm " in base
    assert "steps=100000 " in rungs and "launcher=slurm " in rungs and "student.init=outputs/teachers/base/0" in rungs


def test_the_teacher_ladder_trains_on_photos_shipped_in_the_repository():
    """make teachers on a fresh clone: every training folder is inside the repository, holds the images its
    SHA256SUMS lists, and Kodak is not among them."""
    import hashlib

    from lic_kd.data import list_images

    cfg = make(["experiment=teacher_ladder"])
    folders = [REPO / "data" / "cbsd68", REPO / "data" / "wikipedia-photos"]
    assert [str(f) for f in folders] == list(cfg.data.train_dir)
    for folder in folders:
        listed = dict(line.split()[::-1] for line in (folder / "SHA256SUMS").read_text().splitlines())
        images = list_images(folder)
        assert sorted(p.name for p in images) == sorted(listed)
        assert all(hashlib.sha256(p.read_bytes()).hexdigest() == listed[p.name] for p in images)
    assert len(list_images(folders[0])) + len(list_images(folders[1])) == 117
