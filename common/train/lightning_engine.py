"""Lightning's module, data module, callbacks and Trainer, from notebook 03's cells marked ``#| export``.

Generated: edit the notebook, not this file. Notebook 07 trains them on several processes.
"""
from __future__ import annotations

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy

from common.train.run import make_optimizer


class LitClassifier(L.LightningModule):
    def __init__(self, model, cfg, num_classes):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.save_hyperparameters(cfg.as_dict())  # the whole configuration, as plain values, in every checkpoint
        self.criterion = torch.nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, images):
        return self.model(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.model(images)
        loss = self.criterion(logits, labels)
        self.train_acc(logits, labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(labels))
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.model(images)
        self.val_acc(logits, labels)
        self.log("val_loss", self.criterion(logits, labels), on_epoch=True, batch_size=len(labels))
        self.log("val_acc", self.val_acc, on_epoch=True, batch_size=len(labels), prog_bar=True)

    def configure_optimizers(self):
        return make_optimizer(self.model, self.cfg)


from common.data.datasets import make_loaders


class VegetableData(L.LightningDataModule):
    def __init__(self, datasets, batch_size, num_workers, seed, pin_memory=False):
        super().__init__()
        self.datasets, self.batch_size, self.num_workers = datasets, batch_size, num_workers
        self.seed, self.pin_memory = seed, pin_memory

    def setup(self, stage):  # Lightning's hook, called before the loaders are needed (its argument: "fit", ...)
        self.loaders = make_loaders(self.datasets, self.batch_size, self.num_workers, self.seed, self.pin_memory)

    def train_dataloader(self):
        return self.loaders["train"]

    def val_dataloader(self):
        return self.loaders["validation"]

    def test_dataloader(self):
        return self.loaders["test"]


import time

from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from common.results.records import EpochRow
from common.train.resume import RunProgress
from common.train.run import epoch_line


class EpochHistory(L.Callback):
    def __init__(self, run):
        self.name, self.progress = run.record.name, RunProgress(run)

    def on_train_epoch_start(self, trainer, module):
        self.start, self.lr = time.perf_counter(), trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self, trainer, module):  # runs after the epoch's validation
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = EpochRow(epoch=trainer.current_epoch + 1, train_loss=m["train_loss"], train_acc=m["train_acc"],
                       val_loss=m["val_loss"], val_acc=m["val_acc"], lr=self.lr, epoch_seconds=time.perf_counter() - self.start)
        self.progress.record(row)
        if trainer.is_global_zero:
            print(epoch_line(self.name, row))

    def state_dict(self):
        return self.progress.state_dict()

    def load_state_dict(self, state):
        self.progress.load_state_dict(state)


def make_callbacks(run):
    """The callbacks by name: the Trainer gets the list, the training cell reads some of them afterwards."""
    folder = run.record.lightning_checkpoints
    callbacks = dict(
        best=ModelCheckpoint(dirpath=folder, filename="best-{epoch}", monitor="val_acc", mode="max",
                             save_weights_only=True, save_on_train_epoch_end=True),
        last=ModelCheckpoint(dirpath=folder, save_top_k=0, save_last=True, save_on_train_epoch_end=True),
        history=EpochHistory(run))
    if run.show_progress:
        callbacks["progress_bar"] = TQDMProgressBar(refresh_rate=max(1, len(run.loaders["train"]) // 4))
    return callbacks


import shutil

from lightning.pytorch.loggers import CSVLogger

from common.io import load_state
from common.runtime import quiet_lightning
from common.train.resume import read_resume_point

quiet_lightning()  # Lightning's tips, and warnings that do not apply here (listed where it is defined)


def make_trainer(run, callbacks, **changes):
    settings = dict(max_epochs=run.cfg.epochs, accelerator="auto" if run.cfg.device == "auto" else run.cfg.device,
                    devices=1, precision=run.lightning_precision, logger=CSVLogger(run.record.engine_dir, name="logs"),
                    callbacks=list(callbacks.values()), deterministic="warn" if run.cfg.deterministic else None,
                    num_sanity_val_steps=0, enable_progress_bar=run.show_progress, enable_model_summary=False,
                    log_every_n_steps=max(1, len(run.loaders["train"])))
    return L.Trainer(**{**settings, **changes})


def resume_point(run, callbacks):
    """The checkpoint to resume from (None unless this very run was interrupted); without one, no stale checkpoints."""
    key = callbacks["history"].state_key  # where Lightning files this callback's state in a checkpoint
    saved = read_resume_point(run, run.record.lightning_last, progress_of=lambda checkpoint: checkpoint["callbacks"][key])
    if saved is None:
        shutil.rmtree(run.record.engine_dir, ignore_errors=True)
    else:
        print(f"Resuming {run.init} from its last checkpoint (resume=False starts over).")
    return saved


def best_weights(callbacks):
    """The model's best weights. A Lightning checkpoint holds the LightningModule's state dict, whose keys start
    with its attribute name ("model."): the suite's model is that attribute."""
    best = load_state(callbacks["best"].best_model_path)["state_dict"]
    return {k.removeprefix("model."): v for k, v in best.items()}


from common.train.run import SCHEDULE_INTERVAL, make_scheduler


class StagedClassifier(LitClassifier):
    def __init__(self, model, cfg, num_classes, stage):
        super().__init__(model, cfg, num_classes)
        self.stage = stage  # what trains now, its epochs and head rate

    def configure_optimizers(self):
        optimizer = make_optimizer(self.model, self.cfg, lr=self.stage.lr)
        steps_per_epoch = self.trainer.estimated_stepping_batches // self.trainer.max_epochs  # a schedule
        scheduler = make_scheduler(optimizer, self.cfg, steps_per_epoch, epochs=self.stage.epochs)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": SCHEDULE_INTERVAL[self.cfg.schedule]}}


from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor


class StageSwitch(L.Callback):
    """At the first epoch of a new stage: unfreeze down to its depth, then build its optimizer and schedule."""

    def __init__(self, run):
        self.run = run

    def on_train_epoch_start(self, trainer, module):
        stage = self.run.stage_for(trainer.current_epoch + 1)
        if stage != module.stage:
            module.model.unfreeze(stage.depth)  # depth: the first block that trains in this stage
            module.stage = stage
            trainer.strategy.setup_optimizers(trainer)  # calls configure_optimizers for the new stage
            print(stage.describe())


def make_variations_callbacks(run):
    callbacks = dict(stages=StageSwitch(run), **make_callbacks(run), lr=LearningRateMonitor(logging_interval="epoch"))
    if run.cfg.early_stopping:
        callbacks["early_stopping"] = EarlyStopping(monitor="val_acc", mode="max", patience=run.cfg.early_stopping)
    return callbacks


import contextlib

from IPython.utils.capture import capture_output
from lightning.pytorch.tuner import Tuner

from common.runtime import random_state_kept
from common.train import loop  # notebook 01's LRSweep and sweep_rates


class SweptClassifier(LitClassifier):
    """The module during Lightning's sweep: each parameter group at this step's rate times its share of the head's
    rate, and each step's loss noted."""

    def __init__(self, model, cfg, num_classes, rates):
        super().__init__(model, cfg, num_classes)
        self.rates, self.losses = rates, []
        self.shares = [group["lr"] / cfg.lr for group in make_optimizer(model, cfg).param_groups]

    def on_train_batch_start(self, batch, batch_idx):
        for group, share in zip(self.trainer.optimizers[0].param_groups, self.shares):
            group["lr"] = self.rates[batch_idx] * share

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def find_lr(run, start=1e-7, end=1.0, steps=100):
    """Lightning's sweep of `steps` batches at most (one epoch), from the run's state, which it leaves as it was."""
    rates = loop.sweep_rates(start, end, min(steps, len(run.loaders["train"])))
    module = SweptClassifier(run.model, run.cfg, len(run.data.class_names), rates)
    datamodule = VegetableData(run.data.datasets, run.cfg.batch_size, run.cfg.num_workers, run.cfg.seed,
                               pin_memory=run.device.type == "cuda")
    trainer = make_trainer(run, {}, default_root_dir=run.record.engine_dir)  # its temporary checkpoint: written, deleted
    bar = contextlib.nullcontext() if run.show_progress else capture_output()  # the finder's own, which no setting turns off
    with random_state_kept(), bar:
        Tuner(trainer).lr_find(module, datamodule=datamodule, min_lr=rates[0], max_lr=end, num_training=len(rates),
                               early_stop_threshold=None, update_attr=False)
    return loop.LRSweep(rates, module.losses).until_diverged()
