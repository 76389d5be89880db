"""The plain training loop, generated from notebook 01's cells marked ``#| export``: edit the notebook, not this file.

Notebook 01 writes the loop out cell by cell; ``scripts/export_lessons.py`` copies those cells here, and
``tests/test_lessons.py`` fails when the two differ. Notebook 05 trains its spectrum of modes with ``train``.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from common.train.run import SCHEDULE_INTERVAL


def train_one_epoch(run, criterion, desc="train"):
    model, optimizer, device = run.net, run.optimizer, run.device  # net: the model (or its DDP wrapper, below)
    per_batch = SCHEDULE_INTERVAL[run.cfg.schedule] == "step"  # one-cycle: the schedule steps after every batch
    model.train()  # dropout on; the frozen blocks' BatchNorm stays in eval mode (notebook 00)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = torch.zeros((), device=device)
    # Driven by hand, not wrapped around the loader: wrapping a shuffled DataLoader (tqdm 4.70) advanced its random
    # generator, which changed the batch order and broke the comparison of engines.
    bar = tqdm(total=len(run.loaders["train"]), desc=desc, leave=False, mininterval=5, disable=not run.show_progress)
    for images, labels in run.loaders["train"]:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with run.autocast():
            logits = model(images)
            loss = criterion(logits, labels)
        run.scaler.scale(loss).backward()
        if run.cfg.clip_grad_norm:
            run.scaler.unscale_(optimizer)  # the true gradients (a no-op unless fp16)
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
    total_loss, correct, seen = run.all_reduce(total_loss, correct, seen)  # summed over the processes, if several
    return (total_loss / seen).item(), (correct / seen).item()


@torch.inference_mode()
def evaluate(run, loader, criterion):
    model = run.net  # with several processes, DDP first hands each one rank 0's BatchNorm statistics
    model.eval()
    total_loss = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device)
    seen = torch.zeros((), device=run.device)
    for images, labels in loader:
        images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        with run.autocast():
            logits = model(images)
            total_loss += criterion(logits, labels) * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    # Every process evaluates the whole set with rank 0's model (the one it saves); averaged, all decide alike
    total_loss, correct, seen = run.all_reduce(total_loss, correct, seen)
    return (total_loss / seen).item(), (correct / seen).item()


import time

from common.results.records import EpochRow
from common.train.resume import resume_or_start, save_resume_point
from common.train.run import enter_stage, epoch_line


def fit(run):
    criterion = torch.nn.CrossEntropyLoss()
    progress = resume_or_start(run)  # the history so far: empty, or restored after a disconnect
    for epoch in range(progress.epoch + 1, run.cfg.epochs + 1):
        if progress.finished(run.cfg):
            if run.is_main:
                print(f"early stopping: no better validation accuracy for {progress.epochs_since_best()} epochs")
            break
        enter_stage(run, run.stage_for(epoch))  # two-stage runs unfreeze at the boundary; otherwise nothing
        run.loaders["train"].sampler.set_epoch(epoch - 1)  # this epoch's shuffle, the same after a restart
        start, lr = time.perf_counter(), run.optimizer.param_groups[0]["lr"]  # the head's rate at the epoch's start
        train_loss, train_acc = train_one_epoch(run, criterion, desc=f"{run.record.name} epoch {epoch}")
        val_loss, val_acc = evaluate(run, run.loaders["validation"], criterion)
        if SCHEDULE_INTERVAL[run.cfg.schedule] == "epoch":
            run.scheduler.step()
        row = EpochRow(epoch=epoch, stage=run.stage.number, train_loss=train_loss, train_acc=train_acc,
                   val_loss=val_loss, val_acc=val_acc, lr=lr, epoch_seconds=time.perf_counter() - start)
        improved = progress.record(row)  # every process keeps the history (the same numbers in each)
        if run.is_main:  # one process prints and writes (with several, rank 0)
            print(epoch_line(run.record.name, row))
            if improved:  # a new best validation accuracy: keep these weights
                run.record.save_best(run.model.state_dict())
            save_resume_point(run, progress)
    return progress.history


import torch.distributed as dist
import torch.multiprocessing as mp

from common.results.records import RunRecord
from common.runtime import as_child_process, distributed_backend, free_port, resolve_devices
from common.train.resume import finished_run
from common.train.run import finish_run, forking, start_run


def train_on_rank(rank, world, port, cfg, data, init, name):
    """What each of the `world` processes runs."""
    as_child_process()  # one CPU thread per process, and end with the notebook's kernel
    dist.init_process_group(distributed_backend(cfg.device), init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        run = start_run(cfg, data, engine="plain", init=init, name=name, rank=rank, world=world)
        history = fit(run)
        if run.is_main:
            finish_run(run, history, run.record.load_best())
    finally:
        dist.destroy_process_group()


def train(cfg, data, init, name=None):
    """Train one run and write its record, runs/<dataset>/plain-<name or init>/ (notebook 05 names its runs)."""
    world = resolve_devices(cfg.devices, cfg.device)  # 1 unless several devices were asked for and can be had
    done = finished_run(cfg, data, "plain", init, world, name)  # run again after a disconnect: done runs are kept
    if done is not None:
        return done
    if world == 1:
        run = start_run(cfg, data, engine="plain", init=init, name=name)
        return finish_run(run, fit(run), run.record.load_best())
    with forking(cfg, data, world):  # decode the images and fetch the weights once, here: the processes share them
        mp.start_processes(train_on_rank, args=(world, free_port(), cfg, data, init, name), nprocs=world, start_method="fork")
    return RunRecord(cfg.runs_dir, data.source.name, "plain", name or init).meta
