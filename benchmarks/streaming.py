"""Memory and speed of the two ways prunelab holds an image folder: in memory, or streamed from disk.

Builds image folders of 224-px JPEGs (real CIFAR-10 images upscaled to 256 x 256, so they compress like
photos) at two sizes, then in a fresh process per case loads the folder with `--image-size 224` and
reads one augmented training epoch (no model: this measures the data path only), recording the
process's peak resident memory (its own plus its DataLoader workers'). The decoded size grows with
the folder; the streamed peak should not. Prints a table and writes JSON.

    python benchmarks/streaming.py --data-dir ../shared/data/cifar10-jpeg --sizes 1000 4000
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from prunelab.measurement import machine


def build_folder(src: Path, dst: Path, n_train: int) -> None:
    """n_train training and n_train // 10 test images, 256 x 256 JPEG, from the CIFAR-10 copy's classes."""
    classes = sorted(p.name for p in (src / "train").iterdir() if p.is_dir())
    for split, n in (("train", n_train), ("test", max(n_train // 10, len(classes)))):
        per_class = n // len(classes)
        for c in classes:
            (dst / split / c).mkdir(parents=True, exist_ok=True)
            for i, f in enumerate(sorted((src / split / c).iterdir())[:per_class]):
                with Image.open(f) as im:
                    im.convert("RGB").resize((256, 256), Image.Resampling.BICUBIC).save(
                        dst / split / c / f"{i:05d}.jpg", quality=90)


def one_case(folder: str, loading: str, workers: int) -> dict:
    """Runs in a child process: load, one training epoch of augmented batches, peak memory."""
    import torch

    from prunelab.config import make_config
    from prunelab.data import load_data, train_batches
    torch.set_num_threads(1)
    start = time.perf_counter()
    cfg = make_config("seed", {"data_dir": folder, "image_size": 224, "data_loading": loading, "workers": workers,
                               "cache_dir": str(Path(folder) / "cache")})
    data = load_data(cfg)
    loaded = time.perf_counter() - start
    start, seen = time.perf_counter(), 0
    for images, labels in train_batches(data.train, 128, torch.Generator().manual_seed(0), 0, True, kind="resized-crop"):
        seen += len(labels)
    epoch = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"train_images": len(data.train), "test_images": len(data.test), "source": data.source,
            "load_s": round(loaded, 1), "epoch_s": round(epoch, 1), "images_per_s": round(seen / epoch, 1),
            "peak_rss_mib": round(own), "peak_worker_rss_mib": round(workers_peak)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="../shared/data/cifar10-jpeg")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000], help="training images per folder")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/streaming.json")
    ap.add_argument("--case", nargs=3, help=argparse.SUPPRESS)  # internal: folder loading workers
    args = ap.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case[0], args.case[1], int(args.case[2]))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"n{n}"
            build_folder(Path(args.data_dir), folder, n)
            for loading in ("memory", "stream"):
                out = subprocess.run([sys.executable, __file__, "--case", str(folder), loading, str(args.workers)],
                                     capture_output=True, text=True, check=True)
                row = {"folder_train_images": n, "loading": loading, **json.loads(out.stdout.splitlines()[-1])}
                row["decoded_mib"] = round((row["train_images"] + row["test_images"]) * 3 * 224 * 224 / 2 ** 20)
                rows.append(row)
                print(f"{n:>6} train images  {loading:<6}  decoded {row['decoded_mib']:>5} MiB  peak RSS "
                      f"{row['peak_rss_mib']:>5} MiB (+ workers {row['peak_worker_rss_mib']:>4} MiB)  load "
                      f"{row['load_s']:>5} s  epoch {row['epoch_s']:>5} s  {row['images_per_s']:>6} img/s", flush=True)
    result = {"machine": machine(), "workers": args.workers, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
