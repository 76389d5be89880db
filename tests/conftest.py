"""Shared fixtures: small demo datasets drawn once per test session, no network."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from common.data.demo import make_demo_dataset
from common.results.records import ENGINE_NOTEBOOKS, ENGINES, INITS, RunMeta, RunRecord

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# A tiny, fast configuration for running the engine notebooks in tests.
TINY = dict(TL_BUDGET="smoke", TL_IMAGE_SIZE="32", TL_DEMO_IMAGES_PER_CLASS="12", TL_EPOCHS="2",
            TL_BATCH_SIZE="8", TL_DATASET="demo", TL_WEIGHTS="random", TL_PROGRESS="off")
# Run with progress bars on, as in Jupyter: notebook 07, whose forked processes must draw none (tests/test_parallel.py).
# Its bars are the notebook process's own (decoding the images, the things to try), live widgets there.
PROGRESS_ON = {"07_several_devices.ipynb"}



def tiny_env(base: Path, runs: Path | None = None) -> dict:
    """The environment for a notebook run: TINY settings, data under ``base``, records in ``runs``."""
    # No MPLBACKEND: the kernel then draws inline, as in Jupyter (ipykernel sets it only where it is unset).
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    return dict(env, **TINY, TL_DATA_DIR=str(base / "data"), TL_RUNS_DIR=str(runs or base / "runs"))


def run_notebook(nb, env: dict, kernel_log=None):
    """Execute a notebook (a path or a NotebookNode) in a fresh kernel with ``env``, as nbmake would; return it
    with its outputs. ``kernel_log``: an open file for the kernel process's own stderr (ipykernel's warnings,
    which no cell shows)."""
    import nbformat
    from nbclient import NotebookClient

    if not isinstance(nb, nbformat.NotebookNode):
        nb = nbformat.read(NOTEBOOKS / nb, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute(
        env=env, **({"stderr": kernel_log} if kernel_log else {}))
    return nb


# The first code cell of each engine notebook that trains what a test needs: the recipe's transfer and scratch runs, or
# the variations' two-stage run. A test that needs only those runs executes the notebook up to there, not to its end.
RECIPE_CELL, VARIATIONS_CELL = "for init in INITS", 'name="variations"'


def notebook_until(name: str, marker: str):
    """The notebook's cells up to and including the first code cell containing ``marker``."""
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    end = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and marker in cell.source)
    nb.cells = nb.cells[:end + 1]
    return nb


def things_to_try(nb) -> list[str]:
    """The code snippets of a notebook's "Things to try" (fenced python blocks in its summary)."""
    summary = next(c for c in nb.cells if c.cell_type == "markdown" and "Things to try" in c.source)
    return re.findall(r"```python\n(.*?)```", summary.source, re.S)


def make_meta(**changes) -> RunMeta:
    """A complete, plausible RunMeta for hand-made records."""
    values = dict(engine="plain", init="transfer", dataset="toy", dataset_root="/data/toy", is_demo_data=True,
                  split_fingerprint="abc", split_manifest="/data/splits/toy.csv",
                  class_counts={"train": {"a": 5, "b": 7, "c": 9}}, class_names=["a", "b", "c"], scan={},
                  weights_source="imagenet", parameters={"trainable": 10, "total": 20}, device="cpu", precision="fp32",
                  seed=0, budget="smoke", image_size=32, fallbacks=[], config={}, versions={}, started="", finished="",
                  epochs_run=2, best_epoch=2, best_val_acc=0.8, test_acc=0.75, top_k=5, test_topk_acc=1.0)
    values.update(changes)
    values.setdefault("trainable", "scratch" if values["init"] == "scratch" else "layer4")
    return RunMeta(**values)


@pytest.fixture(autouse=True)
def banners_shown_afresh():
    """Each test sees the fallback banners as a fresh notebook kernel would (they show once per process)."""
    from common.model import weights
    from common import runtime
    runtime._SHOWN_BANNERS.clear()
    weights._UNAVAILABLE.clear()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def executed_suite(tiny_base) -> dict:
    """Every notebook in reading order, executed once per session on the TINY settings as a learner would run
    it, with each of its "Things to try" snippets pasted into a new cell at the end. Returns the executed
    notebooks by name. The snippets write their records elsewhere (runs/try), so the engines' records stay
    the reference runs."""
    import nbformat

    executed = {}
    logs = tiny_base / "kernel-logs"
    logs.mkdir()
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nb.cells.extend(nbformat.v4.new_code_cell(snippet) for snippet in things_to_try(nb))
        env = dict(tiny_env(tiny_base), TL_PROGRESS="on") if path.name in PROGRESS_ON else tiny_env(tiny_base)
        with (logs / f"{path.stem}.log").open("w") as kernel_log:
            executed[path.name] = run_notebook(nb, env, kernel_log)
    return executed


@pytest.fixture(scope="session")
def engine_runs(executed_suite, tiny_base):
    """The run records the engine notebooks wrote in the executed suite: the reference runs."""
    return {(e, i): RunRecord(tiny_base / "runs", "demo", e, i).check_complete() for e in ENGINES for i in INITS}


@pytest.fixture(scope="session")
def variations_runs(executed_suite, tiny_base):
    """The run each engine notebook's variations section trains in the executed suite (two stages, per-block rates,
    one-cycle, clipping): the reference for their agreement and resume."""
    return {(e, "variations"): RunRecord(tiny_base / "runs", "demo", e, "variations").check_complete() for e in ENGINES}


@pytest.fixture(scope="session")
def flat_root(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("flat") / "toy", images_per_class=20, image_size=48, seed=3)


@pytest.fixture(scope="session")
def presplit_root(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("presplit") / "toy", images_per_class=20, image_size=48,
                             seed=3, layout="presplit")


@pytest.fixture()
def copy_of(tmp_path):
    """Copy a session dataset so a test may damage it."""
    def _copy(root: Path) -> Path:
        return Path(shutil.copytree(root, tmp_path / root.name))
    return _copy


class LoopbackServer:
    """A tiny HTTP server on 127.0.0.1 serving canned responses; records what was asked."""

    def __init__(self):
        import http.server
        import threading

        server = self
        self.routes: dict[str, tuple[int, str, bytes]] = {}
        self.requests: list[tuple[str, str, dict]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                server.requests.append((self.command, self.path, dict(self.headers)))
                status, ctype, body = server.routes.get(self.path, (404, "application/json", b'{"code": 404, "message": "nope"}'))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    srv = LoopbackServer()
    yield srv
    srv.close()
