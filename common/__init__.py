"""Shared code for the transfer-learning tutorial notebooks.

Importing ``common`` is cheap and never imports Ignite or Lightning; the
modules are imported where they are used:

* ``common.config``: the configuration (``load_config``), runtime, device, seeding;
* ``common.demo_data``: the offline toy-vegetable dataset;
* ``common.sources``: where a dataset comes from (demo, Kaggle vegetables, a folder);
* ``common.data``: layouts, the seeded split and its manifest, transforms, loaders;
* ``common.model``: the modified ResNet50 and its weights;
* ``common.training``: what every engine shares (start and finish of a run);
* ``common.resume``: resume points, so an interrupted run continues where it stopped;
* ``common.scan``: checking image files; ``common.archives``, ``common.kaggle_data``: fetching data;
* ``common.compare``: do the engines agree?
* ``common.evaluation``: predictions and metrics;
* ``common.records``: the run-record schema;
* ``common.plots``: figures.
"""
__version__ = "0.1.0"
