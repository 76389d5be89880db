"""How much does unfreezing cost per epoch? Epoch time per mode, measured in one run, with ratios to scratch.

Modes: head with cached features (the frozen network runs once, then only the head trains: the one-off
extraction is printed apart), head, layer4 (the suite's recipe), layer3, all, and scratch. Every mode
trains the same synthetic dataset shaped like the vegetable one (15 classes, procedurally drawn), with
the plain loop's training step on the decode-once cache; validation is left out, it costs every mode
the same. The first epoch is warm-up: figures are medians of the others.

    .venv/bin/python benchmarks/unfreeze_speed.py                                # CPU: 8 images per class, 112 px
    .venv/bin/python benchmarks/unfreeze_speed.py --images-per-class 100 --image-size 224 --batch-size 64  # a GPU
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODES = ("head cached", "head", "layer4", "layer3", "all", "scratch")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images-per-class", type=int, default=8, help="images drawn per class (about 70 %% train)")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2, help="per mode; the first is warm-up")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    return p.parse_args()


def train_epoch(run, criterion) -> None:
    run.model.train()
    for images, labels in run.loaders["train"]:
        images, labels = images.to(run.device), labels.to(run.device)
        run.optimizer.zero_grad(set_to_none=True)
        with run.autocast():
            loss = criterion(run.model(images), labels)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()


def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_mode(mode: str, cfg, data, epochs: int) -> tuple[float, float | None, int]:
    """Median epoch seconds (after the first), the one-off feature extraction (cached mode), trainable params."""
    import dataclasses

    import torch
    from common.train.features import cache_features, head_epoch
    from common.model.resnet import parameter_summary
    from common.train.run import start_run

    init = "scratch" if mode == "scratch" else "transfer"
    trainable = "head" if mode.startswith("head") else ("layer4" if mode == "scratch" else mode)
    run = start_run(dataclasses.replace(cfg, trainable=trainable), data, "plain", init)
    criterion, seconds, extraction = torch.nn.CrossEntropyLoss(), [], None
    if mode == "head cached":
        start = time.perf_counter()
        cached = cache_features(run)
        sync(run.device)
        extraction = time.perf_counter() - start
    for epoch in range(epochs):
        run.loaders["train"].sampler.set_epoch(epoch)
        start = time.perf_counter()
        if mode == "head cached":
            head_epoch(run, *cached["train"], epoch)
        else:
            train_epoch(run, criterion)
        sync(run.device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:] or seconds), extraction, parameter_summary(run.model)["trainable"]


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TL_PROGRESS", "off")
    import torch
    from common.config import load_config
    from common.data.datasets import prepare_data
    from common.runtime import pick_device
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from speed import synthetic_dataset

    modes = [m.strip() for m in args.modes.split(",")]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(MODES)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic_dataset(Path(tmp), args.images_per_class)
        cfg = load_config(budget="cpu", dataset=str(root), weights="random", image_size=args.image_size,
                          batch_size=args.batch_size, epochs=args.epochs, train_per_class=None, eval_per_class=None,
                          cache_images=True, progress=False, data_dir=Path(tmp) / "data", runs_dir=Path(tmp) / "runs")
        data = prepare_data(cfg)
        device = pick_device(cfg.device)
        print(f"{len(data.datasets['train'])} training images, {args.image_size} px, batch {args.batch_size}, "
              f"{args.epochs} epochs per mode (first = warm-up); {device}, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
              flush=True)
        results = {}
        for mode in modes:
            results[mode] = time_mode(mode, cfg, data, args.epochs)
            print(f"  timed {mode}: {results[mode][0]:.3f} s per epoch", flush=True)
    base = results.get("scratch", (None,))[0]
    print(f"\n{'mode':<12} {'trainable':>12} {'epoch s':>9} {'x faster than scratch':>22}")
    for mode, (secs, extraction, trainable) in results.items():
        ratio = f"{base / secs:.1f}" if base else "-"
        print(f"{mode:<12} {trainable:>12,} {secs:>9.3f} {ratio:>22}")
    if "head cached" in results and "head" in results:
        secs, extraction, _ = results["head cached"]
        print(f"\nhead cached vs head: {results['head'][0] / secs:.0f}x per epoch; the one-off feature extraction "
              f"(every split, once) took {extraction:.2f} s.")


if __name__ == "__main__":
    main()
