"""The speed-ups are chosen per device and change nothing but speed."""
import torch

from common import runtime as C
from common.train import run as T
from common.config import load_config
from common.data.datasets import prepare_data
from common.model.resnet import TransferResNet
from torchvision.models import resnet50


def test_precision_is_fp32_on_cpu_and_mixed_on_cuda(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert C.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(C, "visible_gpus", lambda: C.Gpus(("NVIDIA A100",), ((8, 0),)))
    assert C.resolve_precision("auto", cuda) == "bf16"  # A100, H100, L4...
    monkeypatch.setattr(C, "visible_gpus", lambda: C.Gpus(("Tesla T4",), ((7, 5),)))
    assert C.resolve_precision("auto", cuda) == "fp16"  # T4 (Colab, Kaggle free GPUs): with a gradient scaler
    monkeypatch.setattr(C, "visible_gpus", lambda: C.Gpus(("GPU",)))
    assert C.resolve_precision("auto", cuda) == "fp16"  # capability unknown: what every GPU runs
    assert C.resolve_precision("bf16", cpu) == "bf16"  # an explicit choice wins
    assert C.resolve_precision("fp16", cpu) == "bf16"  # ... except fp16 on the CPU, which Lightning runs as bf16
    assert C.resolve_precision("fp16", cuda) == "fp16"
    assert C.resolve_channels_last(None, cuda) and not C.resolve_channels_last(None, cpu)  # None: auto
    assert C.resolve_channels_last(True, cpu) and not C.resolve_channels_last(False, cuda)


def test_every_engine_gets_the_same_precision(tmp_path):
    cfg = load_config(budget="smoke", dataset="demo", weights="random", image_size=32, demo_images_per_class=6,
                      data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", precision="bf16")
    run = T.start_run(cfg, prepare_data(cfg), "plain", "scratch")
    assert (run.precision, run.amp_dtype, run.lightning_precision) == ("bf16", torch.bfloat16, "bf16-mixed")
    assert not run.scaler.is_enabled()  # bf16 needs no loss scaling
    with run.autocast():
        assert run.model(torch.randn(2, 3, 32, 32)).dtype == torch.bfloat16
    fp32 = T.start_run(load_config(**{**cfg.as_dict(), "precision": "fp32"}), run.data, "plain", "scratch")
    with fp32.autocast():
        assert fp32.model(torch.randn(2, 3, 32, 32)).dtype == torch.float32
    assert fp32.lightning_precision == "32-true"


def test_channels_last_changes_layout_not_results():
    torch.manual_seed(0)
    model = TransferResNet(resnet50(weights=None), 4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        reference = model(x)
        model.to(memory_format=torch.channels_last)
        assert model.trunk[0].weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-4)


def test_a_finished_ignite_run_leaves_no_loader_workers_for_the_garbage_collector(tmp_path):
    """Ignite's engines keep their loader iterators in reference cycles; left to the garbage collector, each
    persistent worker's shutdown waited out a 5 s timeout. finish_run ends them itself."""
    import gc

    import psutil
    from common.train.ignite_engine import train_in_process
    cfg = load_config(budget="smoke", dataset="demo", weights="random", image_size=32, demo_images_per_class=6,
                      epochs=1, num_workers=1, progress=False, data_dir=tmp_path / "data", runs_dir=tmp_path / "runs")
    gc.collect()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    gc.disable()  # what the collector would end later must already be ended
    try:
        train_in_process(cfg, prepare_data(cfg), "transfer")
        workers = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
                   and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        gc.enable()
    assert not workers, workers


def test_an_epoch_line_gives_seconds_a_reader_can_use():
    from common.results.records import EpochRow
    row = EpochRow(epoch=1, stage=1, train_loss=1.0, train_acc=0.5, val_loss=1.1, val_acc=0.4, lr=1e-3, epoch_seconds=0.0241)
    assert T.epoch_line("head", row).endswith("| 0.024 s")  # not "0.0 s" for a head on cached features
    assert T.epoch_line("head", EpochRow(**{**row.__dict__, "epoch_seconds": 12.34})).endswith("| 12.3 s")
