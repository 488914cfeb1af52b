"""Image data for training and evaluation: uint8 batches, augmented on the training device.

Readers: the official CIFAR-10/100 python batches, an image-folder tree (`train/<class>/*.jpg`,
`test/<class>/*.jpg`) of any image size (resized and centre-cropped to `image_size`), and synthetic data
for tests. Two ways to hold a split, with the same batches:
- `Split` (the default whenever the decoded images fit `memory_budget_gb`): the whole split in one uint8
  tensor; decoded image folders are cached as .npz files so that only the first run pays for decoding;
- `FileSplit` (image folders larger than the budget): the files stay on disk and DataLoader workers
  decode each batch with the same function.
Each epoch draws one permutation and then random crops/flips for whole batches at once on the training
device (airbench-style), so both ways yield identical batches for the same seed.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config

from .errors import PrunelabError
from .files import exclusive, write_atomic
from .distributed import shard, shard_length
from .models import InputSpec, pretrained_normalization

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class Split:
    """A split held in memory: uint8 images N x 3 x S x S and int64 labels N, on one device. A subset keeps the
    tensor of the split it was drawn from and the rows it holds (`rows`), so that drawing a validation split, a probe's
    images or a rank's shard costs no copy of the images (20,000 images are 3 GB at 224 px); `images` gathers them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None = None):
        self.source, self.labels, self.rows = images, labels, rows  # rows of `source` in order; None: all of them

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def side(self) -> int:
        return int(self.source.shape[-1])

    @property
    def images(self) -> torch.Tensor:
        """The split's images as one tensor (a copy for a subset)."""
        return self.source if self.rows is None else self.source[self.rows]

    def _rows(self, idx):
        return idx if self.rows is None else self.rows[idx]

    def subset(self, idx) -> "Split":
        """The images at `idx` (indices, or a boolean mask over the split), in that order; no copy of the images."""
        idx = torch.as_tensor(idx, device=self.labels.device)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().squeeze(1)
        return Split(self.source, self.labels[idx], self._rows(idx))

    def to(self, device) -> "Split":
        """On `device`: this split itself where it is there already (a Split is never changed in place)."""
        if self.source.device == torch.empty(0, device=device).device:
            return self
        return Split(self.images.to(device), self.labels.to(device))  # a subset moves its own rows only

    def batches(self, index_batches):
        """(images, labels) for each index tensor or slice of `index_batches`, in order."""
        for idx in index_batches:
            yield self.source[self._rows(idx)], self.labels[idx]


class _ImageFiles(torch.utils.data.Dataset):
    """Image i of `files`, decoded as the in-memory path decodes it: uint8 3 x S x S."""

    def __init__(self, files: list, size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        arr, _ = _decode_one(self.files[i], self.size)
        if self.size == 0 or arr.shape[:2] != (self.size, self.size):
            raise PrunelabError(f"image {self.files[i]} is {arr.shape[1]}x{arr.shape[0]}, not {self.size}x{self.size}; "
                                "pass --image-size N to resize every image to N x N")
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


@dataclass
class FileSplit:
    """A split that stays on disk: image files and their labels (on the CPU). Batches are decoded by
    `workers` DataLoader processes (torchvision's image-folder loader: PIL) and moved to `device`."""
    files: list
    labels: torch.Tensor
    size: int
    workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def side(self) -> int:
        return self.size

    def subset(self, idx: torch.Tensor) -> "FileSplit":
        idx = idx.cpu()
        return FileSplit([self.files[i] for i in idx.tolist()], self.labels[idx], self.size, self.workers, self.device)

    def to(self, device) -> "FileSplit":
        return FileSplit(self.files, self.labels, self.size, self.workers, torch.device(device))

    def batches(self, index_batches):
        lists = [list(range(len(self))[i]) if isinstance(i, slice) else i.cpu().tolist() for i in index_batches]
        loader = torch.utils.data.DataLoader(_ImageFiles(self.files, self.size), batch_sampler=lists,
                                             num_workers=self.workers, pin_memory=self.device.type == "cuda")
        try:
            for idx, images in zip(lists, loader):
                yield images.to(self.device, non_blocking=True), self.labels[idx].to(self.device)
        except PrunelabError as e:  # raised in a worker, it comes back with the worker's traceback: keep our line
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            raise PrunelabError(lines[-1].split("PrunelabError: ", 1)[-1] if lines else str(e)) from None


def resolve_normalization(value: list, which: int, stats: tuple | None, weights: tuple | None = None) -> list[float]:
    """Numbers as given, a named set (cifar10, imagenet), auto: `stats` (channel_stats of the training split), or
    pretrained: `weights` (the --pretrained weights' mean and std)."""
    from .config import NORMALIZATIONS
    if len(value) == 1 and isinstance(value[0], str):
        if value[0] == "pretrained":
            if weights is None:
                raise PrunelabError("mean/std 'pretrained' needs --pretrained")
            return [float(v) for v in weights[which]]
        if value[0] == "auto":
            if stats is None:
                raise PrunelabError("mean/std 'auto' needs training data to compute them on")
            return [round(float(v), 4) for v in stats[which]]
        return list(NORMALIZATIONS[value[0]][which])
    return [float(v) for v in value]


def channel_stats(split, max_images: int = 20000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (0-1 scale) over up to `max_images` images spread evenly over the split
    (image folders are sorted by class: the first images would be of a few classes only)."""
    n = min(len(split), max_images)
    idx = torch.linspace(0, len(split) - 1, n).round().long().to(split.labels.device)
    total, squares, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for images, _ in split.batches([idx[i:i + 500] for i in range(0, n, 500)]):
        x = images.cpu().double() / 255
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
        count += x.numel() // 3
    mean = total / count
    return mean, ((squares / count - mean ** 2) * count / max(count - 1, 1)).clamp_min(0).sqrt()


@dataclass
class Data:
    train: Split | FileSplit
    val: Split | FileSplit | None
    test: Split | FileSplit
    classes: list[str]
    source: str  # one line saying where the data came from
    train_available: int = 0  # images in the training split before the validation split and subsets were drawn
    test_available: int = 0  # images in the test split before the subset was drawn
    inputs: InputSpec | None = None


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
    except (pickle.UnpicklingError, EOFError, OSError, KeyError, AttributeError, TypeError, ValueError) as e:
        raise PrunelabError(f"CIFAR batch file {path} is unreadable ({type(e).__name__}: {e}); "
                            "delete the folder and download it again with --download")
    if len(data) != len(labels):
        raise PrunelabError(f"CIFAR batch file {path} has {len(data)} images but {len(labels)} labels; download it again")
    return data, labels


def read_cifar_batches(folder: Path) -> tuple[Split, Split, list[str]]:
    """Read the official python layouts: CIFAR-10's `cifar-10-batches-py` (data_batch_1..5, test_batch,
    batches.meta) or CIFAR-100's `cifar-100-python` (train, test, meta; the 100 fine labels)."""
    cifar100 = (folder / "train").is_file() and (folder / "test").is_file()
    train_files = [folder / "train"] if cifar100 else sorted(folder.glob("data_batch_*"))
    test_file = folder / ("test" if cifar100 else "test_batch")
    if not train_files or not test_file.is_file():
        raise PrunelabError(f"{folder} lacks data_batch_* and test_batch (CIFAR-10) or train and test (CIFAR-100) "
                            "files; download the data set again")
    parts = [_read_batch(p) for p in train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_batch(test_file)
    classes = CIFAR10_CLASSES if not cifar100 else [f"class{i}" for i in range(100)]
    meta = folder / ("meta" if cifar100 else "batches.meta")
    if meta.is_file():
        with open(meta, "rb") as f:
            names = _ArrayUnpickler(f, encoding="bytes").load().get(b"fine_label_names" if cifar100 else b"label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return (Split(torch.from_numpy(x_train), torch.from_numpy(y_train)),
            Split(torch.from_numpy(x_test), torch.from_numpy(y_test)), classes)


def _list_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]], int]:
    """Class names, (image path, label) pairs, and the number of non-image files that were skipped, found
    by torchvision's own image-folder rules (find_classes, make_dataset). Files whose suffix is not an image
    format (README.txt, .DS_Store, ...) are skipped and counted; an image file that cannot be decoded stops
    the run, since it means the copy of the data is damaged."""
    from torchvision.datasets.folder import find_classes, make_dataset

    if not root.is_dir():
        raise PrunelabError(f"image folder {root} not found; expected <data_dir>/train/<class>/*.jpg and <data_dir>/test/<class>/*.jpg")
    try:
        classes, class_to_idx = find_classes(str(root))
    except FileNotFoundError:
        raise PrunelabError(f"{root} has no class folders; expected {root}/<class>/*.jpg")
    classes = [c for c in classes if not c.startswith(".")]
    if not classes:  # only hidden folders (.ipynb_checkpoints, .cache): torchvision would fail further on
        raise PrunelabError(f"{root} has no class folders (only hidden ones); expected {root}/<class>/*.jpg")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    files = [(Path(p), label) for p, label in make_dataset(str(root), class_to_idx, extensions=tuple(IMAGE_SUFFIXES),
                                                            allow_empty=True)]
    counts = np.bincount([label for _, label in files], minlength=len(classes))
    for c, count in zip(classes, counts):
        if count == 0:
            raise PrunelabError(f"class folder {root / c} has no images; remove it or add images")
    every = sum(len(names) for c in classes for _, _, names in os.walk(root / c))  # (no stat per file)
    return classes, files, every - len(files)


# An image this many times smaller than --image-size would be mostly interpolation: refused, so the user hears of it.
MAX_UPSCALE = 2.0


def _decode_one(path: Path, size: int = 0) -> tuple[np.ndarray, bool]:
    """One image as uint8 H x W x 3 (RGB) and whether it was grayscale or palette. size S > 0: the shorter
    side is resized to S (bilinear, antialiased), then the centre S x S is cropped, as torchvision's
    Resize(S) + CenterCrop(S); images more than MAX_UPSCALE times smaller than S are refused."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            gray = im.mode in ("L", "LA", "I", "I;16", "1", "P") and len(im.getbands()) < 3
            im = im.convert("RGB")
            w, h = im.size
            if size:
                _check_size(path, w, h, size)
                if (w, h) != (size, size):
                    scale = size / min(w, h)
                    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                                   Image.Resampling.BILINEAR, reducing_gap=None)
                    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
                    im = im.crop((left, top, left + size, top + size))
            return np.asarray(im), gray
    except PrunelabError:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise PrunelabError(f"cannot decode image {path} ({type(e).__name__}); the data copy is damaged: "
                            "replace or delete the file")


def _check_size(path: Path, w: int, h: int, size: int) -> None:
    if min(w, h) * MAX_UPSCALE < size:
        raise PrunelabError(f"image {path} is {w}x{h}, more than {MAX_UPSCALE:g}x smaller than "
                            f"--image-size {size}; lower --image-size or use larger images")


def _decode_images(files: list[tuple[Path, int]], size: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Decode to one uint8 N x 3 x S x S array (written in place: no second copy). size 0: every image must
    already be square and of one size. Grayscale and palette images become RGB; their count is returned."""
    images, labels, gray = None, np.empty(len(files), dtype=np.int64), 0
    for i, (path, label) in enumerate(files):
        arr, was_gray = _decode_one(path, size)
        gray += was_gray
        if images is None:
            side = size or arr.shape[0]
            if arr.shape[0] != arr.shape[1] and not size:
                raise PrunelabError(f"image {path} is {arr.shape[1]}x{arr.shape[0]}, not square; pass --image-size N "
                                    "to resize and centre-crop every image to N x N")
            images = np.empty((len(files), 3, side, side), dtype=np.uint8)
        if arr.shape != (images.shape[2], images.shape[3], 3):
            raise PrunelabError(f"image {path} is {arr.shape[1]}x{arr.shape[0]}, but the first image is "
                                f"{images.shape[3]}x{images.shape[2]}; pass --image-size N to resize every image to N x N")
        images[i] = arr.transpose(2, 0, 1)
        labels[i] = label
    return images, labels, gray


def _scan_headers(files: list[tuple[Path, int]], size: int) -> tuple[int, int]:
    """Before streaming: read every image's header (not its pixels) to refuse unreadable files and sizes that
    would not work now rather than mid-epoch. Returns the side the images will have and the grayscale count."""
    from PIL import Image

    side, gray = size, 0
    for path, _ in files:
        try:
            with Image.open(path) as im:
                w, h = im.size
                gray += im.mode in ("L", "LA", "I", "I;16", "1", "P") and len(im.getbands()) < 3
        except (OSError, ValueError, SyntaxError) as e:
            raise PrunelabError(f"cannot decode image {path} ({type(e).__name__}); the data copy is damaged: "
                                "replace or delete the file")
        if size:
            _check_size(path, w, h, size)
        else:
            side = side or w
            if (w, h) != (side, side):
                raise PrunelabError(f"image {path} is {w}x{h}, but the first image is {side}x{side}; pass "
                                    "--image-size N to resize every image to N x N")
    return side, gray


def memory_budget_bytes(cfg: Config) -> int:
    """memory_budget_gb, or half of this machine's RAM."""
    if cfg.memory_budget_gb:
        return int(cfg.memory_budget_gb * 1e9)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): assume 8 GB of RAM
        return 4 * 10 ** 9


def _workers(cfg: Config) -> int:
    return min(os.cpu_count() or 1, 8) if cfg.workers < 0 else cfg.workers


def cache_root(cfg_cache_dir: str) -> Path:
    """Where decoded image folders and teacher outputs are cached: --cache-dir, $PRUNELAB_CACHE or ~/.cache/prunelab."""
    if cfg_cache_dir:
        return Path(cfg_cache_dir)
    return Path(os.environ.get("PRUNELAB_CACHE", Path.home() / ".cache" / "prunelab"))


def read_image_folder_split(root: Path, cache_dir: Path | None, size: int = 0, listing=None) -> tuple[Split, list[str]]:
    """Decode every image under root/<class>/ into one uint8 tensor (at size x size, see _decode_images), with a
    cache keyed by the file list and the size."""
    classes, files, skipped = listing or _list_image_folder(root)
    if skipped and listing is None:
        print(f"prunelab: skipped {skipped} non-image files under {root}", file=sys.stderr)
    key = hashlib.sha1()
    key.update(str(root.resolve()).encode())
    if size:  # (no size: the key of earlier versions, so their caches stay valid)
        key.update(f"size={size}".encode())
    for p, label in files:
        st = p.stat()
        key.update(f"{p.name}:{label}:{st.st_size}:{st.st_mtime_ns}".encode())
    cache = (cache_dir / f"imagefolder-{key.hexdigest()[:16]}.npz") if cache_dir else None
    if cache is None:
        return _decoded(root, files, size), classes
    split = _read_decoded(cache, len(files), say_damaged=False)  # a finished cache needs no lock: it is renamed in
    if split is None:
        # runs started together (a sweep plan's jobs, torchrun's ranks) take turns: the first decodes and writes the
        # cache, the others wait at the lock and read it
        with exclusive(cache.parent / f".{cache.stem}.lock", on_wait=lambda: print(
                f"prunelab: waiting for another run that is decoding {root} into {cache}", file=sys.stderr)):
            split = _read_decoded(cache, len(files))
            if split is None:
                split = _decoded(root, files, size, cache)
    return split, classes


def _read_decoded(cache: Path, n_files: int, say_damaged: bool = True) -> Split | None:
    """The decoded-image cache written by _decoded, or None where it is missing, unreadable or of another file
    count."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as z:
            images, labels = z["images"], z["labels"]
        if len(labels) == n_files:
            return Split(torch.from_numpy(images), torch.from_numpy(labels))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # only a cache: rebuilt by the caller
        if say_damaged:
            print(f"prunelab: decoded-image cache {cache} is unreadable ({type(e).__name__}); rebuilding it",
                  file=sys.stderr)
    return None


def _decoded(root: Path, files: list, size: int = 0, cache: Path | None = None) -> Split:
    """Decode files (see _decode_images) and, given a cache path, write them there atomically. This function owns
    the cache's format: an .npz of `images` (N x 3 x H x W uint8) and `labels` (N int64)."""
    images, labels, gray = _decode_images(files, size)
    if gray:
        print(f"prunelab: {gray} grayscale or palette images under {root} were converted to RGB", file=sys.stderr)
    if cache is not None:
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a path
                np.savez(f, images=images, labels=labels)
        try:
            write_atomic(cache, save)
        except OSError:
            pass  # a cache we cannot write only costs time
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def _resize(images: torch.Tensor, size: int, chunk: int = 1000) -> torch.Tensor:
    """Square uint8 images resized to size x size (bilinear, antialiased), in chunks to bound memory."""
    out = [F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
           for i in range(0, len(images), chunk)]
    return torch.cat(out)


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
    if any((data_dir / d).is_dir() for d in ("cifar-10-batches-py", "cifar-100-python")) or \
            (data_dir / "data_batch_1").is_file() or ((data_dir / "train").is_file() and (data_dir / "meta").is_file()):
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
        train, test, classes = make_synthetic(n, max(n // 4, 10), seed=cfg.seed, size=cfg.image_size or 32,
                                              num_classes=cfg.num_classes or 10)
        source = f"synthetic ({n} train / {len(test)} test images)"
    else:
        if fmt == "auto":
            fmt = detect_format(data_dir)
        if not fmt and cfg.download:
            fmt = "cifar-batches"
        if fmt == "cifar-batches":
            folder = next((data_dir / d for d in ("cifar-10-batches-py", "cifar-100-python") if (data_dir / d).is_dir()),
                          data_dir if any((data_dir / f).is_file() for f in ("data_batch_1", "train"))
                          else data_dir / "cifar-10-batches-py")
            if not folder.is_dir():
                if not cfg.download:
                    raise PrunelabError(f"{folder} not found; pass --download to fetch CIFAR-10, or point --data-dir at it")
                download_cifar10(data_dir)
            train, test, classes = read_cifar_batches(folder)
            source = f"CIFAR-{len(classes)} python batches in {folder}"
        elif fmt == "image-folder":
            train, test, classes, source = read_image_folders(data_dir, cfg)
        elif not data_dir.exists():
            raise PrunelabError(f"data folder '{data_dir}' does not exist; pass --data-dir pointing at CIFAR-10 "
                                "(cifar-10-batches-py/ or train/ and test/ image folders), or --download")
        else:
            raise PrunelabError(f"data folder '{data_dir}' holds neither cifar-10-batches-py/ nor train/ and test/ "
                                "image folders; point --data-dir at one of them, or pass --download")
    if len(classes) < 2:
        raise PrunelabError(f"the data has {len(classes)} class; at least 2 are needed")
    if cfg.image_size and train.side != cfg.image_size:  # CIFAR batches, synthetic: resize the tensors
        train, test = (Split(_resize(s.images, cfg.image_size), s.labels) for s in (train, test))
    for name, split in (("train", train), ("test", test)):
        if len(split) == 0:
            raise PrunelabError(f"the {name} split of {source} is empty; point --data-dir at complete data")
        if int(split.labels.min()) < 0 or int(split.labels.max()) >= len(classes):
            raise PrunelabError(f"{name} labels run from {int(split.labels.min())} to {int(split.labels.max())} but there "
                                f"are {len(classes)} classes; the files are not CIFAR-10 (or are damaged)")

    train_available, test_available = len(train), len(test)
    g = torch.Generator().manual_seed(cfg.seed)
    val = None
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise PrunelabError(f"val_size {cfg.val_size} leaves no training images (train has {len(train)}); lower it")
        perm = torch.randperm(len(train), generator=g)  # (drawn with the seed either way: the later draws stay)
        if cfg.val_seed >= 0:
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.val_seed))
        val, train = train.subset(perm[:cfg.val_size]), train.subset(perm[cfg.val_size:])
    if cfg.train_subset and cfg.train_subset < len(train):  # a part of the images: copied, the rest let go
        train = _compact(train.subset(torch.randperm(len(train), generator=g)[:cfg.train_subset]))
        val = _compact(val) if val is not None else None
    if cfg.test_subset and cfg.test_subset < len(test):  # not with the seed: seeds are compared on the same images
        test = _compact(test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[
            :cfg.test_subset]))
    stats = channel_stats(train) if ["auto"] in (cfg.mean, cfg.std) else None
    weights = pretrained_normalization(cfg.model, cfg.pretrained) if cfg.pretrained else None
    inputs = InputSpec(train.side, tuple(resolve_normalization(cfg.mean, 0, stats, weights)),
                       tuple(resolve_normalization(cfg.std, 1, stats, weights)), tuple(classes))
    return Data(train=train, val=val, test=test, classes=classes, source=source, train_available=train_available,
                test_available=test_available, inputs=inputs)


def _compact(split):
    """An in-memory subset as a split of its own (a copy of its rows), so that the images it left out can be freed."""
    return Split(split.images, split.labels) if isinstance(split, Split) and split.rows is not None else split


def fingerprint(split) -> str:
    """Which images a split holds, as 16 hex digits: sha256 of its labels in order. Another draw of a subset, other
    data or another order changes it; decoding (memory or stream) does not."""
    import hashlib
    return hashlib.sha256(split.labels.cpu().to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def read_image_folders(data_dir: Path, cfg: Config):
    """train/ and test/ image folders: in memory when their decoded images fit the memory budget (or
    data_loading says memory), else as FileSplits that stream from disk. Returns train, test, classes, source."""
    listings = {}
    for name in ("train", "test"):
        listings[name] = _list_image_folder(data_dir / name)
        if listings[name][2]:
            print(f"prunelab: skipped {listings[name][2]} non-image files under {data_dir / name}", file=sys.stderr)
    classes = listings["train"][0]
    if listings["test"][0] != classes:
        raise PrunelabError(f"{data_dir}/train and {data_dir}/test have different class folders; make them match")
    files = listings["train"][1] + listings["test"][1]
    side = cfg.image_size
    if not side:
        from PIL import Image
        try:
            with Image.open(files[0][0]) as im:
                side = im.size[0]
        except (OSError, ValueError, SyntaxError) as e:
            raise PrunelabError(f"cannot decode image {files[0][0]} ({type(e).__name__}); the data copy is damaged: "
                                "replace or delete the file")
    decoded, budget = len(files) * 3 * side * side, memory_budget_bytes(cfg)
    if cfg.data_loading == "memory" or (cfg.data_loading == "auto" and decoded <= budget):
        cache = cache_root(cfg.cache_dir)
        train, _ = read_image_folder_split(data_dir / "train", cache, cfg.image_size, listings["train"])
        test, _ = read_image_folder_split(data_dir / "test", cache, cfg.image_size, listings["test"])
        return train, test, classes, f"image folders in {data_dir}"
    side, gray = _scan_headers(files, cfg.image_size)
    if gray:
        print(f"prunelab: {gray} grayscale or palette images under {data_dir} will be converted to RGB", file=sys.stderr)
    workers = _workers(cfg)
    train, test = (FileSplit([p for p, _ in listings[n][1]], torch.tensor([c for _, c in listings[n][1]]), side, workers)
                   for n in ("train", "test"))
    why = "as asked" if cfg.data_loading == "stream" else f"{decoded / 1e9:.1f} GB decoded > memory budget {budget / 1e9:.1f} GB"
    return train, test, classes, f"image folders in {data_dir}, streamed from disk ({why}; {workers} workers)"


def download_cifar10(data_dir: Path) -> None:
    """Fetch the official archive with torchvision (checks its MD5) into data_dir/cifar-10-batches-py."""
    import torchvision
    import urllib.error
    try:
        torchvision.datasets.CIFAR10(root=str(data_dir), train=True, download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
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
        x = (x_uint8.float() - self.mean) / self.std  # (augmented batches come out NHWC-strided: make it explicit)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (torchvision RandomCrop(size, padding)) and horizontal flip, for a
    whole uint8 batch at once. Random numbers come from `generator` (CPU) so runs are reproducible."""
    n = images.shape[0]
    if padding:
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        images = _crop(images, dy, dx, padding)
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(mask[:, None, None, None], images.flip(3), images)
    return images


def _crop(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, padding: int) -> torch.Tensor:
    """Each image zero-padded by `padding` on every side, then cropped back to its size at offset (dy, dx)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # n x h x 1
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # n x 1 x w
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # n x 3 x h x w


def draw_views(n: int, k: int, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """`k` fixed pad-and-crop views of each of `n` images, as an n x k x 3 integer tensor of (dy, dx, flipped): the
    views whose teacher outputs replayed distillation computes once and trains on (--distill-views). The k views of
    an image are different ones (k <= distinct_views()): with flips only (padding 0) and k = 2, every image has both
    of its views, and the replayed targets are exactly the teacher's on what training shows."""
    side, distinct = 2 * padding + 1, distinct_views(padding, flip)
    if not 0 < k <= distinct:
        raise ValueError(f"{k} views: an image has {distinct} different views with padding {padding}")
    # a random choice of k of each image's views, in their fixed order (training draws among them), so that k =
    # distinct gives every seed the same views and teacher outputs (train.teacher_targets' cache); in row blocks, so
    # a million images need no n x distinct matrix
    code = torch.cat([torch.rand(min(16384, n - i), distinct, generator=generator).argsort(1)[:, :k].sort(1).values
                      for i in range(0, n, 16384)]) if n else torch.empty(0, k, dtype=torch.long)
    dy, dx, flipped = code % side, code // side % side, code // (side * side)
    return torch.stack([dy, dx, flipped], 2).to(torch.int16)  # (int16: 6 bytes a view, for millions of images)


def view_padding(kind: str, padding: int) -> int:
    """The crop padding of replayed views under augmentation `kind`: the pad-and-crop padding, or none under none."""
    return padding if kind == "pad-crop" else 0


def distinct_views(padding: int, flip: bool) -> int:
    """How many different pad-and-crop views (and mirrors) an image has."""
    return (2 * padding + 1) ** 2 * (2 if flip else 1)


def apply_views(images: torch.Tensor, views: torch.Tensor, padding: int) -> torch.Tensor:
    """`images` cropped and flipped as `views` (one row of draw_views() per image: dy, dx, flipped) say."""
    views = views.to(images.device, torch.long)
    if padding:
        images = _crop(images, views[:, 0], views[:, 1], padding)
    return torch.where(views[:, 2, None, None, None].bool(), images.flip(3), images)


def cutout(x: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017) for a whole normalised batch: in each image one square of `side` pixels,
    centred on a uniformly drawn pixel and clipped at the border, set to 0 (the data's mean colour, after
    normalisation). Random numbers come from `generator` (CPU)."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), generator=generator).to(x.device)
    cx = torch.randint(0, w, (n, 1), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device) - cy + side // 2  # n x h: in the square where in [0, side)
    cols = torch.arange(w, device=x.device) - cx + side // 2
    inside = ((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None, :]
    return x * (~inside)[:, None].to(x.dtype)


def random_resized_crop(images: torch.Tensor, generator: torch.Generator, scale=(0.25, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's RandomResizedCrop for a whole uint8 batch at once: each image gets its own random box (area
    share in `scale`, aspect ratio in `ratio`, log-uniform), resized back to the full size by bilinear sampling
    (torchvision.ops.roi_align). For images larger than about 64 px, where pad-and-crop moves too little."""
    from torchvision.ops import roi_align

    n, _, h, w = images.shape
    area = torch.empty(n).uniform_(*scale, generator=generator) * h * w
    log_r = torch.empty(n).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])), generator=generator)
    aspect = torch.exp(log_r)
    bw = torch.sqrt(area * aspect).clamp(8, w)
    bh = torch.sqrt(area / aspect).clamp(8, h)
    x0 = torch.rand(n, generator=generator) * (w - bw)
    y0 = torch.rand(n, generator=generator) * (h - bh)
    boxes = torch.stack([torch.arange(n, dtype=torch.float), x0, y0, x0 + bw, y0 + bh], 1).to(images.device)
    out = roi_align(images.float(), boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def augment_batch(images: torch.Tensor, kind: str, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """The training augmentation `kind` (pad-crop | resized-crop | none), then the optional horizontal flip."""
    if kind == "resized-crop":
        return augment(random_resized_crop(images, generator), 0, flip, generator)
    return augment(images, padding if kind == "pad-crop" else 0, flip, generator)


def augmentation_for(kind: str, image_side: int) -> str:
    """auto: pad-and-crop (the seed's) for images up to 64 px, random-resized-crop above."""
    return ("pad-crop" if image_side <= 64 else "resized-crop") if kind == "auto" else kind


def train_batches(split: Split | FileSplit, batch_size: int, generator: torch.Generator, padding: int, flip: bool,
                  with_index: bool = False, kind: str = "pad-crop", views: torch.Tensor | None = None):
    """One epoch: shuffled batches of augmented uint8 images (on the split's device) and labels (and, with
    `with_index`, the images' indices in `split`). Under torchrun every rank draws the same permutation and
    keeps its own shard of it (DistributedSampler's rule). The random numbers are drawn in the same order
    whether the split is in memory or streamed, so both give the same batches.
    With `views` (draw_views() for the split's images, n x k x 3), every image is shown as one of its k views, drawn
    at random each time, instead of a fresh crop, and the index yielded is image * k + view."""
    perm = shard(torch.randperm(len(split), generator=generator)).to(split.labels.device)
    index_batches = [perm[start:start + batch_size] for start in range(0, len(perm), batch_size)]
    for idx, (images, labels) in zip(index_batches, split.batches(index_batches)):
        if views is None:
            images = augment_batch(images, kind, padding, flip, generator)
        else:
            k = views.shape[1]
            v = torch.randint(0, k, (len(idx),), generator=generator).to(idx.device)
            images = apply_views(images, views[idx.to(views.device), v.to(views.device)], view_padding(kind, padding))
            idx = idx * k + v
        yield (images, labels, idx) if with_index else (images, labels)


def batches_per_epoch(n_images: int, batch_size: int) -> int:
    """Batches one epoch of train_batches() yields on this rank (its shard of the permutation). The unit of
    the per-batch learning-rate schedule, of its fast-forward on resume, and of the progress bar."""
    return -(-shard_length(n_images) // batch_size)


def eval_batches(split: Split | FileSplit, batch_size: int):
    """The split in order, in batches of (uint8 images, labels)."""
    return split.batches([slice(start, start + batch_size) for start in range(0, len(split), batch_size)])
