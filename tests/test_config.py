import os

import pytest

from common.config import BUDGETS, load_config


def test_budget_presets_fill_unset_fields(monkeypatch):
    monkeypatch.setenv("TL_BUDGET", "smoke")
    cfg = load_config()
    assert cfg.budget == "smoke"
    assert cfg.image_size == BUDGETS["smoke"]["image_size"]
    assert cfg.epochs == BUDGETS["smoke"]["epochs"]


def test_env_overrides_win_over_the_preset(monkeypatch, tmp_path):
    monkeypatch.setenv("TL_BUDGET", "full")
    monkeypatch.setenv("TL_EPOCHS", "7")
    monkeypatch.setenv("TL_LR", "0.05")
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("TL_TRAIN_PER_CLASS", "none")
    cfg = load_config()
    assert (cfg.epochs, cfg.lr, cfg.runs_dir, cfg.image_size) == (7, 0.05, tmp_path, 224)
    assert cfg.train_per_class is None


def test_explicit_arguments_win_over_env(monkeypatch):
    monkeypatch.setenv("TL_EPOCHS", "7")
    assert load_config(budget="smoke", epochs=1).epochs == 1


def test_auto_budget_is_smoke_under_ci(monkeypatch):
    monkeypatch.delenv("TL_BUDGET", raising=False)
    monkeypatch.setenv("CI", "true")
    assert load_config().budget == "smoke"


def test_bad_values_say_what_is_wrong(monkeypatch):
    monkeypatch.setenv("TL_BUDGET", "huge")
    with pytest.raises(ValueError, match="smoke, cpu, full"):
        load_config()
    monkeypatch.setenv("TL_BUDGET", "smoke")
    monkeypatch.setenv("TL_EPOCHS", "three")
    with pytest.raises(ValueError, match="TL_EPOCHS"):
        load_config()
    monkeypatch.delenv("TL_EPOCHS")
    monkeypatch.setenv("TL_CACHE_IMAGES", "maybe")
    with pytest.raises(ValueError, match="TL_CACHE_IMAGES='maybe' is not one of on, off, auto"):
        load_config()
    monkeypatch.setenv("TL_CACHE_IMAGES", "Off")
    assert load_config().cache_images is False
    monkeypatch.setenv("TL_CACHE_IMAGES", "auto")
    assert load_config().cache_images is None
    monkeypatch.delenv("TL_CACHE_IMAGES")
    monkeypatch.setenv("TL_RESUME", "auto")  # resume has no automatic choice
    with pytest.raises(ValueError, match="TL_RESUME='auto' is not one of on, off:"):
        load_config()
    monkeypatch.setenv("TL_RESUME", "0")
    assert load_config().resume is False and load_config(resume=True).resume is True
    monkeypatch.delenv("TL_RESUME")
    monkeypatch.setenv("TL_PRECISION", "fp8")
    with pytest.raises(ValueError, match="TL_PRECISION"):
        load_config()


def test_config_prints_and_serialises(capsys):
    cfg = load_config(budget="smoke")
    cfg.show()
    assert "budget" in capsys.readouterr().out
    assert isinstance(cfg.as_dict()["runs_dir"], str)


def test_zero_and_none_set_explicitly_are_kept(monkeypatch):
    monkeypatch.setenv("TL_BUDGET", "cpu")
    monkeypatch.setenv("TL_DEVICE", "cuda")  # where the automatic choice would be workers
    monkeypatch.setenv("TL_NUM_WORKERS", "0")
    monkeypatch.setenv("TL_TRAIN_PER_CLASS", "none")
    cfg = load_config()
    assert cfg.num_workers == 0 and cfg.train_per_class is None  # not the preset's 60
    assert cfg.eval_per_class == BUDGETS["cpu"]["eval_per_class"]


def test_loader_workers_are_none_when_training_on_the_cpu_and_some_with_a_gpu(monkeypatch):
    # On the CPU a worker competes with the training threads for the same cores (a quarter slower per epoch on 2).
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert load_config(budget="cpu", device="cpu").num_workers == 0
    assert load_config(budget="cpu", device="cuda").num_workers == 4
    assert load_config(budget="cpu", device="cpu", num_workers=2).num_workers == 2
