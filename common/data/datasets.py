"""Datasets and loaders: the data as trained, decode-then-augment transforms, the decode-once cache, seeded batch order.

``prepare_data`` gives the data a run trains on (the budget's caps applied); loaders give batches whose
order and augmentation depend on the seed and the epoch alone."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from common.config import Config
from common.model.weights import imagenet_normalisation
from common.data.scan import open_rgb
from common.data.sources import DataSource, resolve_dataset
from common.data.split import SPLITS, Manifest, load_or_make_split


@dataclass
class DataBundle:
    """The data a run trains on: where it came from, the split as trained (caps and duplicate drop
    applied), its class names, one dataset per split, and any fallback taken to get it."""
    source: DataSource
    manifest: Manifest  # the split as trained
    full_manifest_path: Path  # the whole split, before the budget's caps
    manifest_path: Path  # the split as trained, saved beside it
    datasets: dict
    fallbacks: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return self.manifest.classes

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint


def prepare_data(cfg: Config) -> DataBundle:
    """Resolve the dataset, load or make its split, apply the budget's caps, build the datasets.

    The split as trained is saved beside the whole one (its fingerprint in the name), so that any
    later reader counts the images training really used."""
    source = resolve_dataset(cfg)
    full_path = cfg.data_dir / "splits" / f"{source.name}-seed{cfg.seed}.csv"
    manifest = load_or_make_split(source.root, full_path, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    if len(manifest.duplicates) and cfg.drop_duplicates:
        manifest = manifest.drop_leaked()
    elif len(manifest.duplicates):
        print(f"WARNING: {manifest.duplicates['digest'].nunique()} image(s) occur in more than one split (same "
              "content). Set drop_duplicates (TL_DROP_DUPLICATES=1) to drop their validation/test copies.")
    manifest = manifest.limit_per_class("train", cfg.train_per_class, cfg.seed)
    for split in ("validation", "test"):
        manifest = manifest.limit_per_class(split, cfg.eval_per_class, cfg.seed)
    manifest.check_disjoint()
    trained_path = manifest.save(full_path.with_name(f"{full_path.stem}-trained-{manifest.fingerprint}.csv"))
    mean, std = imagenet_normalisation()
    datasets = make_datasets(manifest, build_transforms(cfg.image_size, mean, std), cfg.seed)
    return DataBundle(source, manifest, full_path, trained_path, datasets, [source.fallback] if source.fallback else [])


def train_subset(data: DataBundle, per_class: int, repeat: int, folder: Path, seed: int) -> DataBundle:
    """``data`` with ``per_class`` training images of every class, drawn for ``repeat`` (validation and test
    untouched). Nested: one seeded order per repeat, cut at each size, so within a repeat a larger subset holds
    every smaller one; repeats draw different orders. Stratified: exactly ``per_class`` of each class. Its
    manifest is saved in ``folder`` (the fingerprint in the name), like every split as trained."""
    repeat_seed = int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0])
    manifest = data.manifest.limit_per_class("train", per_class, repeat_seed)
    counts = manifest.files("train")["label"].value_counts().reindex(range(len(data.class_names)), fill_value=0)
    if (counts < per_class).any():
        short = [data.class_names[i] for i in counts.index[counts < per_class]]
        raise ValueError(f"{per_class} training images per class asked for, but {', '.join(short)} has fewer: "
                         f"use at most {int(counts.min())} per class.")
    path = manifest.save(Path(folder) / f"train-{per_class}-per-class-repeat{repeat}-{manifest.fingerprint}.csv")
    full, part = data.datasets["train"], manifest.files("train")
    train = ImageListDataset(full.root, part["path"], part["label"], full.transform, seed=full.seed)
    if full.cache is not None:  # the rows decoded already
        position = {path: i for i, path in enumerate(full.paths)}
        train.cache = full.cache[[position[path] for path in train.paths]]
    return dataclasses.replace(data, manifest=manifest, manifest_path=path, datasets={**data.datasets, "train": train})


def cache_decoded_images(cfg: Config, data: DataBundle) -> None:
    """Decode every image once into memory when ``cfg.cache_images`` asks for it (auto: when it fits).

    Decoding JPEGs is most of the input pipeline's work; with the cache each later epoch only crops,
    flips and normalises uint8 tensors. Done once per notebook: the first run pays, the next reuse it."""
    datasets = list(data.datasets.values())
    if cfg.cache_images is False or all(ds.cache is not None for ds in datasets):
        return
    if cfg.cache_images is None and not cache_fits(data.datasets):
        print("Decode-once cache off: the decoded images would take more than a third of the free memory.")
        return
    size = sum(ds.cache_bytes() for ds in datasets)
    print(f"Decoding {sum(len(ds) for ds in datasets)} images once into memory ({size / 2**30:.2f} GB); "
          "later epochs only augment (cache_images=False turns this off).")
    for ds in datasets:
        ds.cache_in_memory(cfg.num_workers, progress=cfg.progress)


@dataclass(frozen=True)
class DecodeThenAugment:
    """An image's way to the model in two steps, so that the first can be done once and kept.

    ``decode`` is deterministic (PIL image to a uint8 tensor of a fixed square size): it is what the
    decode-once cache stores. ``augment`` runs every epoch on that tensor (random crop and flip for
    training) and ends in normalised floats. Cached or not, the numbers are the same.
    """
    decode: v2.Compose
    augment: v2.Compose

    def __call__(self, img):
        return self.augment(self.decode(img))


def build_transforms(image_size: int, mean, std) -> dict[str, DecodeThenAugment]:
    """Training: centre square at ``image_size``, then random resized crop and flip every epoch.
    Evaluation: resize to 8/7 of the size and centre crop (the ImageNet convention), done once."""
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    square = v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), v2.PILToTensor()])
    train = DecodeThenAugment(square, v2.Compose([v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
                                         v2.RandomHorizontalFlip(), *finish]))
    evaluate = DecodeThenAugment(v2.Compose([v2.Resize(image_size * 8 // 7, antialias=True), v2.CenterCrop(image_size),
                                    v2.PILToTensor()]), v2.Compose(finish))
    return {"train": train, "validation": evaluate, "test": evaluate}


# ---------------------------------------------------------------- datasets and loaders


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers, the same on every platform and Python version."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part) + 1) % 2**63
    return value


class ImageListDataset(Dataset):
    """Images listed by a manifest. Lives in a module so worker processes can import it.

    With ``seed`` set, random transforms are seeded per sample from (seed, epoch,
    index), where :class:`EpochShuffleSampler` passes the epoch inside the index.
    Augmentation then depends on nothing else: not on the global RNG, not on worker
    processes, not on how many iterators an engine creates or how far it prefetches.

    With a :class:`DecodeThenAugment` transform, :meth:`cache_in_memory` decodes every image once;
    later epochs only augment. Without a transform, items are the PIL images.
    """

    def __init__(self, root: Path, paths: list[str], labels: list[int], transform=None, seed: int | None = None):
        self.root, self.paths, self.labels, self.transform = Path(root), list(paths), list(labels), transform
        self.seed = seed
        self.cache: torch.Tensor | None = None  # uint8 (N, 3, size, size) once cache_in_memory has run

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        """Each item once (``self[key]`` accepts keys past the end: they carry the epoch for the sampler)."""
        return (self[index] for index in range(len(self)))

    def decoded(self, index: int):
        """The image after its deterministic first stage (from the cache when there is one)."""
        if self.cache is not None:
            return self.cache[index]
        img = open_rgb(self.root / self.paths[index], max_side=1024)
        return self.transform.decode(img) if isinstance(self.transform, DecodeThenAugment) else img

    def __getitem__(self, key: int):
        epoch, index = divmod(int(key), len(self.paths))
        img = self.decoded(index)
        if self.transform is not None:
            augment = self.transform.augment if isinstance(self.transform, DecodeThenAugment) else self.transform
            if self.seed is None:
                img = augment(img)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(mix_seed(self.seed, epoch, index))
                    img = augment(img)
        return img, self.labels[index]

    def cache_bytes(self) -> int:
        """Memory the decode-once cache of this dataset takes."""
        return len(self) * self.decoded(0).numel() if len(self) else 0

    def cache_in_memory(self, num_workers: int = 0, progress: bool = True) -> None:
        """Run every image's first stage once (in parallel workers) into one uint8 tensor.

        One tensor, not a list: worker processes share it (copy-on-write under fork, shared
        memory under spawn) instead of each holding a copy."""
        if self.cache is not None or not len(self):
            return
        if not isinstance(self.transform, DecodeThenAugment):
            raise TypeError("Only a dataset with a DecodeThenAugment transform can be cached (its decode step is what is kept).")
        from tqdm.auto import tqdm
        first = self.decoded(0)
        cache = torch.empty((len(self), *first.shape), dtype=torch.uint8)
        batches = iter(DataLoader(_Decoded(self), batch_size=64, num_workers=num_workers))
        with tqdm(total=len(self), desc=f"decoding {len(self)} images once", disable=not progress,
                  mininterval=5, leave=False) as bar:
            done = 0  # not bar.n: a disabled bar does not count
            for batch in batches:
                cache[done:done + len(batch)] = batch
                done += len(batch)
                bar.update(len(batch))
        # Release the iterator here, so that its worker shuts down in this process. Wrapped in a notebook's
        # progress bar it stayed alive and was finalised inside a later loader's forked worker, which printed
        # "Exception ignored ... AssertionError: can only test a child process".
        del batches
        self.cache = cache


class _Decoded(Dataset):
    """The first stage of each image of a dataset, for filling its cache in worker processes."""

    def __init__(self, dataset: ImageListDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset.decoded(index)


def available_memory() -> int:
    """Memory free for new allocations, in bytes (psutil: the same on Linux, macOS and Windows). Free,
    not total: a second notebook's kernel holding its own cache leaves less for this one."""
    import psutil
    return psutil.virtual_memory().available


def cache_fits(datasets: dict[str, ImageListDataset], share: float = 1 / 3) -> bool:
    """Whether the decoded images of every split fit in ``share`` of the free memory."""
    return sum(ds.cache_bytes() for ds in datasets.values()) <= share * available_memory()


def make_datasets(manifest: Manifest, transforms: dict, seed: int = 0) -> dict[str, ImageListDataset]:
    """One dataset per split; the training set's augmentation is seeded per sample."""
    out = {}
    for split in SPLITS:
        part = manifest.files(split)
        out[split] = ImageListDataset(manifest.root, part["path"], part["label"], transforms[split],
                                      seed=seed if split == "train" else None)
    return out


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch) and tags each index with its epoch.

    The epoch advances only when an iteration actually starts (the body of a
    generator runs at the first ``next``), so an iterator that an engine creates
    and never uses does not shift the order. ``epoch`` can be set to resume.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Fix the (0-based) epoch of the next pass, as Lightning does and as DistributedSampler expects."""
        self.epoch = epoch

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        yield from (i + epoch * self.size for i in order.tolist())


class RankShard(Sampler[int]):
    """One process's share of every training batch: the seeded epoch order cut into global batches of
    ``batch_size`` (full ones only, as one process drops its last partial batch), and from each global batch
    the ``rank``-th of ``world`` equal slices. The batch order stays a function of (seed, epoch, index), and
    the processes together see exactly the batches one process would."""

    def __init__(self, sampler: EpochShuffleSampler, batch_size: int, rank: int, world: int):
        if batch_size % world:
            raise ValueError(f"batch_size={batch_size} does not split into {world} equal shares: use a multiple of "
                             f"{world} (each process takes batch_size / {world} images of every batch).")
        self.sampler, self.batch_size, self.rank, self.world = sampler, batch_size, rank, world

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size * (self.batch_size // self.world)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        order, share = list(self.sampler), self.batch_size // self.world
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            yield from order[start + self.rank * share: start + (self.rank + 1) * share]


def make_loaders(datasets: dict[str, Dataset], batch_size: int, num_workers: int, seed: int,
                 pin_memory: bool = False, rank: int = 0, world: int = 1) -> dict[str, DataLoader]:
    """Loaders whose batch order and augmentation depend on ``seed`` and the epoch alone.

    Training batches come from an :class:`EpochShuffleSampler`; every loader also gets
    its own seeded generator, so creating an iterator never touches the global RNG. With ``world``
    processes, the training loader of process ``rank`` yields its share of every batch (:class:`RankShard`);
    validation and test loaders stay whole in every process (each evaluates everything: exact, and cheap
    next to training)."""
    out = {}
    for split, ds in datasets.items():
        is_train = split == "train"
        sampler = EpochShuffleSampler(len(ds), seed) if is_train else None
        size = batch_size
        if is_train and world > 1:
            sampler, size = RankShard(sampler, batch_size, rank, world), batch_size // world
        out[split] = DataLoader(
            ds, batch_size=size, sampler=sampler, drop_last=is_train and len(ds) > batch_size, num_workers=num_workers,
            persistent_workers=num_workers > 0, pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
    return out


def stop_workers(loaders: dict[str, DataLoader]) -> None:
    """End the loaders' persistent worker processes now, when their run ends. Ignite's engines hold their loader
    iterators in reference cycles, so without this the garbage collector ends the workers later, and a shutdown run
    from inside a collection waits out torch's 5 s join timeout per worker (measured: 15 s per Ignite run, against
    0.05 s when called directly). torch has no public call for it: ``_shutdown_workers`` is what the iterator's own
    ``__del__`` calls, and a second call does nothing."""
    for loader in loaders.values():
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None

