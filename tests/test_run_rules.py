"""What a run promises about its config, its schedule, its resume and the process it runs in (the review's
findings: each test fails on the code before the fix)."""
import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

import prunelab
from conftest import cli
from prunelab.config import PrunelabError, make_config
from prunelab.measurement import find_latency
from prunelab.report import budget_differences, recipe_sentence

TINY = ["--preset", "tiny", "--no-progress", "--no-export-onnx"]


def rows(run_dir, event=None):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if event is None or r["event"] == event]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rules")
    code, _, err = cli("run", *TINY, "--out-dir", out, "--name", "t", "--epochs", "3")
    assert code == 0, err
    return out / "t"


# ---------------------------------------------------------------- the seed's learning-rate schedule

def test_seed_steps_the_cosine_once_per_epoch_as_the_notebook_does():
    assert make_config("seed").lr_schedule_unit == "epoch"


def test_per_epoch_schedule_gives_each_epoch_the_lr_of_cosine_annealing_lr_and_one_epoch_fine_tunes_a_constant_lr(
        tiny_run):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    notebook = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)  # the seed notebook's scheduler
    expected = []
    for _ in range(3):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        notebook.step()
    epochs = rows(tiny_run, "epoch")
    assert [r["lr"] for r in epochs if r["stage"] == 0] == pytest.approx(expected, abs=1e-12)
    fine_tunes = [r for r in epochs if r["stage"] > 0]
    assert fine_tunes and all(r["lr"] == 0.1 for r in fine_tunes)  # 1-epoch stages: the notebook's constant lr


def test_per_batch_schedule_ends_each_stage_near_zero(tmp_path):
    code, _, err = cli("run", *TINY, "--out-dir", tmp_path, "--name", "b", "--lr-schedule-unit", "batch",
                       "--epochs", "2")
    assert code == 0, err
    epochs = rows(tmp_path / "b", "epoch")
    last = {}
    for r in epochs:
        last[r["stage"]] = r["lr"]
    batches = 2 * 4  # 2 epochs of 256 images in batches of 64
    assert last[0] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (batches - 1) / batches)))
    assert all(lr == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 3 / 4))) for s, lr in last.items() if s > 0)


# ---------------------------------------------------------------- a target's ratio is a result, not a config edit

def test_a_macs_target_run_reports_the_ratio_it_found_and_never_changes_its_config(tmp_path):
    cfg = make_config("tiny", {"progress": False, "export_onnx": False, "out_dir": str(tmp_path), "name": "m",
                               "target_macs": 30e6})
    before = dataclasses.asdict(cfg)
    run = prunelab.run(cfg)
    assert dataclasses.asdict(cfg) == before  # the caller's config is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pruning_ratio = 0.5
    saved = json.loads((run / "config.json").read_text())
    assert saved["pruning_ratio"] == 0.9  # as asked; the ratio found lives in the dense stage's result
    for name in ("dense", "step_01", "final"):
        assert json.loads((run / "checkpoints" / f"{name}.json").read_text())["config"] == saved
    results = json.loads((run / "results.json").read_text())
    found = results["pruning_ratio"]
    assert found != 0.9 and results["final"]["ratio"] == pytest.approx(found)
    report = (run / "report.md").read_text()
    assert f"channel ratio found: {found:.4f}" in report and "channel ratio 0.9 in" not in report


def test_a_size_target_run_fills_the_idle_budget_and_resumes_to_the_same_widths(tmp_path):
    """With round_to 8 the dense stage widens groups into what rounding leaves of the budget (targets.fill_budget):
    the final model is larger than uniform pruning at the found ratio and within the target; the group ratios live
    in the dense checkpoint, so a run killed after its first step resumes to the same widths; --no-fill-budget
    gives uniform's."""
    import shutil
    from prunelab.models import build_model
    from prunelab.prune import count_macs_params, layer_widths, prune_once
    code, _, err = cli("run", *TINY, "--out-dir", tmp_path, "--name", "f", "--round-to", "8", "--target-params", "2e5")
    assert code == 0, err
    run = tmp_path / "f"
    dense = json.loads((run / "checkpoints" / "dense.json").read_text())["metrics"]
    final = json.loads((run / "results.json").read_text())["final"]
    cfg = make_config("tiny", {"round_to": 8})
    uniform = count_macs_params(prune_once(build_model("resnet18_cifar"), cfg, dense["pruning_ratio"], image_size=16,
                                           num_classes=10), 16)
    assert dense["group_ratios"] and uniform[1] < final["params"] <= 2e5
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    for p in [cut / "results.json", *[p for p in (cut / "checkpoints").iterdir()
                                      if not p.name.startswith(("dense", "step_01"))]]:
        p.unlink()
    (cut / "metrics.jsonl").write_text("".join(ln + "\n" for ln in (cut / "metrics.jsonl").read_text().splitlines()
                                               if json.loads(ln)["stage"] <= 1))
    code, _, err = cli("run", "--resume", cut, "--no-progress")
    assert code == 0, err
    assert layer_widths(prunelab.load(cut)[0]) == layer_widths(prunelab.load(run)[0])
    code, _, err = cli("run", *TINY, "--out-dir", tmp_path, "--name", "u", "--round-to", "8", "--target-params", "2e5",
                       "--no-fill-budget", "--final-finetune-epochs", "0", "--finetune-epochs-per-step", "0")
    assert code == 0, err
    assert json.loads((tmp_path / "u" / "results.json").read_text())["final"]["params"] == uniform[1]


# ---------------------------------------------------------------- the crash window between checkpoint and log line

def test_a_crash_between_a_stage_checkpoint_and_its_log_line_is_repaired_on_resume(tmp_path):
    code, _, err = cli("run", *TINY, "--out-dir", tmp_path, "--name", "c")
    assert code == 0, err
    run = tmp_path / "c"
    whole = json.loads((run / "results.json").read_text())
    # the state a crash leaves right after final.json was written: no final line, no results
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x)["event"] != "final"))
    (run / "results.json").unlink()
    code, _, err = cli("run", "--resume", run, "--no-progress")
    assert code == 0, err
    resumed = json.loads((run / "results.json").read_text())
    assert resumed["final"] == whole["final"]
    assert len(rows(run, "final")) == 1


# ---------------------------------------------------------------- resume rules: one rule, for the API and the CLI

def test_resume_refuses_a_recipe_change_with_the_same_words_from_the_api_and_the_cli(tiny_run):
    with pytest.raises(PrunelabError, match="iterative_steps would change from 2 to 3") as api:
        prunelab.run(make_config("tiny", {"iterative_steps": 3, "epochs": 3}), tiny_run)
    code, _, err = cli("run", "--resume", tiny_run, "--iterative-steps", "3")
    assert code == 2 and str(api.value) in err


def test_resume_accepts_runtime_settings_from_the_api_and_the_cli(tiny_run):
    same = make_config("tiny", {"epochs": 3, "num_threads": 1, "progress": False, "name": "other",
                                "export_onnx": False})
    assert prunelab.run(same, tiny_run) == tiny_run  # finished already: nothing to do, no error
    code, _, err = cli("run", "--resume", tiny_run, "--num-threads", "1", "--device", "cpu", "--no-progress")
    assert code == 0, err


def test_resume_and_controls_refuse_data_whose_test_images_differ_from_the_runs(tmp_path):
    """Same class folders and image count, one test image moved to another class: a resume on it would score the
    remaining stages on other labels than the finished ones, and the table would mix the two."""
    import shutil

    from test_data import write_image_folder
    write_image_folder(tmp_path / "a")
    code, _, err = cli("run", *TINY, "--data-format", "image-folder", "--data-dir", tmp_path / "a",
                       "--out-dir", tmp_path, "--name", "r")
    assert code == 0, err
    run = tmp_path / "r"
    (run / "results.json").unlink()  # the run as a crash in its final fine-tune leaves it
    (run / "checkpoints" / "final.json").unlink()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "test" / "dog" / "0000.png").rename(tmp_path / "b" / "test" / "cat" / "moved.png")
    code, _, err = cli("run", "--resume", run, "--data-dir", tmp_path / "b", "--no-progress")
    assert code == 2 and "was scored on other test images" in err and len(err.strip().splitlines()) == 1, err
    assert not (run / "results.json").exists()
    code, _, err = cli("run", "--resume", run, "--data-dir", tmp_path / "a", "--no-progress")
    assert code == 0, err
    recorded = json.loads((run / "results.json").read_text())["data"]["test_fingerprint"]
    assert len(recorded) == 16 and recorded == rows(run, "dense")[0]["test_fingerprint"]
    code, _, err = cli("control", run, "--kind", "scratch", "--data-dir", tmp_path / "b")  # a control: the same rule
    assert code == 2 and "was scored on other test images" in err and not (run / "controls").exists(), err


# ---------------------------------------------------------------- a library call leaves the process as it was

def test_prunelab_run_leaves_threads_random_state_and_matplotlib_alone(tmp_path):
    code = f"""
import sys, torch, prunelab
torch.set_num_threads(2); torch.manual_seed(123); expected = torch.rand(3)
torch.manual_seed(123)
prunelab.run(prunelab.make_config("tiny", {{"progress": False, "export_onnx": False, "num_threads": 1,
                                           "out_dir": {str(tmp_path)!r}, "name": "p"}}))
assert torch.get_num_threads() == 2, torch.get_num_threads()
assert torch.equal(torch.rand(3), expected), "the global generator moved"
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


# ---------------------------------------------------------------- the report says what the run's budget was

def test_budget_line_comes_from_the_resolved_config_and_the_data_seen():
    quick = dataclasses.asdict(make_config("quick-best"))
    data = {"train_images": 10000, "train_images_available": 50000, "test_images": 2000,
            "test_images_available": 10000}
    text = budget_differences(quick, data)
    assert "10,000 training images (of 50,000)" in text and "2,000 test images (of 10,000)" in text
    assert "5 dense epochs (seed: 10)" in text
    whole_test = budget_differences({**quick, "test_subset": 0}, {**data, "test_images": 10000})
    assert "test images" not in whole_test
    assert budget_differences(dataclasses.asdict(make_config("seed")), {**data, "train_images": 50000,
                                                                        "test_images": 10000}) == ""
    early = budget_differences(dataclasses.asdict(make_config("quick")), {**data, "train_images": 50000,
                                                                         "test_images": 10000})
    assert "see 2,560 images per epoch (seed: all)" in early and "1 dense epoch (seed: 10)" in early


def test_the_recipe_sentence_names_each_stage_s_own_lr_and_no_dense_training_for_a_baseline():
    quick = dataclasses.asdict(make_config("quick"))
    text = recipe_sentence(quick)
    assert "1 dense epoch on 2,560 images (lr 0.02)" in text
    assert "per step on 2,560 images (lr 0.1)" in text and "8 final epochs (lr 0.2)" in text
    from_baseline = recipe_sentence({**quick, "baseline": "dense.safetensors"})
    assert from_baseline.startswith("resnet18_cifar, baseline dense.safetensors; ") and "0.02" not in from_baseline
    # a results.json from before final_finetune_lr: the final fine-tune ran at finetune_lr
    old = {k: v for k, v in dataclasses.asdict(make_config("seed")).items() if k != "final_finetune_lr"}
    assert "10 final epochs (lr 0.1)" in recipe_sentence(old)


def test_results_hold_latency_as_records_and_old_flat_keys_still_render(tiny_run, tmp_path):
    results = json.loads((tiny_run / "results.json").read_text())
    assert {(r["runtime"], r["device"], r["batch_size"]) for r in results["final"]["latency"]} == \
        {("pytorch", "cpu", 1), ("pytorch", "cpu", 8)}
    report = (tiny_run / "report.md").read_text()
    # a results.json as prunelab 0.1 wrote it: flat keys
    for part in [results["dense"], results["final"], *results["steps"]]:
        for r in part.pop("latency"):
            part[f"latency_ms_cpu_b{r['batch_size']}"] = r["median_ms"]
            part[f"latency_p90_ms_cpu_b{r['batch_size']}"] = r["p90_ms"]
    (tiny_run / "results.json").write_text(json.dumps(results))
    code, _, err = cli("report", tiny_run)
    assert code == 0, err
    assert (tiny_run / "report.md").read_text() == report
    assert find_latency(results["final"], "cpu", 8) == results["final"]["latency_ms_cpu_b8"]


def test_run_files_get_the_usual_permissions(tiny_run):
    import os
    import stat
    umask = os.umask(0)
    os.umask(umask)
    for name in ("checkpoints/final.safetensors", "checkpoints/final.json", "results.json", "results.png"):
        assert stat.S_IMODE((tiny_run / name).stat().st_mode) == 0o666 & ~umask, name


def test_no_model_state_is_evaluated_twice_on_the_same_images(tmp_path, monkeypatch):
    """Each evaluation of the test split costs as much as a training epoch of the dense model on a CPU: the
    final stage's "before" accuracy must be the last step's, not a second pass over the same weights."""
    import prunelab.pipeline as pipeline
    seen, real = [], pipeline.score

    def counting(model, split, *args, **kwargs):
        weights = tuple(round(float(t.double().sum()), 6) for t in model.state_dict().values() if t.is_floating_point())
        seen.append((id(split), len(split), weights))
        return real(model, split, *args, **kwargs)

    monkeypatch.setattr(pipeline, "score", counting)
    cfg = make_config("tiny", {"out_dir": str(tmp_path), "name": "e", "progress": False, "export_onnx": False,
                                  "measure_latency_every_step": False})
    results = json.loads((prunelab.run(cfg) / "results.json").read_text())
    assert len(seen) == 1 + 2 * cfg.iterative_steps + 1  # dense; before and after each step's fine-tune; final
    assert len(set(seen)) == len(seen)
    assert results["final"]["accuracy_before_finetune"] == results["steps"][-1]["accuracy"]


def test_a_sweep_that_trains_its_dense_model_validates_every_seed_on_the_images_that_model_left_out(tmp_path):
    """The sweep's first run trains the dense model that the others share; with --val-size and --seeds each seed
    would otherwise carve its own split, partly from images that model trained on. So such a sweep draws every run's
    split with its first seed (--val-seed); with a --baseline (trained elsewhere) or a --val-seed given, it leaves them."""
    from prunelab.sweep import configs
    base = make_config("tiny", {"val_size": 64, "seeds": [3, 4], "pruning_ratio": 0.5})
    runs = configs(base)
    assert [c.val_seed for c in runs] == [3, 3] and [c.seed for c in runs] == [3, 4]
    assert [c.val_seed for c in configs(dataclasses.replace(base, val_seed=7))] == [7, 7]
    (tmp_path / "dense.safetensors").write_bytes(b"")  # (only its existence is checked here)
    assert [c.val_seed for c in configs(dataclasses.replace(base, baseline=str(tmp_path / "dense.safetensors")))] \
        == [-1, -1]
    assert [c.val_seed for c in configs(dataclasses.replace(base, val_size=0))] == [-1, -1]
