"""Can the answer be trusted: calibration error, temperature scaling, the "none of these" threshold, AUROC,
and how a record's calibration reaches predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.results.records import Calibration
from common.use.predict import NONE_OF_THESE, load_model, predict_images
from common.use.trust import (auroc, choose_threshold, expected_calibration_error, fit_temperature, nll,
                              open_set_check, reliability)


def test_the_calibration_error_is_the_binned_gap_between_confidence_and_accuracy():
    # Four images: two sure (0.9) and right, one at 0.55 and wrong, one at 0.65 and right. Bins of width 1/15:
    # 0.9 falls in bin 13 (0.867-0.933), 0.55 in bin 8 (0.533-0.6) and 0.65 in bin 9 (0.6-0.667).
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.55, 0.45], [0.35, 0.65]])
    targets = torch.tensor([0, 1, 1, 1])
    by_hand = (2 * abs(0.9 - 1.0) + abs(0.55 - 0.0) + abs(0.65 - 1.0)) / 4
    assert expected_calibration_error(probs, targets) == pytest.approx(by_hand, abs=1e-6)
    table = reliability(probs, targets)
    assert list(table["images"]) == [1, 1, 2] and list(table["accuracy"]) == [0.0, 1.0, 1.0]
    weighted = (table["images"] * (table["confidence"] - table["accuracy"]).abs()).sum() / table["images"].sum()
    assert weighted == pytest.approx(by_hand, abs=1e-6)  # the diagram's points give the same number


def test_temperature_scaling_softens_an_overconfident_model_and_changes_no_prediction():
    torch.manual_seed(0)
    targets = torch.randint(0, 5, (400,))
    honest = torch.randn(400, 5)
    honest[torch.arange(400), targets] += 1.5  # right about two times in three
    overconfident = 6 * honest  # the same ranking, far too sure
    t = fit_temperature(overconfident, targets)
    assert t > 3 and nll(overconfident, targets, t) < 0.8 * nll(overconfident, targets)
    assert torch.equal((overconfident / t).argmax(1), overconfident.argmax(1))
    assert abs(fit_temperature(honest, targets) - 1) < 0.3  # an honest model is left about as it is


def test_the_threshold_keeps_its_stated_share_of_the_known_images():
    scores = np.random.default_rng(0).uniform(size=1000)
    for acceptance in (0.9, 0.95, 0.99):
        threshold = choose_threshold(scores, acceptance)
        assert acceptance <= (scores >= threshold).mean() < acceptance + 0.002
    check = open_set_check("s", scores, scores, np.zeros(10), acceptance=0.95)
    assert check.unknown_rejected == 1.0 and check.known_kept >= 0.95 and check.auroc == 1.0


def test_auroc_on_hand_made_scores():
    assert auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auroc(np.array([0.1, 0.2]), np.array([0.9, 0.8])) == 0.0
    # pairs (known, unknown) ranked right: (0.9 > 0.5), (0.9 > 0.2), (0.4 > 0.2); (0.4 < 0.5) wrong: 3 of 4
    assert auroc(np.array([0.9, 0.4]), np.array([0.5, 0.2])) == 0.75


def test_predictions_say_none_of_these_below_the_threshold_and_old_records_still_load(engine_runs, tmp_path):
    import shutil

    from common.results.records import RunRecord
    trained = engine_runs[("plain", "transfer")]
    record = RunRecord(tmp_path, trained.dataset, "plain", "transfer")  # as the engines wrote it, before notebook 06
    shutil.copytree(trained.folder, record.folder, ignore=shutil.ignore_patterns(trained.calibration_file.name))
    assert record.calibration is None
    model, info = load_model(record)
    assert info.calibration is None
    files = [info.dataset_root / f for f in record.predictions["file"][:4]]
    plain = predict_images(model, info, files)
    assert list(plain["answer"]) == list(plain["pred"])  # no calibration: the top class, as before
    info.calibration = Calibration(temperature=2.0, threshold=1.01, acceptance=0.95, validation_images=10)
    declined = predict_images(model, info, files)
    assert set(declined["answer"]) == {NONE_OF_THESE} and list(declined["pred"]) == list(plain["pred"])
    assert (declined["top1_prob"] < plain["top1_prob"]).all()  # a temperature above 1 softens every answer
    info.calibration = Calibration(temperature=1.0, threshold=0.0, acceptance=0.95, validation_images=10)
    assert list(predict_images(model, info, files)["answer"]) == list(plain["pred"])


def test_a_calibration_round_trips_through_the_record(tmp_path):
    from common.results.records import RunRecord
    record = RunRecord(tmp_path, "demo", "plain", "transfer")
    record.folder.mkdir(parents=True)
    assert record.calibration is None
    record.write_calibration(Calibration(temperature=1.7, threshold=0.42, acceptance=0.95, validation_images=30))
    assert record.calibration == Calibration(temperature=1.7, threshold=0.42, acceptance=0.95, validation_images=30)
    record.start_fresh()  # a new run of the same name drops the old calibration with the old record
    assert record.calibration is None


def test_the_trust_sentences_say_when_calibration_did_not_carry_over_and_when_scores_tie():
    import pandas as pd
    from conftest import make_meta

    from common.use.trust import OpenSetCheck, describe_trust
    row = lambda t, ece, nll_: {"temperature": t, "test ECE before": 0.2, "test ECE after": ece, "test NLL before": 1.0,
                               "test NLL after": nll_, "test accuracy": 0.5}
    calibrated = pd.DataFrame({"transfer": row(2.0, 0.1, 0.8), "scratch": row(2.0, 0.3, 1.4), "tiny": row(1.1, 0.199, 0.995)}).T
    checks = {"transfer": [OpenSetCheck("top probability (calibrated)", 0.4, 0.9, 0.95, 0.6),
                           OpenSetCheck("top logit", 3.0, 0.9, 0.95, 0.5)],
              "scratch": [OpenSetCheck("top probability (calibrated)", 0.4, 0.55, 0.95, 0.1),
                          OpenSetCheck("top logit", 3.0, 0.6, 0.95, 0.1)]}
    metas = {"transfer": make_meta(is_demo_data=False), "scratch": make_meta(init="scratch", is_demo_data=False)}
    lines = describe_trust(calibrated, checks, metas)
    assert "On test the probabilities became more honest" in lines[0] and "LESS honest" in lines[1]
    assert "On test they barely changed" in lines[2]  # 0.001 in ECE is no improvement to speak of
    assert "both scores separate" in lines[3] and "too close to chance" not in lines[3]
    assert "'top logit' separates" in lines[4] and "too close to chance" in lines[4] and "1/3" in lines[4]
    assert len(lines) == 5  # real data and ImageNet weights: no caveat to add


def test_drawn_other_images_are_the_same_for_a_seed_and_a_folder_holds_one_draw(tmp_path):
    from common.use.trust import other_images
    first = other_images(None, tmp_path / "other", n=5, image_size=32, seed=1)
    again = other_images(None, tmp_path / "other", n=3, image_size=32, seed=1)  # a later run with fewer
    assert len(first) == 5 and [p.name for p in again] == [p.name for p in first[:3]]
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in other_images(None, tmp_path / "b", 3, 32, 1)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No images in"):
        other_images(tmp_path / "empty", tmp_path / "x", 3, 32, 1)
