"""Shared code for the transfer-learning tutorial notebooks, in sub-packages by role.

Importing ``common`` is cheap and never imports Ignite or Lightning; import the modules where they are used.
At the top, what every role reads: ``config`` (the configuration, ``load_config``, read in one place),
``runtime`` (platform, devices, precision, workers, seeding, versions, the loud banner) and ``io`` (atomic
writes, disk-full messages). Then, in the order a run goes through them:

* ``data``: where a dataset comes from (``sources``, ``demo``, ``kaggle``, ``archives``), its files checked
  (``scan``), its seeded split (``split``) and the data as trained (``datasets``);
* ``model``: the modified ResNet50 and how much of it trains (``resnet``), its weights (``weights``), what a
  training step keeps in memory (``memory``);
* ``train``: a run's shared start and end (``run``), the plain loop (``loop``), resume points (``resume``),
  head-only training on features computed once (``features``);
* ``results``: the run record (``records``), metrics (``evaluation``), tables across runs (``compare``),
  the sentences generated from them (``wording``), figures (``plots``);
* ``use``: reload and predict (``predict``), prove the reload (``reproduce``), how far to trust it (``trust``),
  show answers and the upload button (``show``), Grad-CAM (``explain``), export (``export``).
"""
import os

# Before anything imports torch.cuda: torch.cuda.is_available() then asks NVML rather than the CUDA runtime, whose
# first call leaves every process forked from the notebook (several devices) unable to use CUDA (torch's docstring).
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

__version__ = "0.3.0"
