"""Controls (scratch, random criterion) and repeats over seeds, on tiny synthetic data."""
import json
import statistics

import pytest
import torch

import prunelab
from conftest import cli
from prunelab.config import PrunelabError, make_config
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


def test_controls_add_rows_to_the_report_with_the_same_architecture_and_budget(tmp_path):
    run_dir = prunelab.run(_cfg(tmp_path, name="r"))
    code, out, err = cli("control", run_dir, "--kind", "scratch", "random", "--budget", "images")
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    rows = {c["control"]: c for c in results["controls"]}
    assert set(rows) == {"scratch", "random"}
    # scratch: the final architecture (same MACs), as many epochs as the prune-and-fine-tune phase had (2 x 1 + 1)
    assert rows["scratch"]["macs"] == results["final"]["macs"] and rows["scratch"]["epochs"] == 3
    scratch_model, _ = prunelab.load(run_dir / "controls" / "scratch" / "model.json")
    pruned, _ = prunelab.load(run_dir)
    assert [p.shape for p in scratch_model.parameters()] == [p.shape for p in pruned.parameters()]
    random_cfg = json.loads((run_dir / "controls" / "random" / "config.json").read_text())
    assert random_cfg["importance"] == "random" and random_cfg["baseline"].endswith("checkpoints/dense.safetensors")
    report = (run_dir / "report.md").read_text()
    assert "## Controls" in report and "scratch control" in report and "random control" in report
    # run again: nothing is redone
    before = (run_dir / "controls" / "scratch" / "result.json").stat().st_mtime_ns
    code, out, _ = cli("control", run_dir, "--kind", "scratch")
    assert code == 0 and (run_dir / "controls" / "scratch" / "result.json").stat().st_mtime_ns == before


def test_a_time_budget_trains_the_scratch_control_for_about_the_phase_s_training_time(tmp_path):
    run_dir = prunelab.run(_cfg(tmp_path, name="r", controls=["scratch"]))
    row = json.loads((run_dir / "controls" / "scratch" / "result.json").read_text())
    assert row["budget"] == "time" and row["epochs"] >= 1 and row["budget_seconds"] > 0


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
    (["--controls", "scratchy"], "controls must be scratch and/or random"),
    (["--seeds", "1", "1"], "seeds must be distinct non-negative integers"),
    (["--seeds", "-1"], "seeds must be distinct non-negative integers"),
    (["--control-budget", "money"], "unknown control_budget"),
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
