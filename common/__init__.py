"""Shared code for the transfer-learning tutorial notebooks, one module per role.

Importing ``common`` is cheap and never imports Ignite or Lightning; import the modules where they
are used:

* ``config``: the configuration (``load_config``), read in one place;
* ``runtime``: platform, device, precision, workers, seeding, library versions, the loud banner;
* ``io``: atomic writes, folders swapped in once, disk-full messages;
* ``sources``: where a dataset comes from (demo, Kaggle, a folder); ``demo_data``, ``archives``,
  ``kaggle_data``: making or fetching it; ``scan``: checking its files;
* ``split``: layouts, the seeded split and its ``Manifest``;
* ``datasets``: the data as trained (``prepare_data``), transforms, the decode-once cache, loaders;
* ``model``: the modified ResNet50, its weights, and how much of it trains (``TRAINABLE``);
* ``features``: head-only training on features computed once (feature extraction done fast);
* ``training``: what every engine shares at the start and end of a run (``TrainingRun``), optimizer groups
  per block, schedules, clipping, unfreezing during a run;
* ``resume``: resume points, so an interrupted run continues where it stopped;
* ``records``: the run record (``RunRecord``, ``RunMeta``);
* ``evaluation``: predictions and the metrics computed from them;
* ``compare``: comparisons across run records, engine agreement;
* ``plots``: figures.
"""
import os

# Before anything imports torch.cuda: torch.cuda.is_available() then asks NVML rather than the CUDA runtime, whose
# first call leaves every process forked from the notebook (several devices) unable to use CUDA (torch's docstring).
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

__version__ = "0.2.0"
