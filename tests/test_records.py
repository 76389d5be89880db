import numpy as np
import pytest

from common import records as R


def test_history_must_have_every_column(tmp_path):
    with pytest.raises(ValueError, match="val_acc"):
        R.write_history(tmp_path, [dict(epoch=1, train_loss=1.0)])
    rows = [dict(epoch=1, train_loss=1.0, train_acc=0.5, val_loss=1.1, val_acc=0.4, lr=1e-3, epoch_seconds=2.0, extra=1)]
    df = R.write_history(tmp_path, rows)
    assert list(df.columns) == R.HISTORY_COLUMNS
    assert not list(tmp_path.glob(".*.tmp"))


def test_predictions_keep_topk_in_order():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    df = R.predictions_frame(["a.jpg", "b.jpg"], np.array([2, 0]), probs, ["x", "y", "z"], k=5)
    assert list(df["pred"]) == ["y", "x"] and list(df["true"]) == ["z", "x"]
    assert list(df.loc[0, ["top1_class", "top2_class", "top3_class"]]) == ["y", "z", "x"]
    assert df.loc[0, "top1_prob"] == pytest.approx(0.7) and "top4_class" not in df


def test_missing_record_names_the_notebook(tmp_path):
    with pytest.raises(R.MissingRunError, match="02_ignite.ipynb"):
        R.load_run(R.run_dir(tmp_path, "demo", "ignite", "transfer"))


def test_state_round_trip_is_weights_only(tmp_path):
    import torch
    R.save_state(tmp_path / "best.pt", {"w": torch.ones(2)})
    assert torch.equal(R.load_state(tmp_path / "best.pt")["w"], torch.ones(2))
    torch.save({"obj": object()}, tmp_path / "pickled.pt")
    with pytest.raises(Exception):
        R.load_state(tmp_path / "pickled.pt")
