"""Feature extraction done fast: the frozen network's pooled features computed once, then the head trained alone.

In ``head`` mode nothing below the head trains, so without augmentation every epoch would compute the
same features again.

:func:`cache_features` runs the frozen network once over every split with the evaluation transform
(training images included: no augmentation). :func:`head_epoch` and :func:`head_evaluate` then train and
evaluate ``model.classifier`` (after ``model.dropout``) on those features, in the batches the run's training
loader would have used, so the numbers match head-only training done the slow way on the same images.
"""
from __future__ import annotations

import dataclasses
import time

import torch
from torch.utils.data import BatchSampler, DataLoader

from common.data.datasets import ImageListDataset
from common.results.records import EpochRow, RunMeta
from common.train.run import SCHEDULE_INTERVAL, epoch_line, finish_run, start_run


def extract_features(model: torch.nn.Module, dataset, device: torch.device, batch_size: int = 64,
                     num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled features (N x 2048, float32, on ``device``) and labels of every item of ``dataset``, in
    order, with the model in eval mode and no autograd."""
    model.eval()
    feats, labels = [], []
    with torch.inference_mode():
        for images, targets in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
            feats.append(model.features(images.to(device)).float())
            labels.append(targets.to(device))
    return torch.cat(feats), torch.cat(labels)


def without_augmentation(data) -> dict[str, ImageListDataset]:
    """Every split of a :class:`~common.data.datasets.DataBundle` with the evaluation transform (resize, centre
    crop, normalise), sharing the decode-once cache where the evaluation splits have one."""
    evaluate = data.datasets["test"].transform
    out = {}
    for split, ds in data.datasets.items():
        out[split] = ImageListDataset(ds.root, ds.paths, ds.labels, evaluate)
        out[split].cache = ds.cache if ds.transform is evaluate else None  # the same first stage: reuse its cache
    return out


def cache_features(run, batch_size: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Features and labels of every split of ``run.data``, computed once by the frozen network. Only for a
    run whose model trains nothing but its head (``trainable="head"``)."""
    if tuple(run.model.trainable_blocks) != ("head",):
        raise ValueError(f"Cached features need a model that trains only its head, not {run.model.trainable_blocks}: "
                         "use trainable='head'.")
    size = batch_size or 2 * run.cfg.batch_size
    with torch.random.fork_rng(devices=[]):  # a DataLoader draws its seed from the global RNG: leave dropout's alone
        return {split: extract_features(run.model, ds, run.device, size, run.cfg.num_workers)
                for split, ds in without_augmentation(run.data).items()}


def epoch_batches(loader: DataLoader, epoch: int) -> list[torch.Tensor]:
    """The index batches ``loader`` (a run's training loader) yields in ``epoch`` (counted from 0)."""
    sampler = loader.sampler
    size = len(loader.dataset)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return [torch.tensor(batch) % size for batch in BatchSampler(sampler, loader.batch_size, loader.drop_last)]


def head_epoch(run, features: torch.Tensor, labels: torch.Tensor, epoch: int,
               criterion=torch.nn.functional.cross_entropy) -> tuple[float, float]:
    """One training epoch of the head on cached features, in the batches of ``run.loaders["train"]``;
    returns the mean loss and accuracy. Dropout acts on the features as it would inside the model. The head
    trains in full precision: it is one small matrix product, mixed precision would gain nothing."""
    model, optimizer = run.model, run.optimizer
    per_batch = SCHEDULE_INTERVAL[run.cfg.schedule] == "step"
    model.train()
    total_loss, correct, seen = torch.zeros((), device=run.device), torch.zeros((), device=run.device), 0
    for batch in epoch_batches(run.loaders["train"], epoch):
        x, y = features[batch.to(features.device)], labels[batch.to(labels.device)]
        optimizer.zero_grad(set_to_none=True)
        logits = model.classifier(model.dropout(x))
        loss = criterion(logits, y)
        loss.backward()
        if run.cfg.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.classifier.parameters(), run.cfg.clip_grad_norm)
        optimizer.step()
        if per_batch:
            run.scheduler.step()
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return (total_loss / seen).item(), (correct / seen).item()


@torch.inference_mode()
def head_evaluate(run, features: torch.Tensor, labels: torch.Tensor,
                  criterion=torch.nn.functional.cross_entropy) -> tuple[float, float]:
    """Loss and accuracy of the head on cached features (eval mode: no dropout)."""
    run.model.eval()
    logits = run.model.classifier(features)
    return criterion(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def train_head_on_features(cfg, data, name: str = "head-cached", engine: str = "plain") -> RunMeta:
    """A whole ``head`` run the fast way: features once, then every epoch on them; its record is
    ``runs/<dataset>/<engine>-<name>/``. The same history columns as any run; ``epoch_seconds`` counts the
    head's training and validation only, and the one-off extraction is in ``meta.extra``. Only without
    augmentation (cached features are the evaluation transform's), and not resumable: it takes seconds."""
    run = start_run(dataclasses.replace(cfg, trainable="head"), data, engine=engine, init="transfer", name=name)
    start = time.perf_counter()
    cached = cache_features(run)
    extraction = time.perf_counter() - start
    print(f"features of {sum(len(f) for f, _ in cached.values())} images computed once in {extraction:.1f} s")
    history, best_acc = [], -1.0
    for epoch in range(1, cfg.epochs + 1):
        start, lr = time.perf_counter(), run.optimizer.param_groups[0]["lr"]
        train_loss, train_acc = head_epoch(run, *cached["train"], epoch - 1)
        val_loss, val_acc = head_evaluate(run, *cached["validation"])
        if SCHEDULE_INTERVAL[cfg.schedule] == "epoch":
            run.scheduler.step()
        row = EpochRow(epoch=epoch, stage=1, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                   lr=lr, epoch_seconds=time.perf_counter() - start)
        history.append(row)
        print(epoch_line(name, row))
        if val_acc > best_acc:
            best_acc = val_acc
            run.record.save_best(run.model.state_dict())
    return finish_run(run, history, run.record.load_best(), extra=dict(feature_extraction_seconds=extraction))
