"""Shared fixtures: small demo datasets drawn once per test session, no network."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common.demo_data import make_demo_dataset


@pytest.fixture(scope="session")
def flat_root(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("flat") / "toy", images_per_class=20, image_size=48, seed=3)


@pytest.fixture(scope="session")
def presplit_root(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("presplit") / "toy", images_per_class=20, image_size=48,
                             seed=3, layout="presplit")


@pytest.fixture()
def copy_of(tmp_path):
    """Copy a session dataset so a test may damage it."""
    def _copy(root: Path) -> Path:
        return Path(shutil.copytree(root, tmp_path / root.name))
    return _copy
