"""The comparison's metrics and figures, on small hand-made run records with known answers."""
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest

from conftest import make_meta

from common.results import compare as C
from common.results import wording as Wd
from common.results import evaluation as E
from common.results import plots as P
from common.results.compare import agreement_table, assert_engines_agree
from common.results.records import EpochRow, RunRecord

CLASSES = ["a", "b", "c"]


def _preds(true, pred, conf=None):
    conf = conf or [0.9] * len(true)
    return pd.DataFrame({"file": [f"{i}.jpg" for i in range(len(true))], "true": true, "pred": pred,
                         "top1_class": pred, "top1_prob": conf,
                         "top2_class": ["a" if p != "a" else "b" for p in pred], "top2_prob": [0.05] * len(true)})


def _history(val_acc, seconds, loss=1.0):
    n = len(val_acc)
    return pd.DataFrame(dict(epoch=range(1, n + 1), stage=[1] * n, train_loss=[loss] * n, train_acc=val_acc, val_loss=[loss] * n,
                             val_acc=val_acc, lr=[1e-3] * n, epoch_seconds=seconds))


def _record(runs_dir, engine, init, history, preds, trainable, **meta):
    """A run record written to disk through the real type, with a plausible meta."""
    record = RunRecord(runs_dir, "toy", engine, init)
    record.write_history([EpochRow(**row) for row in history.to_dict("records")])
    record.write_predictions(preds)
    meta = dict(dict(weights_source="imagenet" if init == "transfer" else "random"), **meta)
    record.write_meta(make_meta(engine=engine, init=init, test_acc=float((preds["true"] == preds["pred"]).mean()),
                                best_epoch=int(history["val_acc"].idxmax()) + 1, parameters=dict(trainable=trainable),
                                **meta))
    return RunRecord(runs_dir, "toy", engine, init)


def test_confusion_counts_and_row_normalisation():
    p = _preds(["a", "a", "a", "b", "b", "c"], ["a", "a", "b", "b", "b", "a"])
    counts = E.confusion(p["true"], p["pred"], CLASSES, normalize=False)
    assert counts.loc["a"].tolist() == [2, 1, 0] and counts.loc["b"].tolist() == [0, 2, 0]
    assert counts.loc["c"].tolist() == [1, 0, 0]
    norm = E.confusion(p["true"], p["pred"], CLASSES)
    assert norm.loc["a", "a"] == pytest.approx(2 / 3) and np.allclose(norm.sum(axis=1), 1)


def test_mistakes_are_sorted_by_confidence_and_pairs_counted():
    p = _preds(["a", "b", "c", "c", "a"], ["b", "b", "a", "a", "a"], conf=[0.6, 0.9, 0.7, 0.95, 0.8])
    wrong = E.misclassified(p)
    assert wrong["top1_prob"].tolist() == [0.95, 0.7, 0.6]
    pairs = E.most_confused_pairs(p)
    assert pairs.iloc[0].tolist() == ["c", "a", 2] and pairs.iloc[1].tolist() == ["a", "b", 1]


def test_topk_accuracy_from_predictions():
    p = _preds(["a", "b", "c", "a"], ["a", "a", "c", "b"])
    p["top2_class"] = ["b", "b", "a", "c"]  # rescues row 1 ("b"), not row 3 (true "a", top two "b", "c")
    assert E.prediction_topk_accuracy(p, 1) == 0.5
    assert E.prediction_topk_accuracy(p, 2) == 0.75


def test_time_to_target_sums_epoch_times_until_first_reached():
    h = _history([0.2, 0.5, 0.7, 0.9], [10, 11, 12, 13])
    assert C.time_to_target(h, 0.7) == 33
    assert C.time_to_target(h, 0.1) == 10
    assert C.time_to_target(h, 0.95) is None


def test_summary_speed_ratio_and_per_class_accuracy(tmp_path):
    p = _preds(["a", "b", "c", "c"], ["a", "b", "c", "a"])
    runs = {("plain", "transfer"): _record(tmp_path, "plain", "transfer", _history([0.5, 0.8], [2, 2]), p, 10),
            ("plain", "scratch"): _record(tmp_path, "plain", "scratch", _history([0.3, 0.4], [4, 4]), p, 30)}
    table = C.summary_table(runs)
    assert table.loc[("plain", "transfer"), "best validation accuracy"] == 0.8
    assert table.loc[("plain", "scratch"), "trainable parameters"] == "30"
    assert "test top-5 accuracy" not in table  # 5 of 3 classes: says nothing
    assert C.speed_ratios(runs).iloc[0]["transfer_over_scratch"] == 0.5
    noisy = {("plain", "scratch"): _record(tmp_path, "plain", "scratch", _history([0.3, 0.4, 0.5], [4, 12, 4]), p, 30)}
    assert C.speed_ratios({**runs, **noisy}).iloc[0]["transfer_over_scratch"] == 0.5  # the median ignores one slow epoch
    assert "4.0 to 12.0 s" in Wd.timing_notes(noisy)[0] and Wd.timing_notes(runs) == []
    per_class = E.per_class_accuracy(p, runs[("plain", "transfer")].meta.train_counts())
    assert per_class.loc["c", "accuracy"] == 0.5 and per_class.loc["b", "train_images"] == 7


def test_agreement_flags_the_drifting_engine():
    same = _history([0.5, 0.6], [1, 1])
    drift = same.assign(val_loss=[1.0, 1.1])
    table = agreement_table({("plain", "transfer"): same, ("ignite", "transfer"): same, ("lightning", "transfer"): drift})
    assert table.set_index("engine")["agrees"].to_dict() == {"ignite": True, "lightning": False}
    with pytest.raises(AssertionError, match="lightning / transfer: val_loss"):
        assert_engines_agree({("plain", "transfer"): same, ("lightning", "transfer"): drift})


@pytest.mark.parametrize("n", [15, 101])
def test_confusion_figure_scales_to_many_classes(n, tmp_path):
    names = [f"class_{i:03d}" for i in range(n)]
    cm = pd.DataFrame(np.eye(n), index=names, columns=names)
    fig = P.plot_confusions({"scratch": cm, "transfer": cm}, caption="dataset: toy")
    path = P.save_figure(fig, tmp_path, "cm")
    annotated = [t for t in fig.axes[0].texts]
    assert path.stat().st_size > 0 and (len(annotated) > 0) == (n <= 20)
    assert len(fig.axes[0].get_yticklabels()) == n


def test_figures_carry_the_fallback_label():
    text = P.caption_for(make_meta(dataset="demo", fallbacks=["random weights used"]), make_meta(fallbacks=["demo data"]))
    assert "FALLBACK" in text and "demo" in text and "smoke" in text and "demo data; random weights used" in text
    fig = P.plot_epoch_times({("plain", "scratch"): _history([0.1], [3.0]), ("plain", "transfer"): _history([0.1], [2.0])},
                             caption=text)
    assert text in [t.get_text() for t in fig.texts] and fig._suptitle.get_text().startswith("Epoch wall time")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["plain\ntransfer", "plain\nscratch"]  # one order
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][:2] == ["transfer", "scratch"]


def test_the_history_figure_shows_the_schedule_where_there_is_one_and_chance():
    constant = _history([0.5, 0.8], [2, 2])
    fig = P.plot_history({("plain", "transfer"): constant}, caption="c", chance=1 / 6)
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Accuracy"]  # a constant rate: no panel that says nothing
    scheduled = constant.assign(lr=[1e-3, 5e-4])
    fig = P.plot_history({("plain", "transfer"): constant, ("plain", "variations"): scheduled}, caption="c", chance=1 / 6)
    loss, acc, lr = fig.axes
    assert lr.get_title().startswith("Learning rate") and list(lr.lines[1].get_ydata()) == [1e-3, 5e-4]
    assert lr.get_yscale() == "log"  # rates a decade apart both readable
    same = {(e, "transfer"): constant for e in ("plain", "ignite", "lightning")}  # engines that agree: one curve
    sizes = [(line.get_marker(), line.get_markersize(), line.get_markerfacecolor()) for line in P.plot_history(same).axes[0].lines[::2]]
    assert sizes[0][1] > sizes[1][1] > sizes[2][1] and sizes[0][2] == sizes[1][2] == "none"  # nested: each one shows
    assert any(list(line.get_ydata()) == [1 / 6, 1 / 6] for line in acc.lines)  # the chance line
    assert "chance (0.17)" in [t.get_text() for t in acc.get_legend().get_texts()]


def test_trainable_figure_is_linear_and_shows_what_is_frozen():
    from torchvision.models import resnet50

    from common.model.resnet import TransferResNet, parameter_summary
    summary = parameter_summary(TransferResNet(resnet50(weights=None), 5))
    fig = P.plot_trainable(summary["blocks"], caption="c")
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    bars = {(p.get_y(), p.get_facecolor()[:3]) for p in ax.patches if p.get_width() > 0}
    grey = tuple(np.round(matplotlib.colors.to_rgb(P.FROZEN_COLOUR), 3))
    assert any(tuple(np.round(c, 3)) == grey for _, c in bars)  # the frozen trunk is drawn, not hidden as "1"
    labels = [t.get_text().strip() for t in ax.texts]
    assert not [label for label in labels if "0.00 M" in label]  # a frozen block is "frozen", not "0.00 M trainable"
    assert any(label.endswith("M trainable") for label in labels) and any(label.endswith("M frozen") for label in labels)


def test_the_report_keeps_support_as_counts():
    p = _preds(["a", "a", "b", "c"], ["a", "b", "b", "c"])
    report = E.per_class_report(p, CLASSES)
    assert "accuracy" not in report.index and report["support"].dtype.kind == "i"
    assert report.loc["a", "support"] == 2 and report.loc["macro avg", "support"] == 4


def test_the_text_says_what_random_transfer_cannot_show(tmp_path):
    collapsed = _preds(["a", "b", "c", "a"], ["a", "a", "a", "a"])
    runs = {("plain", "transfer"): _record(tmp_path, "plain", "transfer", _history([0.3, 0.35], [2, 2]), collapsed, 10,
                                           weights_source="random"),
            ("plain", "scratch"): _record(tmp_path, "plain", "scratch", _history([0.5, 0.9], [4, 4]),
                                          _preds(["a", "b"], ["a", "b"]), 30)}
    text = " ".join(Wd.what_the_runs_show(runs))
    assert "RANDOM weights" in text and "cannot show" in text and "predicts 'a' for 100% of the test images" in text
    assert "demo data" in text and "plain: transfer 50.0% vs scratch 100.0% test accuracy after 2 epochs each" in text and "scratch did better here" in text
    assert "Chance level is 0.33" in text
    gaps = C.fit_gaps(runs)
    assert gaps.loc[("plain", "scratch"), "acc_gap"] == pytest.approx(0.0)
    lines = Wd.describe_fit(gaps.assign(train_acc=[0.35, 0.99], acc_gap=[0.0, 0.09 + 0.5 * 0.2]), chance=1 / 3)
    assert "near chance" in lines[0] and "overfitting" in lines[1] and "after epoch 2," in lines[0]
    same = {("ignite", i): _record(tmp_path, "ignite", i, runs[("plain", i)].history, runs[("plain", i)].predictions, 1,
                                   weights_source=runs[("plain", i)].meta.weights_source) for i in ("transfer", "scratch")}
    both = " ".join(Wd.what_the_runs_show({**runs, **same}))  # two engines that agree are described once
    assert both.count("predicts 'a'") == 1 and "plain, ignite / transfer: predicts 'a'" in both
    assert "plain, ignite: transfer 50.0% vs scratch 100.0%" in both
    short = Wd.what_the_runs_show_in_short(same)  # 02 and 03, after 01 has said it all
    assert short == ["ignite: transfer 50.0% vs scratch 100.0% test accuracy after 2 epochs each (4 test images, one is "
                     "25.0%): scratch did better here.",
                     "The 'transfer' runs started from RANDOM weights, so this says nothing about transfer learning "
                     "(notebook 01 explains why)."]


def test_one_test_image_apart_is_no_winner(tmp_path):
    preds = _preds(["a", "b", "c", "a"], ["a", "b", "c", "b"])
    runs = {("plain", "transfer"): _record(tmp_path, "plain", "transfer", _history([0.5, 0.6], [2, 2]), preds, 10)}
    runs[("plain", "scratch")] = _record(tmp_path, "plain", "scratch", _history([0.5, 0.6], [2, 2]),
                                         _preds(["a", "b", "c", "a"], ["a", "b", "c", "a"]), 10)
    assert Wd.which_did_better(runs) == ["plain: transfer 75.0% vs scratch 100.0% test accuracy after 2 epochs each (4 test "
                                         "images, one is 25.0%): neither did better here: they differ by at most one test image."]


def test_rows_that_engines_share_are_shown_once():
    table = pd.DataFrame(dict(engine=["plain", "ignite", "plain", "ignite"], run=["transfer", "transfer", "scratch", "scratch"],
                              acc=[0.5, 0.5, 0.3, 0.4])).set_index(["engine", "run"])
    once = C.once_per_result(table)
    assert list(once.index) == [("plain, ignite", "transfer"), ("plain", "scratch"), ("ignite", "scratch")]
    assert list(once["acc"]) == [0.5, 0.3, 0.4]


def test_the_variations_run_is_compared_with_the_recipe_in_words():
    from conftest import make_meta
    from common.results.wording import variations_against_recipe
    counts = {"test": {"a": 10, "b": 10}}
    recipe = make_meta(test_acc=0.50, class_counts=counts, weights_source="random")
    line = variations_against_recipe(recipe, make_meta(test_acc=0.52, class_counts=counts, weights_source="random"))
    assert "about the same here" in line and "one is 5.0%" in line and "RANDOM weights" in line
    real = variations_against_recipe(make_meta(test_acc=0.5, class_counts=counts), make_meta(test_acc=0.7, class_counts=counts))
    assert "better here" in real and "RANDOM" not in real and "2 epochs each" in real

    import pandas as pd
    two_stages = [dict(number=1, first_epoch=1, epochs=1, trainable="head", lr=1e-3),
                  dict(number=2, first_epoch=2, epochs=1, trainable="layer4", lr=1e-4)]
    random_stages = make_meta(test_acc=0.52, class_counts=counts, weights_source="random", stages=two_stages)
    huge = variations_against_recipe(recipe, random_stages, pd.DataFrame({"stage": [1, 2], "train_loss": [14.6, 1.6]}))
    assert "Its first epoch's training loss, 14.6, is far above a uniform guess's ln(3) = 1.1" in huge
    assert "BatchNorm normalises them again and the loss drops" in huge
    calm = variations_against_recipe(recipe, random_stages, pd.DataFrame({"stage": [1, 2], "train_loss": [1.2, 1.0]}))
    assert "first epoch's training loss" not in calm  # nothing to explain
    pretrained = make_meta(test_acc=0.52, class_counts=counts, stages=two_stages)
    assert "first epoch" not in variations_against_recipe(recipe, pretrained, pd.DataFrame({"stage": [1], "train_loss": [9.0]}))


def test_engine_agreement_is_a_sentence_when_exact_and_a_table_in_percent_when_not(tmp_path, capsys):
    p = _preds(["a", "b"], ["a", "b"])
    history = _history([0.5, 0.8], [2, 2])
    for engine in ("plain", "ignite"):
        for init in ("transfer", "scratch"):
            _record(tmp_path, engine, init, history, p, 10)
    assert C.engine_agreement(tmp_path, "toy", engines=("plain", "ignite")) is None
    assert "the same computation" in capsys.readouterr().out
    _record(tmp_path, "ignite", "scratch", history.assign(val_loss=[1.0, 1.02]), p, 10)
    table = C.engine_agreement(tmp_path, "toy", engines=("plain", "ignite"))
    assert list(table.index) == [("ignite", "transfer"), ("ignite", "scratch")]  # the suite's order
    assert table.loc[("ignite", "scratch"), "validation loss, largest gap"] == "2 %"
    from common.results.compare import gap_in_percent
    assert [gap_in_percent(g) for g in (0, 5e-6, 1.23456e-4, 0.24440, 12.3)] == ["0 %", "< 0.001 %", "0.0123 %", "24.4 %", "1230 %"]
    assert "learning rate, largest gap" not in table  # constant rates: nothing to compare
    assert not table.loc[("ignite", "scratch"), "agrees"]
    assert "autotuned cuDNN" not in capsys.readouterr().out
    _record(tmp_path, "ignite", "scratch", history.assign(val_loss=[1.0, 1.02]), p, 10, device="cuda:0")
    C.engine_agreement(tmp_path, "toy", engines=("plain", "ignite"))
    assert "autotuned cuDNN kernels (deterministic off)" in capsys.readouterr().out  # a GPU run says why it may differ
