"""What every engine shares: data preparation, the run's starting state (model,
optimizer, schedule, loaders) and the closing test evaluation and run record.

The training loops themselves live in the notebooks, where learners read them.
Starting every engine from :func:`start_run` is what makes the engines
comparable: same seed, same split, same batch order, same initial weights.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from . import data as data_mod
from .config import Config, pick_device, resolve_channels_last, resolve_precision, seed_everything
from .evaluation import accuracy, predict, topk_accuracy
from .model import WeightsInfo, build_model, imagenet_normalisation, parameter_summary, trainable_parameters
from .records import library_versions, predictions_frame, run_dir, save_state, write_history, write_meta, write_predictions
from .scan import DUPLICATE_COLUMNS, FINDING_COLUMNS, drop_leaked
from .sources import DataSource, resolve_dataset


@dataclass
class DataBundle:
    source: DataSource
    manifest: pd.DataFrame
    manifest_path: Path
    class_names: list[str]
    datasets: dict
    fallbacks: list[str] = field(default_factory=list)
    findings: pd.DataFrame = field(default_factory=pd.DataFrame)  # the scan: skipped, excluded, converted files
    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)  # identical files found in different splits

    def scan_summary(self) -> dict:
        """What the scan found, for run records: counts per action and the files concerned."""
        actions = self.findings["action"].value_counts().to_dict() if len(self.findings) else {}
        return dict(actions=actions, files=self.findings.to_dict("records")[:200],
                    cross_split_duplicates=int(self.duplicates["digest"].nunique()) if len(self.duplicates) else 0,
                    duplicates_dropped=bool(len(self.duplicates) and self.manifest.attrs.get("duplicates_dropped")))

    @property
    def fingerprint(self) -> str:
        return data_mod.fingerprint(self.manifest)

    def counts(self) -> pd.DataFrame:
        """Images per class and split."""
        return self.manifest.groupby(["class_name", "split"]).size().unstack(fill_value=0)[list(data_mod.SPLITS)]


def prepare_data(cfg: Config) -> DataBundle:
    """Resolve the dataset, load or make its split manifest, apply the budget's caps, build datasets."""
    source = resolve_dataset(cfg)
    manifest_path = cfg.data_dir / "splits" / f"{source.name}-seed{cfg.seed}.csv"
    manifest = data_mod.load_or_make_split(source.root, manifest_path, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    findings = pd.DataFrame(manifest.attrs["findings"], columns=FINDING_COLUMNS)
    duplicates = pd.DataFrame(manifest.attrs["duplicates"], columns=DUPLICATE_COLUMNS)
    if len(duplicates) and cfg.drop_duplicates:
        manifest = drop_leaked(manifest, duplicates)
    elif len(duplicates):
        print(f"WARNING: {duplicates['digest'].nunique()} image(s) occur in more than one split (same content). "
              "Set TL_DROP_DUPLICATES=1 to drop their validation/test copies.")
    manifest = data_mod.limit_per_class(manifest, "train", cfg.train_per_class, cfg.seed)
    for split in ("validation", "test"):
        manifest = data_mod.limit_per_class(manifest, split, cfg.eval_per_class, cfg.seed)
    data_mod.check_disjoint(manifest)
    mean, std = imagenet_normalisation()
    datasets = data_mod.make_datasets(manifest, data_mod.build_transforms(cfg.image_size, mean, std), cfg.seed)
    fallbacks = [source.fallback] if source.fallback else []
    return DataBundle(source, manifest, manifest_path, list(manifest.attrs["classes"]), datasets, fallbacks,
                      findings, duplicates)


@dataclass
class RunSetup:
    """Everything one run starts from, identical for every engine."""
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
    folder: Path
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


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Adam over the trainable parameters only: frozen ones get no state and no updates."""
    return torch.optim.Adam(trainable_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing from ``cfg.lr`` towards zero over the run, stepped once per epoch."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)


def cache_decoded_images(cfg: Config, data: DataBundle) -> None:
    """Decode every image once into memory when ``cfg.cache_images`` asks for it (``auto``: when it fits).

    Decoding JPEGs is most of the input pipeline's work; with the cache each later epoch only crops,
    flips and normalises uint8 tensors. Done once per notebook: the first run pays, the next reuse it."""
    datasets = list(data.datasets.values())
    if cfg.cache_images == "0" or all(ds.cache is not None for ds in datasets):
        return
    if cfg.cache_images == "auto" and not data_mod.cache_fits(data.datasets):
        print("Decode-once cache off: the decoded images would take more than a third of the free memory.")
        return
    size = sum(ds.cache_bytes() for ds in datasets)
    print(f"Decoding {sum(len(ds) for ds in datasets)} images once into memory ({size / 2**30:.2f} GB); "
          "later epochs only augment. TL_CACHE_IMAGES=0 turns this off.")
    for ds in datasets:
        ds.cache_in_memory(cfg.num_workers)


def start_run(cfg: Config, data: DataBundle, engine: str, init: str) -> RunSetup:
    """Seed, build the model, optimizer, schedule and fresh loaders, and pick the record folder."""
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
    loaders = data_mod.make_loaders(data.datasets, cfg.batch_size, cfg.num_workers, cfg.seed,
                                    pin_memory=device.type == "cuda")
    folder = run_dir(cfg.runs_dir, data.source.name, engine, init)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("history.csv", "predictions.csv", "meta.json"):  # a new run never mixes with an old record
        (folder / stale).unlink(missing_ok=True)
    seed_everything(cfg.seed)  # dropout starts from the same RNG state whatever ran before in this kernel
    return RunSetup(cfg, data, engine, init, model, weights, optimizer, scheduler, loaders, device, folder,
                    started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), precision=precision,
                    scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"))


def finish_run(setup: RunSetup, history: list[dict], best_state: dict) -> dict:
    """Evaluate the best (validation-chosen) model once on test and write the run record."""
    cfg, data, model = setup.cfg, setup.data, setup.model
    model.load_state_dict(best_state)
    with setup.autocast():
        probs, targets = predict(model, setup.loaders["test"], setup.device)
    test = data.datasets["test"]
    preds = predictions_frame(test.paths, targets, probs, data.class_names, cfg.top_k)
    hist = write_history(setup.folder, history)
    write_predictions(setup.folder, preds)
    best_epoch = int(hist.loc[hist["val_acc"].idxmax(), "epoch"]) if len(hist) else None
    summary = dict(test_acc=accuracy(probs, targets), test_top5=topk_accuracy(probs, targets, 5),
                   best_epoch=best_epoch, best_val_acc=float(hist["val_acc"].max()) if len(hist) else None,
                   epochs_run=len(hist))
    fallbacks = list(data.fallbacks) + ([setup.weights.fallback] if setup.weights.fallback else [])
    meta = dict(engine=setup.engine, init=setup.init, dataset=data.source.name, dataset_root=str(data.source.root),
                is_demo_data=data.source.is_demo, split_fingerprint=data.fingerprint,
                split_manifest=str(data.manifest_path), split_counts=data.manifest["split"].value_counts().to_dict(),
                scan=data.scan_summary(), class_names=data.class_names, weights_source=setup.weights.source if setup.init == "transfer" else "random",
                parameters=parameter_summary(model), device=str(setup.device), precision=setup.precision,
                versions=library_versions(),
                seed=cfg.seed, budget=cfg.budget, fallbacks=fallbacks, config=cfg.as_dict(),
                started=setup.started, finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                **summary)
    write_meta(setup.folder, meta)
    return meta


def save_checkpoint(setup: RunSetup, name: str, state: dict | None = None) -> None:
    """``best.pt`` or ``last.pt``: the model's state dict, saved atomically."""
    save_state(setup.folder / name, state if state is not None else setup.model.state_dict())
