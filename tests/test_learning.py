"""Learning happens: a few steps on the demo data lower the loss."""
import torch

from common.config import load_config
from common.data.datasets import prepare_data
from common.runtime import seed_everything
from common.train.run import make_optimizer, start_run


def test_a_few_steps_on_demo_data_lower_the_loss(tmp_path):
    cfg = load_config(budget="smoke", dataset="demo", weights="random", image_size=32, batch_size=24,
                      demo_images_per_class=12, data_dir=tmp_path / "data", runs_dir=tmp_path / "runs")
    data = prepare_data(cfg)
    run = start_run(cfg, data, engine="plain", init="scratch")
    x, y = next(iter(run.loaders["train"]))
    criterion = torch.nn.CrossEntropyLoss()
    run.model.train()
    losses = []
    for _ in range(12):
        run.optimizer.zero_grad(set_to_none=True)
        loss = criterion(run.model(x), y)
        loss.backward()
        run.optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_optimizer_only_holds_trainable_parameters(tmp_path):
    from common.model.resnet import build_model
    seed_everything(0)
    model, _ = build_model(4, "transfer", weights="random")
    opt = make_optimizer(model, load_config(budget="smoke"))
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
