"""The run directory, `runs/<name>/`: its layout, its metrics log and its mid-stage checkpoint. The only
module that knows where a run's files lie.

    config.json        the resolved config (written once, when the run starts)
    metrics.jsonl      one line per epoch ("event": "epoch") and per finished stage ("dense", "sparse", "step",
                       "final"); "lr_probe": the final fine-tune's rate, chosen (under the last step's stage)
    checkpoints/       dense, sparse, step_XX, final: model files (see modelfile.py); partial.safetensors mid-stage
    results.json       the summary (written last: its presence means the run is complete)
    report.md, results.png, curves.png, filters.png, model.onnx, tensorboard/
    search.jsonl, search.json   the width search (allocation search): one line per candidate, then the result
    controls/scratch/  the scratch control: a run directory with plan.json, model.* and results.json
    controls/random/   the random-criterion control: a whole run directory
    int8/              model-fp32.onnx, model-int8.*, results.json (quantize.py)

A group of seeds is a folder of run directories s<seed>/ beside seeds.json and seeds.md (`seed_run`).

Stages run in the order dense (0), sparse training (SPARSE_STAGE, -1), steps 1..n, final (n+1): `stage_order`
puts -1 between 0 and 1 wherever stages are compared.

A stage is finished when its checkpoint JSON exists; its summary line in metrics.jsonl follows. A crash
between the two is repaired on resume from the checkpoint's own copy of the line (`restore_summaries`).
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import modelfile
from .config import Config, config_from_dict, resumed_config, to_dict
from .errors import PrunelabError
from .files import append_jsonl, read_jsonl, write_atomic, write_json, write_text

SUMMARY_EVENTS = ("dense", "sparse", "step", "final")
SPARSE_STAGE = -1  # the stage number of sparse training (between dense, 0, and the first pruning step, 1)
SEARCH_STAGE = -2  # the width search's candidate fine-tunes: seeds their data order; they write no rows


def stage_order(stage: int) -> float:
    """Where a stage number falls in the order the stages run: sparse training (-1) after dense (0), before step 1."""
    return 0.5 if stage == SPARSE_STAGE else stage


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.partial = self.checkpoints / "partial.safetensors"  # weights + momentum, (stage, epoch) in metadata
        self.results = self.path / "results.json"
        self.report = self.path / "report.md"
        self.results_plot = self.path / "results.png"
        self.curves_plot = self.path / "curves.png"
        self.filters_plot = self.path / "filters.png"
        self.onnx = self.path / "model.onnx"
        self.tensorboard_dir = self.path / "tensorboard"
        self.tensorboard = None  # a TensorBoardLog when --tensorboard is on
        self.search = self.path / "search.json"  # the width search's result (written last: the search is done)
        self.search_log = self.path / "search.jsonl"  # one line per scored width candidate (a resume goes on)
        self.int8_dir = self.path / "int8"
        self.plan = self.path / "plan.json"  # the scratch control's epoch plan
        self.model = self.path / "model"  # stem of the scratch control's model file

    def control(self, kind: str) -> "RunDir":
        """The run directory of this run's control `kind` (scratch, random)."""
        return RunDir(self.path / "controls" / kind)

    def seed_run(self, seed: int) -> "RunDir":
        """The run directory of one seed in a group of seeds (this directory is the group)."""
        return RunDir(self.path / f"s{seed}")

    @property
    def int8_results(self) -> Path:
        return _current_or_legacy(self.int8_dir / "results.json", self.int8_dir / "result.json")

    @property
    def finished(self) -> bool:
        """A run's results.json, written last, exists (for the scratch control: its own results.json)."""
        return _current_or_legacy(self.results, self.path / "result.json").is_file()

    # ------------------------------------------------------------------ checkpoints of finished stages
    def checkpoint(self, stage: int, n_steps: int) -> Path:
        """Stem of a stage's model file: checkpoints/dense, step_XX (1..n) or final (n+1)."""
        return self.checkpoint_named("dense" if stage == 0 else "final" if stage == n_steps + 1 else f"step_{stage:02d}")

    def checkpoint_named(self, which: str) -> Path:
        return self.checkpoints / which

    def model_file(self, which: str = "final") -> Path:
        """The description (.json) of the model file of a finished stage: dense, sparse, step_XX or final."""
        return self.checkpoint_named(which).with_suffix(".json")

    def last_checkpoint(self, n_steps: int) -> int:
        """The highest stage whose checkpoint is complete (its JSON written last), or -1."""
        for stage in range(n_steps + 1, -1, -1):
            if self.checkpoint(stage, n_steps).with_suffix(".json").is_file():
                return stage
        return -1

    # ------------------------------------------------------------------ the mid-stage checkpoint
    def partial_progress(self) -> tuple[int, int] | None:
        """(stage, epochs done) of the mid-stage checkpoint, or None if there is none."""
        if not self.partial.is_file():
            return None
        try:
            with safe_open(str(self.partial), "pt") as f:
                meta = f.metadata()
            return int(meta["stage"]), int(meta["epoch"])
        except (SafetensorError, OSError, KeyError, TypeError, ValueError) as e:
            raise PrunelabError(f"{self.partial} is damaged ({type(e).__name__}); delete it to redo the stage in "
                                "flight from its start")

    def save_partial(self, model, optimizer, stage: int, epoch: int) -> None:
        """Weights and SGD momentum after `epoch` epochs of `stage`, in one atomic file. Momentum is stored by
        the parameter's position in model.parameters(), which a rebuilt model of the same structure repeats."""
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        for i, p in enumerate(model.parameters()):
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum.{i}"] = buf.detach().cpu().contiguous()
        write_atomic(self.partial, lambda p: save_file(tensors, str(p), metadata={"stage": str(stage),
                                                                                "epoch": str(epoch)}))

    def load_partial(self, model, optimizer, stage: int) -> int:
        """Restore weights and momentum saved during `stage`; returns the epochs already done (0 if none)."""
        saved = self.partial_progress()
        if saved is None or saved[0] != stage:
            return 0
        try:
            tensors = load_file(str(self.partial))
            model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        except (SafetensorError, OSError, RuntimeError) as e:
            raise PrunelabError(f"{self.partial} is damaged or belongs to another model ({type(e).__name__}); "
                                "delete it to redo this stage from its start")
        for i, p in enumerate(model.parameters()):
            if f"momentum.{i}" in tensors:
                optimizer.state[p]["momentum_buffer"] = tensors[f"momentum.{i}"].to(p.device)
        return saved[1]

    # ------------------------------------------------------------------ metrics.jsonl
    def append_metrics(self, row: dict) -> None:
        append_jsonl(self.metrics, row)
        if self.tensorboard is not None:
            self.tensorboard.log(row)

    def drop_epochs_after(self, stage: int, epochs_done: int) -> None:
        """Drop the epoch rows of `stage` past `epochs_done` from metrics.jsonl: that stage goes on from there, and
        rows a crash left after its last partial checkpoint would count an epoch twice."""
        rows = read_jsonl(self.metrics)
        kept = [r for r in rows if not (r["event"] == "epoch" and r["stage"] == stage and r["epoch"] > epochs_done)]
        if len(kept) != len(rows):
            write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def prepare_resume(self, done: int, n_steps: int) -> None:
        """Make the log agree with the checkpoints before a resume: drop lines of stages after the last finished one
        (`done`, or sparse training when its checkpoint exists and `done` is the dense stage): they run again,
        except epochs kept by a mid-stage checkpoint. Put back any summary line of a finished stage that a crash
        kept from being written (it is stored in the stage's checkpoint too)."""
        finished = [s for s in range(done + 1)]
        if done == 0 and self.model_file("sparse").is_file():
            finished.append(SPARSE_STAGE)
        last = max(stage_order(s) for s in finished) if finished else -1
        partial = self.partial_progress()
        if partial and stage_order(partial[0]) <= last:  # left by a stage that has since finished
            self.partial.unlink()
            partial = None
        rows = [r for r in read_jsonl(self.metrics) if stage_order(r.get("stage", 0)) <= last
                or (partial and r["event"] == "epoch" and r["stage"] == partial[0] and r["epoch"] <= partial[1])]
        have = {r["stage"] for r in rows if r["event"] in SUMMARY_EVENTS}
        for stage in finished:
            if stage not in have:
                rows.append(self._summary_from_checkpoint(stage, n_steps))
        write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def _summary_from_checkpoint(self, stage: int, n_steps: int) -> dict:
        path = self.model_file("sparse") if stage == SPARSE_STAGE else self.checkpoint(stage, n_steps).with_suffix(".json")
        desc, weights = modelfile.describe(path)
        row = dict(desc.get("metrics") or {})
        if row.get("stage") != stage or row.get("event") not in SUMMARY_EVENTS:
            raise PrunelabError(f"{path} holds no summary of stage {stage}; the "
                                "run directory is damaged: start a new run")
        row["file_size_bytes"] = weights.stat().st_size
        return row


def create(cfg: Config) -> RunDir:
    """Create a new run directory for cfg and write its config.json; refuse to overwrite an existing run."""
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


def _current_or_legacy(current: Path, legacy: Path) -> Path:
    """`current`, unless only `legacy` (the name an older prunelab wrote) exists."""
    return legacy if legacy.is_file() and not current.is_file() else current


def model_file(path: str | Path, which: str = "final") -> Path:
    """A model file from a run directory (its `which` checkpoint) or a model file given directly."""
    p = Path(path)
    if p.is_dir():
        desc = RunDir(p).model_file(which)
        if not desc.is_file():
            raise PrunelabError(f"{p} has no checkpoints/{which}.json; is it a finished prunelab run directory?")
        return desc
    return p


def existing_run(cfg: Config) -> Path | None:
    """The run directory of cfg (<out_dir>/<name>) when it exists already, to be resumed (its recipe must equal
    cfg's: otherwise a one-line error naming the first difference), or None when there is none: open-or-resume
    for every caller that may start the same run again (`--or-resume`, sweeps, seeds, controls)."""
    rd = RunDir(Path(cfg.out_dir) / cfg.name)
    if not rd.config.is_file():
        return None
    resumed_config(open_existing(rd.path)[1], cfg)  # refuses a changed recipe
    return rd.path


def open_existing(path: str | Path) -> tuple[RunDir, Config]:
    """A run directory and the config it was started with."""
    rd = RunDir(path)
    if not rd.config.is_file():
        raise PrunelabError(f"{rd.path} is not a prunelab run directory (no config.json); start one with `prunelab run`")
    try:
        saved = json.loads(rd.config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrunelabError(f"{rd.config} is damaged ({e}); start a new run")
    if not isinstance(saved, dict):
        raise PrunelabError(f"{rd.config} is damaged (not a mapping of settings); start a new run")
    return rd, config_from_dict(saved)


class TensorBoardLog:
    """The lines of metrics.jsonl, also as TensorBoard scalars: epochs by their running count, stages by number."""

    def __init__(self, path: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(path))
        self.epochs = 0

    def log(self, row: dict) -> None:
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if row["event"] == "lr_probe":
            self.writer.add_scalar("stages/lr_probe_chosen", row["chosen"], row["stage"])
        elif row["event"] == "epoch":
            self.epochs += 1
            for k in ("loss", "train_accuracy", "val_accuracy", "lr", "images_per_s"):
                if k in numbers:
                    self.writer.add_scalar(f"train/{k}", numbers[k], self.epochs)
        else:
            for k, v in numbers.items():
                if k not in ("stage", "step"):
                    self.writer.add_scalar(f"stages/{k}", v, row["stage"])
            for r in row.get("latency", []):
                self.writer.add_scalar(f"stages/latency_ms_{r['device']}_b{r['batch_size']}", r["median_ms"],
                                       row["stage"])
        self.writer.flush()
