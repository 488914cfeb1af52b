"""Every kind of bad input exits with status 2 and one line that names the problem and the fix, before
any long work starts, and leaves nothing that looks like a result behind."""
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import cli, run_cli
from prunelab.models import build_model


def image_folder(root, size=32, per_class=2, classes=("a", "b")):
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(np.full((size, size, 3), 100, np.uint8)).save(root / split / c / f"{i}.png")
    return root


def cifar_batches(root, labels=None, payload=None):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch"):
        d = payload if payload is not None else {
            b"data": np.zeros((4, 3072), np.uint8), b"labels": labels or [0, 1, 2, 3]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    return root


class Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def setup_case(case, tmp):
    """Build the files a case needs; return the extra CLI arguments."""
    data = tmp / "data"
    if case == "missing data folder":
        return ["--data-format", "auto", "--data-dir", data]
    if case == "data folder of neither layout":
        data.mkdir()
        (data / "notes.txt").write_text("hi")
        return ["--data-format", "auto", "--data-dir", data]
    if case == "empty class folder":
        image_folder(data)
        (data / "train" / "c").mkdir()
        return ["--data-format", "auto", "--data-dir", data]
    if case == "images of mixed sizes":
        image_folder(data)
        Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(data / "train" / "a" / "big.png")
        return ["--data-format", "auto", "--data-dir", data, "--image-size", "0"]  # tiny's 16 px would resize them
    if case == "corrupt image file":
        image_folder(data)
        (data / "train" / "a" / "0.png").write_bytes(b"not a png at all")
        return ["--data-format", "auto", "--data-dir", data]
    if case == "train and test classes differ":
        image_folder(data)
        (data / "test" / "z").mkdir()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / "test" / "z" / "0.png")
        return ["--data-format", "auto", "--data-dir", data]
    if case == "batch file that runs code":
        return ["--data-format", "auto", "--data-dir", cifar_batches(data, payload={b"data": Evil(), b"labels": []})]
    if case == "labels outside the classes":
        return ["--data-format", "auto", "--data-dir", cifar_batches(data, labels=[0, 1, 2, 57])]
    if case == "baseline is a pickle":
        torch.save(build_model("resnet18_cifar").state_dict(), tmp / "dense.pt")
        return ["--baseline", tmp / "dense.pt"]
    if case == "baseline of another architecture":
        save_file({"features.0.weight": torch.zeros(8, 3, 3, 3)}, str(tmp / "vgg.safetensors"))
        return ["--baseline", tmp / "vgg.safetensors"]
    if case == "truncated baseline":
        save_file(build_model("resnet18_cifar").state_dict(), str(tmp / "d.safetensors"))
        (tmp / "d.safetensors").write_bytes((tmp / "d.safetensors").read_bytes()[:1000])
        return ["--baseline", tmp / "d.safetensors"]
    if case == "output folder is a file":
        (tmp / "occupied").write_text("x")
        return ["--out-dir", tmp / "occupied"]
    if case == "config file missing":
        return ["--config", tmp / "nope.yaml"]
    if case == "config file not YAML":
        (tmp / "c.yaml").write_text("importance: [unclosed\n")
        return ["--config", tmp / "c.yaml"]
    if case == "config file with an unknown key":
        (tmp / "c.yaml").write_text("iterative_step: 3\n")
        return ["--config", tmp / "c.yaml"]
    if case == "config file with a wrong type":
        (tmp / "c.json").write_text(json.dumps({"pruning_ratio": [0.5]}))
        return ["--config", tmp / "c.json"]
    return []


CASES = [  # (case, extra CLI arguments, text the one-line message must contain)
    ("unknown preset", ["--preset", "nope"], "unknown preset 'nope'"),
    ("unknown importance", ["--importance", "tailor"], "did you mean 'taylor'"),
    ("ratio above 1", ["--pruning-ratio", "1.5"], "pruning_ratio must be in (0, 1)"),
    ("ratio 0", ["--pruning-ratio", "0"], "pruning_ratio must be in (0, 1)"),
    ("zero epochs", ["--epochs", "0"], "epochs must be at least 1"),
    ("zero steps", ["--iterative-steps", "0"], "iterative_steps must be at least 1"),
    ("negative steps", ["--iterative-steps", "-3"], "iterative_steps must be at least 1"),
    ("negative fine-tune epochs", ["--final-finetune-epochs", "-1"], "final_finetune_epochs must be 0 or more"),
    ("warm-up that a per-epoch schedule cannot ramp", ["--warmup-epochs", "1"], "add --lr-schedule-unit batch"),
    ("negative cutout", ["--cutout-px", "-4"], "cutout_px must be 0 (off) or more"),
    ("negative reconstruction", ["--reconstruct-images", "-1"], "reconstruct_images must be 0 (off) or at least 16"),
    ("reconstruction on too few images", ["--reconstruct-images", "8"], "reconstruct_images must be 0 (off) or at least 16"),
    ("zero reconstruction steps", ["--reconstruct-steps", "0"], "reconstruct_steps must be at least 1"),
    ("cutout as large as the images", ["--cutout-px", "64"], "cutout_px 64 is not below the data's"),
    ("text where a number belongs", ["--batch-size", "many"], "'batch_size' must be a int"),
    ("negative learning rate", ["--lr", "-0.1"], "must be positive"),
    ("fp16 on a CPU", ["--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    ("CUDA without a GPU", ["--device", "cuda"], "no CUDA GPU"),
    ("validation split larger than train", ["--val-size", "100000"], "leaves no training images"),
    ("missing data folder", [], "does not exist"),
    ("data folder of neither layout", [], "neither"),
    ("empty class folder", [], "has no images"),
    ("images of mixed sizes", [], "pass --image-size N"),
    ("corrupt image file", [], "cannot decode image"),
    ("train and test classes differ", [], "different class folders"),
    ("batch file that runs code", [], "unreadable"),
    ("labels outside the classes", [], "not CIFAR-10"),
    ("preset trained without a trained model", ["--preset", "trained"], "add --baseline FILE"),
    ("preset trained-short without a trained model", ["--preset", "trained-short"], "add --baseline FILE"),
    ("preset trained-distilled without a trained model", ["--preset", "trained-distilled"], "add --baseline FILE"),
    ("missing baseline", ["--baseline", "nothing.safetensors"], "baseline file not found"),
    ("scratch-long control after a baseline of unknown training", ["--baseline", "nothing.safetensors", "--controls",
                                                                   "scratch-long"], "add --baseline-images N"),
    ("baseline is a pickle", [], "pickle"),
    ("baseline of another architecture", [], "do not fit"),
    ("truncated baseline", [], "damaged"),
    ("output folder is a file", [], "cannot write"),
    ("config file missing", [], "config file not found"),
    ("config file not YAML", [], "not valid YAML"),
    ("config file with an unknown key", [], "did you mean 'iterative_steps'"),
    ("config file with a wrong type", [], "'pruning_ratio' must be a float"),
]


@pytest.mark.parametrize("case, args, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(tmp_path, case, args, message):
    if torch.cuda.is_available() and case == "CUDA without a GPU":
        pytest.skip("this machine has a GPU")
    extra = setup_case(case, tmp_path)
    base = [] if args[:1] == ["--preset"] else ["--preset", "tiny"]
    out = ["--out-dir", tmp_path / "runs"] if "--out-dir" not in map(str, extra) else []
    code, stdout, stderr = cli("run", *base, *args, *extra, *out, "--no-progress", cwd=tmp_path)
    assert code == 2, stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("prunelab: skipped")]
    assert len(lines) == 1 and lines[0].startswith("prunelab: error:"), stderr
    assert message in lines[0], lines[0]
    assert not list(tmp_path.rglob("config.json")) and not list(tmp_path.rglob("results.json"))
    assert "this ran" not in stdout


def test_resume_of_a_folder_that_is_no_run_is_refused(tmp_path):
    code, _, stderr = cli("run", "--resume", tmp_path)
    assert code == 2 and "not a prunelab run directory" in stderr


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    r = run_cli("run", "--preset", "tiny", "--finetune-lr", "1e12", "--out-dir", tmp_path, "--name", "nan",
                "--no-progress")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "the loss became" in r.stderr, r.stderr
    run = tmp_path / "nan"
    assert (run / "checkpoints" / "dense.json").is_file()
    assert not (run / "checkpoints" / "step_01.json").exists() and not (run / "results.json").exists()


def test_non_image_files_in_class_folders_are_skipped_and_counted(tmp_path):
    data = image_folder(tmp_path / "data")
    (data / "train" / "a" / "README.txt").write_text("notes")
    (data / "train" / "b" / ".DS_Store").write_bytes(b"\0")
    r = run_cli("run", "--preset", "tiny", "--data-format", "auto", "--data-dir", data, "--out-dir", tmp_path,
                "--name", "skip", "--no-progress", "--epochs", "1", "--iterative-steps", "1",
                "--final-finetune-epochs", "0", "--no-export-onnx")
    assert r.returncode == 0, r.stderr
    assert "skipped 2 non-image files" in r.stderr
    assert json.loads((tmp_path / "skip" / "results.json").read_text())["data"]["train_images"] == 4
