import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from prunelab.config import PrunelabError, make_config
from prunelab.data import augment, load_data, train_batches


def write_cifar_batches(root, n_per_batch=20, n_batches=2, seed=0):
    """Files in the official python-batches layout, written the way the official ones are (pickled dicts)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    all_x, all_y = [], []
    for name in [f"data_batch_{i + 1}" for i in range(n_batches)] + ["test_batch"]:
        x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": y, b"data": x}, f)
        all_x.append(x)
        all_y.append(y)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in "abcdefghij"]}, f)
    return all_x, all_y


def write_image_folder(root, classes=("cat", "dog", "frog"), per_class=4, size=32):
    rng = np.random.default_rng(1)
    arrays = {}
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i:04d}.png")
                arrays[(split, c, i)] = arr
    return arrays


def cfg_for(root, **kw):
    return make_config("seed", {"data_dir": str(root), **kw})


def test_official_batches_layout_is_read_with_images_and_labels_in_order(tmp_path):
    xs, ys = write_cifar_batches(tmp_path)
    data = load_data(cfg_for(tmp_path))
    assert data.train.images.shape == (40, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert torch.equal(data.train.images[0].flatten(), torch.from_numpy(xs[0][0]))
    assert torch.equal(data.train.labels[20:], torch.tensor(ys[1]))
    assert torch.equal(data.test.images.reshape(20, -1), torch.from_numpy(xs[2]))
    assert data.classes == list("abcdefghij")


def test_batch_file_with_code_in_its_pickle_is_refused(tmp_path):
    write_cifar_batches(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(PrunelabError, match="unreadable"):
        load_data(cfg_for(tmp_path))


def test_image_folder_layout_is_read_pixel_exact_with_alphabetical_labels(tmp_path):
    arrays = write_image_folder(tmp_path)
    data = load_data(cfg_for(tmp_path, cache_dir=str(tmp_path / "cache")))
    assert data.classes == ["cat", "dog", "frog"]
    assert len(data.train) == 12 and len(data.test) == 12
    assert data.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert np.array_equal(data.train.images[5].permute(1, 2, 0).numpy(), arrays[("train", "dog", 1)])
    # the second load comes from the cache and is identical
    again = load_data(cfg_for(tmp_path, cache_dir=str(tmp_path / "cache")))
    assert any((tmp_path / "cache").iterdir())
    assert torch.equal(again.train.images, data.train.images)


def test_a_corrupt_cache_is_rebuilt(tmp_path):
    write_image_folder(tmp_path)
    cfg = cfg_for(tmp_path, cache_dir=str(tmp_path / "cache"))
    first = load_data(cfg)
    for f in (tmp_path / "cache").glob("*.npz"):
        f.write_bytes(b"garbage")
    assert torch.equal(load_data(cfg).train.images, first.train.images)
    for f in (tmp_path / "cache").glob("*.npz"):  # a write cut short: a zip without its end
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert torch.equal(load_data(cfg).train.images, first.train.images)


def test_runs_started_together_decode_an_image_folder_once(tmp_path, monkeypatch, capfd):
    """A sweep plan's jobs (or torchrun's ranks) start at once on a folder not yet cached: one decodes it and writes
    the cache, the others wait at its lock and read it."""
    import threading
    import time

    from prunelab import data as data_module
    write_image_folder(tmp_path)
    cfg = cfg_for(tmp_path, cache_dir=str(tmp_path / "cache"))
    decodes, real = [], data_module._decode_images
    monkeypatch.setattr(data_module, "_decode_images",
                        lambda *a, **k: decodes.append(1) or time.sleep(1) or real(*a, **k))  # a slow decode
    loaded = []
    jobs = [threading.Thread(target=lambda: loaded.append(load_data(cfg))) for _ in range(2)]
    for job in jobs:
        job.start()
        time.sleep(0.2)
    for job in jobs:
        job.join()
    assert len(decodes) == 2  # train and test once each, not once per job
    assert "waiting for another run that is decoding" in capfd.readouterr().err  # it waited, not came late
    assert len(loaded) == 2 and torch.equal(loaded[0].train.images, loaded[1].train.images)
    assert torch.equal(loaded[0].test.labels, loaded[1].test.labels)


def test_validation_split_and_subsets_are_disjoint_and_sized(tmp_path):
    write_cifar_batches(tmp_path, n_per_batch=50)
    data = load_data(cfg_for(tmp_path, val_size=10, train_subset=30, test_subset=5))
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 5)
    train_rows = {tuple(x.flatten().tolist()) for x in data.train.images}
    assert not train_rows & {tuple(x.flatten().tolist()) for x in data.val.images}
    # a subset drawn at load is a copy of its own: the 100 images it left out are not kept alive
    assert [len(s.source) for s in (data.train, data.val, data.test)] == [30, 10, 5]
    carved = load_data(cfg_for(tmp_path, val_size=10))  # the validation carve alone: both views of one tensor
    assert len(carved.train.source) == 100 and carved.train.source is carved.val.source


def test_a_subset_holds_its_rows_without_a_copy_and_gives_the_same_batches_and_cache_key_as_a_copy():
    # a probe's 20,000 images, a validation split or a rank's shard would otherwise copy gigabytes at 224 px
    from prunelab.data import Split, eval_batches
    from prunelab.train import Trainer, targets_key
    g = torch.Generator().manual_seed(0)
    whole = Split(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(40) % 10)
    sub = whole.subset(torch.tensor([7, 3, 30, 12, 5])).subset(torch.tensor([4, 0, 2]))  # rows 5, 7, 30
    assert sub.source.untyped_storage().data_ptr() == whole.images.untyped_storage().data_ptr()
    assert sub.to("cpu") is sub
    copied = Split(whole.images[[5, 7, 30]].clone(), whole.labels[[5, 7, 30]].clone())
    assert torch.equal(sub.images, copied.images) and torch.equal(sub.labels, copied.labels)
    mask = torch.zeros(5, dtype=torch.bool)
    mask[[0, 2]] = True
    assert torch.equal(whole.subset(torch.tensor([7, 3, 30, 12, 5])).subset(mask).images, whole.images[[7, 30]])
    for (a, la), (b, lb) in zip(eval_batches(sub, 2), eval_batches(copied, 2)):
        assert torch.equal(a, b) and torch.equal(la, lb)
    trainer = Trainer.from_config(make_config("tiny", {"precision": "fp32"}), torch.device("cpu"))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    assert targets_key(teacher, sub, trainer, None) == targets_key(teacher, copied, trainer, None)
    import hashlib
    from prunelab.train import _hash_split, _hash_tensor
    by_rows, whole_tensor = hashlib.sha256(), hashlib.sha256()  # the key keeps the bytes it had when subsets copied
    _hash_split(by_rows, sub)
    _hash_tensor(whole_tensor, copied.images)
    assert by_rows.hexdigest() == whole_tensor.hexdigest()
    assert targets_key(teacher, sub, trainer, None) != targets_key(teacher, whole.subset(torch.tensor([7, 5, 30])),
                                                                   trainer, None)


def test_a_validation_seed_gives_every_seed_one_validation_split_and_the_seed_s_own_by_default(tmp_path):
    """--val-seed S: seeds 0 and 1 validate on the same images (those a dense model trained with --val-seed S left
    out) and still train in their own order; without it each seed draws its own split; --val-seed S with --seed S is
    the default split exactly, training subset included."""
    write_cifar_batches(tmp_path, n_per_batch=50)
    own = [load_data(cfg_for(tmp_path, val_size=20, train_subset=60, seed=s)) for s in (0, 1)]
    fixed = [load_data(cfg_for(tmp_path, val_size=20, train_subset=60, seed=s, val_seed=0)) for s in (0, 1)]
    assert not torch.equal(own[0].val.images, own[1].val.images)
    assert torch.equal(fixed[0].val.images, fixed[1].val.images) and torch.equal(fixed[0].val.images, own[0].val.images)
    assert torch.equal(fixed[0].train.images, own[0].train.images)
    assert not torch.equal(fixed[1].train.images, fixed[0].train.images)
    val = {tuple(x.flatten().tolist()) for x in fixed[1].val.images}
    assert not val & {tuple(x.flatten().tolist()) for x in fixed[1].train.images}
    with pytest.raises(PrunelabError, match="val_seed must be -1"):
        make_config("quick", {"val_seed": -2})


def test_every_seed_is_scored_on_the_same_test_images_but_trains_on_its_own_subset(tmp_path):
    """With test_subset, seeds must differ in training only: otherwise their spread includes the sampling of the test
    set (0.6 points at 5,000 images and 77%) and a difference between seeds or controls is measured on other images."""
    write_cifar_batches(tmp_path, n_per_batch=50)
    a, b = (load_data(cfg_for(tmp_path, train_subset=30, test_subset=20, seed=s)) for s in (0, 1))
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, b.train.images)
    assert len(a.test) == 20


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "neither"),
    (lambda p: ((p / "train" / "cat").mkdir(parents=True), (p / "test" / "cat").mkdir(parents=True)), "no images"),
    (lambda p: ((p / "train" / ".ipynb_checkpoints").mkdir(parents=True), (p / "test").mkdir()), "only hidden ones"),
])
def test_missing_empty_or_unknown_data_folders_are_named_in_the_error(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(PrunelabError, match=message):
        load_data(cfg_for(root))


def test_augmentation_keeps_shape_dtype_and_label_alignment():
    # image i is filled with the value 10 + label: any crop or flip of it may only show that value or padding
    labels = torch.arange(64) % 10
    images = (10 + labels).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).clone()
    from prunelab.data import Split
    split = Split(images, labels)
    seen = 0
    for x, y in train_batches(split, 16, torch.Generator().manual_seed(0), padding=4, flip=True):
        assert x.shape == (len(y), 3, 32, 32) and x.dtype == torch.uint8
        for img, lab in zip(x, y):
            assert set(img.unique().tolist()) <= {0, 10 + int(lab)}
            assert (img == 10 + lab).float().mean() >= (28 * 28) / (32 * 32)  # at most 4 px of padding each way
        seen += len(y)
    assert seen == 64


def test_augmentation_crops_and_flips_and_is_reproducible_from_the_generator():
    images = torch.arange(32, dtype=torch.uint8).view(1, 1, 1, 32).expand(200, 3, 32, 32).clone()
    a = augment(images, 4, True, torch.Generator().manual_seed(3))
    b = augment(images, 4, True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    first_columns = a[:, 0, 16, :].tolist()
    assert len({tuple(r) for r in first_columns}) > 10  # many different offsets/flips
    assert any(r[5] > r[6] for r in first_columns)  # some rows are mirrored


def test_augmentation_is_torchvisions_random_crop_with_padding_then_flip():
    # the batched crop and flip give exactly what RandomCrop(32, padding=4) then RandomHorizontalFlip give one image at
    # a time (zero fill), for the offsets and flips that augment() draws from its generator, in its order
    import torchvision.transforms.v2.functional as TF
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = augment(images, 4, True, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    dy, dx = torch.randint(0, 9, (48,), generator=g), torch.randint(0, 9, (48,), generator=g)
    flipped = torch.rand(48, generator=g) < 0.5
    for i, img in enumerate(images):
        want = TF.crop(TF.pad(img, [4, 4, 4, 4], fill=0), int(dy[i]), int(dx[i]), 32, 32)
        want = TF.horizontal_flip(want) if flipped[i] else want
        assert torch.equal(out[i], want), f"image {i}"
    assert 0 < int(flipped.sum()) < 48 and len(set(zip(dy.tolist(), dx.tolist()))) > 20


# ---------------------------------------------------------------- any image data (the any-model issue)

def _cifar100(root, n=6):
    import pickle
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        d = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"fine_labels": [i % 100 for i in range(n)],
             b"coarse_labels": [0] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    return root


def test_cifar100_python_layout_reads_the_fine_labels_and_their_names(tmp_path):
    data = load_data(make_config("tiny", {"data_format": "auto", "data_dir": str(_cifar100(tmp_path))}))
    assert len(data.classes) == 100 and data.classes[5] == "c5"
    assert data.train.labels.tolist() == [0, 1, 2, 3, 4, 5] and "CIFAR-100" in data.source


def _folder(root, sizes, mode="RGB"):
    from PIL import Image
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i, (w, h) in enumerate(sizes):
                Image.new(mode, (w, h), 120).save(root / split / c / f"{i}.png")
    return root


def test_images_of_any_size_are_resized_and_centre_cropped_to_image_size(tmp_path):
    root = _folder(tmp_path / "d", [(80, 60), (64, 64), (200, 120)])
    data = load_data(make_config("tiny", {"data_format": "auto", "data_dir": str(root), "image_size": 48}))
    assert data.train.images.shape == (6, 3, 48, 48) and data.inputs.image_size == 48
    with pytest.raises(PrunelabError, match="pass --image-size N"):  # mixed sizes need a size
        load_data(make_config("tiny", {"data_format": "auto", "data_dir": str(root), "cache_dir": str(tmp_path / "c"),
                                       "image_size": 0}))


def test_images_far_smaller_than_image_size_are_refused(tmp_path):
    root = _folder(tmp_path / "d", [(20, 20)])
    with pytest.raises(PrunelabError, match="more than 2x smaller than --image-size 64"):
        load_data(make_config("tiny", {"data_format": "auto", "data_dir": str(root), "image_size": 64}))


def test_grayscale_images_become_rgb_and_are_reported(tmp_path, capsys):
    root = _folder(tmp_path / "d", [(32, 32)], mode="L")
    data = load_data(make_config("tiny", {"data_format": "auto", "data_dir": str(root)}))
    assert data.train.images.shape[1] == 3
    assert "grayscale or palette images" in capsys.readouterr().err


def test_mean_and_std_by_name_or_computed_on_the_training_split():
    data = load_data(make_config("tiny", {"mean": "auto", "std": "imagenet"}))
    x = data.train.images.double() / 255
    assert data.inputs.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert data.inputs.std == (0.229, 0.224, 0.225)


def test_cifar_batches_are_resized_when_image_size_differs(tmp_path):
    data = load_data(make_config("tiny", {"data_format": "auto", "data_dir": str(_cifar100(tmp_path)),
                                          "image_size": 64}))
    assert data.train.images.shape[-2:] == (64, 64) and data.inputs.image_size == 64


def test_random_resized_crop_keeps_size_and_draws_a_different_box_per_image():
    from prunelab.data import random_resized_crop
    g = torch.Generator().manual_seed(0)
    images = torch.arange(96 * 96, dtype=torch.float).view(1, 1, 96, 96).expand(8, 3, 96, 96)
    images = (images / images.max() * 255).to(torch.uint8)
    out = random_resized_crop(images, g)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert len({tuple(o[0, :, 0].tolist()) for o in out}) == 8  # 8 different crops


# ----------------------------------------------------------------------------- streaming from disk

def _mixed_folder(root, per_class=10, classes=("a", "b", "c")):
    """Random images of several sizes and aspect ratios, some grayscale, as JPEG and PNG."""
    rng = np.random.default_rng(3)
    sizes = [(40, 30), (36, 36), (60, 44), (30, 50)]
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                if i % 5 == 4:
                    im = im.convert("L")
                im.save(root / split / c / f"{i:03d}.{'jpg' if i % 2 else 'png'}")
    return root


def _loaded(root, **kw):
    return load_data(make_config("tiny", {"data_format": "auto", "data_dir": str(root), "image_size": 24, **kw}))


def test_a_folder_larger_than_the_memory_budget_streams_and_gives_the_same_batches(tmp_path):
    from prunelab.data import FileSplit, Split, channel_stats, eval_batches
    root = _mixed_folder(tmp_path / "d")
    memory = _loaded(root, val_size=4, train_subset=20, mean="auto")
    streamed = _loaded(root, val_size=4, train_subset=20, mean="auto", memory_budget_gb=1e-6, workers=2)
    assert isinstance(memory.train, Split) and isinstance(streamed.train, FileSplit)
    assert "streamed from disk" in streamed.source and "memory budget" in streamed.source
    assert streamed.inputs == memory.inputs  # same size, same auto mean, same classes
    for a, b in ((memory.train, streamed.train), (memory.val, streamed.val), (memory.test, streamed.test)):
        assert torch.equal(a.labels, b.labels)
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(eval_batches(a, 7), eval_batches(b, 7)))
    for kind in ("pad-crop", "resized-crop"):
        ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        pairs = list(zip(train_batches(memory.train, 8, ga, 4, True, with_index=True, kind=kind),
                         train_batches(streamed.train, 8, gb, 4, True, with_index=True, kind=kind)))
        assert len(pairs) == 3
        for (xa, ya, ia), (xb, yb, ib) in pairs:
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    assert all(torch.equal(u, v) for u, v in zip(channel_stats(memory.train), channel_stats(streamed.train)))


def test_data_loading_stream_and_memory_override_the_budget(tmp_path):
    from prunelab.data import FileSplit, Split
    root = _mixed_folder(tmp_path / "d", per_class=2)
    assert isinstance(_loaded(root, data_loading="stream").train, FileSplit)  # fits, but streaming was asked for
    assert "as asked" in _loaded(root, data_loading="stream").source
    assert isinstance(_loaded(root, data_loading="memory", memory_budget_gb=1e-6).train, Split)


def test_streaming_refuses_unreadable_and_too_small_images_before_training(tmp_path):
    root = _mixed_folder(tmp_path / "d", per_class=2)
    (root / "train" / "a" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(PrunelabError, match="broken.jpg.*damaged"):
        _loaded(root, data_loading="stream")
    (root / "train" / "a" / "broken.jpg").unlink()
    with pytest.raises(PrunelabError, match="more than 2x smaller than --image-size 128"):
        _loaded(root, data_loading="stream", image_size=128)
    with pytest.raises(PrunelabError, match="pass --image-size N"):  # mixed sizes, no size given
        _loaded(root, data_loading="stream", image_size=0)


def test_an_image_that_fails_to_decode_mid_epoch_is_named_in_one_line(tmp_path):
    root = _mixed_folder(tmp_path / "d", per_class=2)
    good = root / "train" / "b" / "001.jpg"
    good.write_bytes(good.read_bytes()[: len(good.read_bytes()) * 2 // 3])  # the header reads; the pixels do not
    data = _loaded(root, data_loading="stream", workers=1)
    with pytest.raises(PrunelabError) as e:
        list(train_batches(data.train, 4, torch.Generator().manual_seed(0), 4, True))
    message = str(e.value)
    assert "001.jpg" in message and "damaged" in message and "\n" not in message and "Traceback" not in message


def test_a_run_that_streams_ends_with_the_same_model_as_one_in_memory(tmp_path):
    import prunelab
    root = _mixed_folder(tmp_path / "d", per_class=8)
    models = []
    for loading in ("memory", "stream"):
        cfg = make_config("tiny", {"data_format": "auto", "data_dir": str(root), "image_size": 24, "name": loading,
                                   "out_dir": str(tmp_path / "runs"), "data_loading": loading, "workers": 1,
                                   "progress": False, "export_onnx": False, "measure_latency_every_step": False})
        run_dir = prunelab.run(cfg)
        models.append(prunelab.load(run_dir)[0].state_dict())
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
