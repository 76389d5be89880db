"""Using a trained model: reload, predict on files, Grad-CAM, box mass, export, upload widget."""
import datetime as dt
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from common.use.explain import box_mass, box_to_input, gradcam
from common.use.predict import FOLDER_RESULTS, load_model, predict_images, problems
from common.use.reproduce import EXACT, Reproduction, ReproductionCheck, check_reproduction, reproduce_test
from common.use.show import upload_handler


@pytest.fixture(scope="module")
def transfer(engine_runs):
    """The plain loop's transfer model, back from its run record."""
    return load_model(engine_runs[("plain", "transfer")])


@pytest.mark.parametrize("key", [("plain", "transfer"), ("plain", "scratch"), ("lightning", "transfer")])
def test_reloaded_model_reproduces_the_recorded_predictions(engine_runs, key):
    run = engine_runs[key]
    model, info = load_model(run)
    assert info.class_names == run.meta.class_names and (model.trainable_blocks == ("layer4", "head")) == (key[1] == "transfer")
    plan = Reproduction.plan(run.meta, torch.device("cpu"))
    check = check_reproduction(run.predictions, reproduce_test(model, info, run.predictions, plan), plan)
    assert plan.tolerance == EXACT and check.ok and check.max_prob_diff <= 1e-6, check.describe()


def test_the_reproduction_check_fails_for_other_weights(engine_runs):
    run = engine_runs[("plain", "transfer")]
    model, info = load_model(run)
    with torch.no_grad():
        model.classifier.weight.add_(0.05 * torch.randn_like(model.classifier.weight))
    plan = Reproduction.plan(run.meta, torch.device("cpu"))
    check = check_reproduction(run.predictions, reproduce_test(model, info, run.predictions, plan), plan)
    assert not check.ok and "NOT reproduced" in check.describe()


@pytest.mark.parametrize("made, precision, here, expected", [
    ("cpu", "fp32", "cpu", ("cpu", "fp32", EXACT)),
    ("cpu", "bf16", "cuda", ("cpu", "bf16", EXACT)),  # bf16 autocast runs on any CPU: like with like
    ("cuda:0", "fp16", "cuda", ("cuda", "fp16", 0.005)),
    ("cuda:0", "bf16", "cpu", ("cpu", "fp32", 0.05)),  # a Colab record reloaded on a laptop
    ("cuda:1", "fp32", "cpu", ("cpu", "fp32", 0.01)),  # TF32 convolutions on the GPU
])
def test_a_record_is_reproduced_like_with_like_where_this_machine_can(made, precision, here, expected):
    from conftest import make_meta
    plan = Reproduction.plan(make_meta(device=made, precision=precision), torch.device(here))
    assert (plan.device.type, plan.precision, plan.tolerance) == expected
    assert precision in plan.reason


def _ranked(rows):
    """A predictions table from rows of (class, probability) pairs, best first."""
    table = {"pred": [r[0][0] for r in rows]}
    for i in range(len(rows[0])):
        table[f"top{i + 1}_class"] = [r[i][0] for r in rows]
        table[f"top{i + 1}_prob"] = [r[i][1] for r in rows]
    return pd.DataFrame(table)


def test_reduced_precision_may_swap_a_near_tie_and_nothing_more():
    plan = Reproduction(torch.device("cpu"), "bf16", 0.05, "test")
    recorded = _ranked([[("a", 0.51), ("b", 0.49), ("c", 0.0)], [("b", 0.9), ("a", 0.06), ("c", 0.04)]])
    near_tie = _ranked([[("b", 0.52), ("a", 0.48), ("c", 0.0)], [("b", 0.9), ("c", 0.06), ("a", 0.04)]])
    check = check_reproduction(recorded, near_tie, plan)
    assert check == ReproductionCheck(plan, 2, pytest.approx(0.01), 0, 2) and check.ok
    far = _ranked([[("a", 0.51), ("b", 0.49), ("c", 0.0)], [("a", 0.9), ("b", 0.06), ("c", 0.04)]])
    assert check_reproduction(recorded, far, plan).changed == 1 and not check_reproduction(recorded, far, plan).ok
    drifted = _ranked([[("a", 0.6), ("b", 0.4), ("c", 0.0)], [("b", 0.9), ("a", 0.06), ("c", 0.04)]])
    assert not check_reproduction(recorded, drifted, plan).ok


def test_the_exact_check_sees_two_lower_classes_trade_places():
    """Probabilities compared rank by rank alone would not see b and c trade 0.26 and 0.24."""
    plan = Reproduction(torch.device("cpu"), "fp32", EXACT, "test")
    recorded, again = _ranked([[("a", 0.5), ("b", 0.26), ("c", 0.24)]]), _ranked([[("a", 0.5), ("c", 0.26), ("b", 0.24)]])
    assert check_reproduction(recorded, again, plan).changed == 1


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def test_a_folder_with_a_corrupt_file_and_a_grayscale_png(transfer, tmp_path):
    model, info = transfer
    good = sorted(info.dataset_root.rglob("*.jpg"))[:2]
    for p in good:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    Image.open(good[0]).convert("L").save(tmp_path / "gray.png")
    (tmp_path / "corrupt.jpg").write_bytes(good[0].read_bytes()[:40])  # a truncated download
    table = predict_images(model, info, tmp_path, k=3)
    ok = table[table["problem"] == ""]
    assert sorted(ok["file"].map(lambda f: f.rsplit("/", 1)[-1])) == sorted([p.name for p in good] + ["gray.png"])
    assert ok["pred"].isin(info.class_names).all() and np.allclose(ok["top1_prob"] >= ok["top2_prob"], True)
    assert [line.split(":")[0] for line in problems(table)] == ["corrupt.jpg"]
    assert "converted to RGB" in table.loc[table["file"].str.endswith("gray.png"), "note"].item()
    written = (tmp_path / FOLDER_RESULTS).read_text()
    assert "corrupt.jpg" in written and "gray.png" in written
    again = predict_images(model, info, tmp_path, k=3)  # the CSV it wrote is not mistaken for an input
    assert len(again) == len(table)


def test_flip_tta_averages_the_image_and_its_mirror(transfer):
    model, info = transfer
    path = sorted(info.dataset_root.rglob("*.jpg"))[0]
    mirrored = path.parent.parent / "mirror-test.png"
    try:
        Image.open(path).transpose(Image.FLIP_LEFT_RIGHT).save(mirrored)
        plain, tta, flipped = (predict_images(model, info, p, k=len(info.class_names), tta=t)
                               for p, t in ((path, False), (path, True), (mirrored, False)))
    finally:
        mirrored.unlink()
    probs = lambda t: t.filter(like="_prob").to_numpy()[0]  # noqa: E731
    assert abs(probs(tta)[0] - (probs(plain)[0] + probs(flipped)[0]) / 2) < 0.02  # up to JPEG/crop rounding


def test_the_tta_sentences_say_how_many_answers_the_mirror_changed_and_whether_that_is_more_than_one_image():
    from common.results.wording import describe_tta
    table = pd.DataFrame({"test images": [72, 72, 50], "predictions changed": [0, 3, 4], "change (points)": [0.0, 100 / 72, -6.0]},
                         index=["transfer", "scratch", "other"])
    assert describe_tta(table) == [
        "transfer: the mirrored images changed none of the 72 answers, so accuracy cannot move.",
        "scratch: the mirrored images changed 3 of the 72 answers; accuracy +1.4 points, within one test image "
        "(1.4 points): no measurable effect.",
        "other: the mirrored images changed 4 of the 50 answers; accuracy -6.0 points, it hurt here."]


def test_upload_callback_classifies_uploads_without_a_browser(transfer, tmp_path):
    model, info = transfer
    shown = []
    handler = upload_handler(model, info, k=2, folder=tmp_path, show=shown.append)
    assert handler({"new": ()}) is None and shown == []  # nothing uploaded: nothing happens
    photo = _png(Image.open(sorted(info.dataset_root.rglob("*.jpg"))[0]))
    value = ({"name": "photo.png", "type": "image/png", "size": len(photo), "content": memoryview(photo)},
             {"name": "oops.jpg", "type": "image/jpeg", "size": 3, "content": memoryview(b"abc")})
    table = handler({"new": value})
    assert shown and shown[0] is table
    assert table.loc[table["file"].str.endswith("photo.png"), "pred"].isin(info.class_names).all()
    assert [line.split(":")[0] for line in problems(table)] == ["oops.jpg"]


def test_upload_widget_is_wired_to_the_callback(transfer, tmp_path, capsys):
    from common.use.show import upload_widget
    model, info = transfer
    box = upload_widget(model, info, k=2, folder=tmp_path)
    upload, output = box.children
    photo = _png(Image.open(sorted(info.dataset_root.rglob("*.jpg"))[0]))
    upload.value = ({"name": "photo.png", "type": "image/png", "size": len(photo), "content": memoryview(photo),
                     "last_modified": dt.datetime.now(dt.timezone.utc)},)  # as from a browser; observe() fires the callback
    assert (tmp_path / "photo.png").is_file()


# ---------------------------------------------------------------- Grad-CAM wiring


class Controlled(nn.Module):
    """A model whose ``layer4`` output is known: trunk copies channels 0 and 1 (without autograd, like the
    frozen trunk), layer4 halves the resolution and adds a blob to channel 0 at layer4 cell (2, 0); the
    head scores class c by channel c's mean."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Conv2d(3, 2, 1, bias=False)
        self.trunk.weight.data = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1)
        self.trunk.requires_grad_(False)
        self.layer4 = nn.Sequential(nn.AvgPool2d(2), _AddBlob())
        self.head = nn.Linear(2, 2, bias=False)
        self.head.weight.data = torch.eye(2)

    def forward(self, x):
        with torch.no_grad():
            x = self.trunk(x)
        return self.head(self.layer4(x).mean((2, 3)))


class _AddBlob(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))  # layer4 trains, so its output has gradients

    def forward(self, x):
        blob = torch.zeros_like(x)
        blob[:, 0, 2, 0] = 1.0
        return x * self.scale + blob


TOP_LEFT, LAYER4_BLOB, BOTTOM_RIGHT = (0, 0, 2, 2), (0, 4, 2, 6), (6, 6, 8, 8)  # (x0, y0, x1, y1) on 8 x 8


def _scene() -> torch.Tensor:
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, 0:2, 0:2] = 1.0  # class 0's object, top left
    x[0, 1, 6:8, 6:8] = 1.0  # class 1's object, bottom right
    return x


def _explains_class0_at_layer4(cam: torch.Tensor) -> bool:
    """Class 0 at layer4 lights up its object (top left) and layer4's own blob, nothing of class 1."""
    mass = {name: box_mass(cam[0], box)[0] for name, box in
            dict(object=TOP_LEFT, blob=LAYER4_BLOB, other=BOTTOM_RIGHT).items()}
    return mass["object"] > 0.2 and mass["blob"] > 0.2 and mass["other"] < 0.01


def test_gradcam_is_for_the_right_class_layer_and_orientation():
    model, x = Controlled().train(), _scene()
    cam = gradcam(model, x, target=0)
    assert cam.shape == (1, 8, 8) and float(cam.max()) == pytest.approx(1.0) and not model.training
    assert _explains_class0_at_layer4(cam)
    # Each mistake the wiring could make gives a map the check above rejects.
    assert not _explains_class0_at_layer4(cam.flip(-1))  # flipped left-right
    assert not _explains_class0_at_layer4(cam.flip(-2))  # flipped upside down
    assert not _explains_class0_at_layer4(gradcam(model, x, target=1))  # the wrong class
    wrong_layer = gradcam(model, x, target=0, layer=model.layer4[0])  # before layer4's own contribution
    assert not _explains_class0_at_layer4(wrong_layer)


def test_gradcam_in_chunks_is_gradcam_of_the_whole_batch():
    model, x = Controlled(), torch.cat([_scene(), _scene().flip(-1), _scene().flip(-2)])
    whole = gradcam(model, x, target=[0, 1, 0])
    assert torch.allclose(gradcam(model, x, target=[0, 1, 0], batch_size=2), whole)
    assert _explains_class0_at_layer4(whole[:1])


def test_gradcam_runs_on_the_frozen_transfer_model(transfer):
    model, info = transfer
    torch.manual_seed(0)
    x = torch.randn(2, 3, info.image_size, info.image_size)
    with torch.no_grad():  # the class with the most evidence from the features has a map that is not blank
        target = (model.eval()(x) - model.classifier.bias).argmax(1).tolist()
        cam = gradcam(model.train(), x, target=target)  # even when called from a no-grad context
    assert cam.shape == (2, info.image_size, info.image_size) and not model.training
    # Gradients reached layer4 (without them Captum raises), and each map is scaled to a peak of 1.
    assert not cam.isnan().any() and float(cam.min()) >= 0
    assert cam.flatten(1).amax(1).tolist() == pytest.approx([1.0, 1.0])


# ---------------------------------------------------------------- box mass


def test_the_gradcam_grid_keeps_its_title_within_the_figure_and_its_colour_bar_under_the_grid():
    import matplotlib.pyplot as plt
    from common.use.explain import plot_gradcam
    n = 4
    titles = {"input": ["true: tomato"] * n, "transfer": ["tomato 100% right"] * n, "scratch": ["pumpkin 97% wrong"] * n}
    fig = plot_gradcam(np.random.default_rng(0).random((n, 32, 32, 3)), {k: torch.rand(n, 32, 32) for k in ("transfer", "scratch")},
                       titles, [(4, 4, 20, 20)] * n, caption="dataset: demo",
                       title="Grad-CAM at layer4, plain: right predictions of the transfer model, then wrong ones")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert fig._suptitle.get_window_extent(renderer).width <= fig.bbox.width  # no title past the edges
    bar = fig.axes[-1]
    grid_bottom = min(ax.get_position().y0 for ax in fig.axes[:-1])
    assert bar.get_position().y1 < grid_bottom and bar.get_position().width < 0.5  # under the grid, not a tall side bar
    assert all(ax.title.get_fontsize() >= 8 for ax in fig.axes[:-1])
    plt.close(fig)


def test_box_mass_on_hand_made_heatmaps():
    box = (2, 4, 6, 8)  # 4 x 4 of a 10 x 10 map: 16 % of the area
    inside = np.zeros((10, 10))
    inside[4:8, 2:6] = 1.0
    assert box_mass(inside, box) == (1.0, pytest.approx(0.16))
    assert box_mass(np.ones((10, 10)), box) == (pytest.approx(0.16), pytest.approx(0.16))  # uniform: chance
    half = np.zeros((10, 10))
    half[4, 2], half[0, 0] = 3.0, 3.0
    assert box_mass(half, box)[0] == pytest.approx(0.5)
    assert box_mass(inside.T, box)[0] == pytest.approx(0.25)  # transposed: x and y are not swapped
    assert np.isnan(box_mass(np.zeros((10, 10)), box)[0])


def test_boxes_follow_the_evaluation_transform():
    from common.data.datasets import build_transforms
    img = np.zeros((60, 80, 3), dtype=np.uint8)  # landscape: resize by height, crop the sides
    img[20:50, 10:40] = 255  # x 10..40, y 20..50
    size = 28
    seen = build_transforms(size, [0, 0, 0], [1, 1, 1])["test"].decode(Image.fromarray(img))[0].numpy() > 127
    ys, xs = np.nonzero(seen)
    x0, y0, x1, y1 = box_to_input((10, 20, 40, 50), (80, 60), size)
    assert abs(x0 - xs.min()) <= 1 and abs(x1 - (xs.max() + 1)) <= 1
    assert abs(y0 - ys.min()) <= 1 and abs(y1 - (ys.max() + 1)) <= 1
    assert box_to_input((0, 0, 80, 60), (80, 60), size) == (0, 0, size, size)  # clipped to the crop


def test_demo_boxes_are_recorded(flat_root):
    from common.data.demo import read_boxes
    boxes = read_boxes(flat_root)
    files = sorted(p.relative_to(flat_root).as_posix() for p in flat_root.rglob("*.jpg"))
    assert sorted(boxes) == files
    assert all(0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48 for x0, y0, x1, y1 in boxes.values())


# ---------------------------------------------------------------- export


def test_onnx_and_exported_program_match_eager(transfer, tmp_path):
    from common.use.export import export_all, latency_table
    model, info = transfer
    x = torch.randn(5, 3, info.image_size, info.image_size)
    from common.results.records import RunRecord
    record = RunRecord(tmp_path, "demo", "plain", "transfer")
    record.folder.mkdir(parents=True)
    out = export_all(model, info.image_size, record, x)
    assert out["paths"]["onnx"].is_file() and out["paths"]["program"].is_file()
    assert set(out["parity"]) == {"torch.export", "onnxruntime"}
    assert max(out["parity"].values()) <= 1e-4, out["parity"]
    table = latency_table(model, out["session"], info.image_size, batches=(1, 3), repeats=1)
    assert len(table) == 4 and (table["ms_per_batch"] > 0).all()


def test_the_box_check_sentences_follow_the_numbers():
    from conftest import make_meta

    from common.use.explain import BoxCheck, describe_box_mass
    check = lambda ratio, acc: BoxCheck(images=10, mass_in_box=0.3 * ratio, box_area=0.3, on_target=0.5, test_acc=acc)
    metas = {"transfer": make_meta(weights_source="random"), "scratch": make_meta(init="scratch", weights_source="random")}
    lines = describe_box_mass({"transfer": check(1.18, 0.8), "scratch": check(1.0, 0.9)}, metas)
    assert "somewhat more on the object" in lines[0] and "about as much on the object" in lines[1]
    assert "random weights were used" in lines[2] and not any("near chance" in line for line in lines)
    assert "near chance" in describe_box_mass({"scratch": check(2.0, 0.5)}, {"scratch": metas["scratch"]})[-1]
    assert "clearly more" in describe_box_mass({"scratch": check(2.0, 0.9)}, {"scratch": metas["scratch"]})[0]


def test_the_box_check_averages_each_image_against_its_own_box(monkeypatch):
    from common.use import explain
    inside, uniform = np.zeros((10, 10)), np.ones((10, 10))
    inside[2:6, 2:6] = 1
    monkeypatch.setattr(explain, "gradcam", lambda model, images, targets: torch.tensor(np.stack([inside, uniform])))
    check = explain.box_check(None, torch.zeros(2, 3, 10, 10), [0, 0], [(2, 2, 6, 6), (0, 0, 5, 10)], test_acc=0.75)
    assert (check.images, check.test_acc) == (2, 0.75)
    assert check.mass_in_box == pytest.approx((1.0 + 0.5) / 2) and check.box_area == pytest.approx((0.16 + 0.5) / 2)
    assert check.on_target == 0.5  # the first looks inside its box, the uniform one is only even
    assert check.ratio == pytest.approx(0.75 / 0.33)
    table = explain.box_check_table({"transfer": check})
    assert table.loc["transfer", "heatmap in box"] == "75%" and table.loc["transfer", "test images"] == 2


def test_a_bf16_record_from_an_a100_is_not_recomputed_in_emulated_bf16_on_a_t4(monkeypatch):
    from conftest import make_meta

    from common import runtime
    from common.use import reproduce
    monkeypatch.setattr(reproduce, "visible_gpus", lambda: runtime.Gpus(("Tesla T4",), ((7, 5),)))
    plan = Reproduction.plan(make_meta(device="cuda:0", precision="bf16"), torch.device("cuda"))
    assert (plan.device.type, plan.precision, plan.tolerance) == ("cpu", "fp32", 0.05)


def test_each_answer_under_the_upload_button_names_the_file_its_answer_and_top_classes():
    import pandas as pd

    from common.use.show import ANSWER_PREFIX, describe_answers
    table = pd.DataFrame({"file": ["/x/a.jpg", "/x/b.txt"], "pred": ["carrot", None], "answer": ["none of these", None],
                          "top1_class": ["carrot", None], "top1_prob": [0.41, None], "top2_class": ["tomato", None],
                          "top2_prob": [0.3, None], "problem": ["", "not an image file (skipped)"]})
    assert describe_answers(table, k=2) == [f"{ANSWER_PREFIX} a.jpg: none of these (carrot 41%, tomato 30%)"]


def test_no_box_check_key_is_spelled_outside_its_type():
    """The box check is a typed result (explain.BoxCheck); its table's labels live in explain.py alone."""
    import re
    root = Path(__file__).resolve().parents[1]
    labels = ("heatmap in box", "box's share of image", "ratio (1", "images looking more inside", "mass_in_box\"")
    places = [*root.glob("common/**/*.py"), *root.glob("notebooks/*.ipynb"), *root.glob("tests/*.py")]
    spelled = sorted({p.name for p in places for label in labels if re.search(re.escape(label), p.read_text())
                      and p.name not in ("explain.py", Path(__file__).name)})
    assert spelled == []
