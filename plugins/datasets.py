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

from ensemblecert import DataInfo, DataSplits, Dataset, UserError, hookimpl


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

    def load(self) -> DataSplits:
        from torchvision import datasets, transforms

        raw = Path(self.root) / "MNIST" / "raw"
        files = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
        to_tensor = transforms.ToTensor()
        try:
            train = datasets.MNIST(self.root, train=True, download=self.download, transform=to_tensor)
            test = datasets.MNIST(self.root, train=False, download=self.download, transform=to_tensor)
        except RuntimeError as exc:
            if "not found" in str(exc).lower():
                raise _missing("MNIST", raw, files) from None
            raise UserError(f"data: cannot read MNIST in {raw}: {exc}") from None
        return DataSplits(train, test, DataInfo((1, 28, 28), 10, (0.1307,), (0.3081,)))


class _CIFAR10Files:
    """Mixin that lets torchvision's CIFAR-10 loader skip its MD5 checks when asked to."""

    def _check_integrity(self) -> bool:  # type: ignore[override]
        if getattr(self, "_verify", True):
            return super()._check_integrity()  # type: ignore[misc]
        base = Path(self.root) / self.base_folder  # type: ignore[attr-defined]
        return all((base / name).is_file() for name, _ in self.train_list + self.test_list)  # type: ignore[attr-defined]

    def _load_meta(self) -> None:
        if getattr(self, "_verify", True):
            return super()._load_meta()  # type: ignore[misc]
        path = Path(self.root) / self.base_folder / self.meta["filename"]  # type: ignore[attr-defined]
        with path.open("rb") as fh:
            data = pickle.load(fh, encoding="latin1")
        self.classes = data[self.meta["key"]]  # type: ignore[attr-defined]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


@attrs.frozen
class CIFAR10(Dataset):
    """CIFAR-10 through torchvision (python batches under ``<root>/cifar-10-batches-py``); downloads only if asked.

    ``augment`` applies the usual random crop (padding 4) and horizontal flip to training images;
    ``verify = false`` skips torchvision's MD5 checks of the files.
    """

    root: str = "data"
    download: bool = False
    augment: bool = True
    verify: bool = True

    def load(self) -> DataSplits:
        from torchvision import datasets, transforms

        class Files(_CIFAR10Files, datasets.CIFAR10):
            def __init__(self, *args, verify: bool, **kwargs):
                self._verify = verify
                super().__init__(*args, **kwargs)

        train_tf = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if self.augment else []
        where = Path(self.root) / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        try:
            train = Files(self.root, train=True, download=self.download, verify=self.verify,
                          transform=transforms.Compose([*train_tf, transforms.ToTensor()]))
            test = Files(self.root, train=False, download=False, verify=self.verify, transform=transforms.ToTensor())
        except RuntimeError as exc:
            if "not found" in str(exc).lower():
                err = _missing("CIFAR-10", where, files)
                if self.verify:
                    err = UserError(f"{err} (files that fail torchvision's checksum count as missing; "
                                    "data.verify = false skips the check)")
                raise err from None
            raise UserError(f"data: cannot read CIFAR-10 in {where}: {exc}") from None
        except FileNotFoundError as exc:
            raise _missing("CIFAR-10", where, files) from exc
        return DataSplits(
            train, test, DataInfo((3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
        )


@attrs.frozen
class ImageNet(Dataset):
    """ImageNet (ILSVRC-2012) as class folders ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG``.

    Read with torchvision's ``ImageFolder``; test images are resized to 256 and centre-cropped to 224,
    training images randomly resized-cropped to 224 and flipped. ImageNet cannot be downloaded
    automatically: its licence requires fetching it yourself.
    """

    root: str = "data/imagenet"

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
            train = datasets.ImageFolder(str(root / "train"), transform=train_tf)
            test = datasets.ImageFolder(str(root / "val"), transform=test_tf)
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
