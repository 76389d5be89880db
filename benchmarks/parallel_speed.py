"""Does a second device pay? Throughput with 1 and with N processes, and the scaling efficiency, in one run.

Runs the engine notebooks (the code learners read, each in a fresh kernel) on the same synthetic dataset
shaped like the vegetable one, each ending with its final ``train`` at ``devices=1``, then at ``devices=N`` (one process per GPU;
on a machine without one, N gloo processes on the CPU, one thread each), and prints per engine and
initialisation the median epoch seconds after the first (warm-up) epoch, images per second, the speed-up
and the scaling efficiency (speed-up / N; 1.0 would be perfect).

    .venv/bin/python benchmarks/parallel_speed.py                     # CPU: 2 gloo processes, 112 px
    .venv/bin/python benchmarks/parallel_speed.py --images-per-class 200 --image-size 224 --batch-size 64  # GPUs

On the CPU the comparison is of one process using every core against N processes sharing them: it shows
the cost of the communication and of the extra processes, not what GPUs would gain.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


# Per-run sizes: a GPU run is worth measuring at the recipe's size; on CPU processes the same would take hours.
SIZES = {"gpu": dict(images_per_class=200, image_size=224, batch_size=64),
         "cpu": dict(images_per_class=12, image_size=112, batch_size=16)}


def parse_args(gpus: int) -> argparse.Namespace:
    """The options; sizes left out follow where the runs go: GPUs when there is one for each of the N processes,
    else the CPU (a one-GPU Colab runtime runs 2 CPU processes, at CPU sizes)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=gpus if gpus > 1 else 2,
                   help="N: processes of the parallel runs (fewer GPUs than N: CPU processes)")
    p.add_argument("--images-per-class", type=int, help=f"default {SIZES['gpu']['images_per_class']} on GPUs, "
                                                        f"{SIZES['cpu']['images_per_class']} on the CPU")
    p.add_argument("--image-size", type=int, help=f"default {SIZES['gpu']['image_size']} on GPUs, {SIZES['cpu']['image_size']} on the CPU")
    p.add_argument("--batch-size", type=int, help="global batch, a multiple of N: default "
                                                  f"{SIZES['gpu']['batch_size']} on GPUs, {SIZES['cpu']['batch_size']} on the CPU")
    p.add_argument("--epochs", type=int, default=3, help="per run; the first is warm-up")
    p.add_argument("--engines", default="plain,ignite,lightning")
    args = p.parse_args()
    args.on_gpus = gpus >= args.processes
    for name, value in SIZES["gpu" if args.on_gpus else "cpu"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main() -> None:
    from common.runtime import visible_gpus
    gpus = visible_gpus().count
    args = parse_args(gpus)
    import pandas as pd
    import torch
    from speed import run_engines, steady, synthetic_dataset

    from common.results.records import ENGINE_NOTEBOOKS, RunRecord

    work = Path(tempfile.mkdtemp(prefix="tl-parallel-"))
    root = synthetic_dataset(work, args.images_per_class)
    settings = dict(TL_DATASET=str(root), TL_WEIGHTS="random", TL_IMAGE_SIZE=str(args.image_size),
                    TL_BATCH_SIZE=str(args.batch_size), TL_EPOCHS=str(args.epochs), TL_BUDGET="full",
                    TL_TRAIN_PER_CLASS="none", TL_EVAL_PER_CLASS="none", TL_RESUME="0", TL_PROGRESS="0",
                    TL_CACHE_IMAGES="1", TL_DATA_DIR=str(work / "data"))
    env = dict(os.environ, **settings)
    if not args.on_gpus:  # not a GPU per process: every run on the CPU, so that 1 and N compare like for like
        env["TL_DEVICE"] = "cpu"
    engines = args.engines.split(",")
    unknown = set(engines) - set(ENGINE_NOTEBOOKS)
    if unknown:
        raise SystemExit(f"--engines: unknown {sorted(unknown)}; choose from {', '.join(ENGINE_NOTEBOOKS)}")
    worlds = (1, args.processes)
    for world in worlds:
        print(f"{world} process(es):", flush=True)
        # The recipe's cells train on one process (they refuse devices); the final `train` of the variations,
        # appended, trains both runs again on `world` processes, over the recipe's records.
        run_engines(engines, dict(env, TL_RUNS_DIR=str(work / f"runs-{world}")),
                    last_cell=f"for init in INITS:\n    train(load_config(devices={str(world)!r}), data, init)")
    rows = []
    for engine in engines:
        for init in ("transfer", "scratch"):
            for world in worlds:
                record = RunRecord(work / f"runs-{world}", root.name, engine, init)
                images = record.meta.steps_per_epoch * args.batch_size  # global batches, split over the processes
                rows.append(dict(engine=engine, init=init, processes=record.meta.world,
                                 epoch_s=steady(record.history["epoch_seconds"]), images=images))
    table = pd.DataFrame(rows)
    table["images_per_s"] = table["images"] / table["epoch_s"]
    one = table[table.processes == 1].set_index(["engine", "init"])["epoch_s"]
    table["speed_up"] = [one[(e, i)] / s for e, i, s in zip(table.engine, table.init, table.epoch_s)]
    table["efficiency"] = table["speed_up"] / table["processes"]
    where = (f"{gpus} x {visible_gpus().names[0]}" if args.on_gpus
             else f"CPU ({os.cpu_count()} cores; N processes of one thread against one of {torch.get_num_threads()})")
    print(f"\nmachine: {platform.machine()}, {where}, torch {torch.__version__}; {args.image_size} px, global batch "
          f"{args.batch_size}, epoch = training + validation (validation runs whole in every process)")
    print(table.round(3).to_string(index=False))
    print(f"\nmedian efficiency over engines and inits: {statistics.median(table[table.processes > 1]['efficiency']):.2f}")


if __name__ == "__main__":
    main()
