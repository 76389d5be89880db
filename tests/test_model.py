import pytest
import torch
from torchvision.models import resnet18, resnet50

from common.model import resnet as M
from common.model import weights as W


@pytest.fixture(scope="module")
def transfer():
    torch.manual_seed(0)
    return M.TransferResNet(resnet50(weights=None), num_classes=5, trainable="layer4")


def test_exactly_layer4_and_the_head_are_trainable(transfer):
    trainable = {n.split(".")[0] for n, p in transfer.named_parameters() if p.requires_grad}
    frozen = {n.split(".")[0] for n, p in transfer.named_parameters() if not p.requires_grad}
    assert trainable == {"layer4", "classifier"} and frozen == {"trunk"}
    s = M.parameter_summary(transfer)
    blocks = s["blocks"]
    assert s["trainable"] == blocks["layer4"]["trainable"] + blocks["classifier"]["trainable"]
    assert blocks["trunk"]["trainable"] == 0 and blocks["trunk"]["total"] > 8_000_000
    assert s["total"] == 23_518_277 == sum(b["total"] for b in blocks.values())  # ResNet50 without fc, plus a 2048x5 head


def test_scratch_trains_everything():
    torch.manual_seed(0)
    scratch, info = M.build_model(5, "scratch")
    assert all(p.requires_grad for p in scratch.parameters()) and info.source == "random"


def test_train_mode_keeps_frozen_batchnorm_in_eval(transfer):
    transfer.train()
    bns = [m for m in transfer.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert transfer.layer4.training and transfer.dropout.training
    transfer.eval()
    assert not transfer.layer4.training


def test_a_training_step_leaves_frozen_weights_and_statistics_bit_identical(transfer):
    before = {k: v.clone() for k, v in transfer.state_dict().items()}
    opt = torch.optim.SGD(M.trainable_parameters(transfer), lr=0.1)
    transfer.train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(transfer(x), y).backward()
    assert all(p.grad is None for p in transfer.trunk.parameters())
    opt.step()
    after = transfer.state_dict()
    for k, v in before.items():
        if k.startswith("trunk."):
            assert torch.equal(v, after[k]), k  # weights and BatchNorm running stats alike
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert not torch.equal(before["layer4.0.conv1.weight"], after["layer4.0.conv1.weight"])
    changed_bn = [k for k in before if k.startswith("layer4") and k.endswith("running_mean")]
    assert any(not torch.equal(before[k], after[k]) for k in changed_bn)  # trainable BN does update


def test_frozen_trunk_runs_without_autograd(transfer):
    seen = {}
    def record(module, inputs, output):
        seen["grad"] = output.requires_grad

    handle = transfer.trunk.register_forward_hook(record)
    transfer.train()
    out = transfer(torch.randn(2, 3, 64, 64))
    handle.remove()
    assert seen["grad"] is False and out.requires_grad


def test_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    reference = resnet50(weights=None)
    path = tmp_path / W.IMAGENET_FILE
    torch.save(reference.state_dict(), path)
    model, info = M.build_model(3, "transfer", weights=str(path))
    assert info.source == f"file:{path}" and info.fallback is None
    assert torch.equal(model.trunk[0].weight, reference.conv1.weight)
    assert torch.equal(model.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)


@pytest.mark.parametrize("kind", ["missing", "text", "resnet18", "truncated"])
def test_a_wrong_weights_file_gives_a_clear_error(tmp_path, kind):
    path = tmp_path / "weights.pth"
    if kind == "text":
        path.write_text("not weights")
    elif kind == "resnet18":
        torch.save(resnet18(weights=None).state_dict(), path)
    elif kind == "truncated":
        torch.save(resnet50(weights=None).state_dict(), path)
        path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(W.WeightsError) as err:
        W.load_backbone(str(path))
    assert W.IMAGENET_FILE in str(err.value) and "TL_WEIGHTS" in str(err.value)


def _offline(monkeypatch):
    def refuse(*args, **kwargs):
        import sys
        sys.stdout.write('Downloading: "https://download.pytorch.org/models/x.pth"\n')  # as torch.hub announces it
        raise OSError("no network")
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", refuse)


def test_imagenet_offline_names_the_file_and_what_to_do(monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(W.WeightsError, match="resnet50-11ad3fa6.pth.*\n.*checkpoints"):
        W.load_backbone("imagenet")


def test_auto_falls_back_loudly_and_says_so(monkeypatch, capsys):
    _offline(monkeypatch)
    _, info = W.load_backbone("auto")
    assert info.source == "random" and "random" in info.fallback
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "Downloading:" not in out  # no announcement above the fallback's banner
    tried = []
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", lambda *a, **k: tried.append(1))
    _, again = W.load_backbone("auto")  # a second transfer run in the same kernel: no second attempt
    assert again == info and tried == [] and capsys.readouterr().out == ""


def test_a_fallback_banner_shows_once_per_kernel(capsys):
    from common.runtime import loud
    loud("something", "what to do")
    loud("something", "what to do")  # a second run in the same notebook takes the same fallback
    loud("something else", "what to do")
    out = capsys.readouterr().out
    assert out == "!! FALLBACK: something\n!! what to do\n!! FALLBACK: something else\n!! what to do\n"
    with pytest.raises(ValueError, match="two lines"):
        loud("what is missing\nand more", "what to do")


def test_the_random_fallback_is_the_same_network_on_the_first_call_and_later(monkeypatch, tmp_path):
    """Offline, weights="auto" falls back to random weights. The first call in a kernel tries the download, the
    later ones don't: both must draw the same network after the same seed, or the engines stop agreeing."""
    from common.model import resnet as M
    from common.model import weights as W

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    W._UNAVAILABLE.clear()
    torch.manual_seed(0)
    first, info = M.build_model(3, "transfer", "auto", weights_dir=tmp_path / "weights")
    torch.manual_seed(0)
    later, _ = M.build_model(3, "transfer", "auto", weights_dir=tmp_path / "weights")
    assert info.fallback and "imagenet" in W._UNAVAILABLE
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), later.state_dict().values()))
