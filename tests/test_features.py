"""Feature extraction done fast: the head trained on features computed once matches head-only training done
the slow way (same initial weights, same batches, no augmentation, the same dropout masks)."""
import pytest
import torch

from common.config import load_config
from common.data.datasets import prepare_data
from common.train.features import cache_features, epoch_batches, head_epoch, head_evaluate, without_augmentation
from common.train.run import start_run


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    base = tmp_path_factory.mktemp("features")
    cfg = load_config(budget="smoke", dataset="demo", weights="random", image_size=32, batch_size=8, epochs=2,
                      demo_images_per_class=12, trainable="head", progress=False, data_dir=base / "data",
                      runs_dir=base / "runs")
    return cfg, prepare_data(cfg)


def slow_epoch(run, dataset, epoch):
    """Head-only training the usual way: every image through the whole (frozen) network, every epoch."""
    run.model.train()
    losses = []
    for batch in epoch_batches(run.loaders["train"], epoch):
        images = torch.stack([dataset[int(i)][0] for i in batch])
        labels = torch.tensor([dataset.labels[int(i)] for i in batch])
        run.optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(run.model(images), labels)
        loss.backward()
        run.optimizer.step()
        losses.append(loss.item() * len(labels))
    return sum(losses) / sum(len(b) for b in epoch_batches(run.loaders["train"], epoch))


def test_cached_features_train_the_head_as_the_slow_way_does(setting):
    cfg, data = setting
    fast = start_run(cfg, data, engine="plain", init="transfer")
    assert fast.model.trainable_blocks == ("head",) and fast.model.dropout.p > 0  # dropout on: masks must match
    cached = cache_features(fast)
    assert cached["train"][0].shape == (len(data.datasets["train"]), 2048)
    fast_losses = [head_epoch(fast, *cached["train"], epoch)[0] for epoch in range(cfg.epochs)]

    slow = start_run(cfg, data, engine="plain", init="transfer")  # the same seed: the same initial weights
    train = without_augmentation(data)["train"]
    slow_losses = [slow_epoch(slow, train, epoch) for epoch in range(cfg.epochs)]

    assert fast_losses == pytest.approx(slow_losses, rel=1e-5)
    assert fast_losses[-1] != fast_losses[0]  # the head learned something
    for a, b in zip(fast.model.classifier.parameters(), slow.model.classifier.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(fast.model.trunk.state_dict().values(),
                                                 slow.model.trunk.state_dict().values()))
    val_loss, val_acc = head_evaluate(fast, *cached["validation"])
    slow.model.eval()
    with torch.inference_mode():
        validation = without_augmentation(data)["validation"]
        images = torch.stack([validation[i][0] for i in range(len(validation))])  # indices wrap: no plain for loop
        labels = torch.tensor(validation.labels)
        logits = slow.model(images)
    assert val_loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    assert val_acc == pytest.approx((logits.argmax(1) == labels).float().mean().item())


def test_only_a_head_only_model_may_use_cached_features(setting):
    cfg, data = setting
    run = start_run(load_config(**{**cfg.as_dict(), "trainable": "layer4"}), data, engine="plain", init="transfer")
    with pytest.raises(ValueError, match="trainable='head'"):
        cache_features(run)
