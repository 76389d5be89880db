"""Taking the model elsewhere: a ``torch.export`` program and an ONNX file, each checked against eager PyTorch."""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from common.io import write_atomic, write_csv_atomic
from common.results.records import RunRecord


def plain_view(model: nn.Module) -> nn.Sequential:
    """The trained network as a plain pipeline sharing its weights, in eval mode.

    ``TransferResNet.forward`` switches grad mode and checks the memory format: control flow that
    exporters trip on and that inference does not need. In eval mode dropout is the identity, so the
    view computes the same logits (the parity checks below prove it against the model itself)."""
    return nn.Sequential(model.trunk, model.layer4, model.pool, nn.Flatten(1), model.classifier).eval()


def _quiet():
    """Silence the exporters' progress chatter (torch.export and onnxscript log at INFO/WARNING)."""
    for name in ("torch.export", "torch._dynamo", "torch.onnx", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def export_program(model: nn.Module, image_size: int) -> torch.export.ExportedProgram:
    """``torch.export`` of the plain view, with a dynamic batch dimension."""
    _quiet()
    example = torch.randn(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(plain_view(model), (example,), dynamic_shapes=({0: batch},))


def export_onnx(program: torch.export.ExportedProgram, path: Path) -> Path:
    """The exported program as an ONNX file (the current exporter, ``dynamo=True``), weights inside."""
    _quiet()

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the exporter's notes on opset upgrades
            torch.onnx.export(program, f=str(tmp), dynamo=True, external_data=False, verbose=False, report=False,
                              input_names=["images"], output_names=["logits"])

    return write_atomic(path, write)


def save_program(program: torch.export.ExportedProgram, path: Path) -> Path:
    """Save an exported program (load it back with ``torch.export.load``)."""
    return write_atomic(path, lambda tmp: torch.export.save(program, str(tmp)))


def onnx_session(path: Path):
    """An ONNX Runtime session on the CPU for the file at ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    # No busy-waiting between runs: spinning ORT threads would steal the cores from eager PyTorch timed beside it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, x: torch.Tensor) -> np.ndarray:
    """Logits from an ONNX Runtime session."""
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@torch.inference_mode()
def parity(model: nn.Module, x: torch.Tensor, program=None, session=None) -> dict[str, float]:
    """Largest absolute difference of logits against the eager model, for each export given."""
    model.eval()
    eager = model(x).numpy()
    out = {}
    if program is not None:
        out["torch.export"] = float(np.abs(program.module()(x).numpy() - eager).max())
    if session is not None:
        out["onnxruntime"] = float(np.abs(run_onnx(session, x) - eager).max())
    return out


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first calls allocate and plan
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@torch.inference_mode()
def latency_table(model: nn.Module, session, image_size: int, batches=(1, 32), repeats: int = 5) -> pd.DataFrame:
    """Median milliseconds per batch and images per second, eager PyTorch versus ONNX Runtime."""
    model.eval()
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, image_size, image_size)
        for name, fn in (("eager PyTorch", lambda: model(x)), ("ONNX Runtime", lambda: run_onnx(session, x))):
            s = _median_seconds(fn, repeats)
            rows.append(dict(runtime=name, batch=batch, ms_per_batch=1000 * s, images_per_s=batch / s))
    return pd.DataFrame(rows)


def export_all(model: nn.Module, image_size: int, record: RunRecord, check: torch.Tensor) -> dict:
    """Export into the run's folder (program and ONNX) and check both against eager on ``check`` images."""
    program = export_program(model, image_size)
    paths = {"program": save_program(program, record.exported_program),
             "onnx": export_onnx(program, record.onnx_model)}
    session = onnx_session(paths["onnx"])
    return dict(paths=paths, program=program, session=session, parity=parity(model, check, program, session))


def save_latency(table: pd.DataFrame, record: RunRecord) -> Path:
    """Write the latency table as CSV beside the exported model."""
    return write_csv_atomic(record.latency, table)
