"""Starting from weights a user already has: --pretrained (through torchvision's and timm's caches, filled here by the
tests: no network), --init-from, the classifier's own learning rate, and a transferred model pruned and loaded in a
fresh process without its source file."""
import os
import subprocess
import sys
import urllib.error

import pytest
import torch
from safetensors.torch import save_file

import prunelab
from prunelab.config import make_config
from prunelab.errors import PrunelabError
from prunelab.models import ModelSpec, build_model
from prunelab.transfer import initial_model

from conftest import ROOT, cli
from test_data import write_image_folder


@pytest.fixture
def torch_hub(tmp_path, monkeypatch):
    """torch hub's cache in a folder of the test's, and no network: a download attempt fails as it does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def put_torchvision_weights(checkpoints, name="resnet18"):
    """A locally made state dict of torchvision's `name` (1,000 classes), where torch hub looks for its DEFAULT
    weights (the file name in the weights' URL). Returns the state dict."""
    import torchvision
    weights = torchvision.models.get_model_weights(name).DEFAULT
    torch.manual_seed(7)
    state = torchvision.models.get_model(name, weights=None).state_dict()
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, checkpoints / os.path.basename(weights.url))
    return state


def test_pretrained_reads_torch_hubs_cache_and_gives_the_classifier_the_datas_classes(torch_hub):
    state = put_torchvision_weights(torch_hub)
    model, info = initial_model(ModelSpec("resnet18", 3), "DEFAULT")
    own = model.state_dict()
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.running_var", "layer3.0.downsample.0.weight"):
        assert torch.equal(own[name], state[name]), name
    assert model.fc.out_features == 3 and info["loaded"] == info["backbone"]
    # resnet18_cifar takes resnet18's weights; its 3x3 stem has another shape and stays as built
    model, info = initial_model(ModelSpec("resnet18_cifar", 3), "IMAGENET1K_V1")
    assert info["skipped_shape"] == ["conv1.weight"] and info["loaded"] == info["backbone"] - 1
    assert torch.equal(model.state_dict()["layer2.1.conv2.weight"], state["layer2.1.conv2.weight"])


def test_pretrained_offline_without_the_file_names_the_file_and_where_to_put_it(torch_hub):
    with pytest.raises(PrunelabError) as e:
        initial_model(ModelSpec("resnet18", 3), "DEFAULT")
    msg = str(e.value)
    assert "resnet18-f37072fd.pth is not in torch's cache" in msg and str(torch_hub / "resnet18-f37072fd.pth") in msg
    assert "\n" not in msg


def test_pretrained_timm_reads_the_hugging_face_cache(tmp_path):
    """timm's weights through its own loader: a locally made model.safetensors where the Hugging Face hub keeps
    timm/resnet18.a1_in1k, read offline (a fresh process: the hub reads its cache settings at import)."""
    script = """
import os, torch, timm
from safetensors.torch import save_file
cache = os.environ["HF_HUB_CACHE"]
repo = os.path.join(cache, "models--timm--resnet18.a1_in1k")
os.makedirs(os.path.join(repo, "snapshots", "0" * 40)); os.makedirs(os.path.join(repo, "refs"))
open(os.path.join(repo, "refs", "main"), "w").write("0" * 40)
torch.manual_seed(3)
src = timm.create_model("resnet18", pretrained=False)
save_file(src.state_dict(), os.path.join(repo, "snapshots", "0" * 40, "model.safetensors"))
from prunelab.transfer import initial_model
from prunelab.models import ModelSpec
model, info = initial_model(ModelSpec("timm:resnet18", 3), "a1_in1k")
assert torch.equal(model.layer3[1].conv2.weight, src.layer3[1].conv2.weight)
assert model.fc.out_features == 3 and info["loaded"] == info["backbone"], info
print("ok", info["source"])
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok timm resnet18.a1_in1k" in done.stdout, done.stderr[-2000:]


def test_pretrained_sets_the_weights_normalisation_unless_one_is_given(torch_hub, tmp_path):
    assert make_config("tiny", {"pretrained": "DEFAULT"}).mean == ["pretrained"]
    assert make_config("tiny", {"pretrained": "DEFAULT", "mean": "cifar10"}).mean == ["cifar10"]
    from prunelab.data import load_data
    write_image_folder(tmp_path / "data")
    data = load_data(make_config("seed", {"data_dir": str(tmp_path / "data"), "pretrained": "DEFAULT",
                                          "model": "mobilenet_v3_small"}))
    assert data.inputs.mean == (0.485, 0.456, 0.406) and data.inputs.std == (0.229, 0.224, 0.225)


def test_init_from_loads_a_1000_class_backbone_into_a_3_class_model(tmp_path):
    torch.manual_seed(5)
    source = build_model("resnet18_cifar", 1000)
    save_file({"module." + k: v for k, v in source.state_dict().items()}, str(tmp_path / "backbone.safetensors"))
    torch.manual_seed(0)
    model, info = initial_model(ModelSpec("resnet18_cifar", 3), init_from=str(tmp_path / "backbone.safetensors"))
    fresh = build_model("resnet18_cifar", 3)  # what seed 0 builds: the classifier is that, not the file's
    for name, value in model.state_dict().items():
        if name.startswith("fc."):
            assert value.shape[0] == 3
        elif not name.endswith("num_batches_tracked"):
            assert torch.equal(value, source.state_dict()[name]), name
    assert not torch.equal(model.fc.weight, source.fc.weight[:3]) and model.fc.weight.shape == fresh.fc.weight.shape
    assert info["loaded"] == info["backbone"] and info["classifier"] == ["fc.bias", "fc.weight"]


def test_init_from_refuses_another_architecture(tmp_path):
    save_file(build_model("mobilenet_v2", 10).state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(PrunelabError, match="another architecture"):
        initial_model(ModelSpec("resnet18_cifar", 3), init_from=str(tmp_path / "other.safetensors"))


def test_head_lr_trains_the_classifier_at_its_own_rate():
    from prunelab.train import make_optimizer
    model = build_model("resnet18_cifar", 3)
    cfg = make_config("tiny", {})
    groups = make_optimizer(model, cfg, 0.01, head_lr=0.1).param_groups
    assert [g["lr"] for g in groups] == [0.01, 0.1]
    assert groups[1]["params"] == [model.fc.weight, model.fc.bias]
    assert len(make_optimizer(model, cfg, 0.01).param_groups) == 1


def test_a_model_transferred_with_init_from_is_pruned_and_loads_in_a_fresh_process_without_the_file(tmp_path):
    """The whole run from --init-from (a 10-class prunelab model file onto 3-class image folders): the report names
    the source, and the pruned model loads in a fresh process after the source file is gone."""
    write_image_folder(tmp_path / "data", per_class=16)
    torch.manual_seed(1)
    src = build_model("user_nets:build_net", 10)
    prunelab.modelfile.save(tmp_path / "src" / "source", src, ModelSpec("user_nets:build_net", 10), [])
    code, out, err = cli("run", "--preset", "tiny", "--model", "user_nets:build_net", "--data-format", "image-folder", "--data-dir", tmp_path / "data",
                         "--init-from", tmp_path / "src" / "source.json", "--head-lr", "0.2", "--lr", "0.01",
                         "--out-dir", tmp_path / "runs", "--name", "t", "--no-export-onnx", "--no-progress")
    assert code == 0, err[-2000:]
    assert "loaded 15 of 15 backbone tensors" in out + err
    report = (tmp_path / "runs" / "t" / "report.md").read_text()
    assert "fine-tuned from" in report and "source.json" in report
    import json
    dense = [json.loads(line) for line in (tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()
             if '"event": "dense"' in line][0]
    assert dense["transfer"]["loaded"] == 15 and dense["transfer"]["source"].endswith("source.json")
    final = tmp_path / "runs" / "t" / "checkpoints" / "final.json"
    import shutil
    shutil.rmtree(tmp_path / "src")
    probe = (f"import prunelab, torch; m, _ = prunelab.load(r'{tmp_path / 'runs' / 't'}', trust_code=True); "
             "print(m(torch.zeros(1, 3, 32, 32)).shape[1])")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}  # where the user's builder lives
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "3", done.stderr[-1500:]
    assert final.is_file()


@pytest.mark.parametrize("args, message", [
    (["--model", "user_nets:build_net", "--pretrained"], "--pretrained needs a torchvision or timm model"),
    (["--model", "resnet18", "--pretrained", "IMAGENET1K_V9"], "choose one of: DEFAULT, IMAGENET1K_V1"),
    (["--pretrained", "--baseline", "w.safetensors"], "keep one"),
    (["--pretrained", "--init-from", "w.safetensors"], "keep one"),
    (["--init-from", "w.pth"], "looks like a pickle"),
    (["--init-from", "damaged.safetensors"], "the file is damaged or not safetensors"),
    (["--init-from", "other.safetensors"], "another architecture"),
    (["--init-from", "nowhere.safetensors"], "init_from file not found"),
    (["--mean", "pretrained"], "add --pretrained"),
    (["--preset", "transfer"], "add --pretrained or --init-from"),
])
def test_bad_transfer_settings_are_refused_in_one_line_before_anything_is_written(tmp_path, args, message):
    save_file(build_model("resnet18_cifar", 10).state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(build_model("resnet18_cifar", 10).state_dict(), tmp_path / "w.pth")
    (tmp_path / "damaged.safetensors").write_bytes(b"\x00" * 64)
    save_file(build_model("user_nets:build_net", 10).state_dict(), str(tmp_path / "other.safetensors"))
    preset = [] if "--preset" in args else ["--preset", "tiny"]
    code, _, err = cli("run", *preset, "--out-dir", tmp_path / "runs", *args, cwd=tmp_path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_a_sweep_from_pretrained_weights_fine_tunes_once_and_shares_that_dense_model(torch_hub, tmp_path):
    """The first run fine-tunes from the weights; the second starts from that run's dense checkpoint, with the
    weights' normalisation as numbers (it does not read the weights again: they are deleted in between)."""
    import json
    from prunelab.models import pretrained_normalization
    checkpoints = torch_hub
    checkpoints.mkdir(parents=True)
    import torchvision
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    torch.save(build_model("mobilenet_v3_small", 1000).state_dict(), checkpoints / os.path.basename(url))
    code, out, err = cli("sweep", "--preset", "tiny", "--model", "mobilenet_v3_small", "--pretrained",
                         "--importances", "l1", "l2", "--pruning-ratio", "0.3", "--iterative-steps", "1",
                         "--final-finetune-epochs", "0", "--no-export-onnx", "--no-progress",
                         "--out-dir", tmp_path / "runs", "--name", "sw")
    assert code == 0, err[-2000:]
    assert out.count("backbone tensors") == 1  # the weights were loaded once
    first, second = (json.loads((tmp_path / "runs" / "sw" / n / "config.json").read_text()) for n in ("l1-ratio0.3", "l2-ratio0.3"))
    assert first["pretrained"] == "DEFAULT" and first["mean"] == ["pretrained"]
    mean, std = pretrained_normalization("mobilenet_v3_small")
    assert second["pretrained"] == "" and second["baseline"].endswith("dense.safetensors")
    assert second["mean"] == mean and second["std"] == std


def test_init_from_a_pickle_is_read_only_with_trust_pickle(tmp_path):
    torch.manual_seed(2)
    source = build_model("resnet18_cifar", 10)
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    with pytest.raises(PrunelabError, match="looks like a pickle"):
        initial_model(ModelSpec("resnet18_cifar", 4), init_from=str(tmp_path / "ckpt.pth"))
    model, info = initial_model(ModelSpec("resnet18_cifar", 4), init_from=str(tmp_path / "ckpt.pth"), trust_pickle=True)
    assert torch.equal(model.layer2[0].conv1.weight, source.layer2[0].conv1.weight) and model.fc.out_features == 4
