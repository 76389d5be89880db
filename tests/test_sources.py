"""Getting real data and weights, offline: the real Kaggle client talks to a loopback server,
archives are built here, /kaggle/input is a fake tree, credentials live in a temporary home."""
import dataclasses
import io
import os
import shutil
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet50

from common import runtime as C
from common.data import kaggle as K
from common.model import weights as W
from common.data import sources as S
from common.data.archives import DownloadError
from common.config import load_config
from common.data.split import DatasetError

DOWNLOAD_ROUTE = "/v1/datasets.DatasetApiService/DownloadDataset"


@pytest.fixture()
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    return home


@pytest.fixture()
def kaggle_server(server, home, monkeypatch):
    """The real kaggle client, with only its endpoint moved to the loopback server."""
    import kagglesdk.kaggle_env as kaggle_env
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.PROD, server.url)
    monkeypatch.setenv("KAGGLE_USERNAME", "learner")
    monkeypatch.setenv("KAGGLE_KEY", "s3cr3t-key-value")
    return server


@pytest.fixture(scope="module")
def veg_zip(tmp_path_factory, presplit_root):
    """A small stand-in for the Kaggle archive: 'Vegetable Images/{train,validation,test}/<class>/'."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(presplit_root.rglob("*.jpg")):
            zf.write(p, "Vegetable Images/" + p.relative_to(presplit_root).as_posix())
    return buf.getvalue()


def small_vegetables(root):
    counts = {s: len(list((root / s).rglob("*.jpg"))) for s in ("train", "validation", "test")}
    return dataclasses.replace(S.VEGETABLES, classes=6, counts=counts)


# ---------------------------------------------------------------- credentials


def test_credentials_are_looked_up_in_order(home, monkeypatch):
    with pytest.raises(K.KaggleCredentialsError, match="kaggle.json.*|Colab") as err:
        K.find_credentials()
    assert "KAGGLE_API_TOKEN" in str(err.value) and "TL_DATASET=demo" in str(err.value)
    K.save_kaggle_json("learner", "key-from-file")
    assert K.find_credentials().endswith("kaggle.json")
    monkeypatch.setenv("KAGGLE_USERNAME", "learner")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert "KAGGLE_USERNAME" in K.find_credentials()
    monkeypatch.setenv("KAGGLE_API_TOKEN", "t")
    assert "KAGGLE_API_TOKEN" in K.find_credentials()


def test_a_colab_secret_comes_first_and_a_missing_one_is_skipped(home, monkeypatch):
    class SecretNotFoundError(Exception):
        pass

    secrets = {"KAGGLE_API_TOKEN": "from-colab"}

    def get(name):
        if name not in secrets:
            raise SecretNotFoundError(name)
        return secrets[name]

    colab = types.ModuleType("google.colab")
    colab.userdata = types.SimpleNamespace(get=get)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", colab.userdata)
    monkeypatch.setenv("KAGGLE_USERNAME", "env-user")
    monkeypatch.setenv("KAGGLE_KEY", "env-key")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "")  # so teardown removes what the lookup exports
    assert K.find_credentials() == "Colab secret"
    assert os.environ["KAGGLE_API_TOKEN"] == "from-colab"  # for the kaggle client, in this process only
    secrets.clear()
    os.environ["KAGGLE_API_TOKEN"] = ""
    assert "KAGGLE_USERNAME" in K.find_credentials()


def test_kaggle_json_is_private_and_ignored_by_git(home):
    path = K.save_kaggle_json("learner", "key")
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    K.find_credentials()
    assert path.stat().st_mode & 0o777 == 0o600  # tightened when found
    assert "kaggle.json" in (Path(__file__).resolve().parent.parent / ".gitignore").read_text()


def test_a_broken_kaggle_json_says_so(home):
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "kaggle.json").write_text("{not json")
    with pytest.raises(K.KaggleCredentialsError, match="not valid JSON"):
        K.find_credentials()


# ---------------------------------------------------------------- the Kaggle download


def test_kaggle_download_is_verified_idempotent_and_keeps_secrets(kaggle_server, veg_zip, presplit_root, tmp_path, capsys):
    kaggle_server.routes[DOWNLOAD_ROUTE] = (200, "application/zip", veg_zip)
    spec = small_vegetables(presplit_root)
    data = tmp_path / "data"
    final = S.fetch_dataset(spec, data)
    assert (final / S.STAMP).is_file() and (final / "Vegetable Images" / "train").is_dir()
    assert S.local_copy(spec, data).name == "Vegetable Images"
    assert kaggle_server.requests[0][2]["Authorization"].startswith("Basic ")
    S.fetch_dataset(spec, data)  # complete copy recognised: no second download
    assert len(kaggle_server.requests) == 1
    assert sorted(p.name for p in data.iterdir()) == ["downloads", "vegetable-images"]
    assert not list((data / "downloads").iterdir())  # the archive is removed once verified
    out = capsys.readouterr()
    assert "s3cr3t-key-value" not in out.out + out.err
    assert not any("s3cr3t" in p.read_text(errors="ignore") for p in final.rglob("*.json"))


@pytest.mark.parametrize("status,message", [(401, "rejected the credentials"), (403, "accept the dataset's rules"),
                                            (404, "has no dataset")])
def test_kaggle_refusals_are_explained(kaggle_server, presplit_root, tmp_path, status, message):
    body = f'{{"code": {status}, "message": "refused"}}'.encode()
    kaggle_server.routes[DOWNLOAD_ROUTE] = (status, "application/json", body)
    with pytest.raises(K.KaggleAccessError, match=message):
        S.fetch_dataset(small_vegetables(presplit_root), tmp_path / "data")
    assert not (tmp_path / "data" / "vegetable-images").exists()


def test_no_credentials_stops_before_any_request(server, home, presplit_root, tmp_path):
    with pytest.raises(K.KaggleCredentialsError):
        S.fetch_dataset(small_vegetables(presplit_root), tmp_path / "data")
    assert server.requests == []


def test_a_partial_download_leaves_nothing_complete_and_a_retry_works(kaggle_server, veg_zip, presplit_root, tmp_path):
    spec = small_vegetables(presplit_root)
    kaggle_server.routes[DOWNLOAD_ROUTE] = (200, "application/zip", veg_zip[: len(veg_zip) // 2])
    with pytest.raises(DownloadError, match="damaged|truncated"):
        S.fetch_dataset(spec, tmp_path / "data")
    assert S.local_copy(spec, tmp_path / "data") is None
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]
    kaggle_server.routes[DOWNLOAD_ROUTE] = (200, "application/zip", veg_zip)
    assert (S.fetch_dataset(spec, tmp_path / "data") / S.STAMP).is_file()


def test_an_incomplete_dataset_is_refused(kaggle_server, veg_zip, presplit_root, tmp_path):
    kaggle_server.routes[DOWNLOAD_ROUTE] = (200, "application/zip", veg_zip)
    spec = dataclasses.replace(small_vegetables(presplit_root), counts={"train": 15000, "validation": 3000, "test": 3000})
    with pytest.raises(DatasetError, match="train: .* found, 15000 expected"):
        S.fetch_dataset(spec, tmp_path / "data")
    assert not (tmp_path / "data" / "vegetable-images").exists()


def test_a_hand_unpacked_copy_is_checked(presplit_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(presplit_root, data / "vegetable-images" / "Vegetable Images")
    spec = small_vegetables(presplit_root)
    assert S.local_copy(spec, data) is not None
    shutil.rmtree(data / "vegetable-images" / "Vegetable Images" / "test" / "tomato")
    with pytest.raises(DatasetError, match="class folders"):
        S.local_copy(spec, data)


# ---------------------------------------------------------------- Kaggle notebooks and other datasets


def test_an_attached_copy_under_kaggle_input_is_read_in_place(presplit_root, tmp_path, monkeypatch):
    mount = tmp_path / "kaggle_input" / "datasets" / "misrakahmed" / "vegetable-image-dataset" / "versions" / "1"
    shutil.copytree(presplit_root, mount / "Vegetable Images")
    monkeypatch.setattr(C, "KAGGLE_INPUT", tmp_path / "kaggle_input")
    cfg = load_config(budget="smoke", dataset="vegetables", data_dir=tmp_path / "data")
    monkeypatch.setattr(S, "VEGETABLES", small_vegetables(presplit_root))
    monkeypatch.setitem(S.REMOTE, "vegetables", small_vegetables(presplit_root))
    source = S.resolve_dataset(cfg)
    assert source.root == mount / "Vegetable Images" and source.name == "vegetables"
    assert not (tmp_path / "data").exists()  # nothing copied


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_imagewoof_is_fetched_by_url_with_readable_class_names(server, flat_root, tmp_path):
    jpg = next(flat_root.rglob("*.jpg")).read_bytes()
    members = {f"imagewoof2-160/{split}/{wnid}/{i}.JPEG": jpg for split in ("train", "val")
               for wnid in ("n02086240", "n02115641") for i in range(4)}
    server.routes["/imagewoof2-160.tgz"] = (200, "application/gzip", _tgz(members))
    spec = dataclasses.replace(S.IMAGEWOOF, url=server.url + "/imagewoof2-160.tgz", classes=2)
    root = S.local_copy(spec, S.fetch_dataset(spec, tmp_path).parent)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["dingo", "shih-tzu"]


def test_caltech101_unpacks_the_inner_archive_and_drops_background(server, flat_root, tmp_path):
    jpg = next(flat_root.rglob("*.jpg")).read_bytes()
    inner = _tgz({f"101_ObjectCategories/{c}/image_{i:04d}.jpg": jpg
                  for c in ("accordion", "airplanes", "BACKGROUND_Google") for i in range(3)})
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("caltech-101/101_ObjectCategories.tar.gz", inner)
        zf.writestr("caltech-101/show_annotation.m", b"%")
    server.routes["/caltech-101.zip"] = (200, "application/zip", outer.getvalue())
    spec = dataclasses.replace(S.CALTECH101, url=server.url + "/caltech-101.zip", classes=2)
    root = S.local_copy(spec, S.fetch_dataset(spec, tmp_path).parent)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["accordion", "airplanes"]


def test_any_folder_works_and_a_wrong_one_is_explained(flat_root, tmp_path):
    assert S.resolve_dataset(load_config(budget="smoke", dataset=str(flat_root))).root == flat_root
    with pytest.raises(S.DataUnavailableError, match="nor an existing folder"):
        S.resolve_dataset(load_config(budget="smoke", dataset=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        S.resolve_dataset(load_config(budget="smoke", dataset=str(tmp_path / "empty")))


def test_auto_falls_back_to_demo_data_loudly_off_platform(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(C, "KAGGLE_INPUT", tmp_path / "no_kaggle")
    cfg = load_config(budget="smoke", dataset="auto", data_dir=tmp_path / "data", demo_images_per_class=4)
    source = S.resolve_dataset(cfg)
    assert source.is_demo and "demo" in source.fallback
    assert "OFFLINE DEMO" in capsys.readouterr().out


# ---------------------------------------------------------------- offline weights


def test_imagenet_weights_come_from_the_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(C, "KAGGLE_INPUT", tmp_path / "no_kaggle")
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    reference = resnet50(weights=None)
    torch.save(reference.state_dict(), cache / W.IMAGENET_FILE)
    model, info = W.load_backbone("imagenet")
    assert info.source == "imagenet" and torch.equal(model.conv1.weight, reference.conv1.weight)


def test_imagenet_weights_attached_on_kaggle_are_found(tmp_path, monkeypatch):
    attached = tmp_path / "kaggle_input" / "models" / "resnet50" / "pytorch"
    attached.mkdir(parents=True)
    torch.save(resnet50(weights=None).state_dict(), attached / W.IMAGENET_FILE)
    monkeypatch.setattr(C, "KAGGLE_INPUT", tmp_path / "kaggle_input")
    _, info = W.load_backbone("auto")
    assert info.source.startswith("imagenet (file:") and info.fallback is None


def test_a_weights_download_goes_to_data_weights_not_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(C, "KAGGLE_INPUT", tmp_path / "no_kaggle")
    seen = {}

    def fake_download(url, model_dir=None, **kwargs):  # the network boundary of torchvision's weights
        seen["model_dir"] = model_dir
        return resnet50(weights=None).state_dict()

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", fake_download)
    _, info = W.load_backbone("imagenet", tmp_path / "data" / "weights")
    assert info.source == "imagenet" and seen["model_dir"] == str(tmp_path / "data" / "weights")


def test_a_whole_run_writes_only_under_data_and_runs(tmp_path, monkeypatch):
    from common.data.datasets import prepare_data
    from common.results.records import EpochRow
    from common.train.run import finish_run, start_run
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / ".cache" / "torch"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))  # matplotlib's own cache is not the suite's
    cfg = load_config(budget="smoke", dataset="demo", weights="random", image_size=32, demo_images_per_class=6,
                      data_dir=tmp_path / "data", runs_dir=tmp_path / "runs")
    run = start_run(cfg, prepare_data(cfg), "plain", "transfer")
    finish_run(run, [EpochRow(epoch=1, stage=1, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, lr=1e-3,
                              epoch_seconds=1.0)], run.model.state_dict())
    assert list(home.rglob("*")) == []
    assert {p.name for p in tmp_path.iterdir()} - {"mpl"} == {"data", "home", "runs"}
