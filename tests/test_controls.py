"""Controls (scratch, random criterion) and repeats over seeds, on tiny synthetic data."""
import json
import statistics

import pytest
import torch

import prunelab
from conftest import cli
from prunelab.config import make_config
from prunelab.controls import reinitialise

FAST = {"progress": False, "export_onnx": False, "measure_latency_every_step": False}


def _cfg(tmp_path, **kw):
    return make_config("tiny", {"out_dir": str(tmp_path / "runs"), **FAST, **kw})


def test_reinitialise_keeps_the_architecture_and_changes_every_weight(tmp_path):
    run_dir = prunelab.run(_cfg(tmp_path, name="r"))
    pruned, _ = prunelab.load(run_dir)
    fresh = reinitialise(prunelab.load(run_dir)[0], seed=1)
    a, b = pruned.state_dict(), fresh.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    changed = [k for k, v in a.items() if v.is_floating_point() and v.numel() > 1 and "running_var" not in k]
    assert changed and all(not torch.equal(a[k], b[k]) for k in changed)


def _first_epoch_lr(control_dir):
    return next(json.loads(line) for line in (control_dir / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["event"] == "epoch")["lr"]


def test_controls_add_rows_to_the_report_with_the_same_architecture_and_budget(tmp_path):
    run_dir = prunelab.run(_cfg(tmp_path, name="r", lr=0.1, finetune_lr=0.03, final_finetune_lr=0.05))
    # the short fine-tunes between steps at finetune_lr, the final one at final_finetune_lr (1-epoch stages: constant)
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "epoch"]
    assert {r["stage"]: r["lr"] for r in epochs} == {0: 0.1, 1: 0.03, 2: 0.03, 3: 0.05}
    code, out, err = cli("control", run_dir, "--kind", "scratch", "random", "--budget", "images")
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    rows = {c["control"]: c for c in results["controls"]}
    assert set(rows) == {"scratch", "random"}
    # scratch: the final architecture (same MACs), as many epochs as the prune-and-fine-tune phase had (2 x 1 + 1)
    assert rows["scratch"]["macs"] == results["final"]["macs"] and rows["scratch"]["epochs"] == 3
    # at the final fine-tune's lr (not the dense one, nor the short fine-tunes'), as the report says
    assert rows["scratch"]["lr"] == 0.05 and _first_epoch_lr(run_dir / "controls" / "scratch") == pytest.approx(0.05)
    scratch_model, _ = prunelab.load(run_dir / "controls" / "scratch" / "model.json")
    pruned, _ = prunelab.load(run_dir)
    assert [p.shape for p in scratch_model.parameters()] == [p.shape for p in pruned.parameters()]
    random_cfg = json.loads((run_dir / "controls" / "random" / "config.json").read_text())
    assert random_cfg["importance"] == "random" and random_cfg["baseline"].endswith("checkpoints/dense.safetensors")
    report = (run_dir / "report.md").read_text()
    assert "## Controls" in report and "scratch control" in report and "random control" in report
    assert "lr 0.05" in report
    s = rows["scratch"]  # the images it trained, beside the phase's count it was given
    assert f"{s['train_images']:,} images for a budget of {s['budget_images']:,}" in report
    # run again: nothing is redone
    before = (run_dir / "controls" / "scratch" / "results.json").stat().st_mtime_ns
    code, out, err = cli("control", run_dir, "--kind", "scratch")  # (the default budget, time: said, not redone)
    assert code == 0 and (run_dir / "controls" / "scratch" / "results.json").stat().st_mtime_ns == before
    assert "keeps the images budget it was planned with, not time" in out + err
    # the run named another way (relative to another folder): the finished random control is read, not redone
    code, _, err = cli("control", run_dir.relative_to(tmp_path), "--kind", "random", cwd=tmp_path)
    assert code == 0, err


def test_the_scratch_control_trains_at_the_rate_the_lr_probe_chose_and_counts_the_reconstruction(tmp_path):
    run_dir = prunelab.run(_cfg(tmp_path, name="p", final_finetune_lr=0.5, lr_probe=[0.01, 0.05], lr_probe_images=96,
                                val_size=48, reconstruct_images=32, reconstruct_steps=2, control_budget="images"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    chosen = next(r["chosen"] for r in rows if r["event"] == "lr_probe")
    refits = [r["reconstruction"] for r in rows if r["event"] == "step"]
    assert len(refits) == 2 and all(r["images"] == 32 for r in refits)
    epochs = [r for r in rows if r["event"] == "epoch" and r["stage"] != 0]
    n_train = next(r["train_images"] for r in rows if r["event"] == "dense")
    code, out, err = cli("control", run_dir, "--kind", "scratch")  # (the run's control_budget: images)
    assert code == 0, err
    plan = json.loads((run_dir / "controls" / "scratch" / "plan.json").read_text())
    assert plan["budget"] == "images"
    # the rate the final fine-tune ran at (not final_finetune_lr, which the probe replaced)
    assert plan["lr"] == chosen != 0.5 and _first_epoch_lr(run_dir / "controls" / "scratch") == pytest.approx(chosen)
    # the phase's training: its epochs and the reconstructions, which train the pruned model's weights too
    assert plan["budget_images"] == sum(r.get("images", n_train) for r in epochs) + 64
    assert plan["budget_seconds"] == pytest.approx(sum(r["seconds"] for r in epochs) + sum(r["seconds"] for r in refits))


def test_the_long_scratch_control_also_counts_the_dense_training_images(tmp_path):
    run_dir = prunelab.run(_cfg(tmp_path, name="r"))
    n_train = json.loads((run_dir / "results.json").read_text())["data"]["train_images"]
    # --baseline-images counts a --baseline's training; this run trained its own dense model, counted already
    code, out, err = cli("control", run_dir, "--kind", "scratch-long", "--baseline-images", str(5 * n_train))
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    row = {c["control"]: c for c in results["controls"]}["scratch-long"]
    # the dense stage (1 epoch) + the prune-and-fine-tune phase (2 steps x 1 + 1 final), in its own directory
    assert row["budget"] == "dense+images" and row["budget_images"] == 4 * n_train and row["epochs"] == 4
    assert row["train_images"] == 4 * n_train and not (run_dir / "controls" / "scratch").exists()
    assert "scratch-long control" in (run_dir / "report.md").read_text()
    # from a --baseline, the baseline's own training images must be given
    based = prunelab.run(_cfg(tmp_path, name="b", baseline=str(run_dir / "checkpoints" / "dense.safetensors")))
    code, out, err = cli("control", based, "--kind", "scratch-long")
    assert code == 2 and "--baseline-images" in err and len(err.strip().splitlines()) == 1
    assert not (based / "controls" / "scratch-long").exists()
    code, out, err = cli("control", based, "--kind", "scratch-long", "--baseline-images", str(2 * n_train))
    assert code == 0, err
    row = json.loads((based / "controls" / "scratch-long" / "results.json").read_text())
    assert row["epochs"] == 2 + 3


def test_a_scratch_control_resumed_after_a_crash_logs_each_epoch_once_and_counts_its_time_once(tmp_path):
    """A crash after the control's last epoch row but before its result (its partial checkpoint is one epoch
    behind the log): the resumed control re-runs that epoch and replaces its row instead of adding a second one,
    which its train_seconds (what a time budget reads) would count twice."""
    run_dir = prunelab.run(_cfg(tmp_path, name="r"))
    assert cli("control", run_dir, "--kind", "scratch", "--budget", "images")[0] == 0
    ctl = run_dir / "controls" / "scratch"
    for name in ("results.json", "model.json", "model.safetensors"):  # the state the crash leaves
        (ctl / name).unlink()
    code, out, err = cli("control", run_dir, "--kind", "scratch", "--budget", "images")
    assert code == 0, err
    epochs = [json.loads(line) for line in (ctl / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "epoch"]
    row = json.loads((ctl / "results.json").read_text())
    assert [e["epoch"] for e in epochs] == [1, 2, 3] == list(range(1, row["epochs"] + 1))
    assert row["train_seconds"] == pytest.approx(sum(e["seconds"] for e in epochs))
    assert row["train_images"] == sum(e["images"] for e in epochs)


def test_the_random_control_s_row_counts_the_images_it_trained_on(tmp_path):
    """With early_images, the fine-tunes between steps train on a subset: 2 steps x 64 images, then the final
    fine-tune on all 256 training images. The row must say 384, not 3 epochs x 256."""
    run_dir = prunelab.run(_cfg(tmp_path, name="r", early_images=64, controls=["random"]))
    results = json.loads((run_dir / "results.json").read_text())
    row = next(c for c in results["controls"] if c["control"] == "random")
    assert row["train_images"] == 2 * 64 + 256
    assert "384 images after the dense stage" in (run_dir / "report.md").read_text()


def test_a_time_budget_trains_the_scratch_control_for_about_the_phase_s_training_time(tmp_path):
    run_dir = prunelab.run(_cfg(tmp_path, name="r", controls=["scratch"], control_lr=0.07))
    row = json.loads((run_dir / "controls" / "scratch" / "results.json").read_text())
    assert row["budget"] == "time" and row["epochs"] >= 1 and row["budget_seconds"] > 0
    assert row["lr"] == 0.07 and _first_epoch_lr(run_dir / "controls" / "scratch") == pytest.approx(0.07)


def test_a_wrong_probe_is_corrected_by_the_first_epoch_and_the_schedule_runs_over_the_new_count(tmp_path, monkeypatch):
    import math

    import prunelab.controls as controls
    run_dir = prunelab.run(_cfg(tmp_path, name="r", finetune_lr=0.05))
    monkeypatch.setattr(controls, "seconds_per_epoch", lambda *a, **k: 1e-6)  # a probe that says: a million epochs
    code, _, err = cli("control", run_dir, "--kind", "scratch")
    assert code == 0, err
    plan = json.loads((run_dir / "controls" / "scratch" / "plan.json").read_text())
    epochs = [json.loads(line) for line in (run_dir / "controls" / "scratch" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "epoch"]
    assert plan["probe_epochs"] > 1000 and 1 <= plan["epochs"] < 50 and len(epochs) == plan["epochs"]
    row = json.loads((run_dir / "controls" / "scratch" / "results.json").read_text())
    assert row["epochs"] == plan["epochs"]
    n = plan["epochs"]  # tiny steps the cosine once per epoch: epoch i runs at 0.05 * (1 + cos(pi * i / n)) / 2
    assert [r["lr"] for r in epochs] == pytest.approx([0.05 * 0.5 * (1 + math.cos(math.pi * i / n)) for i in range(n)])


def test_seeds_give_one_run_each_and_a_mean_and_std_that_match_them(tmp_path):
    group = prunelab.run(_cfg(tmp_path, name="g", seeds=[0, 1]))
    finals = [json.loads((group / f"s{s}" / "results.json").read_text())["final"]["accuracy"] for s in (0, 1)]
    summary = json.loads((group / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert summary["accuracy"]["pruned"]["mean"] == pytest.approx(statistics.fmean(finals))
    assert summary["accuracy"]["pruned"]["std"] == pytest.approx(statistics.stdev(finals))
    assert "± " in (group / "seeds.md").read_text()
    stamps = [(group / f"s{s}" / "results.json").stat().st_mtime_ns for s in (0, 1)]
    prunelab.run(_cfg(tmp_path, name="g", seeds=[0, 1]))  # again: both finished, nothing redone
    assert stamps == [(group / f"s{s}" / "results.json").stat().st_mtime_ns for s in (0, 1)]


@pytest.mark.parametrize("args, message", [
    (["--controls", "scratchy"], "controls must be scratch and/or scratch-long and/or random"),
    (["--seeds", "1", "1"], "seeds must be distinct non-negative integers"),
    (["--seeds", "-1"], "seeds must be distinct non-negative integers"),
    (["--control-budget", "money"], "unknown control_budget"),
    (["--control-lr", "-0.1"], "control_lr must be >= 0"),
    (["--final-finetune-lr", "-0.2"], "final_finetune_lr must be 0 (= finetune_lr) or positive"),
    (["--sparse-reg", "-1"], "sparse_reg must be 0 or more"),
])
def test_bad_control_and_seed_settings_are_refused_in_one_line(tmp_path, args, message):
    code, _, err = cli("run", "--preset", "tiny", "--out-dir", tmp_path, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "tiny").exists()


def test_a_control_of_an_unfinished_run_is_refused(tmp_path):
    cfg = _cfg(tmp_path, name="r")
    from prunelab.rundir import create
    create(cfg)
    code, _, err = cli("control", tmp_path / "runs" / "r", "--kind", "scratch")
    assert code == 2 and "has not finished" in err


def test_sparse_training_shrinks_the_weakest_channel_groups_most():
    import dataclasses
    from prunelab.data import load_data
    from prunelab.models import build_model
    from prunelab.prune import build_sparsifier
    from prunelab.train import Trainer, make_optimizer, train_epoch

    cfg = make_config("tiny", {"precision": "fp32"})
    data = load_data(cfg)
    trainer = Trainer.from_config(cfg, torch.device("cpu"), data.inputs)
    shares = {}
    for reg in (0.0, 0.1):
        torch.manual_seed(0)
        model = build_model("resnet18_cifar", 10)
        sparsifier = build_sparsifier(model, dataclasses.replace(cfg, sparse_reg=reg), 32, 10)
        opt = make_optimizer(model, cfg, 0.1)
        for epoch in range(2):
            sparsifier.update_regularizer()
            train_epoch(model, data.train, opt, None, trainer, torch.Generator().manual_seed(epoch),
                        regularize=lambda: sparsifier.regularize(model))
        layer_shares = []  # per convolution: the share of its output channels' L2 norm held by the weaker half
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.out_channels >= 8:
                norms = m.weight.detach().flatten(1).norm(dim=1).sort().values
                layer_shares.append(float(norms[: len(norms) // 2].sum() / norms.sum()))
        shares[reg] = statistics.fmean(layer_shares)
    assert shares[0.1] < 0.9 * shares[0.0], shares


def test_a_run_with_sparse_training_reports_it_and_resumes_from_its_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, name="sp", sparse_epochs=1, sparse_reg=0.01)
    run_dir = prunelab.run(cfg)
    results = json.loads((run_dir / "results.json").read_text())
    assert "sparse" in results and results["wall_time_s"]["sparse_training"] > 0
    assert "| sparse training |" in (run_dir / "report.md").read_text()
    assert (run_dir / "checkpoints" / "sparse.json").is_file()
    # a crash after sparse training: the pruning steps are redone from the sparse checkpoint, with the same result
    for stem in ("step_01", "step_02", "final"):
        for suffix in (".json", ".safetensors"):
            (run_dir / "checkpoints" / f"{stem}{suffix}").unlink()
    (run_dir / "results.json").unlink()
    lines = [ln for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(ln)["stage"] in (0, -1)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    prunelab.run(None, run_dir)
    again = json.loads((run_dir / "results.json").read_text())
    assert again["final"]["accuracy"] == results["final"]["accuracy"]
    assert sum(1 for e in again["epochs"] if e["stage"] == -1) == 1  # sparse training was not redone


def test_a_sweep_plan_runs_as_independent_processes_and_collect_groups_seeds(tmp_path):
    import subprocess
    import sys
    base = prunelab.run(_cfg(tmp_path, name="base"))  # its dense checkpoint is the plan's shared baseline
    dense = base / "checkpoints" / "dense.safetensors"
    code, out, err = cli("sweep", "--preset", "tiny", "--out-dir", tmp_path / "runs", "--name", "sw", "--no-progress",
                         "--no-export-onnx", "--no-measure-latency-every-step", "--baseline", dense,
                         "--targets-macs", "40e6", "--seeds", "0", "1", "--controls", "scratch",
                         "--control-budget", "images", "--no-fill-budget", "--plan", tmp_path / "plan")
    assert code == 0, err
    commands = (tmp_path / "plan" / "commands.txt").read_text().splitlines()
    assert len(commands) == 2 and all(c.startswith("prunelab run --or-resume --config ") for c in commands)
    assert not (tmp_path / "runs" / "sw").exists()  # a plan runs nothing
    jobs = [subprocess.Popen([sys.executable, "-m", "prunelab", *c.split()[1:]], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for c in commands]  # two processes at once
    for job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-2000:]
    sweep = tmp_path / "runs" / "sw"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["l2-macs40M-s0", "l2-macs40M-s1"]
    code, out, err = cli("collect", sweep)
    assert code == 0, err
    finals = [json.loads((sweep / f"l2-macs40M-s{s}" / "results.json").read_text())["final"]["accuracy"] for s in (0, 1)]
    table = (sweep / "pareto.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| l2-macs40M |"))
    assert f"{100 * statistics.fmean(finals):.2f}% ± {100 * statistics.stdev(finals):.2f}" in row
    assert "scratch control" in table and (sweep / "pareto.png").is_file()
    # a job started again resumes (here: finds its run finished) instead of refusing the existing folder
    again = subprocess.run([sys.executable, "-m", "prunelab", *commands[0].split()[1:]], capture_output=True, text=True)
    assert again.returncode == 0 and "already finished" in again.stdout + again.stderr


def test_a_plan_without_a_baseline_is_refused(tmp_path):
    code, _, err = cli("sweep", "--preset", "tiny", "--out-dir", tmp_path, "--targets-macs", "40e6",
                       "--plan", tmp_path / "plan")
    assert code == 2 and "pass --baseline FILE" in err and not (tmp_path / "plan").exists()


def _class0_share(model_json) -> float:
    """Mean softmax probability of class 0 that a model gives noise images (what a constant teacher teaches)."""
    model, _ = prunelab.load(model_json)
    with torch.no_grad():
        return torch.softmax(model(torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))), 1)[:, 0] \
            .mean().item()


def test_the_scratch_control_of_a_distilled_run_distils_from_the_same_teacher(tmp_path):
    """A teacher that says 'class 0' whatever it sees, distilled from alone (distill_weight 1): the scratch control
    learns to say it too, from the cached outputs the run wrote; with --no-distill it learns the labels. A teacher
    file that is gone is named in one line before the control trains."""
    import shutil

    from prunelab import modelfile
    from prunelab.models import InputSpec, build_model
    cfg = _cfg(tmp_path)
    teacher = build_model("resnet18_cifar", 10)
    with torch.no_grad():
        teacher.fc.weight.zero_()
        teacher.fc.bias.copy_(torch.tensor([40.0] + [0.0] * 9))
    path = modelfile.save(tmp_path / "teacher", teacher, "resnet18_cifar", [],
                          inputs=InputSpec(cfg.image_size, (0.4914, 0.4822, 0.4465), (0.2470, 0.2430, 0.2610),
                                           tuple(f"class{i}" for i in range(10))))
    run_dir = prunelab.run(_cfg(tmp_path, name="r", distill=True, distill_cached=True, distill_weight=1.0,
                                teacher=str(path), cache_dir=str(tmp_path / "cache")))
    plain, gone = tmp_path / "plain", tmp_path / "gone"
    shutil.copytree(run_dir, plain)
    shutil.copytree(run_dir, gone)
    code, out, err = cli("control", run_dir, "--kind", "scratch", "--budget", "images")
    assert code == 0, err
    row = json.loads((run_dir / "controls" / "scratch" / "results.json").read_text())
    assert row["distilled"] and row["distill_targets"]["hit"]  # the run's cached outputs, read back
    assert "distilled from the run's teacher" in (run_dir / "report.md").read_text()
    assert cli("collect", run_dir.parent)[0] == 0  # a sweep's table says so too
    assert "r vs its scratch control (distilled from the same teacher):" in (run_dir.parent / "pareto.md").read_text()
    shutil.copytree(run_dir, tmp_path / "group" / "s0")  # and a group of seeds
    from prunelab.report import seeds_summary
    seeds_summary(tmp_path / "group")
    assert "- pruned vs scratch control (distilled from the same teacher):" in (tmp_path / "group" / "seeds.md").read_text()
    code, out, err = cli("control", plain, "--kind", "scratch", "--budget", "images", "--no-distill")
    assert code == 0, err
    assert not json.loads((plain / "controls" / "scratch" / "results.json").read_text())["distilled"]
    distilled, labels = (_class0_share(d / "controls" / "scratch" / "model.json") for d in (run_dir, plain))
    assert distilled > 0.5 > 0.3 > labels, (distilled, labels)
    (tmp_path / "teacher.safetensors").rename(tmp_path / "elsewhere.safetensors")
    code, out, err = cli("control", gone, "--kind", "scratch", "--budget", "images")
    assert code == 2 and "teacher.safetensors" in err and "--no-distill" in err and len(err.strip().splitlines()) == 1
    assert not (gone / "controls" / "scratch").exists()


def test_a_scratch_control_distils_from_the_run_s_dense_model_and_keeps_the_plan_it_started_with(tmp_path):
    """The dense model as the teacher, run on every batch, under the time budget; then a control killed after its
    plan and resumed: with --no-distill it is refused in one line (it started distilling); a plan of a version
    whose controls never distilled goes on without the teacher."""
    run_dir = prunelab.run(_cfg(tmp_path, name="r", distill=True))
    code, out, err = cli("control", run_dir, "--kind", "scratch")
    assert code == 0, err
    ctl = run_dir / "controls" / "scratch"
    row = json.loads((ctl / "results.json").read_text())
    assert row["distilled"] and row["budget"] == "time" and "distill_targets" not in row

    def kill():  # the state a crash after the last epoch's row leaves
        for name in ("results.json", "model.json", "model.safetensors"):
            (ctl / name).unlink()
    kill()
    code, out, err = cli("control", run_dir, "--kind", "scratch", "--no-distill")
    assert code == 2 and "started distilling" in err and len(err.strip().splitlines()) == 1
    assert not (ctl / "results.json").exists()
    plan = json.loads((ctl / "plan.json").read_text())
    del plan["distilled"]
    (ctl / "plan.json").write_text(json.dumps(plan))
    code, out, err = cli("control", run_dir, "--kind", "scratch")
    assert code == 0, err
    assert "keeps training on the labels alone" in out + err
    assert not json.loads((ctl / "results.json").read_text())["distilled"]
