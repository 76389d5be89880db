"""Several devices, one process each, for the three engines: notebook 07's cells marked ``#| export``.

Generated: edit the notebook, not this file. The final ``train`` of notebooks 01-03 calls these when ``devices``
is above 1.
"""
from __future__ import annotations

import torch.distributed as dist
import torch.multiprocessing as mp

from common.results.records import RunRecord
from common.runtime import as_child_process, distributed_backend, free_port
from common.train.run import finish_run, forking, start_run


def train_on_rank(rank, world, port, fit, cfg, data, init, name):
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


def train_plain_on_processes(fit, cfg, data, init, name, world):
    """One run of notebook 01's `fit` in `world` forked processes; its record, once they have ended."""
    with forking(cfg, data, world):  # decode the images and fetch the weights once, here: the processes share them
        mp.start_processes(train_on_rank, args=(world, free_port(), fit, cfg, data, init, name), nprocs=world, start_method="fork")
    return RunRecord(cfg.runs_dir, data.source.name, "plain", name or init).meta


import logging

import ignite.distributed as idist

from common.train.ignite_engine import train_in_process

logging.getLogger("ignite.distributed.launcher.Parallel").setLevel(logging.WARNING)  # no "Spawn function ..." note


def ignite_process(local_rank, cfg, data, init, name):
    """What idist.Parallel runs in each process, inside the process group."""
    as_child_process()
    train_in_process(cfg, data, init, name, rank=idist.get_rank(), world=idist.get_world_size())


def train_ignite_on_processes(cfg, data, init, name, world):
    """Notebook 02's run in `world` processes forked by idist.Parallel; its record, once they have ended."""
    with forking(cfg, data, world):
        with idist.Parallel(backend=distributed_backend(cfg.device), nproc_per_node=world, master_port=free_port(),
                            start_method="fork") as parallel:
            parallel.run(ignite_process, cfg, data, init, name)
    return RunRecord(cfg.runs_dir, data.source.name, "ignite", name or init).meta


import lightning as L
import torch

from common.data.datasets import make_loaders
from common.runtime import pick_device
from common.train.lightning_engine import (StagedClassifier, VegetableData, best_weights, make_trainer,
                                           make_variations_callbacks, resume_point)


class ParallelClassifier(StagedClassifier):
    def log(self, name, value, **kwargs):
        super().log(name, value, sync_dist=torch.is_tensor(value), **kwargs)  # losses averaged over the processes


class ParallelData(VegetableData):
    def setup(self, stage):  # this process's share of every batch
        self.loaders = make_loaders(self.datasets, self.batch_size, self.num_workers, self.seed, self.pin_memory,
                                    rank=self.trainer.global_rank, world=self.trainer.world_size)


class RunRecordWriter(L.Callback):
    """Rank 0 writes the run record when fit ends."""

    def __init__(self, run, callbacks):
        self.run, self.callbacks = run, callbacks

    def setup(self, trainer, module, stage):
        as_child_process()  # in each forked process, first

    def on_fit_end(self, trainer, module):
        if trainer.is_global_zero:
            self.run.device, self.run.world = trainer.strategy.root_device, trainer.world_size
            finish_run(self.run, self.callbacks["history"].progress.history, best_weights(self.callbacks))


def train_lightning_on_processes(cfg, data, init, name, world):
    """Notebook 03's final `train` in `world` processes forked by the Trainer; its record, once they have ended."""
    run = start_run(cfg, data, engine="lightning", init=init, name=name, world=world)  # a CPU copy here
    callbacks = make_variations_callbacks(run)
    callbacks["record"] = RunRecordWriter(run, callbacks)  # new
    saved = resume_point(run, callbacks)
    gpu = pick_device(cfg.device).type == "cuda"  # where the processes train
    trainer = make_trainer(run, callbacks, gradient_clip_val=cfg.clip_grad_norm or None, gradient_clip_algorithm="norm",
                           devices=world, strategy="ddp_notebook", use_distributed_sampler=False, sync_batchnorm=gpu)  # new
    module = ParallelClassifier(run.model, cfg, len(data.class_names), run.stage)  # new
    datamodule = ParallelData(data.datasets, cfg.batch_size, cfg.num_workers, cfg.seed, pin_memory=gpu)  # new
    with forking(cfg, data, world):  # new
        trainer.fit(module, datamodule=datamodule, ckpt_path=run.record.lightning_last if saved is not None else None)
    return RunRecord(cfg.runs_dir, data.source.name, "lightning", name or init).meta  # RunRecordWriter wrote it
