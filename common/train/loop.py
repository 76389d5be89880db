"""The plain training loop of notebook 01 as a tested function, for lessons that train without teaching the loop.

Notebook 01 writes this loop out cell by cell (and starts the processes that run it on several devices); ``tests/test_lessons.py`` checks that this copy computes
the same history as the notebook's, epoch by epoch. Notebook 05 trains its spectrum of modes with it.
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from common.config import Config
from common.data.datasets import DataBundle
from common.results.records import EpochRow, RunMeta
from common.train.resume import finished_run, resume_or_start, save_resume_point
from common.train.run import SCHEDULE_INTERVAL, TrainingRun, enter_stage, epoch_line, finish_run, start_run


def train_one_epoch(run: TrainingRun, criterion, desc: str = "train") -> tuple[float, float]:
    """One pass over the training loader: mean loss and accuracy (metrics stay on the device until the end)."""
    model, optimizer, device = run.net, run.optimizer, run.device
    per_batch = SCHEDULE_INTERVAL[run.cfg.schedule] == "step"
    model.train()
    total_loss, correct, seen = (torch.zeros((), device=device) for _ in range(3))
    bar = tqdm(total=len(run.loaders["train"]), desc=desc, leave=False, mininterval=5, disable=not run.show_progress)
    for images, labels in run.loaders["train"]:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with run.autocast():
            logits = model(images)
            loss = criterion(logits, labels)
        run.scaler.scale(loss).backward()
        if run.cfg.clip_grad_norm:
            run.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], run.cfg.clip_grad_norm)
        run.scaler.step(optimizer)
        run.scaler.update()
        if per_batch:
            run.scheduler.step()
        total_loss += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        bar.update()
    bar.close()
    total_loss, correct, seen = run.all_reduce(total_loss, correct, seen)
    return (total_loss / seen).item(), (correct / seen).item()


@torch.inference_mode()
def evaluate(run: TrainingRun, loader, criterion) -> tuple[float, float]:
    """Mean loss and accuracy over ``loader`` in eval mode, without autograd; with several processes, each evaluates
    through DDP, which first hands it rank 0's BatchNorm statistics (the model rank 0 saves)."""
    model = run.net
    model.eval()
    total_loss, correct, seen = (torch.zeros((), device=run.device) for _ in range(3))
    for images, labels in loader:
        images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        with run.autocast():
            logits = model(images)
            total_loss += criterion(logits, labels) * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    total_loss, correct, seen = run.all_reduce(total_loss, correct, seen)
    return (total_loss / seen).item(), (correct / seen).item()


def fit(run: TrainingRun) -> list[EpochRow]:
    """Every epoch of the run (resuming after a disconnect), its stages entered at their first epoch; the history."""
    criterion = torch.nn.CrossEntropyLoss()
    progress = resume_or_start(run)
    for epoch in range(progress.epoch + 1, run.cfg.epochs + 1):
        if progress.finished(run.cfg):
            if run.is_main:
                print(f"early stopping: no better validation accuracy for {progress.epochs_since_best()} epochs")
            break
        enter_stage(run, run.stage_for(epoch))
        run.loaders["train"].sampler.set_epoch(epoch - 1)
        start, lr = time.perf_counter(), run.optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_one_epoch(run, criterion, desc=f"{run.record.name} epoch {epoch}")
        val_loss, val_acc = evaluate(run, run.loaders["validation"], criterion)
        if SCHEDULE_INTERVAL[run.cfg.schedule] == "epoch":
            run.scheduler.step()
        row = EpochRow(epoch=epoch, stage=run.stage.number, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss,
                   val_acc=val_acc, lr=lr, epoch_seconds=time.perf_counter() - start)
        improved = progress.record(row)
        if run.is_main:
            print(epoch_line(run.record.name, row))
            if improved:
                run.record.save_best(run.model.state_dict())
            save_resume_point(run, progress)
    return progress.history


def train(cfg: Config, data: DataBundle, init: str, name: str | None = None, engine: str = "plain") -> RunMeta:
    """Start, fit and finish one run; its record is ``runs/<dataset>/<engine>-<name or init>/``."""
    done = finished_run(cfg, data, engine, init, name=name)
    if done is not None:
        return done
    run = start_run(cfg, data, engine=engine, init=init, name=name)
    history = fit(run)
    return finish_run(run, history, run.record.load_best())
