"""Data set loaders, exercised offline on tiny files written in the real on-disk formats."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_mnist
from ensemblecert import UserError, build_component, load_registry


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def dataset(registry, **spec):
    return build_component("dataset", spec, registry).load()


def test_digits_split_is_fixed(registry):
    a = dataset(registry, name="digits")
    b = dataset(registry, name="digits")
    assert (len(a.train), len(a.test)) == (1437, 360)
    assert a.info.input_shape == (1, 8, 8) and a.info.num_classes == 10
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    x, y = a.test[0]
    assert x.shape == (1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0 and 0 <= int(y) < 10
    labels = a.test.tensors[1]
    assert torch.bincount(labels, minlength=10).min() >= 35  # stratified


def test_mnist_reads_raw_idx_files(tmp_path, registry):
    write_mnist(tmp_path, train=6, test=4)
    splits = dataset(registry, name="mnist", root=str(tmp_path))
    assert (len(splits.train), len(splits.test)) == (6, 4)
    x, y = splits.test[3]
    assert x.shape == (1, 28, 28) and y == 3 and 0 <= x.min() and x.max() <= 1


def test_garbage_mnist_files_are_a_user_error(tmp_path, registry):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (raw / name).write_bytes(b"this is not an IDX file")
    with pytest.raises(UserError, match=r"MNIST files in .*raw are damaged or not in IDX format"):
        dataset(registry, name="mnist", root=str(tmp_path))


def test_mnist_missing_files_are_named(tmp_path, registry):
    with pytest.raises(UserError) as info:
        dataset(registry, name="mnist", root=str(tmp_path))
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "MNIST" / "raw") in message
    assert "data.download = true" in message


def write_cifar(root, n_per_batch=3):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
            "labels": [1, 2, 3][:n_per_batch],
        }
        with open(base / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)  # the published batches are Python 2 pickles
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump(
            {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]},
            fh,
        )


def test_cifar10_reads_python_batches(tmp_path, registry):
    write_cifar(tmp_path)
    splits = dataset(registry, name="cifar10", root=str(tmp_path), verify=False, augment=False)
    assert (len(splits.train), len(splits.test)) == (15, 3)
    x, y = splits.test[2]
    assert x.shape == (3, 32, 32) and y == 3
    assert splits.info.num_classes == 10 and len(splits.info.mean) == 3


def test_cifar10_checksums_are_checked_by_default(tmp_path, registry):
    write_cifar(tmp_path)
    with pytest.raises(UserError, match="fail their checksum: data_batch_1, .* data.verify = false"):
        dataset(registry, name="cifar10", root=str(tmp_path))


class RunsCode:
    """Pickles to a call of os.mkdir: what a crafted batch file can do to a plain unpickler."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_a_crafted_cifar10_batch_cannot_run_code(tmp_path, registry):
    write_cifar(tmp_path)
    marker = tmp_path / "code-ran"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as fh:
        pickle.dump({"data": RunsCode(marker), "labels": [1]}, fh)
    with pytest.raises(UserError, match=r"data_batch_3: not a CIFAR-10 python batch \(it refers to posix.mkdir"):
        dataset(registry, name="cifar10", root=str(tmp_path), verify=False)
    assert not marker.exists()


def test_cifar10_batch_of_the_wrong_shape(tmp_path, registry):
    write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({"data": np.zeros((2, 100), dtype=np.uint8), "labels": [0, 1]}, fh)
    with pytest.raises(
        UserError, match=r"test_batch: not a CIFAR-10 python batch \(expected 'data', uint8 \[N, 3072\]"
    ):
        dataset(registry, name="cifar10", root=str(tmp_path), verify=False)


def test_cifar10_missing(tmp_path, registry):
    with pytest.raises(UserError, match="CIFAR-10 not found: expected data_batch_1"):
        dataset(registry, name="cifar10", root=str(tmp_path), verify=False)


def test_imagenet_reads_class_folders(tmp_path, registry):
    for split, per_class in (("train", 2), ("val", 1)):
        for wnid in ("n01440764", "n01443537"):
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((40, 30, 3), 50 * i, dtype=np.uint8)).save(
                    folder / f"{wnid}_{i}.JPEG", format="JPEG"
                )
    splits = dataset(registry, name="imagenet", root=str(tmp_path))
    assert (len(splits.train), len(splits.test), splits.info.num_classes) == (4, 2, 2)
    x, y = splits.test[1]
    assert x.shape == (3, 224, 224) and y == 1


def test_a_corrupt_imagenet_image_is_named(tmp_path, registry):
    for split in ("train", "val"):
        folder = tmp_path / split / "n01440764"
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(folder / "a.JPEG", format="JPEG")
    (tmp_path / "train" / "n01440764" / "b.JPEG").write_bytes(b"\xff\xd8\xff not really a JPEG")
    splits = dataset(registry, name="imagenet", root=str(tmp_path))
    assert splits.train[0][0].shape == (3, 224, 224)
    with pytest.raises(UserError, match=r"b.JPEG: not a readable image .*remove or replace the file"):
        splits.train[1]


def test_imagenet_missing(tmp_path, registry):
    with pytest.raises(UserError, match="ImageNet not found: expected class folders"):
        dataset(registry, name="imagenet", root=str(tmp_path))
