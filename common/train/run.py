"""Training: what every engine shares at the start of a run and at its end.

At the start: model, optimizer, schedule, loaders and the run record's folder. At the end: one
evaluation on test, and the run record.

The training loops themselves live in the notebooks, where learners read them.
Starting every engine from :func:`start_run` is what makes the engines
comparable: same seed, same split, same batch order, same initial weights.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from common.config import Config
from common.data.datasets import DataBundle, cache_decoded_images, make_loaders, stop_workers
from common.results.evaluation import accuracy, predict, topk_accuracy
from common.model.resnet import build_model, parameter_summary, resolve_mode, trainable_blocks, trainable_parameters
from common.model.weights import WeightsInfo, load_backbone
from common.results.records import EpochRow, RunMeta, RunRecord, predictions_frame
from common.runtime import (library_versions, pick_device, processes_environment, resolve_channels_last, resolve_devices,
                      resolve_precision, seed_everything)


@dataclass(frozen=True)
class Stage:
    """One stage of a run: its epochs (counted from 1), what trains, and the head's learning rate (the peak
    with one-cycle). A one-stage run has one; two-stage fine-tuning (``cfg.head_epochs``) has two."""
    number: int
    first_epoch: int
    epochs: int
    trainable: str  # a mode of common.model.resnet.TRAINABLE
    lr: float

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.epochs - 1

    @property
    def depth(self) -> str:
        """The first block that trains (what ``model.unfreeze`` takes to enter this stage)."""
        return trainable_blocks(self.trainable)[0]

    def describe(self) -> str:
        epochs = f"epoch {self.first_epoch}" if self.epochs == 1 else f"epochs {self.first_epoch}-{self.last_epoch}"
        return f"stage {self.number} ({epochs}): {', '.join(trainable_blocks(self.trainable))} train, head lr {self.lr:.2g}"


def plan_stages(cfg: Config, init: str) -> tuple[Stage, ...]:
    """The stages of a run. One, unless ``cfg.head_epochs`` asks for two-stage fine-tuning of a transfer run:
    first the head alone at ``cfg.lr``, then unfrozen down to the run's mode at ``cfg.lr * cfg.finetune_lr_ratio``.
    Scratch runs, and runs that train only the head, always have one stage."""
    mode = resolve_mode(init, cfg.trainable if init == "transfer" else None)
    if not cfg.head_epochs or mode in ("head", "scratch"):
        return (Stage(1, 1, cfg.epochs, mode, cfg.lr),)
    return (Stage(1, 1, cfg.head_epochs, "head", cfg.lr),
            Stage(2, cfg.head_epochs + 1, cfg.epochs - cfg.head_epochs, mode, cfg.lr * cfg.finetune_lr_ratio))


@dataclass
class TrainingRun:
    """What an engine trains with (``run`` in every notebook): identical for every engine at the start."""
    cfg: Config
    data: DataBundle
    engine: str
    init: str
    model: torch.nn.Module
    weights: WeightsInfo
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loaders: dict
    device: torch.device
    record: RunRecord  # where this run's record is written
    started: str = ""
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16
    scaler: torch.amp.GradScaler | None = None  # fp16 only: keeps small gradients from underflowing
    stages: tuple[Stage, ...] = ()  # plan_stages: one, or two for two-stage fine-tuning
    stage: Stage | None = None  # the stage the model, optimizer and schedule are in now
    rank: int = 0  # this process's number among ``world`` (data-parallel training); 0 with one process
    world: int = 1  # how many processes train the run together
    net: torch.nn.Module | None = None  # what the training step calls: the model, or DistributedDataParallel around it

    def __post_init__(self) -> None:
        self.net = self.net or self.model

    @property
    def show_progress(self) -> bool:
        """Progress bars only in the notebook's own process: ipykernel drops every message a forked process sends
        ("attempted to send message from fork"), so their widgets would stay blank. Several processes print one
        line per epoch instead (rank 0)."""
        return self.cfg.progress and self.world == 1

    @property
    def is_main(self) -> bool:
        """The process that prints, writes checkpoints, resume points and the run record (rank 0)."""
        return self.rank == 0

    def mean(self, total: torch.Tensor, count: torch.Tensor) -> float:
        """``total / count`` read from the device once: an epoch's mean loss or accuracy from running sums. With
        several processes, each holds the sums of its share of the batches: they are added up first."""
        if self.world > 1:
            both = torch.stack([total, count.to(total.dtype)])  # one collective, and the caller's sums stay as they were
            torch.distributed.all_reduce(both)
            total, count = both
        return (total / count).item()

    def stage_for(self, epoch: int) -> Stage:
        """The stage that ``epoch`` (counted from 1) belongs to: after a resume point saved at the end of epoch
        k, the model, optimizer and schedule are those of ``stage_for(k)``."""
        return next((s for s in reversed(self.stages) if epoch >= s.first_epoch), self.stages[0])

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for full precision."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self):
        """``with run.autocast():`` around forward and loss: mixed precision where it pays, a no-op otherwise."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    @property
    def lightning_precision(self) -> str:
        return {"bf16": "bf16-mixed", "fp16": "16-mixed"}.get(self.precision, "32-true")


def epoch_line(init: str, row: EpochRow) -> str:
    """One line per epoch, the same in every engine. Seconds to one decimal, or two digits below a second (a head
    on cached features trains an epoch in hundredths)."""
    seconds = f"{row.epoch_seconds:.2g}" if row.epoch_seconds < 1 else f"{row.epoch_seconds:.1f}"
    return (f"{init:>8} epoch {row.epoch}: train loss {row.train_loss:.3f} acc {row.train_acc:.3f} | "
            f"val loss {row.val_loss:.3f} acc {row.val_acc:.3f} | {seconds} s")


# When each schedule steps: after every epoch, or every batch. "constant" (the recipe's) never changes the rate.
SCHEDULE_INTERVAL = {"constant": "epoch", "cosine": "epoch", "onecycle": "step"}


def block_rates(model: torch.nn.Module, cfg: Config, lr: float | None = None) -> dict[str, float]:
    """Each trainable block's learning rate, in network order: the head at ``lr`` (default ``cfg.lr``), every
    block below it ``cfg.block_lr_ratio`` times the rate of the block above it (discriminative rates)."""
    lr = cfg.lr if lr is None else lr
    blocks = getattr(model, "trainable_blocks", ("head",))
    return {name: lr * cfg.block_lr_ratio ** (len(blocks) - 1 - i) for i, name in enumerate(blocks)}


def param_groups(model: torch.nn.Module, cfg: Config, blocks=None, lr: float | None = None) -> list[dict]:
    """The optimizer's parameter groups for ``blocks`` (default: every trainable block), from the head down.

    With ``block_lr_ratio`` 1 every block has the same rate: one group, exactly the optimizer the suite always
    had. Otherwise one group per block, named after it (``group["name"]``), the head's first, so
    ``param_groups[0]["lr"]`` is the head's rate in every case."""
    rates = block_rates(model, cfg, lr)
    if not hasattr(model, "block_parameters"):  # any other network: one group of what trains
        return [dict(params=trainable_parameters(model), lr=rates["head"])]
    params = model.block_parameters()
    blocks = [b for b in reversed(list(params)) if blocks is None or b in blocks]
    if cfg.block_lr_ratio == 1.0:
        return [dict(params=[p for b in reversed(blocks) for p in params[b]], lr=rates["head"])]
    return [dict(params=params[b], lr=rates[b], name=b) for b in blocks]


def make_optimizer(model: torch.nn.Module, cfg: Config, lr: float | None = None) -> torch.optim.Optimizer:
    """Adam over the trainable parameters only (frozen ones get no state and no updates), one group per
    block when the blocks have different rates (:func:`param_groups`); the head at ``lr`` (default ``cfg.lr``;
    a stage's ``Stage.lr``)."""
    lr = cfg.lr if lr is None else lr
    return torch.optim.Adam(param_groups(model, cfg, lr=lr), lr=lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int | None = None,
                   epochs: int | None = None) -> torch.optim.lr_scheduler.LRScheduler:
    """``cfg.schedule`` over ``epochs`` (default ``cfg.epochs``; a stage's ``Stage.epochs``): "constant" keeps
    each group's rate (a schedule that does nothing, so that every run saves and restores one); "cosine" anneals
    from each group's rate towards zero, stepped once per epoch; "onecycle" is torch's ``OneCycleLR`` (its
    defaults: warm up for 30 % of the steps to each group's rate, anneal; Adam's beta1 cycles 0.95-0.85),
    stepped after every batch, ``epochs * steps_per_epoch`` steps in all. :data:`SCHEDULE_INTERVAL` says which."""
    epochs = cfg.epochs if epochs is None else epochs
    if cfg.schedule == "onecycle":
        if not steps_per_epoch:
            raise ValueError("schedule='onecycle' steps per batch: make_scheduler needs steps_per_epoch (batches per epoch).")
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=epochs * steps_per_epoch)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)


def enter_stage(run: TrainingRun, stage: Stage) -> bool:
    """Put ``run`` into ``stage`` unless it is there already: unfreeze the model down to the stage's depth, then
    a new optimizer (fresh Adam state, the stage's rates) and a new schedule over the stage's epochs, as
    ``run.optimizer`` and ``run.scheduler``. A new optimizer rather than groups added to the old one: a
    one-cycle schedule cannot take groups it was not made with. True when the stage changed."""
    if run.stage == stage:
        return False
    run.model.unfreeze(stage.depth)
    run.optimizer = make_optimizer(run.model, run.cfg, lr=stage.lr)
    run.scheduler = make_scheduler(run.optimizer, run.cfg, len(run.loaders["train"]), epochs=stage.epochs)
    run.stage = stage
    print(stage.describe())
    return True


def run_device(cfg: Config, rank: int | None, world: int) -> torch.device:
    """Where a run's model lives: GPU ``rank`` for one of several processes; the CPU for the notebook's own copy
    when it is about to fork several (``rank`` None, ``world`` > 1: a kernel that touched CUDA can no longer
    fork); else ``cfg.device``."""
    device = pick_device(cfg.device)
    if device.type != "cuda" or world == 1:
        return device
    if rank is None:
        return torch.device("cpu")
    torch.cuda.set_device(rank)
    return torch.device("cuda", rank)


@contextmanager
def forking(cfg: Config, data: DataBundle, world: int):
    """Around the fork of a run's ``world`` processes, in the notebook's process (nothing with one): decode the
    images (the processes share those pages) and fetch the pretrained weights (one download and at most one
    banner, not one per process) first, and give the processes the environment they need
    (:func:`common.runtime.processes_environment`). The random state stays as it was: Lightning's processes
    inherit it from this one (after ``start_run`` seeded it), and building a network to load weights into draws
    from it."""
    if world == 1:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        cache_decoded_images(cfg, data)
        if cfg.weights != "random":
            load_backbone(cfg.weights, cfg.data_dir / "weights")
    with processes_environment(cfg.device):
        yield


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` (inside a process group): its backward averages the gradients of
    every process, so every copy takes the same step."""
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def variations_asked(cfg: Config, world: int = 1) -> list[str]:
    """The settings that only the engine notebooks' variations carry out (their recipe loops do not): what a recipe
    run must refuse, rather than silently ignore."""
    asked = {"schedule": cfg.schedule != "constant", "clip_grad_norm": cfg.clip_grad_norm > 0,
             "head_epochs": cfg.head_epochs > 0, "early_stopping": cfg.early_stopping > 0, "devices": world > 1}
    return [f"{name}={getattr(cfg, name)!r}" for name, on in asked.items() if on]


def start_run(cfg: Config, data: DataBundle, engine: str, init: str, name: str | None = None,
              rank: int | None = None, world: int = 1, recipe: bool = False) -> TrainingRun:
    """Seed, build the model, optimizer, schedule and fresh loaders (all in the run's first stage), and open the
    run's record: ``runs/<dataset>/<engine>-<name>/``, ``name`` defaulting to ``init``.

    Data-parallel: process ``rank`` of ``world`` (inside a process group) gets its own device (GPU ``rank``, or
    the CPU), its share of every training batch, and its model wrapped in ``DistributedDataParallel``
    (``run.net``), whose backward averages the gradients of all processes; on GPUs the trained blocks'
    BatchNorm is synchronised across them. With ``world`` > 1 and no ``rank``, this is the notebook's own copy
    before it forks: it stays on the CPU, and nothing here touches CUDA (a kernel that did can no longer fork).

    ``recipe=True``: for an engine notebook's recipe loop, which does none of :func:`variations_asked`; a
    configuration asking for one of them is refused with a message saying where they are done."""
    if recipe and (asked := variations_asked(cfg, resolve_devices(cfg.devices, cfg.device))):
        raise ValueError(f"{', '.join(asked)}: the recipe's loop does not do this. The notebook's 'Variations' "
                         "section does: run its cells and train with its `train`, or keep the default for the recipe.")
    seed_everything(cfg.seed)
    if cfg.deterministic:  # read when the first cuBLAS handle is made: deterministic matrix products need it (as Lightning sets)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # The same kernel choices for every engine: autotuned cuDNN by default, repeatable kernels on request.
    torch.use_deterministic_algorithms(bool(cfg.deterministic), warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    device = run_device(cfg, rank, world)
    target = pick_device(cfg.device)  # where training runs: the GPUs, even while this process keeps a CPU copy
    stages = plan_stages(cfg, init)
    if world > 1 and len(stages) > 1:
        raise ValueError("Two-stage fine-tuning (head_epochs > 0) on several devices is not supported yet: "
                         "DistributedDataParallel keeps the parameters that trained when it was built, and the second "
                         "stage's would not be averaged. Use devices=1 for two-stage runs.")
    first = stages[0]
    model, weights = build_model(len(data.class_names), "scratch" if first.trainable == "scratch" else "transfer",
                                 cfg.weights, cfg.dropout, cfg.data_dir / "weights", trainable=first.trainable)
    forked = rank is not None and world > 1  # one of several processes, inside their process group
    if forked and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # frozen ones stay in eval mode: never synced
    model.to(device)
    if resolve_channels_last(cfg.channels_last, target):
        model.to(memory_format=torch.channels_last)  # NHWC: what tensor cores and cuDNN prefer
    precision = resolve_precision(cfg.precision, target)  # the same in the notebook's copy and every process
    optimizer = make_optimizer(model, cfg, lr=first.lr)
    cache_decoded_images(cfg, data)
    loaders = make_loaders(data.datasets, cfg.batch_size, cfg.num_workers, cfg.seed, pin_memory=device.type == "cuda",
                           rank=rank or 0, world=world)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=len(loaders["train"]), epochs=first.epochs)
    record = RunRecord(cfg.runs_dir, data.source.name, engine, name or init)
    if not rank:
        record.start_fresh()
    net = data_parallel(model, device) if forked else model
    seed_everything(cfg.seed)  # dropout starts from the same RNG state whatever ran before in this kernel
    return TrainingRun(cfg, data, engine, init, model, weights, optimizer, scheduler, loaders, device, record,
                    started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), precision=precision,
                    scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"), stages=stages, stage=first,
                    rank=rank or 0, world=world, net=net)


def finish_run(run: TrainingRun, history: list[EpochRow], best_state: dict, extra: dict | None = None) -> RunMeta:
    """Close a run: keep the model's current (last epoch's) weights as the record's last checkpoint, load
    ``best_state`` (chosen on validation) as its best, evaluate that once on test, write the record."""
    cfg, data, model, record = run.cfg, run.data, run.model, run.record
    record.save_last(model.state_dict())
    model.load_state_dict(best_state)
    model.to(run.device)  # Lightning hands the model back on the CPU after fit
    record.save_best(model.state_dict())
    with run.autocast():
        probs, targets = predict(model, run.loaders["test"], run.device)
    record.write_predictions(predictions_frame(data.datasets["test"].paths, targets, probs, data.class_names, cfg.top_k))
    hist = record.write_history(history)
    fallbacks = list(data.fallbacks) + ([run.weights.fallback] if run.weights.fallback else [])
    meta = RunMeta(
        engine=run.engine, init=run.init, dataset=data.source.name, dataset_root=str(data.manifest.root),
        is_demo_data=data.source.is_demo, split_fingerprint=data.fingerprint, split_manifest=str(data.manifest_path),
        class_counts={split: counts.to_dict() for split, counts in data.manifest.counts().items()},
        class_names=data.class_names, scan=data.manifest.scan_summary(),
        weights_source=run.weights.source if run.init != "scratch" else "random",
        parameters=parameter_summary(model), device=str(run.device), precision=run.precision, seed=cfg.seed,
        budget=cfg.budget, image_size=cfg.image_size, fallbacks=fallbacks, config=cfg.as_dict(),
        versions=library_versions(), started=run.started,
        finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), epochs_run=len(hist),
        best_epoch=int(hist.loc[hist["val_acc"].idxmax(), "epoch"]) if len(hist) else None,
        best_val_acc=float(hist["val_acc"].max()) if len(hist) else None,
        test_acc=accuracy(probs, targets), top_k=cfg.top_k, test_topk_acc=topk_accuracy(probs, targets, cfg.top_k),
        trainable=run.stages[-1].trainable, block_lrs=block_rates(model, cfg, lr=run.stage_for(len(hist)).lr),
        schedule=cfg.schedule, clip_grad_norm=cfg.clip_grad_norm, stages=[dataclasses.asdict(stage) for stage in run.stages],
        steps_per_epoch=len(run.loaders["train"]), world=run.world, extra=dict(extra or {}))
    record.write_meta(meta)
    record.drop_resume_state()  # last, so that a kill before this line still finds the run to finish
    stop_workers(run.loaders)
    return meta
