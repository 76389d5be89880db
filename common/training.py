"""Training: what every engine shares at the start of a run and at its end.

At the start: model, optimizer, schedule, loaders and the run record's folder. At the end: one
evaluation on test, and the run record.

The training loops themselves live in the notebooks, where learners read them.
Starting every engine from :func:`start_run` is what makes the engines
comparable: same seed, same split, same batch order, same initial weights.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import torch

from .config import Config
from .datasets import DataBundle, cache_decoded_images, make_loaders
from .evaluation import accuracy, predict, topk_accuracy
from .model import WeightsInfo, build_model, parameter_summary, trainable_parameters
from .records import RunMeta, RunRecord, predictions_frame
from .runtime import library_versions, pick_device, resolve_channels_last, resolve_precision, seed_everything


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


def epoch_line(init: str, row: dict) -> str:
    """One line per epoch, the same in every engine."""
    return (f"{init:>8} epoch {row['epoch']}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} | "
            f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f} | {row['epoch_seconds']:.1f} s")


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Adam over the trainable parameters only: frozen ones get no state and no updates."""
    return torch.optim.Adam(trainable_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing from ``cfg.lr`` towards zero over the run, stepped once per epoch."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)


def start_run(cfg: Config, data: DataBundle, engine: str, init: str) -> TrainingRun:
    """Seed, build the model, optimizer, schedule and fresh loaders, and open the run's record."""
    seed_everything(cfg.seed)
    # The same kernel choices for every engine: autotuned cuDNN by default, repeatable kernels on request.
    torch.use_deterministic_algorithms(bool(cfg.deterministic), warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    device = pick_device(cfg.device)
    model, weights = build_model(len(data.class_names), init, cfg.weights, cfg.dropout, cfg.data_dir / "weights")
    model.to(device)
    if resolve_channels_last(cfg.channels_last, device):
        model.to(memory_format=torch.channels_last)  # NHWC: what tensor cores and cuDNN prefer
    precision = resolve_precision(cfg.precision, device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    cache_decoded_images(cfg, data)
    loaders = make_loaders(data.datasets, cfg.batch_size, cfg.num_workers, cfg.seed, pin_memory=device.type == "cuda")
    record = RunRecord.at(cfg.runs_dir, data.source.name, engine, init)
    record.start_fresh()
    seed_everything(cfg.seed)  # dropout starts from the same RNG state whatever ran before in this kernel
    return TrainingRun(cfg, data, engine, init, model, weights, optimizer, scheduler, loaders, device, record,
                    started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), precision=precision,
                    scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"))


def finish_run(run: TrainingRun, history: list[dict], best_state: dict) -> RunMeta:
    """Close a run: keep the model's current (last epoch's) weights as the record's last checkpoint, load
    ``best_state`` (chosen on validation) as its best, evaluate that once on test, write the record."""
    cfg, data, model, record = run.cfg, run.data, run.model, run.record
    record.save_last(model.state_dict())
    model.load_state_dict(best_state)
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
        weights_source=run.weights.source if run.init == "transfer" else "random",
        parameters=parameter_summary(model), device=str(run.device), precision=run.precision, seed=cfg.seed,
        budget=cfg.budget, image_size=cfg.image_size, fallbacks=fallbacks, config=cfg.as_dict(),
        versions=library_versions(), started=run.started,
        finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), epochs_run=len(hist),
        best_epoch=int(hist.loc[hist["val_acc"].idxmax(), "epoch"]) if len(hist) else None,
        best_val_acc=float(hist["val_acc"].max()) if len(hist) else None,
        test_acc=accuracy(probs, targets), top_k=cfg.top_k, test_topk_acc=topk_accuracy(probs, targets, cfg.top_k))
    record.write_meta(meta)
    return meta
