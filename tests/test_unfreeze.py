"""How much trains: each mode trains exactly its blocks, unfreezing mid-run works, the optimizer's groups and
schedules are what they say."""
import copy

import pytest
import torch
from torchvision.models import resnet50

from common.model import resnet as M
from common.config import load_config
from common.train.run import make_optimizer, make_scheduler

BLOCK_OF_KEY = {"trunk.0": "stem", "trunk.1": "stem", "trunk.4": "layer1", "trunk.5": "layer2", "trunk.6": "layer3",
                "layer4": "layer4", "classifier": "head"}  # the head block: pool, dropout and the classifier


def block_of(key: str) -> str:
    return next(block for prefix, block in BLOCK_OF_KEY.items() if key.startswith(prefix + "."))


def tiny_cfg(**changes):
    return load_config(budget="smoke", **changes)


def make(mode: str, seed: int = 0) -> M.TransferResNet:
    torch.manual_seed(seed)
    return M.TransferResNet(resnet50(weights=None), num_classes=3, dropout=0.0, trainable=mode)


def steps(model, optimizer, n=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(n):
        x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.tensor([0, 1, 2, 0])
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("mode", M.TRAINABLE)
def test_each_mode_trains_exactly_its_blocks_with_one_group_per_block(mode):
    model = make(mode)
    named = M.trainable_blocks(mode)
    assert model.trainable_blocks == named and named[-1] == "head"
    cfg = tiny_cfg(block_lr_ratio=0.5)
    optimizer = make_optimizer(model, cfg)
    # one group per trainable block, from the head down, each at half the rate of the block above it
    assert [g["name"] for g in optimizer.param_groups] == list(reversed(named))
    params = model.block_parameters()
    for i, group in enumerate(optimizer.param_groups):
        assert group["params"] == params[group["name"]] and group["lr"] == pytest.approx(cfg.lr * 0.5 ** i)
    held = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters() if p.requires_grad) and len(set(held)) == len(held)

    before = copy.deepcopy(model.state_dict())
    steps(model, optimizer)
    after = model.state_dict()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (block_of(name) in named), name
    for block in M.BLOCKS:
        keys = [k for k in before if block_of(k) == block]
        same = all(torch.equal(before[k], after[k]) for k in keys)
        if block in named:
            weights = [k for k in keys if k.endswith("weight")]
            assert all(not torch.equal(before[k], after[k]) for k in weights), block  # every layer moved
            stats = [k for k in keys if k.endswith("running_mean")]
            assert all(not torch.equal(before[k], after[k]) for k in stats), block  # trainable BatchNorm updates
        else:
            assert same, block  # weights and BatchNorm statistics bit-identical


def test_a_ratio_of_one_is_todays_optimizer_exactly():
    model = make("layer4")
    optimizer = make_optimizer(model, tiny_cfg())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["params"] == trainable
    twin = copy.deepcopy(model)
    today = torch.optim.Adam([p for p in twin.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    steps(model, optimizer)
    steps(twin, today)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


def test_frozen_blocks_run_without_autograd_and_batchnorm_stays_in_eval():
    model = make("layer3")
    seen = {}
    hooks = [model.trunk[i].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.requires_grad))
             for i, n in ((5, "layer2"), (6, "layer3"))]
    model.train()
    model(torch.randn(2, 3, 32, 32))
    [h.remove() for h in hooks]
    assert seen == {"layer2": False, "layer3": True}
    assert not model.trunk[5].training and not model.trunk[1].training and model.trunk[6].training


def test_unfreezing_mid_run_makes_the_new_blocks_train():
    model, cfg = make("head"), tiny_cfg(block_lr_ratio=0.1)
    steps(model, make_optimizer(model, cfg), n=1)
    before = copy.deepcopy(model.state_dict())
    assert model.unfreeze("layer3") == ["layer3", "layer4"]
    optimizer = make_optimizer(model, cfg)  # as enter_stage does: a new optimizer over what trains now
    assert model.trunk[6].training and model.layer4.training and not model.trunk[5].training
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [
        ("head", cfg.lr), ("layer4", pytest.approx(cfg.lr * 0.1)), ("layer3", pytest.approx(cfg.lr * 0.01))]
    steps(model, optimizer, n=1, seed=2)
    after = model.state_dict()
    for k in before:
        moved = not torch.equal(before[k], after[k])
        if block_of(k) in ("layer3", "layer4") and k.endswith(("weight", "running_mean")):
            assert moved, k
        elif block_of(k) in ("stem", "layer1", "layer2"):
            assert not moved, k


def test_requires_grad_on_a_frozen_block_is_an_error_not_a_silent_no_op():
    model = make("layer4")
    model.trunk[6].requires_grad_(True)  # today's trap: layer3 would have run without autograd
    with pytest.raises(M.FrozenBlockError, match=r"unfreeze\('<block>'\)"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="towards the input"):
        make("layer3").unfreeze("layer4")
    with pytest.raises(ValueError, match="stem, layer1"):
        make("head").unfreeze("layer5")


def test_every_mode_has_one_state_dict_layout_and_the_recipe_is_the_default():
    default = M.TransferResNet(resnet50(weights=None), 3)
    assert default.trainable_blocks == ("layer4", "head")
    assert list(default.state_dict()) == list(make("all").state_dict()) == list(make("head").state_dict())
    assert M.resolve_mode("transfer") == "layer4" and M.resolve_mode("scratch", "layer4") == "scratch"
    assert M.resolve_mode("transfer", "head") == "head"
    with pytest.raises(ValueError, match="trainable='layer3'"):  # init says how weights start, not how much trains
        M.resolve_mode("layer3")
    with pytest.raises(ValueError, match="head, layer4, layer3, all, scratch"):
        M.resolve_mode("transfer", "layer2")


def test_onecycle_steps_per_batch_exactly_like_torch():
    cfg = tiny_cfg(schedule="onecycle", epochs=3, block_lr_ratio=0.5)
    model = make("layer3")
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=4)
    reference_opt = torch.optim.Adam([dict(params=[torch.zeros(1, requires_grad=True)], lr=g["lr"])
                                      for g in optimizer.param_groups])
    reference = torch.optim.lr_scheduler.OneCycleLR(reference_opt, max_lr=[cfg.lr, cfg.lr / 2, cfg.lr / 4],
                                                    total_steps=12)
    ours, theirs = [], []
    for _ in range(12):
        ours.append([g["lr"] for g in optimizer.param_groups])
        theirs.append([g["lr"] for g in reference_opt.param_groups])
        optimizer.step(), scheduler.step(), reference_opt.step(), reference.step()
    assert ours == theirs and 0.99 * cfg.lr < max(r[0] for r in ours) <= cfg.lr  # the head peaks at cfg.lr
    with pytest.raises(ValueError, match="steps_per_epoch"):
        make_scheduler(optimizer, cfg)
    cosine = tiny_cfg(schedule="cosine")
    assert isinstance(make_scheduler(make_optimizer(model, cosine), cosine), torch.optim.lr_scheduler.CosineAnnealingLR)
    constant = make_scheduler(make_optimizer(model, tiny_cfg()), tiny_cfg())  # the recipe's: the rate never moves
    for _ in range(3):
        constant.optimizer.step(), constant.step()
    assert [g["lr"] for g in constant.optimizer.param_groups] == [tiny_cfg().lr]


@pytest.mark.parametrize("setting, message", [(dict(trainable="layer2"), "TL_TRAINABLE"),
                                              (dict(trainable="scratch"), "TL_TRAINABLE"),
                                              (dict(schedule="linear"), "TL_SCHEDULE"),
                                              (dict(block_lr_ratio=0.0), "TL_BLOCK_LR_RATIO"),
                                              (dict(clip_grad_norm=-1.0), "TL_CLIP_GRAD_NORM")])
def test_wrong_settings_give_a_clear_error(setting, message):
    with pytest.raises(ValueError, match=message):
        tiny_cfg(**setting)


def test_records_say_what_trained():
    from conftest import make_meta

    from common.results.records import RunMeta
    meta = make_meta(trainable="layer3", block_lrs={"layer3": 1e-5, "layer4": 1e-4, "head": 1e-3}, schedule="onecycle")
    again = RunMeta.from_json(meta.to_json(), source=None)
    assert again.trainable == "layer3" and again.block_lrs["layer3"] == 1e-5 and again.schedule == "onecycle"
    assert make_meta(trainable="head", weights_source="random").random_transfer
    from common.results.compare import trains
    assert trains(meta) == "layer3, layer4, head"  # every block that trained, not only where the boundary is
    assert trains(make_meta(init="scratch")) == "everything, from random weights"
    two_stages = [dict(number=1, first_epoch=1, epochs=1, trainable="head", lr=1e-3),
                  dict(number=2, first_epoch=2, epochs=2, trainable="all", lr=5e-4)]
    assert trains(make_meta(trainable="all", stages=two_stages)) == "head, then everything"


def test_the_tradeoff_figure_names_every_run_without_a_name_on_another_name_or_another_runs_point():
    """05's scatter, with runs bunched as an offline run bunches them (same accuracy, close or equal costs)."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    from common.results.plots import plot_mode_tradeoffs
    table = pd.DataFrame({"trainable_parameters": [12294, 12294, 14977030, 22075398, 23520326, 23520326, 23520326],
                          "median_epoch_seconds": [0.024, 11.7, 10.2, 13.6, 20.6, 18.1, 19.0],
                          "test_acc": [0.181, 0.167, 0.167, 0.417, 0.611, 0.194, 0.611]},
                         index=["head-cached", "head", "layer4", "layer3", "all", "two-stage", "scratch"])
    fig = plot_mode_tradeoffs(table, chance=1 / 6)
    renderer = fig.canvas.get_renderer()
    for ax, column in zip(fig.axes[:2], ("trainable_parameters", "median_epoch_seconds")):
        labels = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
        assert sorted(n for label in labels for n in label.split(", ")) == sorted(table.index)  # each run named once
        boxes = list(labels.items())
        assert not [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1:] if box.overlaps(other)]
        points = dict(zip(table.index, ax.transData.transform(np.c_[table[column], table["test_acc"]])))
        on_others = [(label, run) for label, box in labels.items() for run, (x, y) in points.items()
                     if run not in label.split(", ") and box.x0 - 4 < x < box.x1 + 4 and box.y0 - 4 < y < box.y1 + 4]
        assert not on_others, on_others
    plt.close(fig)


def test_speed_against_scratch_reads_as_faster_or_slower():
    from common.results.wording import _faster
    assert [_faster(r) for r in (2.13, 1 / 1.3, 1.1, 1 / 1.1, 14.6, 818.3)] == [
        "2.1x faster", "1.3x slower", "about as fast", "about as fast", "15x faster", "820x faster"]


def test_offline_the_all_mode_is_scratchs_run_trained_once(executed_suite, tiny_base):
    """Without ImageNet weights, fine-tuning everything is training from scratch, step for step: 05 reads notebook
    01's scratch run back as 'all' instead of training it again, and says so."""
    from common.results.records import RunRecord
    nb = executed_suite["05_how_much_to_unfreeze.ipynb"]
    text = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "'all' is scratch's run here, trained once and shown under both names" in text
    assert not RunRecord(tiny_base / "runs" / "unfreeze", "demo", "plain", "all").folder.exists()
    assert "all epoch" not in text  # no epoch line of its own
