"""Depth pruning (--drop-blocks): which blocks can go, what removing one does, and a run that removes two."""
import json
import subprocess
import sys

import pytest
import torch

import prunelab
from conftest import cli
from prunelab.config import final_lr, make_config
from prunelab.models import build_model, check_drop_blocks, drop_blocks, droppable_blocks
from prunelab.prune import count_macs_params, layer_widths

FAST = {"progress": False, "export_onnx": False, "measure_latency_every_step": False, "latency_batch_sizes": [1]}


def test_the_blocks_that_can_go_are_those_whose_output_has_their_inputs_shape():
    # the first block of stages 2-4 halves the resolution and doubles the channels: it cannot go
    assert droppable_blocks(build_model("resnet18_cifar"), 32) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1",
                                                                   "layer4.1"]
    with pytest.raises(prunelab.PrunelabError, match="'layer3.0' is not a block that can be removed.*layer2.1 "):
        check_drop_blocks(build_model("resnet18_cifar"), ["layer3.0"], 32)
    # probed on an fp32 CPU copy: a model handed over in another dtype (or on a GPU) is checked all the same
    assert "layer4.1" in droppable_blocks(build_model("resnet18_cifar").double(), 32)
    with pytest.raises(prunelab.PrunelabError, match="a block and one inside it"):
        check_drop_blocks(build_model("mobilenet_v2"), ["features.3", "features.3.conv.1"], 32)


def test_removing_a_block_whose_branch_adds_nothing_leaves_every_output_as_it_was():
    """A BasicBlock returns relu(branch(x) + x); with its last batch norm zeroed the branch adds 0, and x (after a
    ReLU) is unchanged by the ReLU: the block is an identity, so dropping it must change no output, and the other
    blocks must keep their weights."""
    torch.manual_seed(0)
    model = build_model("resnet18_cifar").eval()
    with torch.no_grad():
        model.layer3[1].bn2.weight.zero_()
        model.layer3[1].bn2.bias.zero_()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        after = drop_blocks(model, ["layer3.1"])(x)
    assert isinstance(model.layer3[1], torch.nn.Identity)
    torch.testing.assert_close(after, before)
    assert count_macs_params(model, 32)[1] < 11_173_962 - 2 * 9 * 256 * 256  # its two 3x3 convolutions are gone


@pytest.fixture(scope="module")
def shallow_run(tmp_path_factory):
    """A tiny run that removes layer3.1 and layer4.1, then searches the widths for a MACs target and cuts to them
    in two steps."""
    out = tmp_path_factory.mktemp("depth")
    cfg = make_config("tiny", {**FAST, "out_dir": str(out), "name": "d", "drop_blocks": ["layer3.1", "layer4.1"],
                               "allocation": "search", "target_macs": 20e6, "val_size": 64, "search_budget": 2,
                               "bn_reestimate_images": 64})
    return prunelab.run(cfg), cfg


def test_a_run_without_two_blocks_meets_its_target_with_the_widths_searched_for_the_shallow_network(shallow_run):
    run_dir, cfg = shallow_run
    results = json.loads((run_dir / "results.json").read_text())
    search = json.loads((run_dir / "search.json").read_text())
    assert results["final"]["macs"] <= 20e6
    assert not any(name.startswith(("layer3.1.", "layer4.1.")) for name in search["widths"])
    assert results["search"]["final_widths"] == search["widths"]
    report = (run_dir / "report.md").read_text()
    assert "blocks layer3.1 layer4.1 removed" in report
    # the advice to reconstruct reads the last cut's fresh accuracy, the dense model's and the classes from the run
    built = prunelab.report.build_results(run_dir)
    assert built["data"]["classes"] == 10
    # (on the validation split the run carved: the advice chooses a recipe, so the test set does not decide it)
    assert "val_accuracy" in built["dense"] and "val_accuracy_before_finetune" in built["steps"][-1]
    built["dense"]["val_accuracy"] = 0.8
    built["steps"][-1]["val_accuracy_before_finetune"] = 0.11
    built["steps"][-1]["accuracy_before_finetune"] = 0.5
    assert built["config"]["final_finetune_epochs"] and final_lr(built["config"]) > 0.04  # tiny's rate: no advice
    assert "Tip: reconstruction" not in prunelab.report.report_markdown(built)
    built["config"]["final_finetune_lr"] = 0.01  # at the trained presets' rate, the advice, naming it
    report = prunelab.report.report_markdown(built)
    assert "**Tip: reconstruction.** The last cut left the model at 11.00% on the validation split" in report
    assert "runs at lr 0.01" in report and "--final-finetune-lr 0.04" in report
    built["steps"][-1]["val_accuracy_before_finetune"] = 0.5
    built["steps"][-1]["accuracy_before_finetune"] = 0.11
    assert "Tip: reconstruction" not in prunelab.report.report_markdown(built)
    dense, _ = prunelab.modelfile.load(run_dir / "checkpoints" / "dense.json")
    assert not isinstance(dense.layer3[1], torch.nn.Identity)  # the dense stage keeps every block


def test_the_shallow_model_loads_in_a_fresh_process_with_its_blocks_removed(shallow_run):
    run_dir, cfg = shallow_run
    model, _ = prunelab.load(run_dir)
    x = torch.zeros(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        here = model(x).tolist()
    code = ("import json, torch, prunelab; m = prunelab.load(%r)[0]; "
            "print(json.dumps([type(m.layer3[1]).__name__, type(m.layer4[1]).__name__, "
            "m(torch.zeros(2, 3, %d, %d)).tolist()]))" % (str(run_dir), cfg.image_size, cfg.image_size))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    kinds_a, kinds_b, there = json.loads(r.stdout.strip().splitlines()[-1])
    assert (kinds_a, kinds_b) == ("Identity", "Identity")
    torch.testing.assert_close(torch.tensor(there), torch.tensor(here))


def test_a_shallow_run_killed_after_its_first_step_resumes_to_the_same_model(shallow_run, tmp_path):
    """The resumed run rebuilds step 1's model from its file (blocks removed, then the cuts replayed): with the
    full-depth network its weights would not load."""
    import shutil
    run_dir, _ = shallow_run
    cut = tmp_path / "d"
    shutil.copytree(run_dir, cut)
    for p in [cut / "results.json", *[p for p in (cut / "checkpoints").iterdir()
                                      if not p.name.startswith(("dense", "step_01"))]]:
        p.unlink()
    metrics = [ln for ln in (cut / "metrics.jsonl").read_text().splitlines() if json.loads(ln)["stage"] <= 1]
    (cut / "metrics.jsonl").write_text("\n".join(metrics) + "\n")
    code, out, err = cli("run", "--resume", cut, "--no-progress")
    assert code == 0, err
    again, whole = (json.loads((d / "results.json").read_text())["final"] for d in (cut, run_dir))
    assert (again["accuracy"], again["macs"], again["params"]) == (whole["accuracy"], whole["macs"], whole["params"])
    assert layer_widths(prunelab.load(cut)[0]) == layer_widths(prunelab.load(run_dir)[0])


@pytest.mark.parametrize("blocks, message", [
    (["layer2.0"], "'layer2.0' is not a block that can be removed"),
    (["layer9.1"], "'layer9.1' is not a block that can be removed"),
    (["layer3.1", "layer3.1"], "drop_blocks must name distinct blocks"),
])
def test_a_block_that_cannot_go_is_refused_in_one_line_before_any_work(tmp_path, blocks, message):
    code, out, err = cli("run", "--preset", "tiny", "--no-progress", "--out-dir", tmp_path, "--drop-blocks", *blocks)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_a_target_the_removed_blocks_already_meet_is_refused_in_one_line_naming_them(tmp_path):
    # at 16 px the dense model has 139 M MACs, without layer3.1 and layer4.1 about 101 M
    code, out, err = cli("run", "--preset", "tiny", "--no-progress", "--out-dir", tmp_path, "--drop-blocks", "layer3.1",
                         "layer4.1", "--target-macs", "130e6")
    assert code != 0 and "MACs of the dense model without layer3.1 layer4.1" in err and "remove fewer blocks" in err
    assert not any(tmp_path.iterdir())


def test_a_sweep_checks_its_blocks_and_targets_on_the_shallow_network_before_any_run(tmp_path):
    code, out, err = cli("sweep", "--preset", "tiny", "--no-progress", "--out-dir", tmp_path, "--name", "s",
                         "--drop-blocks", "layer9.1", "--targets-macs", "3e5")
    assert code != 0 and "'layer9.1' is not a block that can be removed" in err
    code, out, err = cli("sweep", "--preset", "tiny", "--no-progress", "--out-dir", tmp_path, "--name", "s",
                         "--drop-blocks", "layer3.1", "layer4.1", "--targets-macs", "50e6", "130e6")
    assert code != 0 and "MACs of the dense model without layer3.1 layer4.1" in err  # the full network has 139 M
    assert not any(tmp_path.iterdir())


def test_a_model_file_without_some_blocks_is_not_taken_as_a_dense_baseline(tmp_path):
    from prunelab.models import ModelSpec
    spec = ModelSpec("resnet18_cifar", 10, dropped_blocks=("layer4.1",))
    prunelab.modelfile.save(tmp_path / "shallow", prunelab.models.build(spec), spec, [])
    with pytest.raises(prunelab.PrunelabError, match="already pruned"):
        prunelab.modelfile.load_dense_baseline(tmp_path / "shallow.safetensors", "resnet18_cifar")
