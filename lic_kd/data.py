"""Images in, tensors out: reading any image a user has, training crops, and the Lightning datamodule."""

from __future__ import annotations

import os
import random
from itertools import accumulate
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, get_worker_info

from lic_kd.errors import UserError

CACHE_MAX_IMAGES = 2000  # training images decoded once and kept in memory (data.cache_images=null)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class DataError(UserError):
    """A data path or file that cannot be used; the message names it."""


def list_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """Every image file under `folder` (recursively), sorted; raises DataError if there is none."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"image folder does not exist: {root}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    return paths[:limit] if limit else paths


def load_rgb(path: str | Path) -> Image.Image:
    """Open any image as 8-bit RGB: grayscale is replicated, alpha is dropped, 16-bit is rescaled."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale PNG
                arr = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if arr.max() > 255 else 255.0
                img = Image.fromarray(np.round(arr / peak * 255).astype(np.uint8), mode="L")
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")  # drop alpha without blending: codecs compress the colour
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def check_images(paths: Sequence[Path]) -> None:
    """Decode every file now so a corrupt one fails before training, with its name."""
    for path in paths:
        load_rgb(path)


class ImageFolder(Dataset):
    """Images from a list of files; random crops and flips for training, a centre crop for validation.

    A small set (`cache=True`) is decoded once and kept in memory as 8-bit tensors: decoding a PNG for every
    crop costs more than the crop itself, and on a few cores it competes with the model for the CPU.

    Crops and flips draw from the dataset's own random stream (`seed`; a loader worker's own seed), not from
    torch's global one: a run's batches are then the same whatever its networks draw, so that students
    trained together in one process (lic_kd.training.group) see exactly what each would see alone."""

    def __init__(self, paths: Sequence[Path], crop_size: int, train: bool, cache: bool = False, seed: int = 0) -> None:
        self.paths = list(paths)
        self.crop_size = crop_size
        self.train = train
        self.seed = seed
        self.generator: torch.Generator | None = None  # made where it draws: in the loader's process or worker
        self.images = [self._read(p) for p in self.paths] if cache else None

    def _read(self, path: Path) -> torch.Tensor:
        img = torch.from_numpy(np.asarray(load_rgb(path), dtype=np.uint8).copy()).permute(2, 0, 1)
        if min(img.shape[-2:]) < self.crop_size:  # small images: replicate borders up to the crop size
            pad_h, pad_w = max(0, self.crop_size - img.shape[-2]), max(0, self.crop_size - img.shape[-1])
            img = torch.nn.functional.pad(img[None].float(), (0, pad_w, 0, pad_h), mode="replicate")[0].to(torch.uint8)
        return img

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = self.images[index] if self.images is not None else self._read(self.paths[index])
        return self._crop(img).float() / 255.0  # crop the 8-bit image, then convert: 4x less to copy

    def _crop(self, img: torch.Tensor) -> torch.Tensor:
        size, (height, width) = self.crop_size, img.shape[-2:]
        if not self.train:  # centre crop, rounded as torchvision's
            top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
            return img[:, top : top + size, left : left + size]
        if self.generator is None:
            worker = get_worker_info()
            self.generator = torch.Generator().manual_seed(worker.seed if worker else self.seed)
        top, left, flip_h, flip_v = (
            int(torch.randint(0, n, (1,), generator=self.generator))
            for n in (height - size + 1, width - size + 1, 2, 2)
        )
        img = img[:, top : top + size, left : left + size]
        if flip_h:
            img = img.flip(-1)
        if flip_v:
            img = img.flip(-2)
        return img


def vimeo90k_paths(root: str | Path, list_file: str = "sep_trainlist.txt") -> list[Path]:
    """Frames of the Vimeo-90K septuplet layout: `<root>/sequences/<seq>/<clip>/im1..7.png`."""
    root = Path(root)
    listing = root / list_file
    if not listing.is_file():
        raise DataError(f"Vimeo-90K list file not found: {listing} (expected the septuplet layout)")
    clips = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    paths = [root / "sequences" / clip / f"im{i}.png" for clip in clips for i in range(1, 8)]
    if not paths:
        raise DataError(f"{listing} lists no clips")
    missing = [p for p in paths[:7] if not p.is_file()]
    if missing:
        raise DataError(f"Vimeo-90K frame missing: {missing[0]}")
    return paths


def loader_workers(requested: int | str, cached: bool) -> int:
    """data.num_workers: a count, or `auto`: none for a set held in memory (a crop of a decoded image is cheaper
    than handing it between processes), otherwise one per core but the training process's, at most 8."""
    if requested == "auto":
        return 0 if cached else max(1, min(8, (os.cpu_count() or 2) - 1))
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise DataError(f"data.num_workers must be a count >= 0 or 'auto', got {requested!r}")
    return requested


class ImageDataModule(L.LightningDataModule):
    """Training images (a folder or Vimeo-90K), a held-out validation split, and an evaluation folder."""

    def __init__(
        self,
        train_dir: str | Sequence[str],
        eval_dir: str,
        layout: str = "folder",
        val_dir: str | None = None,
        val_fraction: float = 0.1,
        crop_size: int = 256,
        val_crop_size: int = 256,
        batch_size: int = 16,
        val_batch_size: int = 8,
        num_workers: int | str = "auto",
        eval_limit: int | None = None,
        seed: int = 0,
        cache_images: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(train_dir, (str, Path)):
            train_dir = [str(d) for d in train_dir]  # plain strings in the checkpoint's hyperparameters
        if layout not in ("folder", "vimeo90k"):
            raise DataError(f"data.layout must be 'folder' or 'vimeo90k', got {layout!r}")
        if crop_size <= 0 or crop_size % 64:
            raise DataError(f"data.crop_size must be a positive multiple of 64, got {crop_size}")
        if not 0 <= val_fraction < 1:
            raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.train_dir, self.eval_dir, self.layout, self.val_dir = train_dir, eval_dir, layout, val_dir
        self.val_fraction, self.seed = val_fraction, seed
        self.crop_size, self.val_crop_size = crop_size, val_crop_size
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.eval_limit = eval_limit
        self.train_paths, self.val_paths = self._split()
        self.eval_paths = list_images(eval_dir, eval_limit)
        # None: keep a folder of at most CACHE_MAX_IMAGES decoded in memory (a few hundred MB), stream the rest
        self.cache_images = (
            (layout == "folder" and len(self.train_paths) <= CACHE_MAX_IMAGES) if cache_images is None else cache_images
        )
        self.num_workers = loader_workers(num_workers, self.cache_images)

    def _split(self) -> tuple[list[Path], list[Path]]:
        train_dirs = [self.train_dir] if isinstance(self.train_dir, (str, Path)) else list(self.train_dir)
        if not train_dirs:
            raise DataError("data.train_dir names no folder")
        paths = [p for d in train_dirs for p in (vimeo90k_paths(d) if self.layout == "vimeo90k" else list_images(d))]
        if self.val_dir:
            return paths, list_images(self.val_dir)
        # Held out by group: a folder's images are independent (one each); Vimeo-90K's frames of a clip, and
        # the clips of a sequence (<seq>/<clip>/imN.png), are near duplicates: a whole sequence on one side.
        vimeo = self.layout == "vimeo90k"
        groups: dict[object, list[Path]] = {}
        for i, path in enumerate(paths):
            groups.setdefault(path.parent.parent if vimeo else i, []).append(path)
        shuffled = list(groups.values())
        random.Random(self.seed).shuffle(shuffled)  # fixed split: resumed runs validate on the same images
        n_val = max(1, round(len(paths) * self.val_fraction))  # validation frames, as configured
        n_held = next(k for k, total in enumerate(accumulate(map(len, shuffled)), 1) if total >= n_val)
        if n_held == len(shuffled):
            unit = "Vimeo-90K sequence" if vimeo else "image"
            raise DataError(
                f"{self.train_dir} has {len(shuffled)} {unit}{'s' if len(shuffled) != 1 else ''}: "
                "too few to hold out a validation split (or set data.val_dir)"
            )
        held = [p for g in shuffled[:n_held] for p in g]
        # One Vimeo-90K sequence is ~1 % of its frames, 10x data.val_fraction=0.001: validate on n_val of the
        # held-out frames, spread over their clips; the others are in neither split. A folder holds out n_val.
        val = [held[i * len(held) // n_val] for i in range(n_val)]
        return [p for g in shuffled[n_held:] for p in g], val

    def check(self) -> None:
        """Read every small-set image once (validation, evaluation, a folder training set) before training."""
        check_images(self.val_paths + self.eval_paths)
        if self.layout == "folder" and len(self.train_paths) <= 5000:
            check_images(self.train_paths)

    def calibration_images(self, count: int = 16) -> torch.Tensor:
        """Centre crops of the first `count` training images (of the fixed split): what a network narrower
        than its teacher ranks the teacher's channels on."""
        dataset = ImageFolder(self.train_paths[:count], self.crop_size, train=False)
        return torch.stack([dataset[i] for i in range(len(dataset))])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            ImageFolder(self.train_paths, self.crop_size, train=True, cache=self.cache_images, seed=self.seed),
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed + 1),  # the run's own order, as its crops
            drop_last=len(self.train_paths) >= self.batch_size,
            **self._loader_settings(),
        )

    def _loader_settings(self) -> dict:
        """Workers decode off the training process and live for the whole run; pinned pages speed host-to-GPU copies."""
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            ImageFolder(self.val_paths, self.val_crop_size, train=False, cache=self.cache_images),
            batch_size=self.val_batch_size,
            **self._loader_settings(),
        )
