"""In a real JupyterLab: notebooks opened, run and used in headless Chromium through Playwright, as a learner sees
them. Screenshots of each checked state go to runs/browser/.

JupyterLab runs on a loopback port with a token, on copies of the notebooks (it may autosave what it ran), with
the kernels seeing the tests' TINY settings and the run records of the executed suite (06 reads them)."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import NOTEBOOKS, tiny_env

ROOT = NOTEBOOKS.parent
SHOTS = ROOT / "runs" / "browser"
HOW_TO_GET_ONE = ("no Chromium for the browser test: install Debian's (`sudo apt-get install chromium`) or point "
                  "TL_CHROMIUM at a Chrome or Chromium binary; scripts/test.sh installs it where it can")


def chromium() -> str | None:
    return os.environ.get("TL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or chromium() is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but there is {HOW_TO_GET_ONE}.")
        pytest.skip(HOW_TO_GET_ONE)
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox refuses to start as root, which containers and CI machines often are
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield browser
        browser.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(engine_runs, tiny_base, tmp_path_factory):
    """(base URL, token) of a JupyterLab serving copies of the notebooks beside the repository's `common`."""
    work = tmp_path_factory.mktemp("lab")
    shutil.copytree(NOTEBOOKS, work / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (work / "common").symlink_to(ROOT / "common")  # the set-up cell finds the repository by its common/ package
    settings = work / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Every cell in the page, not only those scrolled into view (JupyterLab 4 renders long notebooks lazily)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    news = work / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no news pop-up over the page
    port, token = _free_port(), secrets.token_hex(16)
    log = (work / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
         f"--LabApp.workspaces_dir={work / 'workspaces'}",  # not the user's: no notebook of another session reopens
         "--allow-root"],  # root in containers and on CI machines
        env=dict(tiny_env(tiny_base), JUPYTERLAB_SETTINGS_DIR=str(work / "settings")), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (work / "jupyterlab.log").read_text()[-3000:]
            time.sleep(0.5)
    yield url, token
    server.terminate()
    server.wait(timeout=30)
    log.close()


def open_notebook(browser, lab, name: str):
    url, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # A workspace of its own, reset: the page shows this notebook alone, and it is the current widget
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/notebooks/{name}?reset&token={token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext?.session?.kernel", timeout=60_000)
    return page


NOTEBOOK = "window.jupyterapp.shell.currentWidget"


def run_all(page, timeout_s: int = 300) -> None:
    """Run every cell from the page, as Run > Run All Cells does, and wait until the kernel has run the last one."""
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(
        f"""() => {{ const nb = {NOTEBOOK}; const code = nb.content.widgets.filter(c => c.model.type === 'code');
                    return nb.sessionContext.session.kernel.status === 'idle'
                           && code.every(c => c.model.executionCount !== null); }}""", timeout=timeout_s * 1000)


def error_outputs(page) -> list[str]:
    """Every error output and every stderr stream the notebook's cells hold after running."""
    return page.evaluate(
        f"""() => {NOTEBOOK}.content.widgets.flatMap(c => c.model.type !== 'code' ? [] : c.model.outputs.toJSON())
              .filter(o => o.output_type === 'error' || (o.output_type === 'stream' && o.name === 'stderr'))
              .map(o => o.output_type === 'error' ? o.ename + ': ' + o.evalue : [].concat(o.text).join(''))""")


def first_screen(page, name: str) -> None:
    """The set-up cell is collapsed (its source hidden) and the first code a learner sees is the configuration."""
    first_code = page.locator(".jp-NotebookPanel .jp-CodeCell").first
    assert first_code.locator(".jp-InputPlaceholder").count() == 1, "the set-up cell is shown expanded"
    visible = page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputArea-editor >> visible=true").first.inner_text()
    assert "load_config" in visible, visible[:200]
    page.screenshot(path=str(SHOTS / f"{Path(name).stem}-first-screen.png"))


@pytest.mark.parametrize("name", ["00_data_and_model.ipynb", "06_use_the_model.ipynb"])
def test_a_notebook_runs_to_the_end_in_jupyterlab(browser, lab, engine_runs, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = open_notebook(browser, lab, name)
    first_screen(page, name)
    run_all(page)
    assert error_outputs(page) == []
    assert page.locator(".jp-OutputArea-output img >> visible=true").count() >= 3, "figures do not render as images"
    page.locator(".jp-NotebookPanel .jp-Cell").last.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"{Path(name).stem}-end.png"))
    if name.startswith("06"):
        image = next(Path(engine_runs[("plain", "transfer")].meta.dataset_root).rglob("*.jpg"))
        upload_is_classified(page, name, image)
    page.close()


def upload_is_classified(page, name: str, image: Path) -> None:
    """A demo image chosen in the upload button's file dialog reaches the model: its answer shows under the button."""
    from common.use.show import ANSWER_PREFIX
    button = page.locator(".jupyter-widgets.widget-upload").first
    button.scroll_into_view_if_needed()
    with page.expect_file_chooser() as dialog:  # what a learner's click opens
        button.click()
    dialog.value.set_files(str(image))
    answer = page.locator(f".jupyter-widgets.widget-output :text('{ANSWER_PREFIX} {image.name}')").first
    answer.wait_for(timeout=60_000)
    text = answer.inner_text()
    assert "%" in text and "(" in text, text
    answer.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"{Path(name).stem}-upload.png"))
