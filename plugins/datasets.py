"""Data sets: scikit-learn's digits (offline default), and MNIST, CIFAR-10 and ImageNet via torchvision.

Images are tensors in [0, 1]; each data set reports the per-channel mean and std that the models'
first layer uses, so noise is added in pixel space.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import attrs
import numpy as np
import torch
from torch.utils.data import TensorDataset

from ensemblecert import DataInfo, Dataset, DataSplits, UserError, hookimpl


@attrs.frozen
class Digits(Dataset):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): offline, fixed split.

    The split (1,437 training, 360 test images, stratified) never changes, whatever the pipeline seed.
    """

    def load(self) -> DataSplits:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
        labels = digits.target.astype(np.int64)
        x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=360, random_state=0, stratify=labels)
        mean, std = float(x_tr.mean()), float(x_tr.std())
        return DataSplits(
            train=TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
            test=TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)),
            info=DataInfo(input_shape=(1, 8, 8), num_classes=10, mean=(mean,), std=(std,)),
        )


def _missing(name: str, where: Path, files: list[str], download_hint: bool = True) -> UserError:
    listed = ", ".join(files)
    fix = "put them there, set data.root to where they are" + (", or set data.download = true" if download_hint else "")
    return UserError(f"data: {name} not found: expected {listed} in {where}; {fix}")


@attrs.frozen
class MNIST(Dataset):
    """MNIST through torchvision (raw IDX files under ``<root>/MNIST/raw``); downloads only if asked."""

    root: str = "data"
    download: bool = False

    FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def missing_files(self) -> list[str]:
        raw = (Path(self.root) / "MNIST" / "raw").resolve()
        return [] if self.download else [str(raw / f) for f in self.FILES if not (raw / f).is_file()]

    def load(self) -> DataSplits:
        from torchvision import datasets, transforms

        raw = Path(self.root) / "MNIST" / "raw"
        files = list(self.FILES)
        to_tensor = transforms.ToTensor()
        try:
            train = datasets.MNIST(self.root, train=True, download=self.download, transform=to_tensor)
            test = datasets.MNIST(self.root, train=False, download=self.download, transform=to_tensor)
        except RuntimeError as exc:
            if "not found" in str(exc).lower():
                raise _missing("MNIST", raw, files) from None
            raise UserError(f"data: cannot read MNIST in {raw}: {exc}") from None
        except (
            AssertionError,
            ValueError,
            TypeError,
            IndexError,
            OSError,
        ) as exc:  # torchvision asserts on bad headers
            detail = f" ({exc})" if str(exc) else ""
            raise UserError(
                f"data: MNIST files in {raw} are damaged or not in IDX format{detail}; expected {', '.join(files)} "
                "as published (uncompressed), or set data.download = true to fetch them"
            ) from None
        return DataSplits(train, test, DataInfo((1, 28, 28), 10, (0.1307,), (0.3081,)))


class _ArraysOnly(pickle.Unpickler):
    """Unpickles what a CIFAR-10 python batch holds (dicts, lists, strings, bytes, numbers, numpy arrays)
    and refuses every other global, so a crafted batch file cannot run code."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never holds")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """Images ``[N, 32, 32, 3]`` (uint8) and labels of one CIFAR-10 python batch, read without running code."""
    try:
        with path.open("rb") as fh:
            entry = _ArraysOnly(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"data: {path}: not a CIFAR-10 python batch ({exc})") from None
    data = entry.get("data") if isinstance(entry, dict) else None
    labels = entry.get("labels") if isinstance(entry, dict) else None
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
        or not isinstance(labels, list)
        or len(labels) != data.shape[0]
        or not all(isinstance(y, int) and 0 <= y < 10 for y in labels)
    ):
        raise UserError(
            f"data: {path}: not a CIFAR-10 python batch (expected 'data', uint8 [N, 3072], and N 'labels' in 0..9)"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


class ImageArray(torch.utils.data.Dataset):
    """Images ``[N, H, W, C]`` (uint8) and labels; ``transform`` maps a PIL image to a tensor."""

    def __init__(self, images: np.ndarray, labels: list[int], transform) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


@attrs.frozen
class CIFAR10(Dataset):
    """CIFAR-10 (python batches under ``<root>/cifar-10-batches-py``); downloads through torchvision only if asked.

    ``augment`` applies the usual random crop (padding 4) and horizontal flip to training images;
    ``verify = false`` skips the MD5 checks of the files. Batches are always read with an unpickler
    that accepts only the types the format holds, so no file can run code.
    """

    root: str = "data"
    download: bool = False
    augment: bool = True
    verify: bool = True

    def missing_files(self) -> list[str]:
        from torchvision import datasets

        where = (Path(self.root) / datasets.CIFAR10.base_folder).resolve()
        names = [n for n, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list]
        return [] if self.download else [str(where / n) for n in names if not (where / n).is_file()]

    def load(self) -> DataSplits:
        from torchvision import datasets, transforms
        from torchvision.datasets.utils import check_integrity, download_and_extract_archive

        reference = datasets.CIFAR10
        where = Path(self.root) / reference.base_folder
        checksums = dict(reference.train_list + reference.test_list)
        files = list(checksums)
        if self.download and not all((where / name).is_file() for name in files):
            download_and_extract_archive(reference.url, self.root, filename=reference.filename, md5=reference.tgz_md5)
        missing = [name for name in files if not (where / name).is_file()]
        if missing:
            raise _missing("CIFAR-10", where, files)
        if self.verify:
            bad = [name for name in files if not check_integrity(str(where / name), checksums[name])]
            if bad:
                raise UserError(
                    f"data: CIFAR-10 files in {where} fail their checksum: {', '.join(bad)}; replace them with the "
                    "originals (data.download = true fetches them), or set data.verify = false to skip the check"
                )

        def split(names: list[str], transform) -> ImageArray:
            parts = [read_cifar_batch(where / name) for name in names]
            return ImageArray(np.concatenate([p[0] for p in parts]), [y for p in parts for y in p[1]], transform)

        train_tf = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if self.augment else []
        train = split([n for n, _ in reference.train_list], transforms.Compose([*train_tf, transforms.ToTensor()]))
        test = split([n for n, _ in reference.test_list], transforms.ToTensor())
        return DataSplits(train, test, DataInfo((3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)))


def _checked_image_loader(path: str):
    """torchvision's image loader, with unreadable files reported by name instead of a traceback."""
    from PIL import UnidentifiedImageError
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"data: {path}: not a readable image ({exc}); remove or replace the file") from None


@attrs.frozen
class ImageNet(Dataset):
    """ImageNet (ILSVRC-2012) as class folders ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG``.

    Read with torchvision's ``ImageFolder``; test images are resized to 256 and centre-cropped to 224,
    training images randomly resized-cropped to 224 and flipped. An unreadable image is reported by its
    path when it is first read. ImageNet cannot be downloaded automatically: its licence requires
    fetching it yourself.
    """

    root: str = "data/imagenet"

    def missing_files(self) -> list[str]:
        root = Path(self.root).resolve()
        return [f"{root / split}/<wnid>/*.JPEG" for split in ("train", "val") if not (root / split).is_dir()]

    def load(self) -> DataSplits:
        from torchvision import datasets, transforms

        root = Path(self.root)
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise UserError(
                    f"data: ImageNet not found: expected class folders {root / split}/<wnid>/*.JPEG "
                    f"(train and val); set data.root to the directory that holds train/ and val/"
                )
        train_tf = transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
        )
        test_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
        try:
            train = datasets.ImageFolder(str(root / "train"), transform=train_tf, loader=_checked_image_loader)
            test = datasets.ImageFolder(str(root / "val"), transform=test_tf, loader=_checked_image_loader)
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserError(f"data: cannot read ImageNet in {root}: {exc}") from None
        if train.classes != test.classes:
            raise UserError(f"data: {root}/train and {root}/val hold different class folders")
        return DataSplits(
            train, test, DataInfo((3, 224, 224), len(train.classes), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        )


@hookimpl
def register_datasets(register):
    register("digits", Digits)
    register("mnist", MNIST)
    register("cifar10", CIFAR10)
    register("imagenet", ImageNet)
