"""Two processes on CPU with gloo, started by torchrun as a user would."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunelab import distributed
from prunelab.config import make_config
from prunelab.data import load_data
from prunelab.modelfile import load as load_model
from prunelab.train import Trainer, score

import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_two_ranks_end_with_identical_structure_and_weights_and_reduced_metrics_match_one_process(tmp_path, importance):
    r = torchrun(WORKER, tmp_path, importance)
    assert r.returncode == 0, r.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert rank0["widths"] == rank1["widths"] and rank0["weights_sha256"] == rank1["weights_sha256"]
    assert rank0["widths"]["conv1"] < 64  # it was pruned
    # the accuracy reduced over two shards equals one process evaluating the whole test set
    model, _ = load_model(tmp_path / "model.safetensors")
    cfg = make_config("tiny")
    trainer = Trainer.from_config(cfg, torch.device("cpu"))
    single = score(model, load_data(cfg).test, trainer.normalizer, 32)
    assert rank0["accuracy"] == single["accuracy"]
    assert rank0["loss"] == pytest.approx(single["loss"], rel=1e-4)


def test_sharding_follows_distributed_sampler():
    perm = torch.arange(10)
    shards = [distributed.shard(perm, distributed.World(rank=r, size=3)) for r in range(3)]
    sampler = [list(torch.utils.data.DistributedSampler(range(10), num_replicas=3, rank=r, shuffle=False))
               for r in range(3)]
    assert [s.tolist() for s in shards] == sampler


def test_torchrun_pipeline_writes_one_complete_run_directory_and_sizes_the_schedule_by_each_ranks_batches(tmp_path):
    r = torchrun("-m", "prunelab", "run", "--preset", "tiny", "--no-progress", "--out-dir", tmp_path, "--name", "ddp",
                 "--num-threads", "1", "--no-export-onnx", "--lr-schedule-unit", "batch", "--epochs", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]
    run = tmp_path / "ddp"
    res = json.loads((run / "results.json").read_text())
    assert [s["step"] for s in res["steps"]] == [1, 2]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len({(json.loads(x)["stage"], json.loads(x).get("epoch"), json.loads(x)["event"]) for x in lines})
    assert r.stdout.count("prunelab run 'ddp'") == 1  # only rank 0 prints
    assert "processes=2" in r.stdout
    # each rank steps the per-batch cosine once per batch of its own shard: 256 images / 2 ranks / batch 64 = 2
    # batches per epoch, so the last batch of every stage runs at the schedule's last step, not half-way
    last = {}
    for row in map(json.loads, lines):
        if row["event"] == "epoch":
            last[row["stage"]] = row["lr"]
    end = lambda steps: 0.1 * 0.5 * (1 + math.cos(math.pi * (steps - 1) / steps))  # noqa: E731
    assert last[0] == pytest.approx(end(2 * 2)) and last[1] == last[2] == last[3] == pytest.approx(end(2))


def test_torchrun_resume_continues_a_cut_run_to_the_same_result(tmp_path):
    args = ["--preset", "tiny", "--no-progress", "--num-threads", "1", "--no-export-onnx"]
    assert torchrun("-m", "prunelab", "run", *args, "--out-dir", tmp_path, "--name", "whole").returncode == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    # the state a kill after step 1 leaves: no later checkpoints, no results, the metrics of step 2 half written
    cut = tmp_path / "whole"
    for name in ("step_02.json", "step_02.safetensors", "final.json", "final.safetensors"):
        (cut / "checkpoints" / name).unlink()
    (cut / "results.json").unlink()
    r = torchrun("-m", "prunelab", "run", "--resume", cut, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = json.loads((cut / "results.json").read_text())
    assert resumed["final"]["accuracy"] == whole["final"]["accuracy"]
    assert resumed["final"]["params"] == whole["final"]["params"]
    assert "resuming after step_01" in r.stdout


def test_torchrun_with_the_lr_probe_and_reconstruction_ends_with_ranks_that_agree(tmp_path):
    # the reconstruction runs on rank 0's images and is broadcast; the probe scores each rate on the validation split
    # reduced over both shards: ranks that chose differently would fail the check every checkpoint makes
    r = torchrun("-m", "prunelab", "run", "--preset", "tiny", "--no-progress", "--out-dir", tmp_path, "--name", "p",
                 "--num-threads", "1", "--no-export-onnx", "--iterative-steps", "1", "--val-size", "64",
                 "--lr-probe", "0.05", "0.2", "--lr-probe-images", "64", "--reconstruct-images", "64")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    assert res["lr_probe"]["chosen"] in (0.05, 0.2) and res["steps"][0]["reconstruction"]["images"] == 64
    assert r.stdout.count("lr probe: 0.05") == 1  # one rank reports
