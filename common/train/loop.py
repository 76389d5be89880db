"""The plain training loop, generated from notebook 01's cells marked ``#| export``: edit the notebook, not this file.

Notebook 01 writes the loop out cell by cell; ``scripts/export_lessons.py`` copies those cells here, and
``tests/test_lessons.py`` fails when the two differ. Notebooks 05 and 07 train with ``fit`` and ``train``.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm


def train_one_epoch(run, criterion, desc="train"):
    run.net.train()  # dropout on; the frozen blocks' BatchNorm stays in eval mode (notebook 00)
    total_loss, correct, seen = (torch.zeros((), device=run.device) for _ in range(3))
    # Updated by hand, so the loop over the loader reads the same with the bar on or off.
    bar = tqdm(total=len(run.loaders["train"]), desc=desc, leave=False, mininterval=5, disable=not run.show_progress)
    for images, labels in run.loaders["train"]:
        images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        with run.autocast():
            logits = run.net(images)
            loss = criterion(logits, labels)
        update(run, loss)
        total_loss += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        bar.update()
    bar.close()
    return run.mean(total_loss, seen), run.mean(correct, seen)


@torch.inference_mode()
def evaluate(run, loader, criterion):
    run.net.eval()
    total_loss, correct, seen = (torch.zeros((), device=run.device) for _ in range(3))
    for images, labels in loader:
        images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        with run.autocast():
            logits = run.net(images)
            total_loss += criterion(logits, labels) * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    return run.mean(total_loss, seen), run.mean(correct, seen)


from common.train.run import SCHEDULE_INTERVAL


def update(run, loss):
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.clip_grad_norm:  # clip the total norm of the true gradients (unscaled: a no-op unless fp16)
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in run.optimizer.param_groups for p in g["params"]], run.cfg.clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if SCHEDULE_INTERVAL[run.cfg.schedule] == "step":  # one-cycle steps after every batch
        run.scheduler.step()


import time

from common.results.records import EpochRow
from common.train.resume import resume_or_start, save_resume_point
from common.train.run import SCHEDULE_INTERVAL, enter_stage, epoch_line


def fit(run):
    criterion = torch.nn.CrossEntropyLoss()
    progress = resume_or_start(run)  # the history so far: empty, or restored after a disconnect
    for epoch in range(progress.epoch + 1, run.cfg.epochs + 1):
        if progress.finished(run.cfg):  # early stopping
            if run.is_main:
                print(f"early stopping: no better validation accuracy for {progress.epochs_since_best()} epochs")
            break
        enter_stage(run, run.stage_for(epoch))  # two stages unfreeze at the boundary; otherwise nothing
        run.loaders["train"].sampler.set_epoch(epoch - 1)  # this epoch's shuffle, the same after a restart
        start, lr = time.perf_counter(), run.optimizer.param_groups[0]["lr"]  # the head's rate at the epoch's start
        train_loss, train_acc = train_one_epoch(run, criterion, desc=f"{run.record.name} epoch {epoch}")
        val_loss, val_acc = evaluate(run, run.loaders["validation"], criterion)
        if SCHEDULE_INTERVAL[run.cfg.schedule] == "epoch":  # a per-epoch schedule steps
            run.scheduler.step()
        row = EpochRow(epoch=epoch, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                       lr=lr, epoch_seconds=time.perf_counter() - start)
        improved = progress.record(row)  # every process keeps the history (the same numbers in each)
        if run.is_main:  # with several processes, rank 0 alone prints and writes
            print(epoch_line(run.record.name, row))
            if improved:
                run.record.save_best(run.model.state_dict())
            save_resume_point(run, progress)
    return progress.history


from common.runtime import resolve_devices
from common.train.parallel import train_plain_on_processes
from common.train.resume import finished_run
from common.train.run import finish_run, start_run


def train(cfg, data, init, name=None):  # name
    """Train one run and write its record, runs/<dataset>/plain-<name or init>/ (notebook 05 names its runs)."""
    world = resolve_devices(cfg.devices, cfg.device)  # 1 unless several devices were asked for and can be had
    done = finished_run(cfg, data, "plain", init, world, name)  # run again after a disconnect: done runs are kept
    if done is not None:
        return done
    if world > 1:  # several devices, notebook 07
        return train_plain_on_processes(fit, cfg, data, init, name, world)
    run = start_run(cfg, data, engine="plain", init=init, name=name)  # every variation allowed
    return finish_run(run, fit(run), run.record.load_best())


from dataclasses import dataclass

import numpy as np


def sweep_rates(start, end, steps):
    """`steps` rates, each the same factor above the one before, the last at `end` (the first one factor above `start`)."""
    return [start * (end / start) ** (k / steps) for k in range(1, steps + 1)]


@dataclass(frozen=True)
class LRSweep:
    """What a learning-rate sweep saw: the head's rate at each step, and that step's loss."""
    rates: list
    losses: list

    def smoothed(self):
        """A running average of the losses, divided by 1 - beta**step so that it does not start near 0 (fastai's)."""
        decades_per_step = np.log10(self.rates[-1] / self.rates[0]) / max(1, len(self.rates) - 1)
        # How fast it forgets is tied to the rate, not the step count: fastai's 0.98 per step of its sweep (100 steps
        # over 8 decades, 0.08 decades a step), whatever the number of steps.
        beta, average, out = 0.98 ** (decades_per_step / 0.08), 0.0, []
        for step, loss in enumerate(self.losses, 1):
            average = beta * average + (1 - beta) * loss
            out.append(average / (1 - beta ** step))
        return np.array(out)

    def until_diverged(self, factor=4.0):
        """The sweep up to where the smoothed loss stops being finite or passes `factor` times its lowest so far."""
        smooth = self.smoothed()
        fine = np.isfinite(smooth) & (smooth <= factor * np.fmin.accumulate(smooth))
        end = len(smooth) if fine.all() else int(fine.argmin())
        return LRSweep(self.rates[:end], self.losses[:end])

    def suggestion(self):
        """The rate where the smoothed loss falls fastest per factor of rate, up to its lowest point."""
        smooth = self.smoothed()
        lowest = int(smooth.argmin())
        first = min(max(1, len(smooth) // 10), lowest)  # the first steps' average rests on a loss or two
        if lowest - first < 2:  # too few points before the lowest to speak of a slope
            return self.rates[lowest]
        slopes = np.gradient(smooth[first:lowest + 1], np.log(self.rates[first:lowest + 1]))
        return self.rates[first + int(slopes.argmin())]


import copy

from common.runtime import random_state_kept


def find_lr(run, criterion, start=1e-7, end=1.0, steps=100):
    """Train one batch at each of `steps` rising rates (at most one epoch), noting each loss; leave the run as it was."""
    kept = [run.model, run.optimizer, run.scheduler, run.scaler]
    saved = [copy.deepcopy(thing.state_dict()) for thing in kept]
    shares = [group["lr"] / run.optimizer.param_groups[0]["lr"] for group in run.optimizer.param_groups]
    rates, losses = sweep_rates(start, end, min(steps, len(run.loaders["train"]))), []
    run.loaders["train"].sampler.set_epoch(0)
    run.net.train()
    with random_state_kept():
        for rate, (images, labels) in zip(rates, run.loaders["train"]):
            for group, share in zip(run.optimizer.param_groups, shares):
                group["lr"] = rate * share  # every group scaled alike: per-block rates keep their ratios
            images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
            with run.autocast():
                loss = criterion(run.net(images), labels)
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            losses.append(loss.item())
    for thing, state in zip(kept, saved):
        thing.load_state_dict(state)
    return LRSweep(rates, losses).until_diverged()
