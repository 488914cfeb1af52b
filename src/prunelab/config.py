"""Every setting of a prunelab run, in one flat frozen dataclass; presets are small dicts of overrides.

Two kinds of setting, marked in each field's metadata:
- the **recipe** (what a run computes: data, model, optimisation, pruning, measurement), pinned by
  `runs/<name>/config.json` once the run starts;
- the **runtime** (`runtime=True`: where and how it runs: device, threads, progress bars, folders),
  which `--resume` may change.
A `Config` is immutable: values derived while a run goes (the ratio found for a MACs target) are
results of a stage, recorded in metrics.jsonl and the checkpoints, never written back into the config.
Values, types, ranges and combinations are validated here, in one place, before any long work starts. Whether
a named thing exists here (a model name, an installed runtime) is checked where the choice is used, still before
any long work (pipeline.check_available, sweep.run). This module imports nothing of prunelab but errors.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


from .errors import PrunelabError

IMPORTANCES = ("l1", "l2", "taylor", "bn_scale", "lamp", "fpgm", "random")
NORMALIZATIONS = {  # per-channel mean and std on the 0-1 scale, by name
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2430, 0.2610]),  # the seed's constants
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),  # torchvision's pretrained weights
}
DATA_LOADINGS = ("auto", "memory", "stream")
DATA_FORMATS = ("auto", "cifar-batches", "image-folder", "synthetic")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("linear", "geometric")
AUGMENTATIONS = ("auto", "pad-crop", "resized-crop", "none")
LR_SCHEDULE_UNITS = ("epoch", "batch")
ALLOCATIONS = ("uniform", "global", "search")
# scratch: the pruned architecture from a random init, on the prune-and-fine-tune phase's budget; scratch-long: the
# same on the images of the dense training and the phase together; random: the random criterion
CONTROLS = ("scratch", "scratch-long", "random")
CONTROL_BUDGETS = ("time", "images")  # what the scratch control matches: training seconds, or training images
INT8_RUNTIMES = ("auto", "openvino", "onnxruntime")
# Settings that older prunelab versions wrote into config.json and that are now derived: ignored on reading.
RETIRED = ("reduced",)


def _f(default, help: str, runtime: bool = False, **kw):
    """A dataclass field with its help text (shown by `prunelab run --help`). `runtime=True` marks a setting
    that says where or how a run executes, not what it computes: `--resume` may change it."""
    meta = {"help": help, "runtime": runtime}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class Config:
    # --- runtime: where and how the run executes (may change on --resume) ---
    name: str = _f("", "run name: the run directory is <out_dir>/<name> (default: the preset name)", runtime=True)
    out_dir: str = _f("runs", "folder that holds run directories", runtime=True)
    device: str = _f("auto", "auto | cpu | cuda", runtime=True)
    num_threads: int = _f(0, "CPU threads for torch during the run (0 = torch's default)", runtime=True)
    progress: bool = _f(True, "show progress bars", runtime=True)
    tensorboard: bool = _f(False, "also log metrics to <run>/tensorboard (needs the tensorboard package)", runtime=True)
    data_dir: str = _f("data", "folder with cifar-10-batches-py/ or an image-folder tree train/<class>/*, test/<class>/*",
                       runtime=True)
    download: bool = _f(False, "download the official CIFAR-10 into data_dir if it is not there (needs a network)",
                        runtime=True)
    cache_dir: str = _f("", "where decoded image folders and teacher outputs (distill_cached) are cached (default: "
                        "$PRUNELAB_CACHE or ~/.cache/prunelab)", runtime=True)
    data_loading: str = _f("auto", "auto (decoded images in memory when they fit memory_budget_gb, else streamed) | "
                                   "memory | stream (decoded from disk every epoch by DataLoader workers); both give "
                                   "the same batches", runtime=True)
    memory_budget_gb: float = _f(0.0, "most GB of decoded images (train + test) held in memory (0 = half of this "
                                      "machine's RAM); larger image folders stream from disk", runtime=True)
    controls: list = _f([], "after the run: scratch (the pruned architecture trained from a random init for the same "
                            "training time; distilled from the run's teacher when the run distils) and/or random (the "
                            "same run with the random criterion), as report rows",
                        runtime=True)
    int8: bool = _f(False, "after the run: INT8 static quantisation of the final model (calibrated on 300 training "
                           "images), with its accuracy, size and latency in the report", runtime=True)
    int8_runtime: str = _f("auto", "runtime that quantises and runs the INT8 model: auto (openvino when OpenVINO and "
                                   "NNCF are installed, else onnxruntime) | openvino | onnxruntime", runtime=True)
    control_budget: str = _f("time", "the scratch control's budget: time (the training seconds of the prune-and-"
                                     "fine-tune phase) | images (as many training images)", runtime=True)
    baseline_images: int = _f(0, "training images the --baseline was trained on (its epochs x its training images, "
                                 "e.g. 500000 for 10 epochs of 50,000): the scratch-long control's budget adds them "
                                 "to the fine-tune's (a run that trains its dense model counts its own)", runtime=True)
    control_lr: float = _f(0.0, "the scratch control's SGD learning rate (0 = the rate the final fine-tune ran at: "
                                "final_finetune_lr or finetune_lr, or what lr_probe chose; the control trains the "
                                "small network at the lr the pruned one is fine-tuned with; its warm-up is "
                                "warmup_epochs)",
                           runtime=True)
    seeds: list = _f([], "repeat the run once per seed (runs <name>/s<seed>/) and report mean ± std; the dense "
                         "--baseline, when given, is shared", runtime=True)
    workers: int = _f(-1, "DataLoader worker processes when images stream from disk (-1 = one per CPU core, "
                          "up to 8; 0 = decode in the main process)", runtime=True)

    # --- run ---
    seed: int = _f(0, "seed for weights, data order, augmentation and subsets")
    precision: str = _f("auto", "training precision: auto (bf16 where supported, else fp32) | fp32 | bf16 | fp16 (CUDA only)")
    channels_last: bool = _f(True, "use channels_last memory format (faster convolutions on CPU and tensor cores)")

    # --- data ---
    data_format: str = _f("auto", "auto | cifar-batches | image-folder | synthetic")
    train_subset: int = _f(0, "use this many training images (0 = all), drawn at random with the seed")
    test_subset: int = _f(0, "use this many test images (0 = all), drawn at random once for every seed (the same "
                                 "images for all seeds and controls)")
    early_images: int = _f(0, "training images per epoch of every stage before the final fine-tune (dense training, "
                              "sparse training, the fine-tunes between pruning steps), drawn with the seed from the "
                              "training split; the final fine-tune trains on all of it. A short dense phase, then "
                              "the cheap pruned model trains long ('early-bird' pruning). 0 = the whole split")
    val_size: int = _f(0, "images carved from train as a validation split (0 = none); the test set is only for reported numbers")
    val_seed: int = _f(-1, "seed of the validation split's draw (-1 = --seed): with one, every seed validates on the same "
                           "images, and a dense model trained with the same --val-size and --val-seed never saw them "
                           "(a sweep that trains its dense model sets it to its first seed). Synthetic data is drawn "
                           "anew for each seed")
    synthetic_size: int = _f(512, "training images when data_format=synthetic (test gets a quarter)")
    image_size: int = _f(0, "side of the square images the model sees, px (0 = the data's own size, which must then "
                            "be the same for every image); larger images are resized (shorter side) and centre-cropped")
    mean: list = _f([0.4914, 0.4822, 0.4465], "per-channel input mean on the 0-1 scale: 3 numbers, or cifar10 | "
                                              "imagenet | auto (computed on the training split)")
    std: list = _f([0.2470, 0.2430, 0.2610], "per-channel input std on the 0-1 scale: 3 numbers, or cifar10 | imagenet "
                                             "| auto")
    augmentation: str = _f("auto", "training augmentation: auto (pad-crop up to 64 px, resized-crop above) | pad-crop "
                                   "(the seed's random crop with zero padding) | resized-crop (random-resized-crop) | none")
    crop_padding_px: int = _f(4, "pad-crop padding in pixels (0 = no crop augmentation)")
    flip: bool = _f(True, "random horizontal flip")
    cutout_px: int = _f(0, "cutout: in every training image one random square of this side (clipped at the border) "
                           "set to the mean colour, after crop and flip (DeVries & Taylor 2017 used 16 at 32 px; "
                           "0 = off)")

    # --- model ---
    model: str = _f("resnet18_cifar", "model: resnet18_cifar (the seed's) | a torchvision model name (resnet50, "
                                      "mobilenet_v2, ...) | timm:<name> | package.module:function (your builder)")
    model_kwargs: str = _f("", "JSON object of keyword arguments for the model builder, e.g. '{\"width\": 64}'")
    num_classes: int = _f(0, "classes the model outputs (0 = the number of class folders in the data); must match the data")
    small_input_stem: bool = _f(False, "give a ResNet-family model the seed's stem for 32-64 px inputs (3x3 stride-1 "
                                       "conv1, no max-pool); resnet18_cifar has it already")
    baseline: str = _f("", "path to a trained dense model (.safetensors: a prunelab model file, or the state dict of "
                           "this --model as torchvision/timm/your code saved it) to start from instead of training one")
    pretrained: str = _f("", "start the dense stage from published weights: --pretrained alone takes the model's "
                             "default (torchvision's weights enum DEFAULT, timm's default tag), --pretrained NAME one "
                             "of them (e.g. IMAGENET1K_V2; timm: a tag such as a1_in1k). Read from the library's cache "
                             "(torch hub / Hugging Face), downloaded where a network exists; the classifier is "
                             "re-initialised for the data's classes, and mean/std default to the weights' own")
    init_from: str = _f("", "start the dense stage from a file of weights for this --model with any classifier (a "
                            ".safetensors state dict, torchvision/timm naming, or a prunelab model file): every tensor "
                            "whose name and shape match is loaded, the classifier is re-initialised for the data")
    trust_pickle: bool = _f(False, "let --init-from read a pickled .pt/.pth/.bin file (unpickling can run code: only "
                                   "for a file you made yourself)", runtime=True)
    head_lr: float = _f(0.0, "with --pretrained/--init-from: the new classifier's learning rate in the dense stage, "
                             "while the loaded layers train at lr (0 = lr for all)")

    # --- optimisation (the same SGD settings train the baseline and every fine-tune) ---
    batch_size: int = _f(128, "training batch size, images")
    eval_batch_size: int = _f(500, "evaluation batch size, images")
    lr: float = _f(0.1, "SGD learning rate for the dense baseline (at batch_size)")
    finetune_lr: float = _f(0.1, "SGD learning rate for every fine-tune (at batch_size)")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(5e-4, "SGD weight decay")
    nesterov: bool = _f(False, "Nesterov momentum")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy loss")
    warmup_epochs: float = _f(0.0, "linear learning-rate warm-up before the cosine decay, in epochs (dense training; needs "
                                   "lr_schedule_unit batch)")
    lr_schedule_unit: str = _f("epoch", "how often the cosine schedule steps: epoch (the seed's CosineAnnealingLR(T_max="
                                        "epochs) stepped once per epoch: a 1-epoch fine-tune runs at a constant lr) | "
                                        "batch (a smooth decay to 0 within every stage)")
    epochs: int = _f(10, "epochs to train the dense baseline (cosine schedule over them)")

    # --- pruning (Torch-Pruning) ---
    importance: str = _f("l2", "filter importance: " + " | ".join(IMPORTANCES))
    pruning_ratio: float = _f(0.9, "channel pruning ratio reached after the last step, in (0, 1)")
    iterative_steps: int = _f(20, "pruning steps that reach pruning_ratio")
    schedule: str = _f("linear", "linear (each step removes the same share of the original channels) | geometric "
                                 "(each step removes the same share of what remains)")
    target_macs: float = _f(0.0, "prune until the model has at most this many MACs per image (the ratio is then searched "
                                 "for, and recorded as a result of the dense stage; 0 = off)")
    target_params: float = _f(0.0, "prune until the model has at most this many parameters (as target_macs, and with it "
                                   "both limits hold; 0 = off)")
    target_latency_ms: float = _f(0.0, "prune until one batch of latency_batch_size runs in at most this many ms in "
                                       "latency_runtime on this machine (the ratio is searched on one-shot-pruned "
                                       "copies, timed; 0 = off)")
    target_speedup: float = _f(0.0, "prune until one batch of latency_batch_size runs at least this many times faster "
                                    "than the dense model in latency_runtime, the dense model timed first in the "
                                    "same run on this machine, the final one beside it at the end (e.g. 3; 0 = off). "
                                    "Load slows the dense model more than small ones: time on a quiet machine (the "
                                    "run warns when other processes kept CPU cores busy)")
    latency_runtime: str = _f("pytorch", "runtime of target_latency_ms / target_speedup: pytorch | pytorch-fused | "
                                         "onnxruntime | openvino")
    latency_batch_size: int = _f(1, "batch size of target_latency_ms / target_speedup")
    drop_blocks: list = _f([], "depth pruning: blocks (module names, e.g. layer3.1 layer4.1) replaced by identity before "
                               "the first pruning step, from the trained dense model; their budget goes to the widths "
                               "that every target is then met with. Only blocks whose output has their input's shape "
                               "(an error lists them)")
    allocation: str = _f("uniform", "how the channels to remove are spread over the layers: uniform (every group loses the "
                                    "same share) | global (channels ranked across layers by the importance) | search "
                                    "(each group's width searched for the target: candidates cut once, given fresh "
                                    "batch-norm statistics and a short fine-tune, ranked on the validation split; needs "
                                    "a target and --val-size; it gains under a latency target, and ties or loses to "
                                    "uniform under a size target at 100x fewer MACs: docs/RESULTS.md 7.10, 7.32)")
    search_budget: int = _f(16, "with allocation search: width candidates scored (the first is uniform allocation)")
    search_images: int = _f(1024, "with allocation search: training images that re-estimate each candidate's batch-norm "
                                  "statistics; the candidate is then scored on the validation split")
    search_train_images: int = _f(2560, "with allocation search: training images each candidate is fine-tuned on (one "
                                        "pass, its lr annealed from finetune_lr to 0) before it is scored: where "
                                        "one-shot accuracy is near chance (100x fewer MACs) it cannot rank candidates "
                                        "(0 = one-shot only)")
    global_pruning: bool = _f(False, "rank channels across layers instead of within each layer (= --allocation global)")
    max_pruning_ratio: float = _f(1.0, "with global pruning: no layer loses more than this share of its channels")
    round_to: int = _f(2, "keep channel counts a multiple of this (0 = no rounding)")
    fill_budget: bool = _f(True, "with a MACs/params target: widen groups by round_to channels while the budget "
                                 "holds, into what rounding the kept channels down left idle (uniform allocation) "
                                 "or what the limit that did not bind left idle (each width-search candidate)")
    taylor_batches: int = _f(4, "batches of training data whose gradients feed the taylor importance")
    sparse_epochs: int = _f(0, "epochs of sparse training between the dense stage and the first pruning step: "
                               "Torch-Pruning's group-norm regularisation (GroupNormPruner) pushes the weights of "
                               "unimportant channel groups towards zero, so pruning removes less (0 = off)")
    sparse_reg: float = _f(5e-4, "strength of the sparse training's group-norm regularisation (Torch-Pruning's reg)")
    bn_reestimate_images: int = _f(0, "after every pruning step, re-estimate the batch-norm statistics from this many "
                                      "training images (forward passes, no gradient) before measuring and fine-tuning, "
                                      "and again at the end of every training stage; the report gives the accuracy with "
                                      "stale and with fresh statistics (0 = off, the seed recipe; models whose batch "
                                      "norms keep a momentum below 0.1, such as torchvision's MobileNetV3, still get "
                                      "2,560 at the end of every training stage)")
    reconstruct_images: int = _f(0, "after every pruning step (and its batch-norm re-estimate), fit each unit of the "
                                    "pruned model (stem, block, classifier) to reproduce, on the channels kept, the "
                                    "outputs of the model before the step, from up to this many training images "
                                    "(drawn from all of them, not only early_images; fewer where their feature maps "
                                    "would pass 2 GiB), each unit's batch-norm statistics re-estimated after its fit "
                                    "(0 = off; RESULTS 7.34)")
    reconstruct_steps: int = _f(300, "with reconstruct_images: Adam steps of 128 images per unit")
    finetune_epochs_per_step: int = _f(1, "fine-tune epochs after each pruning step (0 = none)")
    final_finetune_epochs: int = _f(10, "fine-tune epochs after the last step (cosine over them)")
    final_finetune_lr: float = _f(0.0, "SGD learning rate of the final fine-tune (0 = finetune_lr); the short fine-tunes "
                                       "between steps keep finetune_lr")
    lr_probe: list = _f([], "choose the final fine-tune's learning rate among these (e.g. 0.01 0.02 0.04) by a short "
                            "fine-tune at each, scored on the validation split (needs val_size); it replaces "
                            "final_finetune_lr, and its time counts in the run's")
    lr_probe_images: int = _f(20000, "with lr_probe: training images in each rate's short fine-tune (one pass, cosine "
                                     "to 0); fewer favour lower rates more (RESULTS 7.37)")
    distill: bool = _f(False, "fine-tune with knowledge distillation from the dense model (soft targets + hard labels)")
    distill_cached: bool = _f(False, "with distill: compute the dense model's outputs once per training image (mean over "
                                     "the image and its mirror) instead of on every augmented batch; far cheaper, "
                                     "but the soft targets ignore the random crop. The outputs are kept in the cache "
                                     "(cache_dir), keyed by the teacher's weights, the images, normalisation, views and "
                                     "precision: a later run with the same ones reads them (another target; another seed "
                                     "too, unless its val split holds other images or its views differ)")
    distill_views: int = _f(0, "with distill_cached: the teacher's outputs on this many fixed random crops (and flips) of "
                               "every training image, computed once (that many teacher passes per image, different views "
                               "of each); training shows each image as one of its views, so the soft targets match what "
                               "the student sees (FKD's replay; cutout, if on, still cuts the student's input alone). "
                               "With augmentation none (flips only) 2 views are an image and its mirror: exact. 0 = one output "
                               "per image that ignores the crop. Not with resized-crop augmentation. Few views over many epochs overfit "
                               "(docs/RESULTS.md 7.15)")
    teacher: str = _f("", "with distill: the model to distil from instead of the run's dense model: a prunelab model file "
                          "(.json or .safetensors, any architecture, pruned or not) or a safetensors state dict of "
                          "--teacher-model; evaluated once at the start (its accuracy in the report)")
    teacher_model: str = _f("", "builder of a --teacher given as a plain state dict (default: --model, with its "
                                "--model-kwargs), e.g. resnet50; naming a teacher file's own package.module:function "
                                "builder lets prunelab call it")
    distill_temperature: float = _f(4.0, "distillation softmax temperature")
    distill_weight: float = _f(0.5, "share of the soft-target (KL) term in the fine-tune loss, in [0, 1]")

    # --- measurement ---
    latency_batch_sizes: list = _f([1, 128], "batch sizes at which latency is measured")
    latency_warmup: int = _f(3, "untimed forward passes before timing")
    latency_min_reps: int = _f(5, "timed forward passes at least")
    latency_min_seconds: float = _f(1.0, "keep timing until this many seconds have passed (median and p90 are "
                                    "reported); a latency target's search times each candidate for this long at most")
    measure_latency_every_step: bool = _f(True, "measure latency after every pruning step, not only dense and final")

    # --- export ---
    export_onnx: bool = _f(True, "write model.onnx of the final model (checked against PyTorch; needs onnx + onnxruntime)")


# Presets are plain data: overrides on top of the defaults above (which are the seed recipe). Why each value is what
# it is, with the measurements behind it, is in docs/RESULTS.md (section named beside each preset); no figure here.
# What beat the seed recipe in the CPU ablation at equal wall time (RESULTS 2.6, benchmarks/ablation.py): a geometric
# schedule (whose saved fine-tune time goes to a longer final fine-tune, set per preset), and a dense recipe with a
# 1-epoch warm-up, label smoothing 0.1 and Nesterov (the last two act in every fine-tune), all with the cosine stepped
# per batch (as they were measured).
_BEST_CHANGES = {"schedule": "geometric", "warmup_epochs": 1, "label_smoothing": 0.1, "nesterov": True,
                 "lr_schedule_unit": "batch"}
# From scratch in minutes on a 2-core bf16 CPU (RESULTS 1.1, 1.4). The pruned model trains far faster than the dense
# one, so the budget goes to it: a short dense phase on 2,560 images at a low lr (a higher one diverges in so few
# batches), 3 geometric pruning steps with one 2,560-image fine-tune epoch each, then 8 epochs on all training images
# at a high lr. Evaluated on 5,000 of the 10,000 test images (a full fp32 evaluation of the dense model costs more
# than its training here).
_QUICK = {
    "early_images": 2560,
    "epochs": 1,
    "lr": 0.02,
    "iterative_steps": 3,
    "schedule": "geometric",
    "final_finetune_epochs": 8,
    "final_finetune_lr": 0.2,
    "nesterov": True,
    "lr_schedule_unit": "batch",
    "test_subset": 5000,
    "latency_min_seconds": 0.5,
}

_TRAINED: dict[str, Any] = {"fill_budget": False, "early_images": 2560, "control_lr": 0.1, "control_budget": "images",
                            "iterative_steps": 1, "finetune_epochs_per_step": 0, "bn_reestimate_images": 2560,
                            "pruning_ratio": 0.5, "final_finetune_epochs": 10, "final_finetune_lr": 0.02,
                            "nesterov": True, "lr_schedule_unit": "batch", "test_subset": 0, "latency_min_seconds": 1.0}

PRESETS: dict[str, dict[str, Any]] = {
    # The course project exactly: 10 dense epochs, L2 importance, ratio 0.9 in 20 linear steps,
    # 1 fine-tune epoch per step, 10 final fine-tune epochs, batch 128, SGD 0.1/0.9/5e-4, cosine stepped per epoch.
    "seed": {},
    "quick": _QUICK,
    # The budget of the ablation that beat the seed recipe (10,000 training and 2,000 test images, 5 dense epochs,
    # 5 steps) with its changes and 9 final fine-tune epochs; meant to start from a trained --baseline (RESULTS 2.6).
    "quick-best": {"train_subset": 10000, "test_subset": 2000, "epochs": 5, "iterative_steps": 5,
                   "latency_min_seconds": 0.5, **_BEST_CHANGES, "final_finetune_epochs": 9},
    # The seed's budget with the changes, the final fine-tune lengthened in the same proportion (18 for 10).
    # Meant for a GPU; not yet run to the end anywhere.
    "best": {**_BEST_CHANGES, "final_finetune_epochs": 18},
    # quick's recipe with a 40-epoch final fine-tune, evaluated on every test image: the full-data result on a 2-core
    # CPU in about half an hour from a trained --baseline (RESULTS 2.2; the seed recipe: 2.1, 2.3).
    "full": {**_QUICK, "final_finetune_epochs": 40, "test_subset": 0, "latency_min_seconds": 1.0},
    # full with three times the final epochs: the recipe behind prunelab's best figure at the seed's size (RESULTS
    # 2.4; about an hour on a 2-core bf16 CPU, 109 min without bf16, from a trained --baseline, inside the seed
    # recipe's time; its scratch control ties it, 3.3).
    "full-long": {**_QUICK, "final_finetune_epochs": 120, "test_subset": 0, "latency_min_seconds": 1.0},
    # A model already trained on this data (--baseline), pruned where pruning pays (2x to 10x fewer MACs): one cut to
    # the target with fresh batch-norm statistics, then 10 epochs on all training images at a low lr (a high one
    # undoes what the cut kept: RESULTS 7.3). 0.02, not 7.6's 0.01: on the converged ResNet-18 fixture it never did
    # worse on the test set, and a briefly trained MobileNetV3 gained from it (RESULTS 7.36, 7.38); --lr-probe
    # chooses per model (7.37). Scored on every test image (RESULTS 7.6). Give a --target-macs, --target-params,
    # --target-latency-ms or --target-speedup; without one, half the channels of every layer go.
    # As 7.6 measured it: without fill_budget, the batch-norm statistics re-estimated on the first 2,560 images of
    # the shuffled training set (early_images: nothing else here trains on them), and controls on as many images at
    # lr 0.1 (at the fine-tune's low lr a scratch control is a straw man: RESULTS 7.3).
    "trained": _TRAINED,
    # trained in minutes: 2 final epochs, without the crop augmentation (flips only): in 2 or 4 epochs the crop costs
    # the pruned model more than it regularises; over 10 epochs the crop wins (RESULTS 7.20), so `trained` keeps it.
    "trained-short": {**_TRAINED, "final_finetune_epochs": 2, "augmentation": "none"},
    # trained-short with 4 epochs distilled from the dense model (or --teacher) on each training image and its mirror,
    # the teacher's outputs computed once and kept in the cache for every later seed and target (RESULTS 7.22): at
    # 10x fewer MACs within a point of the dense model where 4 plain epochs are not; at 4x a tie with 4 plain epochs
    # (RESULTS 7.23, 7.24). The first run from a dense model pays the teacher's two passes per image.
    "trained-distilled": {**_TRAINED, "final_finetune_epochs": 4, "augmentation": "none", "distill": True,
                          "distill_cached": True, "distill_views": 2},
    # Transfer learning from --pretrained or --init-from weights (RESULTS 8): a short dense fine-tune (on the one
    # transfer task measured, lr 0.1 beat 0.03 and 0.01 on the validation split), then one cut to the target with
    # fresh batch-norm statistics, and a short final fine-tune at a low lr (a high one undoes what the cut kept:
    # RESULTS 7.3). Give a --target-macs, --target-params or --target-latency-ms; without one, half the channels of
    # every layer go.
    "transfer": {"epochs": 5, "lr": 0.1, "nesterov": True, "label_smoothing": 0.1,
                 "lr_schedule_unit": "batch", "pruning_ratio": 0.5, "iterative_steps": 1,
                 "finetune_epochs_per_step": 0, "bn_reestimate_images": 2560, "final_finetune_epochs": 5,
                 "final_finetune_lr": 0.01, "latency_min_seconds": 0.5},
    # The smallest run that passes through every stage: for tests and trying the CLI.
    "tiny": {
        "data_format": "synthetic",
        "synthetic_size": 256,
        "image_size": 16,  # a quarter of a 32 px ResNet-18 step: the test suite runs this preset ~100 times
        "epochs": 1,
        "iterative_steps": 2,
        "final_finetune_epochs": 1,
        "batch_size": 64,
        "latency_batch_sizes": [1, 8],
        "latency_warmup": 1,
        "latency_min_reps": 2,
        "latency_min_seconds": 0.0,
    },
}


# The presets that prune a model already trained on this data: on the command line they need --baseline.
FROM_BASELINE = ("trained", "trained-short", "trained-distilled")

LONG_NEEDS_IMAGES = ("the scratch-long control trains on as many images as the dense training and the fine-tune "
                     "together, and how many images --baseline was trained on is unknown: add --baseline-images N "
                     "(its epochs x training images, e.g. 500000 for 10 epochs of 50,000)")


def final_lr(cfg: "Config | dict") -> float:
    """The final fine-tune's learning rate: final_finetune_lr, or finetune_lr where that is 0 (also for the config
    dict of a results.json written before final_finetune_lr existed)."""
    if isinstance(cfg, dict):
        return cfg.get("final_finetune_lr") or cfg.get("finetune_lr", 0.1)
    return cfg.final_finetune_lr or cfg.finetune_lr


def field_names() -> list[str]:
    return [f.name for f in fields(Config)]


def runtime_fields() -> list[str]:
    """The settings a resumed run may change: where and how it runs, not what it computes."""
    return [f.name for f in fields(Config) if f.metadata["runtime"]]


def recipe_fields() -> list[str]:
    """The settings a run directory pins."""
    return [f.name for f in fields(Config) if not f.metadata["runtime"]]


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Convert a value from the command line or a config file to the type of the field's default."""
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is list:
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            if name in ("mean", "std") and len(value) == 1 and str(value[0]) in (*NORMALIZATIONS, "auto", "pretrained"):
                return [str(value[0])]
            inner = type(default[0]) if default else {"seeds": int, "lr_probe": float}.get(name, str)
            return [inner(v) for v in value]
        if kind is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    raise PrunelabError(f"config: '{name}' must be a {kind.__name__}, got {value!r}; fix the value in your config or command line")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read overrides from a YAML or JSON file (a flat mapping of setting -> value)."""
    p = Path(path)
    if not p.is_file():
        raise PrunelabError(f"config file not found: {p}; pass an existing .yaml or .json file to --config")
    text = p.read_text()
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PrunelabError(f"config file {p} is not valid JSON: {e}")
    else:
        try:
            import yaml
        except ImportError:
            raise PrunelabError(f"reading {p} needs the pyyaml package (pip install pyyaml), or write it as .json")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:  # the parser's own message is long; keep the first line
            raise PrunelabError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PrunelabError(f"config file {p} must hold a mapping of setting: value, not a {type(data).__name__}")
    return data


def make_config(preset: str = "seed", overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the preset, then the overrides (file, then command line); validated."""
    if preset not in PRESETS:
        raise PrunelabError(f"unknown preset '{preset}'{_suggest(preset, PRESETS)}; choose one of: {', '.join(PRESETS)}")
    merged = {**PRESETS[preset], **(overrides or {})}
    defaults = Config()
    values = {}
    for key, value in merged.items():
        if key in RETIRED:
            continue
        if key not in field_names():
            raise PrunelabError(f"config: unknown setting '{key}'{_suggest(key, field_names())}; "
                                "see `prunelab run --help` for the list")
        values[key] = _coerce(key, value, getattr(defaults, key))
    if not values.get("name"):
        values["name"] = preset
    for key in ("mean", "std"):  # --pretrained: the weights' own normalisation unless one is given
        if values.get("pretrained") and key not in values:
            values[key] = ["pretrained"]
    cfg = dataclasses.replace(defaults, **values)
    validate(cfg)
    return cfg


def check_preset_weights(preset: str, cfg: Config) -> None:
    """The presets that start from weights the user has, given on the command line (`prunelab run`/`sweep`; the
    Python API's run(cfg, model=...) passes a model instead, so make_config does not check this)."""
    if preset in FROM_BASELINE and not cfg.baseline:
        raise PrunelabError(f"config: preset {preset} prunes a model already trained on this data: add --baseline FILE "
                            "(weights from another task: --preset transfer; no trained model: --preset quick)")
    if preset == "transfer" and not (cfg.pretrained or cfg.init_from or cfg.baseline):
        raise PrunelabError("config: preset transfer fine-tunes weights you already have: add --pretrained "
                            "or --init-from FILE (or use another preset to train from scratch)")


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a resolved config (e.g. from runs/<name>/config.json)."""
    return make_config("seed", d)


def latency_targeted(cfg: Config) -> bool:
    """Whether the run prunes to a latency: target_latency_ms, or target_speedup against the dense model."""
    return bool(cfg.target_latency_ms or cfg.target_speedup)


def validate(cfg: Config) -> None:
    """Raise PrunelabError naming the first setting that makes no sense."""
    def need(cond: bool, msg: str):
        if not cond:
            raise PrunelabError(f"config: {msg}")

    need(cfg.importance in IMPORTANCES,
         f"unknown importance '{cfg.importance}'{_suggest(cfg.importance, IMPORTANCES)}; choose one of: {', '.join(IMPORTANCES)}")
    need(cfg.num_classes == 0 or cfg.num_classes >= 2, f"num_classes must be 0 (from the data) or at least 2, got "
         f"{cfg.num_classes}")
    need(cfg.image_size >= 0, f"image_size must be 0 (the data's own) or a positive number of pixels, got {cfg.image_size}")
    if cfg.model_kwargs:
        try:
            kwargs = json.loads(cfg.model_kwargs)
        except json.JSONDecodeError as e:
            raise PrunelabError(f"config: model_kwargs is not valid JSON ({e}); pass an object such as '{{\"width\": 64}}'")
        need(isinstance(kwargs, dict), f"model_kwargs must be a JSON object, got {cfg.model_kwargs}")
    need(cfg.data_format in DATA_FORMATS, f"unknown data_format '{cfg.data_format}'; choose one of: {', '.join(DATA_FORMATS)}")
    need(cfg.data_loading in DATA_LOADINGS, f"unknown data_loading '{cfg.data_loading}'; choose one of: "
         f"{', '.join(DATA_LOADINGS)}")
    need(cfg.memory_budget_gb >= 0, f"memory_budget_gb must be 0 (half of the RAM) or positive, got {cfg.memory_budget_gb}")
    need(cfg.baseline_images >= 0, f"baseline_images must be 0 (unknown) or more, got {cfg.baseline_images}")
    need("scratch-long" not in cfg.controls or not cfg.baseline or cfg.baseline_images > 0, LONG_NEEDS_IMAGES)
    need(all(c in CONTROLS for c in cfg.controls) and len(set(cfg.controls)) == len(cfg.controls),
         f"controls must be {' and/or '.join(CONTROLS)}, each once, got {cfg.controls}")
    need(cfg.int8_runtime in INT8_RUNTIMES, f"unknown int8_runtime '{cfg.int8_runtime}'; choose one of: "
         f"{', '.join(INT8_RUNTIMES)}")
    need(cfg.control_lr >= 0, f"control_lr must be >= 0 (0 = finetune_lr), got {cfg.control_lr}")
    need(cfg.control_budget in CONTROL_BUDGETS, f"unknown control_budget '{cfg.control_budget}'; choose one of: "
         f"{', '.join(CONTROL_BUDGETS)}")
    need(len(set(cfg.seeds)) == len(cfg.seeds) and all(s >= 0 for s in cfg.seeds),
         f"seeds must be distinct non-negative integers, got {cfg.seeds}")
    need(all(isinstance(b, str) and b for b in cfg.drop_blocks) and len(set(cfg.drop_blocks)) == len(cfg.drop_blocks),
         f"drop_blocks must name distinct blocks (e.g. layer3.1 layer4.1), got {cfg.drop_blocks}")
    need(cfg.workers >= -1, f"workers must be -1 (one per core), 0 or more, got {cfg.workers}")
    need(cfg.precision in PRECISIONS, f"unknown precision '{cfg.precision}'; choose one of: {', '.join(PRECISIONS)}")
    need(cfg.device in DEVICES, f"unknown device '{cfg.device}'; choose one of: {', '.join(DEVICES)}")
    need(0.0 < cfg.pruning_ratio < 1.0, f"pruning_ratio must be in (0, 1), got {cfg.pruning_ratio}; e.g. 0.9 removes 90% of channels")
    need(cfg.lr_schedule_unit in LR_SCHEDULE_UNITS, f"unknown lr_schedule_unit '{cfg.lr_schedule_unit}'; choose one of: "
         f"{', '.join(LR_SCHEDULE_UNITS)}")
    need(cfg.schedule in SCHEDULES, f"unknown schedule '{cfg.schedule}'{_suggest(cfg.schedule, SCHEDULES)}; choose one of: {', '.join(SCHEDULES)}")
    need(cfg.target_macs >= 0 and cfg.target_params >= 0, "target_macs and target_params must be 0 (off) or positive")
    need(cfg.target_latency_ms >= 0, "target_latency_ms must be 0 (off) or positive")
    need(cfg.target_speedup == 0 or cfg.target_speedup > 1, f"target_speedup must be 0 (off) or above 1 (e.g. 3: three "
         f"times as fast as the dense model), got {cfg.target_speedup:g}")
    need(not (cfg.target_latency_ms and cfg.target_speedup), "set target_latency_ms (ms) or target_speedup (against "
         "the dense model), not both")
    need(not (latency_targeted(cfg) and (cfg.target_macs or cfg.target_params)),
         "set a latency target or a size target (target_macs and/or target_params), not both")
    need(cfg.latency_batch_size >= 1, f"latency_batch_size must be at least 1, got {cfg.latency_batch_size}")
    need(not (latency_targeted(cfg) and cfg.latency_runtime == "torch-compile"), "latency_runtime torch-compile "
         "would compile every candidate model (minutes each); use pytorch, pytorch-fused, onnxruntime or openvino")
    need(cfg.distill or not cfg.distill_cached, "distill_cached only changes how distillation is done; add --distill "
         "or drop --distill-cached")
    need(cfg.distill_views >= 0, f"distill_views must be 0 (off) or a number of views per image, got {cfg.distill_views}")
    need(cfg.distill_cached or not cfg.distill_views, "distill_views replays cached teacher outputs; add --distill "
         "--distill-cached, or drop --distill-views")
    need(cfg.augmentation != "resized-crop" or not cfg.distill_views, "distill_views replays pad-and-crop views; "
         "under augmentation resized-crop drop --distill-views")
    need(cfg.distill or not cfg.teacher, "--teacher names the model to distil from; add --distill (or drop --teacher)")
    need(cfg.teacher or not cfg.teacher_model, "--teacher-model says how to build a --teacher state dict; add --teacher")
    need(cfg.distill_temperature > 0, f"distill_temperature must be positive, got {cfg.distill_temperature}")
    need(0.0 <= cfg.distill_weight <= 1.0, f"distill_weight must be in [0, 1], got {cfg.distill_weight}")
    need(cfg.warmup_epochs >= 0, f"warmup_epochs must be 0 or more, got {cfg.warmup_epochs}")
    need(not (cfg.warmup_epochs and cfg.lr_schedule_unit == "epoch"),
         f"warmup_epochs {cfg.warmup_epochs:g} with lr_schedule_unit epoch: a schedule stepped once an epoch cannot ramp "
         "up inside one (the first epoch would run at the full lr); add --lr-schedule-unit batch")
    need(0.0 < cfg.max_pruning_ratio <= 1.0, f"max_pruning_ratio must be in (0, 1], got {cfg.max_pruning_ratio}")
    need(cfg.iterative_steps >= 1, f"iterative_steps must be at least 1, got {cfg.iterative_steps}")
    need(cfg.epochs >= 1 or bool(cfg.baseline), f"epochs must be at least 1, got {cfg.epochs} (or pass --baseline PATH to skip training)")
    need(cfg.epochs >= 0, f"epochs must not be negative, got {cfg.epochs}")
    need(cfg.finetune_epochs_per_step >= 0, f"finetune_epochs_per_step must be 0 or more, got {cfg.finetune_epochs_per_step}")
    need(cfg.final_finetune_epochs >= 0, f"final_finetune_epochs must be 0 or more, got {cfg.final_finetune_epochs}")
    need(cfg.batch_size >= 1, f"batch_size must be at least 1, got {cfg.batch_size}")
    need(cfg.eval_batch_size >= 1, f"eval_batch_size must be at least 1, got {cfg.eval_batch_size}")
    need(cfg.lr > 0 and cfg.finetune_lr > 0, f"lr and finetune_lr must be positive, got {cfg.lr} and {cfg.finetune_lr}")
    need(cfg.final_finetune_lr >= 0, f"final_finetune_lr must be 0 (= finetune_lr) or positive, got {cfg.final_finetune_lr}")
    need(0.0 <= cfg.momentum < 1.0, f"momentum must be in [0, 1), got {cfg.momentum}")
    need(cfg.weight_decay >= 0, f"weight_decay must be 0 or more, got {cfg.weight_decay}")
    need(0.0 <= cfg.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    need(cfg.sparse_epochs >= 0, f"sparse_epochs must be 0 (off) or more, got {cfg.sparse_epochs}")
    need(cfg.sparse_reg >= 0, f"sparse_reg must be 0 or more, got {cfg.sparse_reg}; e.g. 5e-4")
    need(cfg.allocation in ALLOCATIONS, f"unknown allocation '{cfg.allocation}'{_suggest(cfg.allocation, ALLOCATIONS)}; "
         f"choose one of: {', '.join(ALLOCATIONS)}")
    if cfg.allocation == "search":
        need(bool(cfg.target_macs or cfg.target_params or latency_targeted(cfg)), "allocation search looks for the "
             "widths that meet a budget: add --target-macs, --target-params, --target-latency-ms or --target-speedup")
        need(not cfg.global_pruning, "allocation search chooses each group's width itself; drop --global-pruning")
        need(cfg.val_size > 0, "allocation search ranks width candidates on a validation split carved from the "
             "training images, never the test set: add --val-size N (e.g. 2000)")
    need(cfg.search_budget >= 1, f"search_budget must be at least 1 candidate, got {cfg.search_budget}")
    need(cfg.search_images >= 1, f"search_images must be at least 1, got {cfg.search_images}")
    need(cfg.search_train_images >= 0, f"search_train_images must be 0 (one-shot) or more, got {cfg.search_train_images}")
    need(cfg.bn_reestimate_images >= 0, f"bn_reestimate_images must be 0 (off) or more, got {cfg.bn_reestimate_images}")
    need(cfg.reconstruct_images == 0 or cfg.reconstruct_images >= 16, "reconstruct_images must be 0 (off) or at least "
         f"16 (one in 8 judges each unit's fit), got {cfg.reconstruct_images}")
    need(cfg.reconstruct_steps >= 1, f"reconstruct_steps must be at least 1, got {cfg.reconstruct_steps}")
    if cfg.lr_probe:
        need(len(set(cfg.lr_probe)) >= 2 and len(set(cfg.lr_probe)) == len(cfg.lr_probe)
             and all(r > 0 for r in cfg.lr_probe), "lr_probe needs two or more different learning rates above 0 to "
             f"choose among, got {' '.join(f'{r:g}' for r in cfg.lr_probe)}; e.g. --lr-probe 0.01 0.02 0.04")
        need(cfg.val_size > 0, "lr_probe scores each rate on the validation split, and this run has none; add "
             "--val-size 5000 (images carved from the training images)")
        need(cfg.final_finetune_epochs > 0, "lr_probe chooses the final fine-tune's rate, and final_finetune_epochs is "
             "0; give the final fine-tune epochs or drop --lr-probe")
        need(cfg.lr_probe_images >= cfg.batch_size, f"lr_probe_images must be at least one batch ({cfg.batch_size} "
             f"images, batch_size), got {cfg.lr_probe_images}; the default is 20000")
    need(cfg.round_to >= 0, f"round_to must be 0 or more, got {cfg.round_to}")
    need(cfg.taylor_batches >= 1, f"taylor_batches must be at least 1, got {cfg.taylor_batches}")
    need(cfg.train_subset >= 0 and cfg.test_subset >= 0 and cfg.val_size >= 0,
         "train_subset, test_subset and val_size must be 0 or more")
    need(cfg.val_seed >= -1, f"val_seed must be -1 (the run's --seed) or a seed of 0 or more, got {cfg.val_seed}")
    need(cfg.early_images >= 0, f"early_images must be 0 (the whole training split) or more, got {cfg.early_images}")
    need(cfg.synthetic_size >= 16, f"synthetic_size must be at least 16, got {cfg.synthetic_size}")
    named = [v for v in (cfg.mean, cfg.std) if len(v) == 1 and isinstance(v[0], str)]
    need(all(len(v) == 3 for v in (cfg.mean, cfg.std) if v not in named) and
         all(s > 0 for s in (cfg.std if cfg.std not in named else [1])),
         "mean and std must each be 3 numbers (std positive), or one of cifar10, imagenet, auto, pretrained")
    need(cfg.pretrained or "pretrained" not in (*cfg.mean, *cfg.std), "mean/std 'pretrained' are the --pretrained "
         "weights' own; add --pretrained or give the numbers")
    need(cfg.augmentation in AUGMENTATIONS, f"unknown augmentation '{cfg.augmentation}'; choose one of: "
         f"{', '.join(AUGMENTATIONS)}")
    need(cfg.crop_padding_px >= 0, f"crop_padding_px must be 0 or more, got {cfg.crop_padding_px}")
    need(cfg.cutout_px >= 0, f"cutout_px must be 0 (off) or more, got {cfg.cutout_px}")
    need(len(cfg.latency_batch_sizes) >= 1 and all(b >= 1 for b in cfg.latency_batch_sizes),
         f"latency_batch_sizes must be positive integers, got {cfg.latency_batch_sizes}")
    need(cfg.latency_warmup >= 0 and cfg.latency_min_reps >= 1 and cfg.latency_min_seconds >= 0,
         "latency_warmup must be >= 0, latency_min_reps >= 1 and latency_min_seconds >= 0")
    need(cfg.num_threads >= 0, f"num_threads must be 0 or more, got {cfg.num_threads}")
    need(bool(cfg.name) and "/" not in cfg.name and cfg.name not in (".", ".."),
         f"name must be a plain folder name, got '{cfg.name}'")
    need(not (cfg.precision == "fp16" and cfg.device == "cpu"), "precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if cfg.baseline:
        need(Path(cfg.baseline).is_file(), f"baseline file not found: {cfg.baseline}; pass a .safetensors file of a trained dense model")
    need(not (cfg.pretrained and cfg.init_from), "--pretrained and --init-from both give starting weights; keep one")
    need(not (cfg.baseline and (cfg.pretrained or cfg.init_from)), "--baseline is a trained model that is not trained "
         "again, --pretrained/--init-from are weights the dense stage starts training from; keep one")
    need(cfg.head_lr >= 0, f"head_lr must be 0 (= lr) or positive, got {cfg.head_lr}")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def runtime_settings(cfg: Config) -> dict[str, Any]:
    return {n: getattr(cfg, n) for n in runtime_fields()}


def resumed_config(saved: Config, given: Config | None) -> Config:
    """The config a resumed run continues with: the saved recipe, with the runtime settings of `given`.
    Raises PrunelabError naming the first recipe setting that `given` would change (the API and the CLI
    both come through here, so both refuse the same things with the same words)."""
    if given is None:
        return saved
    changed = [n for n in recipe_fields() if getattr(given, n) != getattr(saved, n)]
    if changed:
        n = changed[0]
        raise PrunelabError(f"--resume continues a run with its own recipe, but {n} would change from "
                            f"{getattr(saved, n)!r} to {getattr(given, n)!r}; drop that setting, or start a new run "
                            f"(only {', '.join(runtime_fields())} may change)")
    return dataclasses.replace(saved, **{n: getattr(given, n) for n in runtime_fields()})
