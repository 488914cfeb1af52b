"""CIFAR-10 as uint8 tensors in memory, batched augmentation on the training device.

Readers: the official python batches (`cifar-10-batches-py/`), an image-folder tree
(`train/<class>/*.jpg`, `test/<class>/*.jpg`), and synthetic data for tests. Decoded image folders
are cached as .npz files so that only the first run pays for JPEG decoding. After loading, the
whole split lives in one tensor; each epoch draws a permutation and random crops/flips for whole
batches at once (airbench-style), with no DataLoader and no per-image PIL work.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config, PrunelabError
from .distributed import shard

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> "Split":
        return Split(self.images[idx], self.labels[idx])

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Data:
    train: Split
    val: Split | None
    test: Split
    classes: list[str]
    source: str  # one line saying where the data came from


# ----------------------------------------------------------------------------- readers

class _ArrayUnpickler(pickle.Unpickler):
    """The official CIFAR batches are pickles. Allow only what they contain (dicts, lists, bytes and
    numpy arrays) so that a malicious file cannot run code."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
        d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
        data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)
    except Exception as e:
        raise PrunelabError(f"CIFAR batch file {path} is unreadable ({type(e).__name__}: {e}); "
                            "delete the folder and download it again with --download")
    if len(data) != len(labels):
        raise PrunelabError(f"CIFAR batch file {path} has {len(data)} images but {len(labels)} labels; download it again")
    return data, labels


def read_cifar_batches(folder: Path) -> tuple[Split, Split, list[str]]:
    """Read the official `cifar-10-batches-py` layout: data_batch_1..5 and test_batch."""
    train_files = sorted(folder.glob("data_batch_*"))
    test_file = folder / "test_batch"
    if not train_files or not test_file.is_file():
        raise PrunelabError(f"{folder} lacks data_batch_* or test_batch files; download CIFAR-10 again with --download")
    parts = [_read_batch(p) for p in train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_batch(test_file)
    classes = CIFAR10_CLASSES
    meta = folder / "batches.meta"
    if meta.is_file():
        with open(meta, "rb") as f:
            names = _ArrayUnpickler(f, encoding="bytes").load().get(b"label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return (Split(torch.from_numpy(x_train), torch.from_numpy(y_train)),
            Split(torch.from_numpy(x_test), torch.from_numpy(y_test)), classes)


def _list_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]], int]:
    """Class names, (image path, label) pairs, and the number of non-image files that were skipped.
    Files whose suffix is not an image format (README.txt, .DS_Store, ...) are skipped and counted;
    an image file that cannot be decoded stops the run, since it means the copy of the data is damaged."""
    if not root.is_dir():
        raise PrunelabError(f"image folder {root} not found; expected <data_dir>/train/<class>/*.jpg and <data_dir>/test/<class>/*.jpg")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise PrunelabError(f"{root} has no class folders; expected {root}/<class>/*.jpg")
    files, skipped = [], 0
    for label, c in enumerate(classes):
        entries = sorted(p for p in (root / c).iterdir() if p.is_file())
        found = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped += len(entries) - len(found)
        if not found:
            raise PrunelabError(f"class folder {root / c} has no images; remove it or add images")
        files += [(p, label) for p in found]
    return classes, files, skipped


def _decode_images(files: list[tuple[Path, int]], size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    labels = np.empty(len(files), dtype=np.int64)
    for i, (path, label) in enumerate(files):
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:
            raise PrunelabError(f"cannot decode image {path} ({type(e).__name__}); the data copy is damaged: "
                                "replace or delete the file")
        if arr.shape != (size, size, 3):
            raise PrunelabError(f"image {path} is {arr.shape[1]}x{arr.shape[0]}, but CIFAR-10 models here take "
                                f"{size}x{size}; resize the images to {size}x{size}")
        images[i] = arr
        labels[i] = label
    return images.transpose(0, 3, 1, 2).copy(), labels


def _cache_root(cfg_cache_dir: str) -> Path:
    if cfg_cache_dir:
        return Path(cfg_cache_dir)
    return Path(os.environ.get("PRUNELAB_CACHE", Path.home() / ".cache" / "prunelab"))


def read_image_folder_split(root: Path, cache_dir: Path | None) -> tuple[Split, list[str]]:
    """Decode every image under root/<class>/ into one uint8 tensor, with a cache keyed by the file list."""
    classes, files, skipped = _list_image_folder(root)
    if skipped:
        print(f"prunelab: skipped {skipped} non-image files under {root}", file=sys.stderr)
    key = hashlib.sha1()
    key.update(str(root.resolve()).encode())
    for p, label in files:
        st = p.stat()
        key.update(f"{p.name}:{label}:{st.st_size}:{st.st_mtime_ns}".encode())
    cache = (cache_dir / f"imagefolder-{key.hexdigest()[:16]}.npz") if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache) as z:
                images, labels = z["images"], z["labels"]
            if len(labels) == len(files):
                return Split(torch.from_numpy(images), torch.from_numpy(labels)), classes
        except Exception:
            pass  # a damaged cache is rebuilt below
    images, labels = _decode_images(files)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez(tmp, images=images, labels=labels)
            os.replace(tmp, cache)
        except OSError:
            pass  # a cache we cannot write only costs time
    return Split(torch.from_numpy(images), torch.from_numpy(labels)), classes


def make_synthetic(n_train: int, n_test: int, seed: int = 0, num_classes: int = 10, size: int = 32):
    """Learnable random data: each class has its own colour pattern, plus noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, 3, size, size, generator=g) * 255

    def draw(n):
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.randn(n, 3, size, size, generator=g) * 40
        return Split((prototypes[labels] + noise).clamp(0, 255).to(torch.uint8), labels)

    return draw(n_train), draw(n_test), [f"class{i}" for i in range(num_classes)]


def detect_format(data_dir: Path) -> str:
    if (data_dir / "cifar-10-batches-py").is_dir() or (data_dir / "data_batch_1").is_file():
        return "cifar-batches"
    if (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        return "image-folder"
    return ""


def load_data(cfg: Config) -> Data:
    """Load, subset and split CIFAR-10 as the config says. Raises PrunelabError on bad data."""
    fmt = cfg.data_format
    data_dir = Path(cfg.data_dir)
    if fmt == "synthetic":
        n = cfg.synthetic_size
        train, test, classes = make_synthetic(n, max(n // 4, 10), seed=cfg.seed)
        source = f"synthetic ({n} train / {len(test)} test images)"
    else:
        if fmt == "auto":
            fmt = detect_format(data_dir)
        if not fmt and cfg.download:
            fmt = "cifar-batches"
        if fmt == "cifar-batches":
            folder = data_dir / "cifar-10-batches-py" if not (data_dir / "data_batch_1").is_file() else data_dir
            if not folder.is_dir():
                if not cfg.download:
                    raise PrunelabError(f"{folder} not found; pass --download to fetch CIFAR-10, or point --data-dir at it")
                download_cifar10(data_dir)
            train, test, classes = read_cifar_batches(folder)
            source = f"CIFAR-10 python batches in {folder}"
        elif fmt == "image-folder":
            cache = _cache_root(cfg.cache_dir)
            train, classes = read_image_folder_split(data_dir / "train", cache)
            test, test_classes = read_image_folder_split(data_dir / "test", cache)
            if test_classes != classes:
                raise PrunelabError(f"{data_dir}/train and {data_dir}/test have different class folders; make them match")
            source = f"image folders in {data_dir}"
        elif not data_dir.exists():
            raise PrunelabError(f"data folder '{data_dir}' does not exist; pass --data-dir pointing at CIFAR-10 "
                                "(cifar-10-batches-py/ or train/ and test/ image folders), or --download")
        else:
            raise PrunelabError(f"data folder '{data_dir}' holds neither cifar-10-batches-py/ nor train/ and test/ "
                                "image folders; point --data-dir at one of them, or pass --download")
    if len(classes) < 2:
        raise PrunelabError(f"the data has {len(classes)} class; at least 2 are needed")
    for name, split in (("train", train), ("test", test)):
        if len(split) == 0:
            raise PrunelabError(f"the {name} split of {source} is empty; point --data-dir at complete data")
        if int(split.labels.min()) < 0 or int(split.labels.max()) >= len(classes):
            raise PrunelabError(f"{name} labels run from {int(split.labels.min())} to {int(split.labels.max())} but there "
                                f"are {len(classes)} classes; the files are not CIFAR-10 (or are damaged)")

    g = torch.Generator().manual_seed(cfg.seed)
    val = None
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise PrunelabError(f"val_size {cfg.val_size} leaves no training images (train has {len(train)}); lower it")
        perm = torch.randperm(len(train), generator=g)
        val, train = train.subset(perm[:cfg.val_size]), train.subset(perm[cfg.val_size:])
    if cfg.train_subset and cfg.train_subset < len(train):
        train = train.subset(torch.randperm(len(train), generator=g)[:cfg.train_subset])
    if cfg.test_subset and cfg.test_subset < len(test):
        test = test.subset(torch.randperm(len(test), generator=g)[:cfg.test_subset])
    return Data(train=train, val=val, test=test, classes=classes, source=source)


def download_cifar10(data_dir: Path) -> None:
    """Fetch the official archive with torchvision (checks its MD5) into data_dir/cifar-10-batches-py."""
    import torchvision
    try:
        torchvision.datasets.CIFAR10(root=str(data_dir), train=True, download=True)
    except Exception as e:
        raise PrunelabError(f"downloading CIFAR-10 into {data_dir} failed ({type(e).__name__}: {str(e)[:120]}); "
                            "without a network, point --data-dir at a local copy")


# ----------------------------------------------------------------------------- batches on the device

class Normalizer:
    """uint8 NCHW -> float, normalised, optionally channels_last; on whatever device the batch is."""

    def __init__(self, mean, std, device, channels_last: bool):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.channels_last = channels_last

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = (x_uint8.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (torchvision RandomCrop(size, padding)) and horizontal flip, for a
    whole uint8 batch at once. Random numbers come from `generator` (CPU) so runs are reproducible."""
    n, _, h, w = images.shape
    if padding:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # n x h x 1
        cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # n x 1 x w
        batch = torch.arange(n, device=images.device)[:, None, None]
        images = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # n x 3 x h x w
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(mask[:, None, None, None], images.flip(3), images)
    return images


def train_batches(split: Split, batch_size: int, generator: torch.Generator, padding: int, flip: bool,
                  with_index: bool = False):
    """One epoch: shuffled batches of augmented uint8 images (on the split's device) and labels (and, with
    `with_index`, the images' indices in `split`). Under torchrun every rank draws the same permutation and
    keeps its own shard of it (DistributedSampler's rule)."""
    perm = shard(torch.randperm(len(split), generator=generator)).to(split.labels.device)
    for start in range(0, len(perm), batch_size):
        idx = perm[start:start + batch_size]
        batch = augment(split.images[idx], padding, flip, generator), split.labels[idx]
        yield (*batch, idx) if with_index else batch


def eval_batches(split: Split, batch_size: int):
    for start in range(0, len(split), batch_size):
        yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
