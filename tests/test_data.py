"""Training data layouts and the held-out split."""

import pytest
from PIL import Image

from conftest import CBSD68, KODAK
from lic_kd.data import DataError, ImageDataModule


def make_vimeo(root, clips):
    sources = sorted(CBSD68.glob("*.png"))
    for c, clip in enumerate(clips):
        folder = root / "sequences" / clip
        folder.mkdir(parents=True)
        for i in range(1, 8):
            Image.open(sources[(7 * c + i) % len(sources)]).crop((0, 0, 128, 96)).save(folder / f"im{i}.png")
    (root / "sep_trainlist.txt").write_text("\n".join(clips) + "\n")


def test_vimeo90k_septuplet_layout(tmp_path):
    make_vimeo(tmp_path, ["00001/0001", "00002/0001"])  # two sequences: one is held out
    dm = ImageDataModule(
        train_dir=str(tmp_path),
        eval_dir=str(KODAK),
        layout="vimeo90k",
        crop_size=64,
        batch_size=4,
        val_fraction=0.2,
        eval_limit=1,
    )
    assert len(dm.train_paths) == 7 and len(dm.val_paths) == round(0.2 * 14)  # of the held-out sequence's 7
    dm.check()
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 3, 64, 64) and 0 <= batch.min() and batch.max() <= 1


def test_vimeo_without_its_list_file_is_named(tmp_path):
    with pytest.raises(DataError, match="sep_trainlist.txt"):
        ImageDataModule(train_dir=str(tmp_path), eval_dir=str(KODAK), layout="vimeo90k")


def test_validation_split_is_fixed_and_disjoint():
    a = ImageDataModule(train_dir=str(CBSD68), eval_dir=str(KODAK), crop_size=64, seed=3)
    b = ImageDataModule(train_dir=str(CBSD68), eval_dir=str(KODAK), crop_size=64, seed=3)
    assert a.val_paths == b.val_paths and len(a.val_paths) == 7
    assert not set(a.val_paths) & set(a.train_paths)


def test_small_images_are_padded_up_to_the_crop(tmp_path):
    for i in range(3):
        Image.open(CBSD68 / "101085.png").crop((0, 0, 40, 30)).save(tmp_path / f"s{i}.png")
    dm = ImageDataModule(train_dir=str(tmp_path), eval_dir=str(KODAK), crop_size=64, batch_size=2, val_fraction=0.3)
    assert next(iter(dm.train_dataloader())).shape == (2, 3, 64, 64)


@pytest.mark.parametrize(
    "kwargs, message", [({"crop_size": 100}, "multiple of 64"), ({"layout": "lmdb"}, "'folder' or 'vimeo90k'")]
)
def test_bad_data_settings(kwargs, message):
    with pytest.raises(DataError, match=message):
        ImageDataModule(train_dir=str(CBSD68), eval_dir=str(KODAK), **kwargs)


def test_batches_depend_on_the_seed_alone_not_on_what_else_draws():
    """Crops, flips and order have their own streams: a network that draws random numbers (initialisation,
    training noise) between batches leaves them unchanged, so students trained together see what each sees alone."""
    import torch

    def batches(seed, draw_between):
        loader = ImageDataModule(
            train_dir=str(CBSD68), eval_dir=str(KODAK), crop_size=64, batch_size=4, seed=seed
        ).train_dataloader()
        out = []
        for batch in loader:
            out.append(batch)
            if draw_between:
                torch.rand(1000)
            if len(out) == 3:
                return out

    torch.manual_seed(0)
    alone = batches(1, draw_between=False)
    torch.manual_seed(123)
    with_draws = batches(1, draw_between=True)
    assert all(torch.equal(a, b) for a, b in zip(alone, with_draws))
    assert not torch.equal(batches(2, draw_between=False)[0], alone[0])


def make_noise_vimeo(root, sequences=5, clips=3, side=64):
    """A tiny Vimeo-90K septuplet tree: `sequences` x `clips` clips of 7 random-noise frames."""
    import numpy as np

    rng = np.random.default_rng(0)
    listed = [f"{s:05d}/{c:04d}" for s in range(1, sequences + 1) for c in range(1, clips + 1)]
    for clip in listed:
        folder = root / "sequences" / clip
        folder.mkdir(parents=True)
        for i in range(1, 8):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    (root / "sep_trainlist.txt").write_text("\n".join(listed) + "\n")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vimeo90k_validation_holds_out_whole_sequences(tmp_path, seed):
    """Frames of one clip (and clips of one sequence) are near duplicates: a sequence is wholly on one side."""
    make_noise_vimeo(tmp_path)
    settings = dict(train_dir=str(tmp_path), eval_dir=str(KODAK), layout="vimeo90k", crop_size=64, val_fraction=0.2,
                    eval_limit=1, seed=seed)  # fmt: skip
    dm = ImageDataModule(**settings)
    train, val = ({p.parent.parent.name for p in paths} for paths in (dm.train_paths, dm.val_paths))  # <seq>
    assert val and train and not train & val
    assert len(val) == 1 and len(dm.val_paths) == 3 * 7  # 0.2 of 5 sequences, each with all its clips' frames
    assert sorted(dm.train_paths + dm.val_paths) == sorted(tmp_path.glob("sequences/*/*/im*.png"))
    assert len({p.parent for p in dm.val_paths}) == 3 and len(dm.train_paths) == 4 * 3 * 7
    again = ImageDataModule(**settings)
    assert again.val_paths == dm.val_paths and again.train_paths == dm.train_paths  # fixed for a seed


def test_vimeo90k_of_one_sequence_cannot_hold_out_validation(tmp_path):
    make_noise_vimeo(tmp_path, sequences=1, clips=2)
    with pytest.raises(DataError, match="1 Vimeo-90K sequence: too few to hold out a validation split"):
        ImageDataModule(train_dir=str(tmp_path), eval_dir=str(KODAK), layout="vimeo90k", crop_size=64, eval_limit=1)


def test_folder_split_is_unchanged_by_the_sequence_split():
    """A folder's images are independent: the held-out split is still a seeded shuffle of the images."""
    import random

    from lic_kd.data import list_images

    dm = ImageDataModule(train_dir=str(CBSD68), eval_dir=str(KODAK), crop_size=64, seed=5, eval_limit=1)
    shuffled = list_images(CBSD68)
    random.Random(5).shuffle(shuffled)
    assert dm.val_paths == shuffled[:7] and dm.train_paths == shuffled[7:]


def test_vimeo90k_validation_keeps_its_configured_size(tmp_path):
    """A held-out sequence may hold more frames than data.val_fraction asks (one of Vimeo-90K's 96 is 10x its
    0.001): validation takes that many, spread over the sequence's clips, and the rest train nothing."""
    make_noise_vimeo(tmp_path)
    dm = ImageDataModule(
        train_dir=str(tmp_path), eval_dir=str(KODAK), layout="vimeo90k", crop_size=64, val_fraction=0.1, eval_limit=1
    )
    assert len(dm.val_paths) == round(0.1 * 105) and len({p.parent for p in dm.val_paths}) == 3  # clips
    assert len({p.parent.parent for p in dm.val_paths}) == 1 and len(dm.train_paths) == 4 * 3 * 7
    assert not {p.parent.parent for p in dm.val_paths} & {p.parent.parent for p in dm.train_paths}


def test_a_vimeo_tree_trains_with_loader_workers_reading_from_disk(tmp_path):
    """A Vimeo-90K layout is never held in memory: `auto` gives it loader workers (here 2, asked for), which
    decode the PNG frames off the training process; the run trains, validates on held-out sequences and codes
    its evaluation images."""
    import json

    from conftest import train

    make_noise_vimeo(tmp_path / "vimeo", sequences=4, clips=2)
    dm = ImageDataModule(train_dir=str(tmp_path / "vimeo"), eval_dir=str(KODAK), layout="vimeo90k", crop_size=64,
                         val_fraction=0.25, eval_limit=1)  # fmt: skip
    assert dm.cache_images is False and dm.num_workers >= 1  # auto: streamed from disk by workers
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == dm.num_workers
    run = tmp_path / "run"
    train("data=vimeo90k", f"data.train_dir={tmp_path / 'vimeo'}", "data.val_fraction=0.25", "data.num_workers=2",
          "data.crop_size=64", "data.val_crop_size=64", "data.eval_limit=1", f"hydra.run.dir={run}")  # fmt: skip
    result = json.loads((run / "results.json").read_text())
    assert result["run"]["steps"] == 4 and result["metrics"]["n_images"] == 1
    assert result["run"]["settings"]["data.layout"] == "vimeo90k"
    assert "data.num_workers" not in result["run"]["settings"]  # how images are read does not split curves


@pytest.mark.parametrize("requested, cached, workers", [("auto", True, 0), (3, False, 3), (0, False, 0)])
def test_loader_workers_by_count_or_auto(requested, cached, workers):
    from lic_kd.data import loader_workers

    assert loader_workers(requested, cached) == workers


@pytest.mark.parametrize("requested", [-1, "many", 1.5])
def test_a_wrong_worker_count_is_named(requested):
    from lic_kd.data import loader_workers

    with pytest.raises(DataError, match="data.num_workers must be a count >= 0 or 'auto'"):
        loader_workers(requested, False)
