"""The order of stages, and the run directory they all write to. Nothing else knows the order.

    dense (train or load) -> prune step 1..n (each: prune, measure, fine-tune, measure) -> final fine-tune
    -> results.json, report.md, results.png

Every finished stage leaves a checkpoint (checkpoints/dense, step_XX, final: .safetensors + .json) and
lines in metrics.jsonl tagged with the stage number. `resume` restarts after the last checkpoint:
metric lines of the unfinished stage are dropped and the stage runs again. Each stage draws its random
numbers from generators seeded by (seed, stage, epoch), so a resumed run makes the same decisions.
"""
from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import distributed, report
from .config import Config, PrunelabError, config_from_dict, to_dict
from .data import Data, load_data
from .export import export_onnx, load_dense_baseline, load_model, load_weights, read_description, save_model
from .files import read_jsonl, write_atomic, write_json, write_text
from .measurement import file_size_bytes, latency_devices, machine, measure_model
from .models import build_model
from .prune import build_pruner, count_macs_params, history, prune_step, ratio_for_target, restore, step_ratio
from .train import Trainer, cosine_schedule, evaluate, make_optimizer, resolve_device, soft_targets, train_epoch


def log(msg: str) -> None:
    if distributed.WORLD.main:  # under torchrun only rank 0 prints
        tqdm.write(msg)


class RunDir:
    """runs/<name>/: config.json, metrics.jsonl, checkpoints/, results.json, report.md, results.png."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.results = self.path / "results.json"
        self.tensorboard = None  # a TensorBoardLog when --tensorboard is on

    def checkpoint(self, stage: int, n_steps: int) -> Path:
        name = "dense" if stage == 0 else "final" if stage == n_steps + 1 else f"step_{stage:02d}"
        return self.checkpoints / name

    def last_checkpoint(self, n_steps: int) -> int:
        """The highest stage whose checkpoint is complete (its JSON written last), or -1."""
        for stage in range(n_steps + 1, -1, -1):
            if self.checkpoint(stage, n_steps).with_suffix(".json").is_file():
                return stage
        return -1

    @property
    def partial(self) -> Path:
        """Mid-stage checkpoint: weights and momentum, with (stage, epoch) in its metadata; one atomic file."""
        return self.checkpoints / "partial.safetensors"

    def partial_progress(self) -> tuple[int, int] | None:
        """(stage, epochs done) of the mid-stage checkpoint, if there is a readable one."""
        if not self.partial.is_file():
            return None
        try:
            with safe_open(str(self.partial), "pt") as f:
                meta = f.metadata()
            return int(meta["stage"]), int(meta["epoch"])
        except Exception:
            return None  # unreadable: the stage is redone from its start

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self.tensorboard is not None:
            self.tensorboard.log(row)

    def keep_metrics_up_to(self, stage: int) -> None:
        """Drop metric lines written after the last checkpoint (by a stage that will run again)."""
        partial = self.partial_progress()
        rows = [r for r in read_jsonl(self.metrics) if r.get("stage", 0) <= stage
                or (partial and r["event"] == "epoch" and (r["stage"], r["epoch"]) <= partial)]
        write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))


def prepare(cfg: Config) -> RunDir:
    """Create a new run directory for cfg; refuse to overwrite an existing run."""
    rd = RunDir(Path(cfg.out_dir) / cfg.name)
    if rd.config.exists():
        raise PrunelabError(f"run directory {rd.path} already exists; continue it with `prunelab run --resume {rd.path}` "
                            "or pick another --name")
    try:
        rd.checkpoints.mkdir(parents=True, exist_ok=True)
        probe = rd.path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise PrunelabError(f"cannot write to {rd.path} ({e.strerror}); choose a writable --out-dir")
    write_json(rd.config, to_dict(cfg))
    return rd


def open_existing(path: str | Path) -> tuple[RunDir, Config]:
    rd = RunDir(path)
    if not rd.config.is_file():
        raise PrunelabError(f"{rd.path} is not a prunelab run directory (no config.json); start one with `prunelab run`")
    try:
        cfg = config_from_dict(json.loads(rd.config.read_text()))
    except json.JSONDecodeError as e:
        raise PrunelabError(f"{rd.config} is damaged ({e}); start a new run")
    return rd, cfg


def run(cfg: Config, resume_dir: str | Path | None = None) -> Path:
    """Run (or resume) the whole pipeline; returns the run directory."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    world, rank_device = distributed.init(cfg.device)  # a no-op unless started by torchrun
    device = rank_device or resolve_device(cfg.device)
    trainer = Trainer.from_config(cfg, device)  # validates precision for the device
    trainer.progress = trainer.progress and world.main
    if cfg.tensorboard:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError:
            raise PrunelabError("--tensorboard needs the tensorboard package: pip install tensorboard")
    data = load_data(cfg)  # data, target and baseline errors surface before anything is written
    _check_targets(cfg, len(data.classes))
    baseline = None
    if cfg.baseline and not resume_dir:
        baseline = load_dense_baseline(cfg.baseline, cfg.model, len(data.classes))
    if resume_dir:
        rd = RunDir(resume_dir)
    else:  # rank 0 creates the run directory; the others wait for it
        rd = prepare(cfg) if world.main else RunDir(Path(cfg.out_dir) / cfg.name)
    distributed.barrier()
    if rd.results.is_file():
        log(f"{rd.path} is already finished; redrawing its report")
        if world.main:
            report.render(rd.path)
        return rd.path
    n = cfg.iterative_steps
    done = rd.last_checkpoint(n)
    if world.main:
        rd.keep_metrics_up_to(done)
        if cfg.tensorboard:
            rd.tensorboard = TensorBoardLog(rd.path / "tensorboard")
    log(f"prunelab run '{cfg.name}' -> {rd.path}  device={device} precision={trainer.amp_dtype or torch.float32} "
        f"threads={torch.get_num_threads()}" + (f" processes={world.size}" if world.active else ""))
    log(f"data: {data.source}; train {len(data.train)}, val {len(data.val) if data.val else 0}, test {len(data.test)}")
    target = (f"target {cfg.target_macs:.4g} MACs" if cfg.target_macs else f"target {cfg.target_params:.4g} params"
              if cfg.target_params else f"channel ratio {cfg.pruning_ratio}")
    log(f"recipe: {cfg.model}, " + (f"baseline {cfg.baseline}" if cfg.baseline else f"{cfg.epochs} dense epochs")
        + f" (lr {cfg.lr}, batch {cfg.batch_size}); {cfg.importance} importance, "
        f"{'global' if cfg.global_pruning else 'per-layer'}, {target} in {cfg.iterative_steps} {cfg.schedule} steps; "
        f"{cfg.finetune_epochs_per_step} fine-tune epoch(s) per step, {cfg.final_finetune_epochs} final"
        + (f"; distillation T={cfg.distill_temperature} w={cfg.distill_weight}" if cfg.distill else "")
        + (f"\nreduced from the seed recipe: {cfg.reduced}" if cfg.reduced else "")
        + f"\nfull settings: {rd.config}")
    if done >= 0:
        log(f"resuming after {rd.checkpoint(done, n).name}")
    train, test = data.train.to(device), data.test.to(device)
    val = data.val.to(device) if data.val else None
    stage_ctx = _Stages(cfg, rd, trainer, device, train, val, test, data)

    # Stage 0: the dense model, trained, loaded from --baseline, or from its checkpoint.
    dense = stage_ctx.load_stage(0) if done >= 0 else stage_ctx.dense(baseline)
    if cfg.distill:
        stage_ctx.set_teacher(dense)
    if done >= 1:  # rebuild the pruned model and the pruner's progress from the last checkpoint
        model, pruner = stage_ctx.resume_pruned(min(done, n))
    else:
        model, pruner = dense, build_pruner(dense, cfg)
    # Stages 1..n: iterative pruning, each followed by a short fine-tune.
    for k in range(max(done, 0) + 1, n + 1):
        stage_ctx.prune_stage(model, pruner, k)
    # Stage n+1: the final fine-tune.
    if done < n + 1:
        stage_ctx.final(model, pruner)

    distributed.barrier()
    if not world.main:
        return rd.path
    if cfg.export_onnx:
        _export_onnx(rd)
    results = report.build_results(rd.path)
    report.render(rd.path, results)
    write_json(rd.results, results)  # last: its presence means the run is complete
    log("\n" + report.key_results_markdown(results))
    files = [rd.path / f for f in ("results.json", "report.md", "results.png", "curves.png", "filters.png",
                                   "model.onnx", "checkpoints/final.safetensors", "checkpoints/final.json",
                                   "config.json", "metrics.jsonl")]
    log("\nwrote:\n" + "\n".join(f"  {f}" for f in files if f.exists()))
    return rd.path


class TensorBoardLog:
    """The lines of metrics.jsonl, also as TensorBoard scalars: epochs by their running count, stages by number."""

    def __init__(self, path: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(path))
        self.epochs = 0

    def log(self, row: dict) -> None:
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if row["event"] == "epoch":
            self.epochs += 1
            for k in ("loss", "train_accuracy", "val_accuracy", "lr", "images_per_s"):
                if k in numbers:
                    self.writer.add_scalar(f"train/{k}", numbers[k], self.epochs)
        else:
            for k, v in numbers.items():
                if k not in ("stage", "step"):
                    self.writer.add_scalar(f"stages/{k}", v, row["stage"])
        self.writer.flush()


def _check_targets(cfg: Config, num_classes: int) -> None:
    """A MACs or parameter target must lie below the dense model's."""
    if not (cfg.target_macs or cfg.target_params):
        return
    macs, params = count_macs_params(build_model(cfg.model, num_classes))
    if cfg.target_macs >= macs:
        raise PrunelabError(f"config: target_macs {cfg.target_macs:.4g} is not below the dense model's {macs:.4g} MACs; "
                            "lower it or drop it")
    if cfg.target_params >= params:
        raise PrunelabError(f"config: target_params {cfg.target_params:.4g} is not below the dense model's {params:,} "
                            "parameters; lower it or drop it")


def _export_onnx(rd: RunDir) -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        log("ONNX export skipped: install onnx and onnxruntime (pip install 'prunelab[onnx]'), then `prunelab export`")
        return
    model, _ = load_model(rd.checkpoints / "final.json")
    export_onnx(model, rd.path / "model.onnx")


class _Stages:
    """The work of each stage; shared context so that each method reads as the recipe does."""

    def __init__(self, cfg: Config, rd: RunDir, trainer: Trainer, device, train, val, test, data: Data):
        self.cfg, self.rd, self.trainer, self.device = cfg, rd, trainer, device
        self.train, self.val, self.test, self.num_classes = train, val, test, len(data.classes)
        self.data_info = {"data": data.source, "classes": data.classes, "train_images": len(data.train),
                          "val_images": len(data.val) if data.val else 0, "test_images": len(data.test)}
        self.n = cfg.iterative_steps
        self.teacher = None  # the frozen dense model, when fine-tunes distil from it
        self.targets = None  # or its outputs on every training image (distill_cached)

    def _prepare_model(self, model):
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.cfg.channels_last else model

    def _fit(self, model, stage: int, phase: str, epochs: int, lr: float, warmup_epochs: float = 0.0) -> None:
        """`epochs` epochs of SGD with a fresh optimiser and a cosine schedule over them. After every epoch
        but the last, weights and momentum go to checkpoints/partial so a crash costs at most one epoch."""
        if epochs == 0:
            return
        if stage > 0 and self.cfg.distill_cached and self.targets is None:  # once, inside the first fine-tune's time
            start = time.perf_counter()
            self.targets, self.teacher = soft_targets(self.teacher, self.train, self.trainer), None
            log(f"  distillation targets for {len(self.targets)} images (and their mirrors) in "
                f"{time.perf_counter() - start:.0f} s")
        optimizer = make_optimizer(model, self.cfg, lr)
        batches_per_epoch = -(-len(self.train) // self.cfg.batch_size)
        scheduler = cosine_schedule(optimizer, epochs * batches_per_epoch, round(warmup_epochs * batches_per_epoch))
        done = self._load_partial(model, optimizer, stage)
        net = model
        if distributed.WORLD.active:  # wrapped anew for every stage: pruning changed the parameters
            from torch.nn.parallel import DistributedDataParallel
            net = DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        for _ in range(done * batches_per_epoch):  # the schedule continues where it stopped
            scheduler.step()
        for epoch in range(done + 1, epochs + 1):
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + stage * 1000 + epoch)
            stats = train_epoch(net, self.train, optimizer, scheduler, self.trainer, gen,
                                desc=f"{phase} {epoch}/{epochs}", teacher=self.teacher if stage > 0 else None,
                                kd_temperature=self.cfg.distill_temperature, kd_weight=self.cfg.distill_weight,
                                targets=self.targets if stage > 0 else None)
            row = {"event": "epoch", "stage": stage, "phase": phase, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                   **stats}
            if self.val is not None:
                row["val_accuracy"] = self._accuracy(model, self.val)
            if distributed.WORLD.main:
                self.rd.append_metrics(row)
                if epoch < epochs:  # after the metrics line: a crash in between re-runs (and re-logs) this epoch
                    self._save_partial(model, optimizer, stage, epoch)
            log(f"  {phase} epoch {epoch}/{epochs}: loss {stats['loss']:.3f} train acc {stats['train_accuracy']:.3f}"
                + (f" val acc {row['val_accuracy']:.3f}" if "val_accuracy" in row else "")
                + f"  ({stats['images_per_s']:.0f} img/s, {stats['seconds']:.0f} s)")

    def _save_partial(self, model, optimizer, stage: int, epoch: int) -> None:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        for i, p in enumerate(model.parameters()):
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum.{i}"] = buf.detach().cpu().contiguous()
        write_atomic(self.rd.partial, lambda p: save_file(tensors, str(p), metadata={"stage": str(stage),
                                                                                  "epoch": str(epoch)}))

    def _load_partial(self, model, optimizer, stage: int) -> int:
        """Restore weights and momentum saved during this stage; returns the epochs already done (0 if none)."""
        saved = self.rd.partial_progress()
        if saved is None or saved[0] != stage:
            return 0
        try:
            tensors = load_file(str(self.rd.partial))
            model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        except Exception as e:
            raise PrunelabError(f"{self.rd.partial} is damaged ({type(e).__name__}); delete it to redo this "
                                "stage from its start")
        for i, p in enumerate(model.parameters()):
            if f"momentum.{i}" in tensors:
                optimizer.state[p]["momentum_buffer"] = tensors[f"momentum.{i}"].to(p.device)
        log(f"  continuing after epoch {saved[1]} of this stage")
        return saved[1]

    def _accuracy(self, model, split) -> float:
        return evaluate(model, split, self.trainer.normalizer, self.cfg.eval_batch_size)["accuracy"]

    def _measure(self, model, latency: bool = True) -> dict:
        cfg = self.cfg
        latency = latency and distributed.WORLD.main  # timing is rank 0's; the others would only disturb it
        return measure_model(model, batch_sizes=cfg.latency_batch_sizes if latency else [],
                             devices=latency_devices(self.device), warmup=cfg.latency_warmup,
                             min_reps=cfg.latency_min_reps, min_seconds=cfg.latency_min_seconds,
                             channels_last=cfg.channels_last)

    def _save(self, model, stage: int, hist: list, row: dict) -> None:
        distributed.check_identical(model, f"after stage {stage}")
        if not distributed.WORLD.main:
            return
        weights = save_model(self.rd.checkpoint(stage, self.n), model, self.cfg.model, hist,
                             extra={"stage": stage, "metrics": row, "config": to_dict(self.cfg)})
        row["file_size_bytes"] = file_size_bytes(weights)
        self.rd.append_metrics(row)  # after the checkpoint: a stage's summary line means it is complete
        self.rd.partial.unlink(missing_ok=True)

    def load_stage(self, stage: int):
        desc, weights = read_description(self.rd.checkpoint(stage, self.n).with_suffix(".json"))
        model = build_model(self.cfg.model, self.num_classes)
        load_weights(model, weights)
        if stage == 0:  # a ratio found for a MACs/params target is part of the dense stage's result
            self.cfg.pruning_ratio = desc["metrics"].get("pruning_ratio", self.cfg.pruning_ratio)
        return self._prepare_model(model)

    def set_teacher(self, dense_model) -> None:
        """Keep a frozen copy of the dense model to distil from during every fine-tune."""
        import copy
        self.teacher = copy.deepcopy(dense_model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def dense(self, baseline=None):
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        start = time.perf_counter()
        if cfg.baseline:
            log(f"dense: baseline {cfg.baseline}")
            model = self._prepare_model(baseline or load_dense_baseline(cfg.baseline, cfg.model, self.num_classes))
        else:
            log(f"dense: training {cfg.model} for {cfg.epochs} epochs")
            model = self._prepare_model(build_model(cfg.model, self.num_classes))
            self._fit(model, 0, "dense", cfg.epochs, cfg.lr, cfg.warmup_epochs)
        if cfg.target_macs or cfg.target_params:
            cfg.pruning_ratio = ratio_for_target(model, cfg, cfg.target_macs, cfg.target_params)
            log(f"dense: pruning ratio {cfg.pruning_ratio:.4f} reaches the target of "
                f"{cfg.target_macs or cfg.target_params:.4g} {'MACs' if cfg.target_macs else 'parameters'}")
        row = {"event": "dense", "stage": 0, "ratio": 0.0, "pruning_ratio": cfg.pruning_ratio,
               "accuracy": self._accuracy(model, self.test),
               **self._measure(model), "seconds": time.perf_counter() - start, **self.data_info, "machine": machine()}
        self._save(model, 0, [], row)
        log(f"dense: test acc {row['accuracy']:.4f}, {row['params'] / 1e6:.2f} M params, {row['macs'] / 1e6:.1f} M MACs")
        return model

    def resume_pruned(self, stage: int):
        """Rebuild model and pruner at the end of `stage`: dense model, pruner, replayed history, weights."""
        desc, weights = read_description(self.rd.checkpoint(stage, self.n).with_suffix(".json"))
        model = self._prepare_model(build_model(self.cfg.model, self.num_classes))
        pruner = build_pruner(model, self.cfg)
        restore(pruner, desc["pruning_history"], stage)
        load_weights(model, weights)
        return self._prepare_model(model), pruner

    def prune_stage(self, model, pruner, k: int) -> None:
        cfg = self.cfg
        start = time.perf_counter()
        torch.manual_seed(cfg.seed * 1000 + k)  # random importance draws from the global generator
        prune_step(pruner, model, self._gradient_batches() if cfg.importance == "taylor" else None)
        self._prepare_model(model)
        before = self._accuracy(model, self.test)
        self._fit(model, k, f"step {k}/{self.n} fine-tune", cfg.finetune_epochs_per_step, cfg.finetune_lr)
        row = {"event": "step", "stage": k, "step": k, "ratio": step_ratio(pruner, k),
               "accuracy_before_finetune": before, "accuracy": self._accuracy(model, self.test),
               **self._measure(model, latency=cfg.measure_latency_every_step), "seconds": time.perf_counter() - start}
        self._save(model, k, history(pruner), row)
        log(f"step {k}/{self.n}: ratio {row['ratio']:.3f}  acc {before:.4f} -> {row['accuracy']:.4f}  "
            f"{row['params'] / 1e6:.3f} M params  {row['macs'] / 1e6:.1f} M MACs  ({row['seconds']:.0f} s)")

    def final(self, model, pruner) -> None:
        cfg = self.cfg
        start = time.perf_counter()
        before = self._accuracy(model, self.test)
        log(f"final fine-tune: {cfg.final_finetune_epochs} epochs")
        self._fit(model, self.n + 1, "final fine-tune", cfg.final_finetune_epochs, cfg.finetune_lr)
        row = {"event": "final", "stage": self.n + 1, "ratio": step_ratio(pruner, self.n),
               "accuracy_before_finetune": before, "accuracy": self._accuracy(model, self.test),
               **self._measure(model), "seconds": time.perf_counter() - start, "machine": machine()}
        self._save(model, self.n + 1, history(pruner), row)
        log(f"final: test acc {row['accuracy']:.4f}")

    def _gradient_batches(self):
        n = self.cfg.taylor_batches * self.cfg.batch_size
        for start in range(0, min(n, len(self.train)), self.cfg.batch_size):
            yield (self.trainer.normalizer(self.train.images[start:start + self.cfg.batch_size]),
                   self.train.labels[start:start + self.cfg.batch_size])


def sweep(base: Config, targets_macs=(), targets_params=(), importances=()) -> Path:
    """One run per (importance, target) under <out_dir>/<name>/, then pareto.png and pareto.md there.
    The first run trains (or loads) the dense model; the others start from its dense checkpoint. Each run is
    a normal, resumable run directory: running the same sweep again skips finished runs and resumes the rest."""
    import dataclasses

    from .config import validate

    sweep_dir = Path(base.out_dir) / base.name
    targets = [("macs", t) for t in targets_macs] + [("params", t) for t in targets_params]
    if not targets:  # no targets given: the base config's own target, or its ratio
        targets = [("macs", base.target_macs)] if base.target_macs else \
            [("params", base.target_params)] if base.target_params else [("ratio", base.pruning_ratio)]
    configs = []
    for importance in importances or [base.importance]:
        for kind, value in targets:
            label = {"macs": f"macs{value / 1e6:g}M", "params": f"params{value / 1e3:g}k", "ratio": f"ratio{value:g}"}[kind]
            cfg = dataclasses.replace(base, name=f"{importance}-{label}", out_dir=str(sweep_dir), importance=importance,
                                      target_macs=value if kind == "macs" else 0.0,
                                      target_params=value if kind == "params" else 0.0,
                                      pruning_ratio=value if kind == "ratio" else base.pruning_ratio)
            validate(cfg)
            _check_targets(cfg, 10)  # the class count moves dense MACs by a few thousand at most
            configs.append(cfg)
    log(f"sweep '{base.name}': {len(configs)} runs -> {sweep_dir}")
    baseline = base.baseline
    for cfg in configs:
        rd = RunDir(sweep_dir / cfg.name)
        if rd.results.is_file():
            log(f"sweep: {cfg.name} already finished")
        elif rd.config.is_file():
            run(open_existing(rd.path)[1], rd.path)
        else:
            run(dataclasses.replace(cfg, baseline=baseline))
        if not baseline:
            baseline = str(rd.checkpoints / "dense.safetensors")
    rows = report.render_sweep(sweep_dir)
    log(f"wrote {sweep_dir}/pareto.md and pareto.png ({len(rows)} runs)")
    return sweep_dir
