"""ONE run: the order of its stages, and what each stage does. Nothing else knows the order; repeats of a run
(seeds, controls) and INT8 are gathered by sweep.py and controls.py.

    dense (train or load) -> [sparse training] -> prune step 1..n (each: prune, measure, fine-tune, measure)
    -> final fine-tune -> model.onnx, results.json, report.md, plots

Every finished stage leaves a checkpoint and a summary line in metrics.jsonl (rundir.py has the layout).
`run(cfg, resume_dir)` restarts after the last checkpoint: the stage in flight runs again from its last
finished epoch. Each stage draws its random numbers from generators seeded by (seed, stage, epoch), so a
resumed run makes the same decisions.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import itertools
import json
import time
from pathlib import Path

import torch

from . import distributed, modelfile, report, transfer
from .config import Config, final_lr, latency_targeted, resumed_config, to_dict
from .data import (Data, Split, cache_root, distinct_views, draw_views, eval_batches, fingerprint, load_data,
                   memory_budget_bytes)
from .files import append_jsonl, read_jsonl, write_json, write_text
from .distributed import log
from .errors import PrunelabError, TrainingDiverged
from .export import export_onnx
from .measurement import (busy_warning, file_size_bytes, latency_devices, load_mark, machine, measure_model,
                          other_cores)
from .models import ModelSpec, build, check_drop_blocks, check_name, drop_blocks, num_outputs, pretrained_weights
from .prune import build_pruner, build_sparsifier, check_prunable, history, is_global, prune_step, restore, step_ratio
from .reconstruct import reconstruct
from .rundir import SEARCH_STAGE, SPARSE_STAGE, RunDir, TensorBoardLog, create, open_existing
from .runtimes import latency, missing
from .targets import (SEARCH_VERSION, check_targets, fill_budget, fills_budget, ratio_for_latency, ratio_for_target,
                      row_version, search_widths)
from .train import (Distillation, Trainer, autocast_dtype, fit, prepare_model, probe_rates, reestimate_batchnorm,
                    resolve_device, score, stage_bn_images, teacher_targets, torch_threads)


def run(cfg: Config | None = None, resume_dir: str | Path | None = None, model: torch.nn.Module | None = None) -> Path:
    """One run of `cfg` into <out_dir>/<name>, or the resumed run in `resume_dir` (with `cfg` None, or a config
    whose recipe equals the run's: only runtime settings such as device and threads may differ). `model`: an
    nn.Module to prune instead of building cfg.model; it is the trained dense baseline, used as given (not
    trained; copied, not changed), and a resume needs it again. Seeds, controls and INT8 in `cfg` are not this
    function's (sweep.run sequences them). Returns the run directory. Leaves the caller's thread count and random
    generators as they were."""
    if cfg is None and resume_dir is None:
        raise PrunelabError("run() needs a config, or a run directory to resume")
    if resume_dir is not None:
        cfg = resumed_config(open_existing(resume_dir)[1], cfg)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch_threads(cfg.num_threads), torch.random.fork_rng(devices=cuda):
        return _run(cfg, resume_dir, model)


def check_available(cfg: Config) -> None:
    """What config.validate cannot know, checked before any long work: the model name names a prunable model, and
    the packages that the settings use are installed."""
    check_name(cfg.model)
    if cfg.pretrained:
        pretrained_weights(cfg.model, cfg.pretrained)  # the weights' name, checked without downloading anything
    if latency_targeted(cfg):
        reason = missing(cfg.latency_runtime)
        if reason:
            raise PrunelabError(f"config: {reason}")
    if cfg.tensorboard:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError:
            raise PrunelabError("--tensorboard needs the tensorboard package: pip install tensorboard")


def _run(cfg: Config, resume_dir, given: torch.nn.Module | None) -> Path:
    check_available(cfg)
    finished = bool(resume_dir) and RunDir(resume_dir).results.is_file()
    if cfg.teacher and not finished and not Path(cfg.teacher).is_file():  # (a finished run no longer needs it)
        raise PrunelabError(f"teacher file not found: {cfg.teacher}; pass a prunelab model file or a .safetensors "
                            "state dict")
    world, rank_device = distributed.init(cfg.device)  # a no-op unless started by torchrun
    device = rank_device or resolve_device(cfg.device)
    autocast_dtype(cfg.precision, device)  # validates precision for the device
    data = load_data(cfg)  # data, model, target and baseline errors surface before anything is written
    trainer = Trainer.from_config(cfg, device, data.inputs)
    trainer.progress = trainer.progress and world.main
    spec = model_spec(cfg, len(data.classes), given)
    baseline = start = None
    dense_to_do = not resume_dir or RunDir(resume_dir).last_checkpoint(cfg.iterative_steps) < 0
    if given is not None:
        baseline = copy.deepcopy(given)
    elif cfg.baseline and dense_to_do:
        baseline = modelfile.load_dense_baseline(cfg.baseline, spec)
    elif (cfg.pretrained or cfg.init_from) and dense_to_do:  # weights the dense stage trains from
        start = transfer.initial_model(spec, cfg.pretrained, cfg.init_from, cfg.trust_pickle)
        was = start[1].get("inputs")
        if was is not None and (was.mean, was.std) != (data.inputs.mean, data.inputs.std):
            log(f"note: {cfg.init_from} was trained on inputs normalised with mean {list(was.mean)} and std "
                f"{list(was.std)}; this run uses {list(data.inputs.mean)} and {list(data.inputs.std)} (--mean/--std)")
    teacher = load_teacher(cfg, data, spec) if cfg.teacher and not finished else None
    pruned_spec = dataclasses.replace(spec, dropped_blocks=tuple(cfg.drop_blocks))  # what the pruned models are
    if cfg.cutout_px >= data.inputs.image_size:
        raise PrunelabError(f"cutout_px {cfg.cutout_px} is not below the data's {data.inputs.image_size} px images (it "
                            f"would blank most of every image); use a smaller square, e.g. {data.inputs.image_size // 2}")
    if cfg.distill_views:
        check_views(cfg, trainer, len(data.train), spec.num_classes, data.inputs.image_size)
    if not resume_dir:
        first = baseline if baseline is not None else start[0] if start else build(spec)
        check_drop_blocks(first, cfg.drop_blocks, data.inputs.image_size)
        shallow = drop_blocks(copy.deepcopy(first), cfg.drop_blocks) if cfg.drop_blocks else first
        check_prunable(shallow, cfg, data.inputs.image_size, spec.num_classes, spec.builder)
        check_targets(cfg, pruned_spec, data.inputs.image_size, *((shallow, first) if baseline is not None else ()))
    if resume_dir:
        rd = RunDir(resume_dir)
    else:  # rank 0 creates the run directory; the others wait for it
        rd = create(cfg) if world.main else RunDir(Path(cfg.out_dir) / cfg.name)
    distributed.barrier()
    if rd.results.is_file():
        log(f"{rd.path} is already finished")
        return rd.path
    n = cfg.iterative_steps
    done = rd.last_checkpoint(n)
    if done >= 0:
        check_same_test_images(rd, data)
        if teacher is not None:
            check_same_teacher(rd, cfg.teacher)
    if world.main:
        rd.prepare_resume(done, n)
        if cfg.tensorboard:
            rd.tensorboard = TensorBoardLog(rd.tensorboard_dir)
    distributed.barrier()
    log(f"prunelab run '{cfg.name}' -> {rd.path}  device={device} precision={trainer.amp_dtype or torch.float32} "
        f"threads={torch.get_num_threads()}" + (f" processes={world.size}" if world.active else ""))
    log(f"data: {data.source}; train {len(data.train)}, val {len(data.val) if data.val else 0}, test {len(data.test)}")
    log("recipe: " + report.recipe_sentence(cfg) + f"\nfull settings: {rd.config}")
    budget = report.budget_differences(to_dict(cfg), {"train_images": len(data.train), "test_images": len(data.test),
                                                      "train_images_available": data.train_available,
                                                      "test_images_available": data.test_available})
    if budget:
        log(f"budget against the seed recipe: {budget}")
    if done >= 0:
        log(f"resuming after {rd.checkpoint(done, n).name}")
    stages = _Stages(cfg, rd, trainer, device, data, spec, pruned_spec, given)

    # Stage 0: the dense model, trained, loaded from --baseline, or from its checkpoint.
    dense = stages.load_dense() if done >= 0 else stages.dense(baseline, teacher, start)
    if cfg.allocation == "search":  # the widths each group keeps, for the target: searched once, then read back
        stages.search_widths(dense)
    if cfg.distill:
        stages.set_teacher(teacher if teacher is not None else dense)
    if done >= 1:  # rebuild the pruned model and the pruner's progress from the last checkpoint
        model, pruner = stages.resume_pruned(min(done, n))
    else:  # optional sparse training first (trains the dense model in place; the teacher is a copy)
        model = stages.depth(stages.sparse(dense) if cfg.sparse_epochs else dense)
        pruner = stages.pruner(model)
    # Stages 1..n: iterative pruning, each followed by a short fine-tune.
    for k in range(max(done, 0) + 1, n + 1):
        stages.prune_stage(model, pruner, k)
    # Stage n+1: the final fine-tune.
    if done < n + 1:
        stages.final(model, pruner)

    distributed.barrier()
    if not world.main:
        return rd.path
    if cfg.export_onnx:
        _export_onnx(rd, n, given, cfg.model)
    results = report.refresh(rd.path)  # results.json last: its presence means the run is complete
    log("\n" + report.key_results_markdown(results))
    files = [rd.results, rd.report, rd.results_plot, rd.curves_plot, rd.filters_plot, rd.onnx,
             rd.checkpoint(n + 1, n).with_suffix(".safetensors"), rd.checkpoint(n + 1, n).with_suffix(".json"),
             rd.config, rd.metrics]
    log("\nwrote:\n" + "\n".join(f"  {f}" for f in files if f.exists()))
    return rd.path


def check_same_test_images(rd: RunDir, data: Data) -> None:
    """Whatever adds rows to a run (a resume, a control) must score on the test images the run was scored on
    (another --data-dir, or a prunelab whose subset draw differs, would mix two test sets in one table). Runs
    written before the fingerprint existed are not checked."""
    desc, _ = modelfile.describe(rd.checkpoint_named("dense").with_suffix(".json"))
    recorded = (desc.get("metrics") or {}).get("test_fingerprint")
    now = fingerprint(data.test)
    if recorded and recorded != now:
        raise PrunelabError(f"{rd.path} was scored on other test images (fingerprint {recorded}, "
                            f"{desc['metrics'].get('test_images')} images; this data gives {now}, {len(data.test)}): "
                            "resume with the data (--data-dir) and prunelab version it started with, or start a new run")


def check_views(cfg: Config, trainer: Trainer, n_images: int, num_classes: int, image_size: int) -> None:
    """--distill-views: pad-and-crop augmentation (augmentation auto picks resized crops above 64 px), no more views
    than an image has, and their teacher outputs (on the training device) inside the memory budget, or half the GPU's
    memory when training on one."""
    if trainer.augmentation == "resized-crop":
        raise PrunelabError(f"--distill-views replays pad-and-crop views, but this data's {image_size} px images train "
                            f"with resized crops (augmentation auto); add --augmentation pad-crop or drop --distill-views")
    padding = trainer.view_padding
    distinct = distinct_views(padding, trainer.flip)
    if cfg.distill_views > distinct:
        raise PrunelabError(f"--distill-views {cfg.distill_views}: an image has only {distinct} different views with crop "
                            f"padding {padding} and flip {'on' if trainer.flip else 'off'}; use at most {distinct} views")
    need = n_images * cfg.distill_views * (num_classes * 4 + 6)
    budget = memory_budget_bytes(cfg)
    if trainer.device.type == "cuda":
        budget = min(budget, torch.cuda.get_device_properties(trainer.device).total_memory // 2)
    if need > budget:
        raise PrunelabError(f"--distill-views {cfg.distill_views} would hold {need / 1e9:.1f} GB of teacher outputs "
                            f"({n_images:,} images x {cfg.distill_views} views x {num_classes} classes), over the memory "
                            f"budget of {budget / 1e9:.1f} GB; use fewer views")


def frozen_teacher(model: torch.nn.Module, trainer: Trainer) -> torch.nn.Module:
    """A frozen copy of `model` to distil from: eval mode, no gradients, on the training device in the trainer's
    memory format."""
    teacher = copy.deepcopy(model).to(trainer.device).eval()
    teacher = teacher.to(memory_format=torch.channels_last if trainer.normalizer.channels_last
                         else torch.contiguous_format)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def cached_distillation(cfg: Config, distill: Distillation, train: Split, trainer: Trainer
                        ) -> tuple[Distillation, dict]:
    """distill_cached: the outputs of `distill`'s teacher computed once for every image of `train` (with
    distill_views, for that many fixed views drawn from the seed alone, so that a resumed run or a control replays
    the same ones), or read from the cache an earlier run wrote; returns the Distillation on them (the teacher
    dropped) and {"distill_targets": how they came}, for the row of the stage whose time included them."""
    start, k = time.perf_counter(), cfg.distill_views
    views = (draw_views(len(train), k, trainer.view_padding, trainer.flip,
                        torch.Generator().manual_seed(cfg.seed)).to(train.labels.device) if k else None)
    targets, how = teacher_targets(distill.teacher, train, trainer, views, cache_root(cfg.cache_dir))
    log(f"  distillation targets for {len(targets)} images " + (f"x {k} views" if k else "(and their mirrors)")
        + (f" read from {how['cache']} in {time.perf_counter() - start:.0f} s (the teacher passes took "
           f"{how['seconds']:.0f} s in the run that wrote it)" if how["hit"]
           else f" in {time.perf_counter() - start:.0f} s"))
    return Distillation(distill.temperature, distill.weight, targets=targets, views=views), {"distill_targets": how}


def check_same_teacher(rd: RunDir, teacher: str) -> None:
    """A resumed run distils from the teacher its finished stages distilled from (the weights' SHA-256, recorded
    with the dense stage; older runs recorded none and are not checked)."""
    dense = next((r for r in read_jsonl(rd.metrics) if r.get("event") == "dense"), {})
    recorded = (dense.get("teacher") or {}).get("sha256")
    if recorded and recorded != modelfile.weights_sha256(teacher):
        raise PrunelabError(f"teacher {teacher} is not the file this run started distilling from (its weights' "
                            "SHA-256 differs); put that file back, or start a new run")


def warn_if_busy(cores: float | None, when: str) -> None:
    """measurement.busy_warning as a log line, with what to do about it."""
    warning = busy_warning(cores, when)
    if warning:
        log(f"warning: {warning}; for a latency or speed-up target, time on a quiet machine")


def load_teacher(cfg: Config, data: Data, spec: ModelSpec) -> torch.nn.Module:
    """The --teacher model, checked against the data (classes, image size, normalisation; one image through it) before
    any training. A plain state dict is of --teacher-model, or else of the run's own network `spec`."""
    teacher_spec = ModelSpec(builder=cfg.teacher_model, num_classes=len(data.classes)) if cfg.teacher_model else spec
    if teacher_spec.builder == "module" and not Path(cfg.teacher).with_suffix(".json").is_file():
        raise PrunelabError(f"teacher {cfg.teacher} is a plain state dict and this run's model is an nn.Module prunelab "
                            "cannot rebuild; name the teacher's network with teacher_model (e.g. 'resnet18_cifar'), or "
                            "pass a prunelab model file")
    teacher, inputs = modelfile.load_any(cfg.teacher, teacher_spec)
    n = num_outputs(teacher)
    if n != len(data.classes):
        raise PrunelabError(f"teacher {cfg.teacher} has {n} classes but the data has {len(data.classes)}; distil from "
                            "a model trained on these classes")
    if inputs is not None and (inputs.image_size != data.inputs.image_size or
                               any(abs(a - b) > 1e-6 for a, b in zip((*inputs.mean, *inputs.std),
                                                                      (*data.inputs.mean, *data.inputs.std)))):
        raise PrunelabError(f"teacher {cfg.teacher} expects {inputs.image_size} px images normalised with mean "
                            f"{list(inputs.mean)} and std {list(inputs.std)}, the run feeds {data.inputs.image_size} px "
                            f"with {list(data.inputs.mean)} and {list(data.inputs.std)}; set --image-size/--mean/--std "
                            "to the teacher's")
    size = data.inputs.image_size
    try:  # (loaded on the CPU in eval mode: one zero image, no gradient)
        with torch.no_grad():
            shape = tuple(teacher(torch.zeros(1, 3, size, size)).shape)
    except (RuntimeError, ValueError, TypeError) as e:
        raise PrunelabError(f"teacher {cfg.teacher} cannot run on the data's {size} px images ({str(e).splitlines()[0][:120]}); "
                            "distil from a model made for this image size, or set --image-size to the teacher's")
    if shape != (1, len(data.classes)):
        raise PrunelabError(f"teacher {cfg.teacher} gives outputs of shape {list(shape)} for one {size} px image, not "
                            f"[1, {len(data.classes)}]; distil from a classifier of these classes")
    return teacher


def from_dense_checkpoint(cfg: Config, checkpoint: str | Path) -> Config:
    """`cfg` starting from a run's dense checkpoint instead of making its own dense model (a sweep's later runs, the
    random control): the checkpoint is the baseline; the weights it was trained from (--pretrained, --init-from) are
    not read again, and a normalisation named after them ('pretrained') becomes the checkpoint's own numbers."""
    changes = {"baseline": str(checkpoint), "pretrained": "", "init_from": ""}
    if "pretrained" in (*cfg.mean, *cfg.std):
        inputs = modelfile.specs(modelfile.describe(checkpoint)[0])[1]
        changes.update(mean=list(inputs.mean), std=list(inputs.std))
    return dataclasses.replace(cfg, **changes)


def model_spec(cfg: Config, data_classes: int, given: torch.nn.Module | None = None) -> ModelSpec:
    """The description of the network this run prunes; its class count must agree with the data's."""
    if given is not None:
        n = num_outputs(given)
        spec = ModelSpec(builder="module", num_classes=n)
    else:
        n = cfg.num_classes or data_classes
        spec = ModelSpec(builder=cfg.model, num_classes=n, kwargs=json.loads(cfg.model_kwargs or "{}"),
                         small_input_stem=cfg.small_input_stem)
    if n != data_classes:
        raise PrunelabError(f"the model has {n} classes but the data has {data_classes} class folders; "
                            + ("give a module whose classifier matches the data" if given is not None else
                               f"set --num-classes {data_classes} (or 0, from the data)"))
    return spec


def _export_onnx(rd: RunDir, n: int, given: torch.nn.Module | None, builder: str) -> None:
    if missing("onnxruntime"):
        log("ONNX export skipped: install onnx and onnxruntime (pip install 'prunelab[onnx]'), then `prunelab export`")
        return
    model, desc = modelfile.load(rd.checkpoint(n + 1, n).with_suffix(".json"), model=given, named=builder)
    try:
        export_onnx(model, rd.onnx, input_size=modelfile.specs(desc)[1].image_size)
    except PrunelabError as e:  # the run's results stand without it; say why it is missing
        log(f"ONNX export skipped: {e}")


class _Stages:
    """The work of each stage; shared context so that each method reads as the recipe does."""

    def __init__(self, cfg: Config, rd: RunDir, trainer: Trainer, device, data: Data, spec: ModelSpec,
                 pruned_spec: ModelSpec, given: torch.nn.Module | None):
        self.cfg, self.rd, self.trainer, self.device = cfg, rd, trainer, device
        self.spec, self.pruned_spec, self.inputs, self.given = spec, pruned_spec, data.inputs, given
        self.train, self.test = data.train.to(device), data.test.to(device)
        self.val = data.val.to(device) if data.val else None
        self.early, self.early_idx = self.train, None  # what the stages before the final fine-tune train on
        if 0 < cfg.early_images < len(self.train):
            g = torch.Generator().manual_seed(cfg.seed * 7 + 1)
            self.early_idx = torch.randperm(len(self.train), generator=g)[:cfg.early_images]
            self.early = self.train.subset(self.early_idx.to(self.train.labels.device))
        self.data_info = {"data": data.source, "classes": data.classes, "train_images": len(data.train),
                          "val_images": len(data.val) if data.val else 0, "test_images": len(data.test),
                          "test_fingerprint": fingerprint(data.test),
                          "train_images_available": data.train_available, "test_images_available": data.test_available}
        self.n = cfg.iterative_steps
        self.pruning_ratio = cfg.pruning_ratio  # a MACs/params target replaces it with what the dense stage finds
        self.group_ratios = None  # each group's final ratio, from the width search (allocation search)
        self.distill = None  # a Distillation for the fine-tunes (the dense model is the teacher)
        self.targets_made = {}  # how the cached distillation targets came, for the row of the stage that made them
        self.step_accuracy = None  # test accuracy of the model as the last finished pruning step left it
        self.dense_row = None  # the dense stage's metrics row (the advice after the last cut reads its accuracies)

    def _machine(self) -> dict:
        """What the numbers were measured on, and the precision the run trained in (cfg.precision resolved)."""
        amp = self.trainer.amp_dtype
        return {**machine(), "training_precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "fp32")}

    def shallow(self, model):
        """A copy of the dense `model` without the blocks cfg.drop_blocks removes (the model itself if none): what
        the targets and the width search are measured on."""
        return drop_blocks(copy.deepcopy(model), self.cfg.drop_blocks) if self.cfg.drop_blocks else model

    def depth(self, model):
        """Depth pruning, before the first pruning step: cfg.drop_blocks removed from the trained dense `model`
        (in place). The first step's batch-norm re-estimate (bn_reestimate_images) then also follows this cut."""
        if not self.cfg.drop_blocks:
            return model
        params = sum(p.numel() for p in model.parameters())
        drop_blocks(model, self.cfg.drop_blocks)
        log(f"depth: removed {' '.join(self.cfg.drop_blocks)} ({params / 1e6:.2f} M -> "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params before the width pruning)")
        return model

    def pruner(self, model):
        return build_pruner(model, self.cfg, self.pruning_ratio, image_size=self.inputs.image_size,
                            num_classes=self.spec.num_classes, group_ratios=self.group_ratios)

    def search_widths(self, dense) -> None:
        """allocation search: the width candidates of the dense model (less cfg.drop_blocks) scored one by one
        (search.jsonl, so a killed search goes on where it stopped), the best's group ratios kept (search.json);
        a speed-up is against `dense` as it is. The proxy re-estimates a candidate's
        batch-norm statistics on training images, fine-tunes it briefly on training images (search_train_images),
        and scores it on the validation split, never the test set."""
        cfg, rd = self.cfg, self.rd
        if rd.search.is_file():
            result = json.loads(rd.search.read_text())
        else:
            g = torch.Generator().manual_seed(cfg.seed * 31 + 17)
            self.search_split = self.train.subset(torch.randperm(len(self.train), generator=g)[
                :cfg.search_train_images].to(self.train.labels.device))
            done = read_jsonl(rd.search_log)  # (rewritten without a line a crash may have cut short)
            # rows another version of the search scored are not ranked beside this one's (a candidate that cannot
            # reach the budget is the same in every version)
            older = {row_version(r) for r in done if r["feasible"]} - {SEARCH_VERSION}
            if older:
                log(f"width search: search.jsonl holds {report.counted(len(done), 'candidate')} scored by search "
                    f"version {min(older)} (now {SEARCH_VERSION}); scoring from the first again")
                done = []
            if distributed.WORLD.main and rd.search_log.is_file():
                write_text(rd.search_log, "".join(json.dumps(r) + "\n" for r in done))
            distributed.barrier()  # (every rank has read the rows before rank 0 appends the next)
            log(f"width search: {report.counted(cfg.search_budget, 'candidate')} for the target"
                + (f", {len(done)} already scored" if done else ""))

            def proxy(pruned) -> float:  # in NCHW: a ranking, and no pruned width meets oneDNN's channels_last bug
                channels_last, self.trainer.normalizer.channels_last = self.trainer.normalizer.channels_last, False
                try:
                    pruned.to(self.device)
                    reestimate_batchnorm(pruned, self.train, self.trainer, cfg.search_images, seed=cfg.seed)
                    if cfg.search_train_images:  # a short fine-tune: the same images for every candidate, its lr
                        # annealed to 0 over the pass whatever --lr-schedule-unit says (per epoch, one pass would
                        # run at the full lr, and accuracies at a high lr rank architectures at random: RESULTS 7.8)
                        fit(pruned, self.search_split, 1, cfg.finetune_lr, stage=SEARCH_STAGE,
                            trainer=dataclasses.replace(self.trainer, lr_per_batch=True), phase="candidate fine-tune")
                    return self._accuracy(pruned, self.val)
                finally:
                    self.trainer.normalizer.channels_last = channels_last

            def record(row: dict) -> None:
                if distributed.WORLD.main:
                    append_jsonl(rd.search_log, row)
                log(f"  candidate {row['index']}: " + (f"val acc {row['proxy_accuracy']:.4f} at {row['macs'] / 1e6:.2f} M "
                    f"MACs, {row['params']:,} params" + (f", {row['latency_ms']:.3g} ms" if "latency_ms" in row else "")
                    if row["feasible"] else "cannot reach the target")
                    + f" ({row['seconds']:.0f} s)")

            result = search_widths(self.shallow(dense), cfg, image_size=self.inputs.image_size,
                                   num_classes=self.spec.num_classes, proxy=proxy, done=done, record=record,
                                   reference=dense if cfg.drop_blocks else None)
            if distributed.WORLD.main:
                write_json(rd.search, result)
            distributed.barrier()
            warn_if_busy(result.get("other_cores"), "the width search timed its candidates")
            log(f"width search: candidate {result['index']} (val acc {result['proxy_accuracy']:.4f}; uniform "
                f"{result['candidates'][0].get('proxy_accuracy', float('nan')):.4f}) in {result['seconds']:.0f} s")
        self.group_ratios, self.pruning_ratio = result["group_ratios"], result["u"]

    def _prepare_model(self, model):
        return prepare_model(model, self.trainer)

    def _fit(self, model, stage: int, phase: str, epochs: int, lr: float, warmup_epochs: float = 0.0,
             sparsifier=None, split=None, head_lr: float = 0.0) -> None:
        """train.fit over `split` (default: the early stages' images, self.early), into this run's directory."""
        split = self.early if split is None else split
        distill = self._distillation() if stage > 0 else None
        if distill is not None and distill.targets is not None and split is self.early and self.early_idx is not None:
            distill = distill.subset(self.early_idx)  # cached rows of the early images
        fit(model, split, epochs, lr, trainer=self.trainer, stage=stage, phase=phase, warmup_epochs=warmup_epochs,
            val=self.val, distill=distill, sparsifier=sparsifier, run_dir=self.rd, head_lr=head_lr,
            bn_images=stage_bn_images(model, self.cfg.bn_reestimate_images))

    def _distillation(self) -> Distillation | None:
        """The fine-tunes' distillation; with cached targets, they are computed once, inside the first
        fine-tune's time, and the teacher is dropped."""
        if self.distill is not None and self.distill.teacher is not None and self.cfg.distill_cached:
            self.distill, self.targets_made = cached_distillation(self.cfg, self.distill, self.train, self.trainer)
        return self.distill

    def _take_targets_made(self) -> dict:
        """{"distill_targets": ...} once, for the row of the stage whose time included making (or reading) them."""
        made, self.targets_made = self.targets_made, {}
        return made

    def _accuracy(self, model, split) -> float:
        return score(model, split, self.trainer.normalizer, self.cfg.eval_batch_size)["accuracy"]

    def _measure(self, model, latency: bool = True) -> dict:
        cfg = self.cfg
        latency = latency and distributed.WORLD.main  # timing is rank 0's; the others would only disturb it
        return measure_model(model, batch_sizes=cfg.latency_batch_sizes if latency else [],
                             devices=latency_devices(self.device), warmup=cfg.latency_warmup,
                             min_reps=cfg.latency_min_reps, min_seconds=cfg.latency_min_seconds,
                             channels_last=cfg.channels_last, input_size=self.inputs.image_size)

    def _save(self, model, stage: int, hist: list, row: dict) -> None:
        """The stage's checkpoint (which makes it finished), then its summary line. A crash between the two is
        repaired on resume from the copy of the line inside the checkpoint (RunDir.prepare_resume)."""
        distributed.check_identical(model, f"after stage {stage}")
        if not distributed.WORLD.main:
            return
        spec = self.spec if stage == 0 else self.pruned_spec
        weights = modelfile.save(self.rd.checkpoint(stage, self.n), model, spec, hist,
                                 extra={"stage": stage, "metrics": row, "config": to_dict(self.cfg)},
                                 inputs=self.inputs)
        self.rd.append_metrics({**row, "file_size_bytes": file_size_bytes(weights)})
        self.rd.partial.unlink(missing_ok=True)

    def dense(self, baseline=None, teacher=None, start_from=None):
        """The dense model: `baseline` as given, or trained for cfg.epochs from `start_from` ((model, what was
        loaded): transfer.initial_model) or from a random init."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        start = time.perf_counter()
        transferred = {}
        if baseline is not None:
            log(f"dense: baseline {cfg.baseline or 'the nn.Module given to prunelab.run'}")
            model = self._prepare_model(baseline)
        elif start_from is not None:
            model, info = start_from
            transferred = {"transfer": {k: info[k] for k in ("source", "loaded", "backbone", "classifier")}}
            log(f"dense: fine-tuning {cfg.model} from {info['source']} for {report.counted(cfg.epochs, 'epoch')} (lr "
                f"{cfg.lr}, classifier {cfg.head_lr or cfg.lr})")
            model = self._prepare_model(model)
            self._fit(model, 0, "dense", cfg.epochs, cfg.lr, cfg.warmup_epochs, head_lr=cfg.head_lr)
        else:
            log(f"dense: training {cfg.model} for {report.counted(cfg.epochs, 'epoch')}")
            model = self._prepare_model(build(self.spec))
            self._fit(model, 0, "dense", cfg.epochs, cfg.lr, cfg.warmup_epochs)
        search = {}
        if cfg.allocation == "search":
            pass  # the width search, after this stage, chooses every group's ratio
        elif cfg.target_macs or cfg.target_params:
            self.pruning_ratio = ratio_for_target(self.shallow(model), cfg, cfg.target_macs, cfg.target_params,
                                                  image_size=self.inputs.image_size, num_classes=self.spec.num_classes)
            log(f"dense: pruning ratio {self.pruning_ratio:.4f} reaches the target of "
                + " and ".join(f"{t:.4g} {unit}" for t, unit in ((cfg.target_macs, "MACs"),
                                                                (cfg.target_params, "parameters")) if t))
            if fills_budget(cfg):
                filled = fill_budget(self.shallow(model), cfg, self.pruning_ratio, cfg.target_macs, cfg.target_params,
                                     image_size=self.inputs.image_size, num_classes=self.spec.num_classes)
                if filled:
                    self.group_ratios, (macs, params) = filled
                    log(f"dense: rounding to multiples of {cfg.round_to} left budget idle; groups widened into it: "
                        f"{macs / 1e6:.3g} M MACs, {params:,} parameters (--no-fill-budget: uniform)")
        elif latency_targeted(cfg):
            search = ratio_for_latency(self.shallow(model), cfg, self.inputs.image_size, self.spec.num_classes,
                                       reference=model if cfg.drop_blocks else None)
            self.pruning_ratio = search["ratio"]
            speedup = (f" = the dense model's {search.get('reference_latency_ms', search['dense_latency_ms']):.3g} ms "
                       f"/ {cfg.target_speedup:g}" if cfg.target_speedup else "")
            log(f"dense: pruning ratio {self.pruning_ratio:.4f} runs in {search['latency_ms']:.3g} ms for a target of "
                f"{search['target_ms']:.3g} ms{speedup} ({cfg.latency_runtime}, batch {cfg.latency_batch_size}; dense "
                f"{search['dense_latency_ms']:.3g} ms{' without the removed blocks' if cfg.drop_blocks else ''}, timing noise {100 * search['noise']:.1f}%; "
                f"{search['timings']} timings)" + ("" if search["fits"] else "; nothing timed met it: the fastest, "
                                                   "within the timing noise of the target"))
            warn_if_busy(search.get("other_cores"), "the latency target was timed")
            if cfg.round_to % 8 and cfg.latency_runtime in ("onnxruntime", "openvino"):
                log(f"dense: hint: --round-to 8 keeps channel counts that {cfg.latency_runtime} vectorises; in ONNX "
                    "Runtime at batch 1 it fit 1.7x the MACs, and 1.8 more points, in the same latency (RESULTS 7.10)")
        taught = {}
        if teacher is not None:  # evaluated once, here: its accuracy goes into the report
            taught["teacher"] = {"file": cfg.teacher, "sha256": modelfile.weights_sha256(cfg.teacher),
                                 "accuracy": self._accuracy(prepare_model(copy.deepcopy(teacher), self.trainer),
                                                            self.test)}
            self._prepare_model(model)  # (the normalizer follows the model trained here)
        row = {"event": "dense", "stage": 0, "ratio": 0.0, "pruning_ratio": self.pruning_ratio,
               **({"group_ratios": self.group_ratios} if self.group_ratios else {}),
               **({"latency_search": search} if search else {}), **taught, **transferred,
               "accuracy": self._accuracy(model, self.test),
               **({"val_accuracy": self._accuracy(model, self.val)} if self.val is not None else {}),
               **self._measure(model), "seconds": time.perf_counter() - start, **self.data_info, "machine": self._machine()}
        self._save(model, 0, [], row)
        self.dense_row = row
        log(f"dense: test acc {row['accuracy']:.4f}" + (f", val acc {row['val_accuracy']:.4f}" if "val_accuracy" in row else "")
            + f", {row['params'] / 1e6:.2f} M params, {row['macs'] / 1e6:.1f} M MACs")
        seen = report.validation_seen(row, trained_here=baseline is None)
        if seen:
            log(f"dense: warning: {seen}")
        return model

    def sparse(self, model):
        """Sparse training of the dense model (in place) before the first pruning step; its own checkpoint,
        checkpoints/sparse, and summary line ("event": "sparse"). Loaded from there on resume."""
        cfg = self.cfg
        stem = self.rd.checkpoint_named("sparse")
        if stem.with_suffix(".json").is_file():  # (its summary line, if a crash lost it: RunDir.prepare_resume)
            return self._prepare_model(modelfile.load(stem.with_suffix(".json"), model=self.given,
                                                      named=self.cfg.model)[0])
        start = time.perf_counter()
        log(f"sparse training: {report.counted(cfg.sparse_epochs, 'epoch')}, group-norm regularisation {cfg.sparse_reg:g}")
        sparsifier = build_sparsifier(model, cfg, self.inputs.image_size, self.spec.num_classes)
        self._fit(model, SPARSE_STAGE, "sparse training", cfg.sparse_epochs, cfg.finetune_lr, sparsifier=sparsifier)
        row = {"event": "sparse", "stage": SPARSE_STAGE, "ratio": 0.0, "accuracy": self._accuracy(model, self.test),
               **self._measure(model, latency=False), "seconds": time.perf_counter() - start}
        distributed.check_identical(model, "after sparse training")
        if distributed.WORLD.main:
            modelfile.save(stem, model, self.spec, [], extra={"stage": "sparse", "metrics": row,
                                                              "config": to_dict(cfg)}, inputs=self.inputs)
            self.rd.append_metrics(row)
            self.rd.partial.unlink(missing_ok=True)
        distributed.barrier()
        log(f"sparse training: test acc {row['accuracy']:.4f}")
        return model

    def load_dense(self):
        """The dense stage's result on resume: its model, and the ratio it chose."""
        model, desc = modelfile.load(self.rd.checkpoint(0, self.n).with_suffix(".json"), model=self.given,
                                     named=self.cfg.model)
        self.pruning_ratio = desc["metrics"]["pruning_ratio"]
        self.group_ratios = desc["metrics"].get("group_ratios")  # (a filled budget; a search's come from search.json)
        self.dense_row = desc["metrics"]
        return self._prepare_model(model)

    def set_teacher(self, model) -> None:
        """A frozen copy of `model` (the dense model, or --teacher) to distil from during every fine-tune."""
        self.distill = Distillation(self.cfg.distill_temperature, self.cfg.distill_weight,
                                    teacher=frozen_teacher(model, self.trainer))

    def resume_pruned(self, stage: int):
        """Model and pruner at the end of `stage`: the model file's dense model, its history replayed through a
        new pruner (which so learns the dense widths and where the schedule stands), then its weights."""
        pruners = []

        def replay(model, pruning_history):
            pruner = self.pruner(model)
            restore(pruner, pruning_history, stage)
            pruners.append(pruner)

        model, desc = modelfile.load(self.rd.checkpoint(stage, self.n).with_suffix(".json"), replay=replay,
                                     model=self.given, named=self.cfg.model)
        self.step_accuracy = (desc.get("metrics") or {}).get("accuracy")
        return self._prepare_model(model), pruners[0]

    def prune_stage(self, model, pruner, k: int) -> None:
        cfg = self.cfg
        start = time.perf_counter()
        torch.manual_seed(cfg.seed * 1000 + k)  # random importance draws from the global generator
        model.zero_grad(set_to_none=True)  # (the last fine-tune's gradients: not copied below, nor kept)
        uncut = copy.deepcopy(model) if cfg.reconstruct_images else None
        removed = prune_step(pruner, model, self._gradient_batches() if cfg.importance == "taylor" else None)
        self._prepare_model(model)
        before = self._accuracy(model, self.test)
        fresh = {}
        if cfg.bn_reestimate_images:  # from the training images of this stage, never the test set
            reestimate_batchnorm(model, self.early, self.trainer, cfg.bn_reestimate_images, seed=cfg.seed * 7919 + k)
            fresh = {"accuracy_stale_bn": before}
            before = fresh["accuracy_before_finetune"] = self._accuracy(model, self.test)
            if k == self.n and self.val is not None and uncut is None:  # what the advice below reads (no test set)
                fresh["val_accuracy_before_finetune"] = self._accuracy(model, self.val)
        if uncut is not None:  # refit to the model before the cut, on images drawn from all training ones (no labels)
            fresh["accuracy_before_reconstruction"] = before
            fresh["reconstruction"] = reconstruct(uncut, model, removed, self.train, self.trainer.normalizer,
                                                  cfg.reconstruct_images, cfg.reconstruct_steps, seed=cfg.seed * 7919 + k,
                                                  amp=self.trainer.amp_dtype, flip=self.trainer.flip)
            del uncut
            distributed.broadcast_model(model)  # (each unit's statistics were re-estimated as it was fitted)
            before = fresh["accuracy_before_finetune"] = self._accuracy(model, self.test)
        self._fit(model, k, f"step {k}/{self.n} fine-tune", cfg.finetune_epochs_per_step, cfg.finetune_lr)
        row = {"event": "step", "stage": k, "step": k, "ratio": step_ratio(pruner, k), **fresh,
               "accuracy_before_finetune": before, "accuracy": self._accuracy(model, self.test),
               **self._measure(model, latency=cfg.measure_latency_every_step), "seconds": time.perf_counter() - start,
               **self._take_targets_made()}
        self._save(model, k, history(pruner), row)
        self.step_accuracy = row["accuracy"]
        log(f"step {k}/{self.n}: ratio {row['ratio']:.3f}  acc "
            + (f"{fresh['accuracy_stale_bn']:.4f} (stale batch norms) " if "accuracy_stale_bn" in fresh else "")
            + (f"{fresh['accuracy_before_reconstruction']:.4f} (before reconstruction) "
               if "reconstruction" in fresh else "")
            + f"{before:.4f} -> {row['accuracy']:.4f}  "
            f"{row['params'] / 1e6:.3f} M params  {row['macs'] / 1e6:.1f} M MACs  ({row['seconds']:.0f} s)")
        if k == self.n and self.dense_row and (tip := report.reconstruction_tip(
                row, self.dense_row, len(self.data_info["classes"]), *report.finetune_after_last_cut(to_dict(cfg)))):
            log(f"step {k}/{self.n}: tip: {tip}")

    def final(self, model, pruner) -> None:
        cfg = self.cfg
        start = time.perf_counter()
        # the final fine-tune starts from the last step's result, whose accuracy was just measured (or, on resume,
        # is in its checkpoint): every rank knows it, so no evaluation is repeated
        before = self.step_accuracy if self.step_accuracy is not None else self._accuracy(model, self.test)
        probing = time.perf_counter()
        probed = self.probe_final_lr(model) if cfg.lr_probe else {}
        lr = probed.get("chosen", final_lr(cfg))
        # the probe's time counts once, as it was measured (on a resume its row is read back in no time)
        probe_seconds = probed.get("seconds", 0.0) - (time.perf_counter() - probing)
        # the fine-tune draws (dropout, stochastic depth) from the global generator: seeded here, so that a run
        # resumed after the probe, or one given the probe's rate directly, trains as an uninterrupted one does
        torch.manual_seed(cfg.seed * 1000 + self.n + 1)
        log(f"final fine-tune: {report.counted(cfg.final_finetune_epochs, 'epoch')} at lr {lr:g}")
        try:
            self._fit(model, self.n + 1, "final fine-tune", cfg.final_finetune_epochs, lr, split=self.train)
        except TrainingDiverged as e:  # (its default advice names the early stages' rates)
            raise TrainingDiverged(e.what, f"the rate --lr-probe chose ({lr:g}) is too high for the whole fine-tune; "
                                   "start the run again with lower --lr-probe rates" if probed else
                                   f"lower --final-finetune-lr (it ran at {lr:g}) or use --precision fp32") from None
        row = {"event": "final", "stage": self.n + 1, "ratio": step_ratio(pruner, self.n), "lr": lr,
               "accuracy_before_finetune": before, "accuracy": self._accuracy(model, self.test),
               **self._measure(model), "seconds": time.perf_counter() - start + probe_seconds, "machine": self._machine(),
               **self._take_targets_made()}
        if latency_targeted(cfg) and distributed.WORLD.main:
            row["target_latency"] = self._latency_achieved(model)
        self._save(model, self.n + 1, history(pruner), row)
        log(f"final: test acc {row['accuracy']:.4f}")

    def probe_final_lr(self, model) -> dict:
        """The final fine-tune's rate chosen among cfg.lr_probe (train.probe_rates on the validation split): its row,
        written to metrics.jsonl once under the stage of the model it scored (the last step's), so that a resume
        keeps it with that stage's lines and the final fine-tune reads the rate back instead of probing again."""
        cfg = self.cfg
        done = [r for r in read_jsonl(self.rd.metrics) if r.get("event") == "lr_probe" and r.get("stage") == self.n]
        if done:
            return done[-1]
        start = time.perf_counter()
        images = min(cfg.lr_probe_images, len(self.train))
        log(f"lr probe: one pass over {images:,} training images at each of {' '.join(f'{r:g}' for r in cfg.lr_probe)}, "
            "scored on the validation split")
        accuracies = probe_rates(model, self.train, self.val, cfg.lr_probe, images, trainer=self.trainer,
                                 seed=cfg.seed * 7919 + 1009, distill=self._distillation(),
                                 bn_images=stage_bn_images(model, cfg.bn_reestimate_images))
        if not any(accuracies):  # (before the row is written: a resume would read back a rate that diverged)
            raise PrunelabError(f"every --lr-probe rate ({' '.join(f'{r:g}' for r in cfg.lr_probe)}) diverged in "
                                "the probe's fine-tune; give lower rates, e.g. --lr-probe 0.001 0.003 0.01")
        best = max(range(len(accuracies)), key=lambda i: accuracies[i])  # (of equal scores, the rate given first)
        row = {"event": "lr_probe", "stage": self.n, "rates": list(cfg.lr_probe), "val_accuracy": accuracies,
               "chosen": cfg.lr_probe[best], "images": images, "seconds": time.perf_counter() - start}
        if distributed.WORLD.main:
            self.rd.append_metrics(row)
        log("lr probe: " + "  ".join(f"{r:g}: {100 * a:.2f}%" for r, a in zip(cfg.lr_probe, accuracies))
            + f"  -> lr {row['chosen']:g}  ({row['seconds']:.0f} s)")
        return row

    def _latency_achieved(self, model, rounds: int = 3) -> dict:
        """What the latency target came to: the final `model` timed in the target's runtime and batch size; for a
        speed-up, side by side with the dense model (from its checkpoint, as the user has it), alternating over
        `rounds` fresh sessions each, the speed-up the ratio of their medians (the machine's load changes between
        sessions, not within one round)."""
        import tempfile
        cfg, size = self.cfg, self.inputs.image_size
        out, mark = {"runtime": cfg.latency_runtime, "batch_size": cfg.latency_batch_size}, load_mark()
        with tempfile.TemporaryDirectory() as tmp:
            def timed(m, name: str) -> float:
                return latency(m, cfg.latency_runtime, size, cfg.latency_batch_size, Path(tmp) / name,
                               min_seconds=cfg.latency_min_seconds)

            if not cfg.target_speedup:
                out |= {"target_ms": cfg.target_latency_ms, "achieved_ms": timed(model, "final")}
            else:
                dense = modelfile.load(self.rd.checkpoint(0, self.n).with_suffix(".json"), model=self.given,
                                       named=self.cfg.model)[0].eval()
                pairs = [(timed(dense, f"dense{i}"), timed(model, f"final{i}")) for i in range(rounds)]
                dense_ms, final_ms = (sorted(p[k] for p in pairs)[(rounds - 1) // 2] for k in (0, 1))
                out |= {"target_speedup": cfg.target_speedup, "dense_ms": dense_ms, "achieved_ms": final_ms,
                        "achieved_speedup": dense_ms / final_ms}
        out["other_cores"] = other_cores(mark)
        warn_if_busy(out["other_cores"], "the final model was timed against the latency target")
        return out

    def _gradient_batches(self):
        for images, labels in itertools.islice(eval_batches(self.early, self.cfg.batch_size), self.cfg.taylor_batches):
            yield self.trainer.normalizer(images), labels
