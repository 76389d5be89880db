"""The Ignite run, generated from notebook 02's cells marked ``#| export``: edit the notebook, not this file.

Notebook 07 runs ``train_in_process`` in each of several processes.
"""
from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from ignite.metrics import Accuracy, Loss, TopKCategoricalAccuracy


def make_trainer(run, criterion):
    trainer = Engine(make_train_step(run, criterion))
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda: run.model.train())
    Loss(criterion, device=run.device).attach(trainer, "loss")  # accumulated on the device: no host sync per step
    Accuracy(device=run.device).attach(trainer, "accuracy")
    return trainer


def make_evaluator(run, criterion):
    @torch.inference_mode()
    def eval_step(engine, batch):
        images, labels = (t.to(run.device, non_blocking=True) for t in batch)
        with run.autocast():
            return run.net(images).float(), labels

    evaluator = Engine(eval_step)
    evaluator.add_event_handler(Events.STARTED, lambda: run.model.eval())
    k = min(run.cfg.top_k, len(run.data.class_names))
    for name, metric in {"loss": Loss(criterion, device=run.device), "accuracy": Accuracy(device=run.device),
                         f"top{k}": TopKCategoricalAccuracy(k=k, device=run.device)}.items():
        metric.attach(evaluator, name)
    return evaluator


import time

from ignite.handlers import Checkpoint, DiskSaver, ProgressBar

from common.results.records import EpochRow
from common.train.run import epoch_line


def attach_handlers(trainer, evaluator, run, resumable):
    @trainer.on(Events.EPOCH_STARTED)
    def start_clock(engine):
        run.loaders["train"].sampler.set_epoch(engine.state.epoch - 1)  # this epoch's shuffle, also after a restart
        engine.state.epoch_start, engine.state.epoch_lr = time.perf_counter(), run.optimizer.param_groups[0]["lr"]

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate_and_record(engine):
        evaluator.run(run.loaders["validation"])
        train, val = engine.state.metrics, evaluator.state.metrics
        row = EpochRow(epoch=engine.state.epoch, train_loss=train["loss"], train_acc=train["accuracy"],
                       val_loss=val["loss"], val_acc=val["accuracy"], lr=engine.state.epoch_lr,
                       epoch_seconds=time.perf_counter() - engine.state.epoch_start)
        resumable["progress"].record(row)
        if run.is_main:
            print(epoch_line(run.record.name, row))

    best = Checkpoint({"model": run.model}, DiskSaver(run.record.engine_dir, require_empty=False, atomic=True),
                      n_saved=1, filename_prefix="best", score_function=lambda e: e.state.metrics["accuracy"],
                      score_name="val_acc")
    evaluator.add_event_handler(Events.COMPLETED, best)
    resumable["best_checkpoint"] = best
    # Registered last: saved after the epoch's validation and history row.
    resume_saver = DiskSaver(run.record.folder, require_empty=False, atomic=True)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, Checkpoint(resumable, resume_saver, n_saved=1,
                                                                 filename_pattern=run.record.resume.name))
    if run.show_progress:
        ProgressBar(persist=False, mininterval=5).attach(trainer)


import shutil

from common.io import load_state
from common.train.resume import RunProgress, read_resume_point
from common.train.run import finish_run, start_run


def resume_point(run):
    """What to resume from (None unless this very run was interrupted); without one, no stale checkpoints stay."""
    saved = read_resume_point(run, run.record.resume)
    if saved is None and run.is_main:
        shutil.rmtree(run.record.engine_dir, ignore_errors=True)
    return saved


def fit(run, trainer, resumable, saved):
    """Train the epochs left (all, unless `saved` is a resume point) and write the run record."""
    if saved is not None:
        Checkpoint.load_objects(to_load=resumable, checkpoint=saved)
        print(f"Resuming {run.init} after epoch {resumable['progress'].epoch} of {run.cfg.epochs} (resume=False starts over).")
    if not resumable["progress"].finished(run.cfg):  # Ignite would start a finished run again from epoch 1
        trainer.run(run.loaders["train"], max_epochs=run.cfg.epochs)
    if run.is_main:  # the process that writes the record
        # `Checkpoint` stores a single object as that object's own state dict (Ignite's documented format).
        best = load_state(resumable["best_checkpoint"].last_checkpoint)
        return finish_run(run, resumable["progress"].history, best)


def make_train_step(run, criterion):
    def train_step(engine, batch):
        images, labels = (t.to(run.device, non_blocking=True) for t in batch)
        run.optimizer.zero_grad(set_to_none=True)
        with run.autocast():
            logits = run.net(images)
            loss = criterion(logits, labels)
        run.scaler.scale(loss).backward()
        if run.cfg.clip_grad_norm:  # as in notebook 01
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in run.optimizer.param_groups for p in g["params"]], run.cfg.clip_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        return logits.detach().float(), labels
    return train_step


import logging

from ignite.handlers import EarlyStopping

from common.train.run import SCHEDULE_INTERVAL, enter_stage


def attach_variations(trainer, evaluator, run, resumable):
    @trainer.on(Events.EPOCH_STARTED)
    def next_stage(engine):
        if enter_stage(run, run.stage_for(engine.state.epoch)):  # a two-stage run's boundary
            resumable.update(optimizer=run.optimizer, scheduler=run.scheduler)

    per_batch = SCHEDULE_INTERVAL[run.cfg.schedule] == "step"
    trainer.add_event_handler(Events.ITERATION_COMPLETED if per_batch else Events.EPOCH_COMPLETED,
                              lambda: run.scheduler.step())
    resumable["scheduler"] = run.scheduler
    if run.cfg.early_stopping:
        stopper = EarlyStopping(patience=run.cfg.early_stopping, trainer=trainer,
                                score_function=lambda e: e.state.metrics["accuracy"])
        stopper.logger.setLevel(logging.WARNING)  # the training cell says when it stopped, on stdout
        evaluator.add_event_handler(Events.COMPLETED, stopper)
        resumable["early_stopping"] = stopper


def train_in_process(cfg, data, init, name=None, rank=None, world=1):
    """The whole run in this process: alone, or as process `rank` of `world` (notebook 07 starts those)."""
    run = start_run(cfg, data, engine="ignite", init=init, name=name, rank=rank, world=world)
    saved = resume_point(run)
    criterion = torch.nn.CrossEntropyLoss()
    trainer, evaluator = make_trainer(run, criterion), make_evaluator(run, criterion)
    resumable = dict(trainer=trainer, model=run.model, optimizer=run.optimizer, scaler=run.scaler, progress=RunProgress(run))
    attach_variations(trainer, evaluator, run, resumable)  # first, so that a new stage begins before the clock
    attach_handlers(trainer, evaluator, run, resumable)
    return fit(run, trainer, resumable, saved)


import warnings

from ignite.handlers import FastaiLRFinder

from common.runtime import random_state_kept
from common.train import loop  # notebook 01's LRSweep and sweep_rates


def find_lr(run, criterion, start=1e-7, end=1.0, steps=100):
    """Ignite's sweep of `steps` batches at most (one epoch), from the run's state, which it leaves as it was."""
    rates = loop.sweep_rates(start, end, min(steps, len(run.loaders["train"])))
    shares = [group["lr"] / run.optimizer.param_groups[0]["lr"] for group in run.optimizer.param_groups]
    trainer, finder = make_trainer(run, criterion), FastaiLRFinder()  # lists of rates per group: pytorch/ignite#2703
    to_save = dict(model=run.model, optimizer=run.optimizer, scaler=run.scaler)
    run.loaders["train"].sampler.set_epoch(0)
    with random_state_kept(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Run completed without loss diverging")  # LRSweep cuts the curve instead
        # Ignite runs num_iter + 1 iterations: the first, then num_iter more, each after a step of its schedule.
        with finder.attach(trainer, to_save, output_transform=lambda output: criterion(*output), num_iter=len(rates) - 1,
                           start_lr=[rates[0] * s for s in shares], end_lr=[end * s for s in shares],
                           smooth_f=0.0, diverge_th=float("inf")) as sweeping:
            @sweeping.on(Events.STARTED)  # after the finder's own handler, which sets a first rate of its own
            def first_rate():
                for group, share in zip(run.optimizer.param_groups, shares):
                    group["lr"] = rates[0] * share
            sweeping.run(run.loaders["train"], max_epochs=1)
    return loop.LRSweep(rates, finder.get_results()["loss"]).until_diverged()
