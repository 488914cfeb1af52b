"""Distillation loss, MACs/params targets and the geometric schedule (issue: beat the seed)."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import cli, run_cli
from prunelab.config import PrunelabError, make_config
from prunelab.models import build_model
from prunelab.prune import build_pruner, count_macs_params, geometric_scheduler, prune_step
from prunelab.targets import ratio_for_target
from prunelab.data import Split, load_data
from prunelab.train import (Distillation, Trainer, cosine_schedule, distillation_loss, make_optimizer, soft_targets,
                            train_epoch, view_targets)


def test_distillation_loss_is_cross_entropy_at_weight_0_and_zero_kl_when_student_equals_teacher():
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.allclose(distillation_loss(logits, torch.randn(8, 10), labels, 4.0, 0.0), F.cross_entropy(logits, labels))
    assert distillation_loss(logits, logits.clone(), labels, 4.0, 1.0).abs() < 1e-6


def test_a_training_epoch_is_plain_sgd_on_its_batches():
    # train_epoch against the loop a notebook writes (cross-entropy, zero_grad, backward, SGD with momentum and weight
    # decay) on the batches train_batches draws from the same generator: the same weights and running statistics after
    # the epoch, and the same mean loss (RESULTS 7.28: prunelab's loop trains as a plain PyTorch loop does)
    from prunelab.data import train_batches
    cfg = make_config("tiny", {"precision": "fp32", "channels_last": False, "batch_size": 16, "progress": False})
    trainer = Trainer.from_config(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    ref, start = copy.deepcopy(net), copy.deepcopy(net)
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (80, 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (80,), generator=g))
    stats = train_epoch(net, split, make_optimizer(net, cfg, 0.1), None, trainer, torch.Generator().manual_seed(5))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    losses = []
    ref.train()
    for images, labels in train_batches(split, 16, torch.Generator().manual_seed(5), cfg.crop_padding_px, cfg.flip):
        loss = F.cross_entropy(ref(trainer.normalizer(images)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item() * len(labels))
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    assert stats["loss"] == pytest.approx(sum(losses) / 80, rel=1e-5)
    assert not torch.allclose(net[0].weight, start[0].weight, atol=1e-3)  # it trained


def test_distillation_loss_pulls_the_student_toward_the_teacher():
    teacher = torch.randn(16, 10) * 3
    student = torch.zeros(16, 10, requires_grad=True)
    opt = torch.optim.SGD([student], lr=0.5)
    before = F.kl_div(F.log_softmax(student, 1), F.softmax(teacher, 1), reduction="batchmean").item()
    for _ in range(200):
        opt.zero_grad()
        distillation_loss(student, teacher, torch.zeros(16, dtype=torch.long), 2.0, 1.0).backward()
        opt.step()
    after = F.kl_div(F.log_softmax(student, 1), F.softmax(teacher, 1), reduction="batchmean").item()
    assert after < before / 10


def test_cached_soft_targets_are_the_teachers_outputs_averaged_over_each_image_and_its_mirror():
    cfg = make_config("tiny", {"progress": False, "precision": "fp32"})
    split = load_data(cfg).test
    trainer = Trainer.from_config(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    teacher = build_model("resnet18_cifar").eval().to(memory_format=torch.channels_last)
    targets = soft_targets(teacher, split, trainer)
    assert targets.shape == (len(split), 10) and targets.dtype == torch.float32
    mirrored = soft_targets(teacher, Split(split.images.flip(3), split.labels), trainer)
    assert torch.allclose(targets, mirrored, atol=1e-5)  # an image and its mirror get the same target
    with torch.inference_mode():
        x = trainer.normalizer(split.images[:4])
        direct = (teacher(x).float() + teacher(x.flip(3)).float()) / 2
    assert torch.allclose(targets[:4], direct, atol=1e-5)


def test_training_on_cached_targets_uses_the_row_of_each_image():
    """Pure distillation (weight 1) on targets that name another class than the label (label + 1): the
    student can only learn that mapping if every batch gets the rows of its own images."""
    cfg = make_config("tiny", {"progress": False, "crop_padding_px": 0, "flip": False, "batch_size": 32})
    split = load_data(cfg).train
    trainer = Trainer.from_config(cfg, torch.device("cpu"))
    classes = (split.labels + 1) % 10  # not the labels: the targets alone carry this
    targets = F.one_hot(classes, 10).float() * 20
    torch.manual_seed(0)
    model = build_model("resnet18_cifar").to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(4):
        train_epoch(model, split, opt, None, trainer, torch.Generator().manual_seed(epoch),
                    distill=Distillation(1.0, 1.0, targets=targets))
    model.eval()
    with torch.inference_mode():
        predicted = model(trainer.normalizer(split.images)).argmax(1)
    assert (predicted == classes).float().mean() > 0.8


def test_replayed_views_pair_every_training_image_with_the_teacher_output_of_the_view_it_is_shown_as():
    """--distill-views: the targets are the teacher's outputs on fixed crops and flips of each image; training
    shows each image as one of those views and looks up that view's target. The teacher run on the batch it is
    shown must give exactly the target row the loss uses, for every image of every batch; fresh crops would not."""
    from prunelab.data import apply_views, draw_views, train_batches
    cfg = make_config("tiny", {"progress": False, "precision": "fp32", "batch_size": 32})
    split = load_data(cfg).train
    trainer = Trainer.from_config(cfg, torch.device("cpu"))
    views = draw_views(len(split), 3, 4, True, torch.Generator().manual_seed(0))
    assert views.shape == (len(split), 3, 3) and set(views[..., 2].unique().tolist()) == {0, 1}
    assert views[..., :2].min() >= 0 and views[..., :2].max() == 8  # offsets in [0, 2 * padding]
    code = (views[..., 0].long() * 9 + views[..., 1]) * 2 + views[..., 2]
    assert all(len(set(row)) == 3 for row in code.tolist())  # an image's views are different ones
    both = draw_views(len(split), 2, 0, True, torch.Generator().manual_seed(0))  # flips only: image and mirror
    assert torch.equal(both[..., 2].sort(1).values, torch.tensor([[0, 1]]).expand(len(split), 2))
    assert both[..., :2].abs().sum() == 0
    torch.manual_seed(0)
    teacher = build_model("resnet18_cifar").eval()
    targets = view_targets(teacher, split, trainer, views)
    assert targets.shape == (len(split), 3, 10)
    assert not torch.allclose(targets[:, 0], targets[:, 1])  # the views differ, and so do their outputs
    shown = set()
    for images, labels, idx in train_batches(split, 32, torch.Generator().manual_seed(1), 4, True, with_index=True,
                                             views=views):
        image, view = idx // 3, idx % 3
        shown.update(view.tolist())
        assert torch.equal(labels, split.labels[image])
        assert torch.equal(images, apply_views(split.images[image], views[image, view], 4))
        with torch.inference_mode():
            direct = teacher(trainer.normalizer(images)).float()
        assert torch.allclose(direct, targets.flatten(0, 1)[idx], atol=1e-4)
    assert shown == {0, 1, 2}
    # the same batch with a fresh crop (no views) is another image, and the early stages' rows follow their images
    assert torch.equal(apply_views(split.images[:2], torch.tensor([[4, 4, 0], [4, 4, 1]]), 4),
                       torch.stack([split.images[0], split.images[1].flip(2)]))
    part = Distillation(4.0, 0.5, targets=targets, views=views).subset(torch.tensor([5, 2]))
    assert torch.equal(part.targets, targets[[5, 2]]) and torch.equal(part.views, views[[5, 2]])


def test_run_with_replayed_views_computes_them_once_and_refuses_what_cannot_replay(tmp_path):
    code, out, err = cli("run", "--preset", "tiny", "--no-progress", "--out-dir", tmp_path, "--name", "t", "--distill",
                         "--distill-cached", "--distill-views", "2", "--no-export-onnx")
    assert code == 0, err
    assert out.count("distillation targets for 256 images x 2 views") == 1
    assert "its outputs on 2 fixed views per image replayed" in out  # the recipe line says how it distilled
    for args, message in ((["--distill", "--distill-views", "2"], "add --distill --distill-cached"),
                          (["--distill", "--distill-cached", "--distill-views", "-1"], "distill_views must be 0"),
                          (["--distill", "--distill-cached", "--distill-views", "2", "--augmentation", "resized-crop"],
                           "drop --distill-views"),
                          (["--distill", "--distill-cached", "--distill-views", "2", "--image-size", "96"],
                           "add --augmentation pad-crop"),
                          (["--distill", "--distill-cached", "--distill-views", "40", "--memory-budget-gb", "0.0001"],
                           "use fewer views"),
                          (["--distill", "--distill-cached", "--distill-views", "3", "--crop-padding-px", "0",
                            "--no-flip"], "only 1 different views")):
        code, _, err = cli("run", "--preset", "tiny", *args, "--out-dir", tmp_path / "bad", "--name", "b")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad" / "b" / "config.json").exists()


def test_distillation_loss_scales_the_soft_term_by_temperature_squared():
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    kl = F.kl_div(F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction="batchmean")
    assert torch.allclose(distillation_loss(s, t, y, 3.0, 1.0), 9 * kl, atol=1e-5)


def test_geometric_schedule_removes_the_same_share_of_what_remains_each_step():
    ratios = geometric_scheduler(0.9, 4)
    kept = [1 - r for r in ratios]
    assert math.isclose(ratios[-1], 0.9)
    shares = [kept[k + 1] / kept[k] for k in range(4)]
    assert all(math.isclose(x, shares[0]) for x in shares)


def test_geometric_pruner_follows_the_schedule():
    cfg = make_config("seed", {"schedule": "geometric", "iterative_steps": 3, "pruning_ratio": 0.875})
    model = build_model("resnet18_cifar")
    pruner = build_pruner(model, cfg)
    widths = []
    for _ in range(3):
        prune_step(pruner, model)
        widths.append(model.conv1.out_channels)
    assert widths == [32, 16, 8]  # 64 * 0.5 ** k


def test_ratio_for_target_reaches_a_macs_target_without_overshooting_much():
    cfg = make_config("seed", {"iterative_steps": 1})
    dense = build_model("resnet18_cifar")
    ratio = ratio_for_target(dense, cfg, target_macs=50e6)
    model = build_model("resnet18_cifar")
    pruner = build_pruner(model, cfg, pruning_ratio=ratio)
    prune_step(pruner, model)
    macs, _ = count_macs_params(model)
    assert macs <= 50e6
    looser = build_model("resnet18_cifar")
    p2 = build_pruner(looser, cfg, pruning_ratio=ratio - 0.02)
    prune_step(p2, looser)
    assert count_macs_params(looser)[0] > macs  # a smaller ratio would have kept more


def test_a_size_budget_that_rounding_leaves_idle_is_filled_to_the_last_group_that_fits():
    """round_to 8 rounds every group's kept channels down, so the smallest uniform ratio that meets a small budget
    leaves much of it idle (RESULTS 7.10: 40% of the parameters at the seed's size). fill_budget widens groups into
    it: the filled copy meets both limits, is larger than uniform's, and no group can be widened by one more step of
    8 channels without breaking a limit."""
    from prunelab.models import drop_blocks
    from prunelab.prune import group_roots, prune_once
    from prunelab.targets import fill_budget
    # the ResNet-10 shape (8 groups, not ResNet-18's 12) at 16 px: each prune here costs half as much
    model = drop_blocks(build_model("resnet18_cifar"), ["layer1.1", "layer2.1", "layer3.1", "layer4.1"])
    cfg, size = make_config("seed", {"round_to": 8}), 16
    limits = (1.0e6, 105_428)  # uniform round_to 8 keeps ~0.74 M MACs and ~52 k params of it

    def counts(**kwargs):
        return count_macs_params(prune_once(model, cfg, image_size=size, num_classes=10, **kwargs), size)

    ratio = ratio_for_target(model, cfg, *limits, image_size=size, iterations=6)
    uniform = counts(ratio=ratio)
    filled, reported = fill_budget(model, cfg, ratio, *limits, image_size=size, num_classes=10)
    after = counts(ratio=0.0, group_ratios=filled)
    assert tuple(after) == tuple(reported) and all(a <= limit for a, limit in zip(after, limits)) and after[1] > 1.5 * uniform[1] and after[0] > uniform[0]
    roots = group_roots(model, cfg, size, 10)
    keep = {g: int(c * (1 - filled[g])) for g, c in roots.items()}
    assert all(k % 8 == 0 for k in keep.values())
    for g in [g for g in roots if keep[g] + 8 <= roots[g]]:
        wider = {h: (roots[h] - keep[h] - (8 if h == g else 0) - 0.5) / roots[h] for h in roots}
        assert any(a > limit for a, limit in zip(counts(ratio=0.0, group_ratios=wider), limits)), g


def test_a_budget_is_filled_through_depthwise_convolutions_that_share_their_groups_widths():
    """A depthwise convolution (groups == channels) is pruned with the convolution before it, so its group's width
    is read from the group's root: filling a MobileNet-like network's budget keeps every width a multiple of 8,
    reports the size its widths really have, and meets both limits."""
    import torch.nn as nn
    from prunelab.prune import layer_widths, prune_once
    from prunelab.targets import fill_budget

    def block(i, o):
        return [nn.Conv2d(i, i, 3, 2, 1, groups=i, bias=False), nn.BatchNorm2d(i), nn.ReLU(),
                nn.Conv2d(i, o, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), *block(32, 64),
                          *block(64, 96), *block(96, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    cfg, size = make_config("seed", {"round_to": 8}), 16
    dense = count_macs_params(model, size)
    limits = (0.3 * dense[0], 0.3 * dense[1])
    ratio = ratio_for_target(model, cfg, *limits, image_size=size, iterations=8)
    uniform = count_macs_params(prune_once(model, cfg, ratio, image_size=size, num_classes=10), size)
    filled, reported = fill_budget(model, cfg, ratio, *limits, image_size=size, num_classes=10)
    pruned = prune_once(model, cfg, 0.0, image_size=size, num_classes=10, group_ratios=filled)
    after, widths = count_macs_params(pruned, size), layer_widths(pruned)
    assert tuple(after) == tuple(reported) and all(a <= limit for a, limit in zip(after, limits))
    assert after[1] > uniform[1] and all(w % 8 == 0 for w in widths.values()), widths
    assert pruned(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_a_criterion_that_leaves_some_groups_whole_is_sized_with_that_criterion():
    """The size searches cut with random importance where the criterion cannot change the widths (targets.
    sizing_importance); bn_scale scores only groups with a batch norm and Torch-Pruning leaves the others whole, so
    its searches must cut with bn_scale itself: the found ratio's real cut meets the target."""
    import torch.nn as nn
    from prunelab.prune import prune_once
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(),  # no batch norm: bn_scale leaves it whole
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    cfg = make_config("seed", {"importance": "bn_scale", "round_to": 1})
    dense_macs = count_macs_params(model)[0]
    target = 0.6 * dense_macs
    ratio = ratio_for_target(model, cfg, target_macs=target, iterations=8)
    assert count_macs_params(prune_once(model, cfg, ratio, num_classes=10))[0] <= target
    l2 = ratio_for_target(model, make_config("seed", {"round_to": 1}), target_macs=target, iterations=8)
    assert ratio > l2  # (bn_scale must cut its one scored group harder to reach the same MACs)


def test_ratio_for_target_params():
    ratio = ratio_for_target(build_model("resnet18_cifar"), make_config("seed"), target_params=1e6)
    model = build_model("resnet18_cifar")
    prune_step(build_pruner(model, make_config("seed", {"iterative_steps": 1}), pruning_ratio=ratio), model)
    assert count_macs_params(model)[1] <= 1e6


def test_macs_and_params_targets_together_are_both_met():
    """The seed's size is two limits (105,428 params and 5.29 M MACs): the ratio found meets both, and is set by the
    one that binds."""
    dense = build_model("resnet18_cifar")
    cfg = make_config("seed", {"iterative_steps": 1})
    both = ratio_for_target(dense, cfg, target_macs=100e6, target_params=1e6)
    assert both == max(ratio_for_target(dense, cfg, target_macs=100e6), ratio_for_target(dense, cfg, target_params=1e6))
    model = build_model("resnet18_cifar")
    prune_step(build_pruner(model, cfg, pruning_ratio=both), model)
    macs, params = count_macs_params(model)
    assert macs <= 100e6 and params <= 1e6


def test_warmup_then_cosine_schedule():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = cosine_schedule(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0 and lrs[-1] < 0.05
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_a_schedule_started_at_step_k_runs_the_same_lrs_as_one_stepped_k_times_and_warns_nothing():
    """A resumed stage starts its schedule where it stopped; stepping it there before any optimizer.step() made
    torch warn ("Detected call of lr_scheduler.step() before optimizer.step()") on every resume."""
    import warnings

    def lrs(start):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sched = cosine_schedule(opt, total_steps=10, warmup_steps=2, start=start)
            out = []
            for _ in range(10 - start):
                out.append(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
        return out
    full = lrs(0)
    assert lrs(4) == full[4:] and lrs(1) == full[1:]


def test_run_with_a_macs_target_and_distillation_ends_at_or_below_the_target(tmp_path):
    r = run_cli("run", "--preset", "tiny", "--no-progress", "--out-dir", tmp_path, "--name", "t", "--distill",
                "--target-macs", "30e6", "--no-export-onnx")
    assert r.returncode == 0, r.stderr
    import json
    res = json.loads((tmp_path / "t" / "results.json").read_text())
    assert res["final"]["macs"] <= 30e6 < res["steps"][0]["macs"]


@pytest.mark.parametrize("args, message", [
    (["--target-macs", "1e12"], "MACs of the dense model"),
    (["--target-latency-ms", "5", "--target-params", "1e5"], "a latency target or a size target"),
    (["--distill-weight", "1.5"], "distill_weight must be in [0, 1]"),
    (["--schedule", "cubic"], "unknown schedule"),
    (["--distill-cached"], "add --distill"),
])
def test_contradictory_recipe_settings_are_refused(tmp_path, args, message):
    r = run_cli("run", "--preset", "tiny", *args, "--out-dir", tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not list(tmp_path.rglob("config.json"))


def test_cached_distillation_targets_are_the_teacher_files_outputs_not_the_dense_models(tmp_path, monkeypatch):
    """--teacher and --distill-cached combine: the targets are cached once for the run, not per stage, and computed
    by the teacher file's weights, not the dense model's (a spy on the pipeline's call, which it passes through)."""
    from prunelab import modelfile, train
    from prunelab.models import InputSpec
    from prunelab.sweep import run
    overrides = {"out_dir": str(tmp_path), "name": "t", "distill": True, "distill_cached": True, "export_onnx": False,
                 "progress": False, "precision": "fp32", "cache_dir": str(tmp_path / "cache")}
    cfg = make_config("tiny", overrides)
    torch.manual_seed(123)  # weights no dense training would give
    teacher = modelfile.save(tmp_path / "teacher", build_model("resnet18_cifar", 10), "resnet18_cifar", [],
                             inputs=InputSpec(cfg.image_size, (0.4914, 0.4822, 0.4465), (0.2470, 0.2430, 0.2610),
                                              tuple(f"class{i}" for i in range(10))))
    seen, real = [], train.soft_targets

    def spy(model, *args, **kwargs):
        seen.append({k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)
    monkeypatch.setattr(train, "soft_targets", spy)
    run(make_config("tiny", {**overrides, "teacher": str(teacher)}))
    assert len(seen) == 1  # once for the run
    want = modelfile.load(teacher)[0].state_dict()
    assert seen[0].keys() == want.keys()
    assert all(torch.equal(seen[0][k], want[k].float()) for k in want)
    assert "**Teacher:**" in (tmp_path / "t" / "report.md").read_text()
    first = json.loads((tmp_path / "t" / "results.json").read_text())["distill_targets"]
    assert [t["hit"] for t in first] == [False] and Path(first[0]["cache"]).parent == tmp_path / "cache"
    # another run with the same teacher and images (here a shorter schedule) reads them from the cache
    run(make_config("tiny", {**overrides, "teacher": str(teacher), "name": "t2", "iterative_steps": 1,
                             "final_finetune_epochs": 0}))
    assert len(seen) == 1
    second = json.loads((tmp_path / "t2" / "results.json").read_text())["distill_targets"]
    assert [t["hit"] for t in second] == [True] and second[0]["cache"] == first[0]["cache"]
    assert "were read from the cache" in (tmp_path / "t2" / "report.md").read_text()
    # a sweep's table marks the reader's wall time, names who paid the teacher, and counts the passes once
    from prunelab.report import render_sweep
    render_sweep(tmp_path)
    table = (tmp_path / "pareto.md").read_text()
    walls = {n: json.loads((tmp_path / n / "results.json").read_text())["wall_time_s"]["total"] for n in ("t", "t2")}
    assert next(line for line in table.splitlines() if line.startswith("| t2 |")).count(" † |") == 1
    assert " † |" not in next(line for line in table.splitlines() if line.startswith("| t |"))
    assert (f"1 run (t2) read the teacher's outputs from the cache" in table
            and f"{first[0]['seconds']:.0f} s inside t's wall time" in table
            and f"All the sweep's runs: {walls['t'] + walls['t2']:.0f} s" in table)
    import shutil  # the writer outside the sweep: its passes are added to the total once
    shutil.copytree(tmp_path / "t2", tmp_path / "alone" / "t2")
    render_sweep(tmp_path / "alone")
    table = (tmp_path / "alone" / "pareto.md").read_text()
    assert (f"{first[0]['seconds']:.0f} s in a run outside this sweep" in table
            and f"All the sweep's runs: {walls['t2'] + first[0]['seconds']:.0f} s" in table)


def test_teacher_outputs_are_computed_once_and_read_back_only_for_the_same_teacher_images_and_views(tmp_path,
                                                                                                      monkeypatch):
    """train.teacher_targets' cache: a second call with the same teacher, images and views reads the file (no
    teacher pass, the same targets); another weight, other images or other views compute afresh; a damaged file
    is computed again and rewritten. Views that are all of an image's views (flips only, k = 2) are the same for
    every seed, so seeds share them; one view of two is not."""
    from prunelab import train
    from prunelab.data import draw_views
    cfg = make_config("tiny", {"progress": False, "precision": "fp32"})
    split = load_data(cfg).train.subset(torch.arange(48))
    trainer = Trainer.from_config(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    teacher = build_model("resnet18_cifar").eval()
    passes = []
    for name in ("soft_targets", "view_targets"):
        real = getattr(train, name)
        monkeypatch.setattr(train, name, lambda *a, real=real, **k: passes.append(1) or real(*a, **k))
    cache = tmp_path / "cache"

    def targets(model=teacher, images=split, views=None):
        return train.teacher_targets(model, images, trainer, views, cache)
    made, how = targets()
    assert not how["hit"] and len(passes) == 1 and Path(how["cache"]).is_file()
    again, how2 = targets()
    assert how2["hit"] and how2["cache"] == how["cache"] and len(passes) == 1 and torch.equal(again, made)
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        other.fc.bias[0] += 1
    assert not targets(other)[1]["hit"]
    assert not targets(images=split.subset(torch.arange(47, -1, -1)))[1]["hit"]  # the same images, another order
    assert len(passes) == 3 and len(list(cache.glob("*.safetensors"))) == 3
    both = [draw_views(len(split), 2, 0, True, torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert torch.equal(both[0], both[1])
    assert not targets(views=both[0])[1]["hit"] and targets(views=both[1])[1]["hit"]
    one = [draw_views(len(split), 1, 0, True, torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert not targets(views=one[0])[1]["hit"] and not targets(views=one[1])[1]["hit"]
    assert len(passes) == 6
    Path(how["cache"]).write_bytes(b"not a safetensors file")
    fixed, how3 = targets()
    assert not how3["hit"] and torch.equal(fixed, made) and len(passes) == 7
    assert targets()[1]["hit"]  # rewritten whole
    # two runs at once (a sweep plan's jobs started together): one computes, the other waits at the lock and reads
    import threading
    import time
    real = train.soft_targets
    monkeypatch.setattr(train, "soft_targets", lambda *a, **k: time.sleep(1) or real(*a, **k))  # a slow teacher
    together = []
    jobs = [threading.Thread(target=lambda: together.append(train.teacher_targets(teacher, split, trainer, None,
                                                                                  tmp_path / "together")))
            for _ in range(2)]
    for job in jobs:
        job.start()
        time.sleep(0.2)
    for job in jobs:
        job.join()
    assert sorted(how["hit"] for _, how in together) == [False, True] and len(passes) == 8
    assert torch.equal(together[0][0], together[1][0])


def test_unreachable_target_is_an_error():
    with pytest.raises(PrunelabError, match="raise the target"):
        ratio_for_target(build_model("resnet18_cifar"), make_config("seed"), target_macs=1000)


def test_sweep_runs_each_target_shares_the_dense_model_and_draws_the_pareto_plot(tmp_path):
    args = ["sweep", "--preset", "tiny", "--no-progress", "--out-dir", tmp_path, "--name", "sw",
            "--targets-macs", "10e6", "40e6", "--no-export-onnx", "--final-finetune-epochs", "0",
            "--image-size", "32"]  # the published CIFAR-10 references are drawn for 32 px runs only
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    sweep = tmp_path / "sw"
    assert (sweep / "pareto.png").is_file()
    table = (sweep / "pareto.md").read_text()
    assert "l2-macs10M" in table and "l2-macs40M" in table and "ShuffleNetV2" in table
    import json
    second = json.loads((sweep / "l2-macs40M" / "config.json").read_text())
    assert second["baseline"].endswith("l2-macs10M/checkpoints/dense.safetensors")
    row = next(line for line in table.splitlines() if line.startswith("| l2-macs40M |"))
    assert "| blocks removed | round to |" in table and f"| uniform |  | {second['round_to']} |" in row  # the shape
    for name, target in (("l2-macs10M", 10e6), ("l2-macs40M", 40e6)):
        assert json.loads((sweep / name / "results.json").read_text())["final"]["macs"] <= target
    again = run_cli(*args)  # finished runs are skipped, the plot is redrawn
    assert again.returncode == 0 and again.stdout.count("already finished") == 2


def test_early_images_train_the_early_stages_on_a_subset_and_the_final_fine_tune_on_everything(tmp_path):
    """--early-images: dense training and the fine-tunes between steps see that many images per epoch, the final
    fine-tune the whole training split; the report says what the dense model's budget was."""
    import json
    code, _, err = cli("run", "--preset", "tiny", "--out-dir", tmp_path, "--name", "early", "--early-images", 100,
                       "--no-progress", "--precision", "fp32")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "early" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["event"] == "epoch"]
    final_stage = max(r["stage"] for r in epochs)
    assert {r["images"] for r in epochs if r["stage"] < final_stage} == {100}
    assert {r["images"] for r in epochs if r["stage"] == final_stage} == {256}  # tiny: 256 training images
    report = (tmp_path / "early" / "report.md").read_text()
    assert "trained for 1 epoch of 100 images" in report and "not what the architecture can reach" in report
    # the precision it trained in (--precision resolved), beside the machine: fp32 and bf16 times differ 3-4x
    assert "; trained in fp32." in report
    assert json.loads((tmp_path / "early" / "results.json").read_text())["machine"]["training_precision"] == "fp32"
    # cached distillation targets cover the whole split; the early fine-tunes take the rows of their images
    code, _, err = cli("run", "--preset", "tiny", "--out-dir", tmp_path, "--name", "early-kd", "--early-images", 100,
                       "--distill", "--distill-cached", "--no-progress", "--precision", "fp32", "--no-export-onnx")
    assert code == 0, err


def test_cutout_blanks_one_clipped_square_per_image_and_changes_training_only_when_asked():
    """--cutout-px: each image loses one square of that side (fewer pixels where it meets the border) to 0, the
    mean colour after normalisation; the draws repeat with the generator; off, the epoch is the one it always was
    (no draw taken from the augmentation's generator)."""
    import dataclasses

    from prunelab.config import to_dict
    from prunelab.data import cutout
    from prunelab.report import recipe_sentence
    x = torch.ones(64, 3, 32, 32)
    out = cutout(x, 8, torch.Generator().manual_seed(0))
    blank = (out == 0).all(1)  # n x h x w: every channel zeroed together
    assert torch.equal(out, cutout(x, 8, torch.Generator().manual_seed(0)))
    per_image = blank.sum((1, 2))
    assert per_image.max() == 64 and per_image.min() >= 16 and (per_image < 64).any()  # clipped at a border
    for square in blank:  # one axis-aligned rectangle: its rows and columns span it exactly
        rows, cols = square.any(1).nonzero().flatten(), square.any(0).nonzero().flatten()
        assert square.sum() == len(rows) * len(cols) and rows.max() - rows.min() + 1 == len(rows) <= 8
    assert ((out == 0) | (out == 1)).all()

    cfg = make_config("tiny", {"progress": False, "precision": "fp32", "batch_size": 64})
    split = load_data(cfg).train

    def epoch(cutout_px: int) -> float:
        trainer = dataclasses.replace(Trainer.from_config(cfg, torch.device("cpu")), cutout_px=cutout_px)
        torch.manual_seed(0)
        model = build_model("resnet18_cifar").to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return train_epoch(model, split, opt, None, trainer, torch.Generator().manual_seed(1))["loss"]

    assert epoch(0) == epoch(0) and epoch(8) != epoch(0)
    assert "; cutout 8 px" in recipe_sentence(to_dict(make_config("tiny", {"cutout_px": 8})))


def _brightness_task(n: int, seed: int) -> Split:
    """Two classes told apart by the mean of the red channel: a small network learns it in one pass at a sensible
    rate, not at a tiny one."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = torch.randint(0, 128, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    images[:, 0] += (labels * 127).to(torch.uint8)[:, None, None]
    return Split(images, labels)


def test_the_lr_probe_scores_each_rate_on_the_split_it_is_given_and_a_diverging_rate_scores_zero():
    from prunelab.train import probe_rates
    cfg = make_config("tiny", {"precision": "fp32", "channels_last": False, "batch_size": 32, "progress": False,
                               "augmentation": "none"})
    trainer = Trainer.from_config(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    before = copy.deepcopy(net.state_dict())
    train, val = _brightness_task(512, 0), _brightness_task(256, 1)
    tiny, right, huge = probe_rates(net, train, val, [1e-6, 0.1, 1e30], 512, trainer=trainer, seed=0, bn_images=256)
    assert huge == 0.0  # its loss became NaN: no error, no score
    assert right > 0.9 and tiny < 0.7  # the rate that learns wins; one that barely moves stays near chance
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), before.values()))  # the model is untouched
    # the scores are on the split handed in as `val`: the same probe scored on another split gives other figures
    flipped = Split(val.images, 1 - val.labels)
    assert probe_rates(net, train, flipped, [0.1], 512, trainer=trainer, seed=0, bn_images=256)[0] < 0.1


def test_a_run_with_an_lr_probe_fine_tunes_at_the_rate_it_chose_and_a_resume_reads_that_rate_back(tmp_path,
                                                                                                  monkeypatch):
    import prunelab.pipeline as pipeline
    from prunelab.files import read_jsonl
    seen = []
    real = pipeline.probe_rates

    def spy(model, split, val, *args, **kwargs):  # (the real probe, with the splits it was handed noted)
        seen.append((len(split), len(val)))
        return real(model, split, val, *args, **kwargs)
    monkeypatch.setattr(pipeline, "probe_rates", spy)
    args = ["run", "--preset", "tiny", "--val-size", "48", "--final-finetune-epochs", "2", "--lr-probe", "0.01", "0.05",
            "--lr-probe-images", "96", "--no-export-onnx", "--latency-batch-sizes", "1", "--no-progress",
            "--out-dir", tmp_path, "--name", "p"]
    code, out, err = cli(*args)
    assert code == 0, err
    run = tmp_path / "p"
    res = json.loads((run / "results.json").read_text())
    probe = res["lr_probe"]
    assert seen == [(208, 48)]  # training images to learn from, the validation split to score on (not the 64 test)
    assert probe["rates"] == [0.01, 0.05] and probe["images"] == 96 and len(probe["val_accuracy"]) == 2
    assert probe["chosen"] == probe["rates"][max(range(2), key=lambda i: probe["val_accuracy"][i])]
    final_epochs = [e for e in res["epochs"] if e["phase"] == "final fine-tune"]
    assert res["final"]["lr"] == probe["chosen"]
    # tiny steps the cosine per epoch: the first of two epochs runs at the rate itself
    assert final_epochs[0]["lr"] == pytest.approx(probe["chosen"])
    report = (run / "report.md").read_text()
    assert f"ran at **{probe['chosen']:g}**" in report and "chosen among 0.01, 0.05 on the validation split" in report

    # a run killed in its final fine-tune, after the probe: it resumes at the rate the probe chose (here altered to
    # the other candidate, to tell a rate read back from one probed again), and does not probe again
    other = 0.01 if probe["chosen"] == 0.05 else 0.05
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["event"] != "final"]  # (its epoch lines stay: dropped)
    for r in rows:
        if r["event"] == "lr_probe":
            r["chosen"] = other
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for f in ("results.json", "report.md", "checkpoints/final.json", "checkpoints/final.safetensors"):
        (run / f).unlink()
    seen.clear()
    code, out, err = cli("run", "--resume", run, "--no-progress")
    assert code == 0, err
    assert seen == [] and "lr probe:" not in out + err
    res = json.loads((run / "results.json").read_text())
    assert res["final"]["lr"] == other == res["lr_probe"]["chosen"]
    assert [e["lr"] for e in res["epochs"] if e["phase"] == "final fine-tune"][0] == pytest.approx(other)


def test_the_probe_leaves_the_fine_tune_s_random_draws_alone_a_run_given_its_rate_trains_the_same_weights(tmp_path):
    """The probe's short fine-tunes draw dropout masks from the global generator; the final fine-tune is seeded after
    it, so a run that probed and one given the chosen rate directly end with the same weights."""
    import prunelab
    from safetensors.torch import load_file

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                   torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.5),
                                   torch.nn.Linear(16, 10))
    common = {"out_dir": str(tmp_path), "val_size": 48, "progress": False, "export_onnx": False,
              "measure_latency_every_step": False, "precision": "fp32"}
    probed = prunelab.run(make_config("tiny", {**common, "name": "probed", "lr_probe": [0.01, 0.05],
                                               "lr_probe_images": 96}), model=net())
    chosen = json.loads((probed / "results.json").read_text())["lr_probe"]["chosen"]
    given = prunelab.run(make_config("tiny", {**common, "name": "given", "final_finetune_lr": chosen}), model=net())
    a, b = (load_file(r / "checkpoints" / "final.safetensors") for r in (probed, given))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_probe_whose_rates_diverge_stops_the_run_with_advice_on_the_probe(tmp_path):
    from prunelab.files import read_jsonl
    code, out, err = cli("run", "--preset", "tiny", "--val-size", "48", "--lr-probe", "1e30", "1e35", "--lr-probe-images",
                         "96", "--no-export-onnx", "--no-progress", "--out-dir", tmp_path, "--name", "d")
    assert code != 0 and "every --lr-probe rate (1e+30 1e+35) diverged" in err and "give lower rates" in err
    assert not any(r["event"] == "lr_probe" for r in read_jsonl(tmp_path / "d" / "metrics.jsonl"))
    assert not (tmp_path / "d" / "results.json").exists()
    # rates that survive the probe's short pass and diverge over the whole fine-tune: the advice names the probe
    code, out, err = cli("run", "--preset", "tiny", "--val-size", "48", "--lr-probe", "1e5", "1e6", "--lr-probe-images",
                         "96", "--no-export-onnx", "--no-progress", "--out-dir", tmp_path, "--name", "d2")
    assert code != 0 and "the loss became" in err and "start the run again with lower --lr-probe rates" in err, err
    # without a probe, the advice names the final fine-tune's own setting (not the early stages' --lr/--finetune-lr)
    code, out, err = cli("run", "--preset", "tiny", "--final-finetune-lr", "1e30", "--no-export-onnx", "--no-progress",
                         "--out-dir", tmp_path, "--name", "d3")
    assert code != 0 and "final fine-tune" in err and "lower --final-finetune-lr (it ran at 1e+30)" in err, err


@pytest.mark.parametrize("args, message", [
    (["--lr-probe", "0.01", "0.02"], "--val-size 5000"),
    (["--lr-probe", "0.01", "--val-size", "64"], "two or more different learning rates"),
    (["--lr-probe", "0.01", "0.01", "--val-size", "64"], "two or more different learning rates"),
    (["--lr-probe", "0.01", "-0.02", "--val-size", "64"], "two or more different learning rates above 0"),
    (["--lr-probe", "0.01", "0.02", "--val-size", "64", "--final-finetune-epochs", "0"], "final_finetune_epochs is 0"),
    (["--lr-probe", "0.01", "0.02", "--val-size", "64", "--lr-probe-images", "0"], "lr_probe_images must be"),
    (["--lr-probe", "0.01", "0.02", "--val-size", "64", "--lr-probe-images", "32"], "at least one batch (64 images"),
    (["--lr-probe", "0.01", "fast", "--val-size", "64"], "'lr_probe' must be a list"),
])
def test_an_lr_probe_that_cannot_work_is_refused_before_anything_is_written(tmp_path, args, message):
    code, out, err = cli("run", "--preset", "tiny", *args, "--out-dir", tmp_path, "--name", "bad")
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
