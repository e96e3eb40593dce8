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
    make_vimeo(tmp_path, ["00001/0001", "00001/0002"])
    dm = ImageDataModule(train_dir=str(tmp_path), eval_dir=str(KODAK), layout="vimeo90k", crop_size=64, batch_size=4,
                         val_fraction=0.2, eval_limit=1)
    assert len(dm.train_paths) + len(dm.val_paths) == 14
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


@pytest.mark.parametrize("kwargs, message", [({"crop_size": 100}, "multiple of 64"), ({"layout": "lmdb"}, "'folder' or 'vimeo90k'")])
def test_bad_data_settings(kwargs, message):
    with pytest.raises(DataError, match=message):
        ImageDataModule(train_dir=str(CBSD68), eval_dir=str(KODAK), **kwargs)


def test_batches_depend_on_the_seed_alone_not_on_what_else_draws():
    """Crops, flips and order have their own streams: a network that draws random numbers (initialisation,
    training noise) between batches leaves them unchanged, so students trained together see what each sees alone."""
    import torch

    def batches(seed, draw_between):
        loader = ImageDataModule(train_dir=str(CBSD68), eval_dir=str(KODAK), crop_size=64, batch_size=4, seed=seed).train_dataloader()
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
