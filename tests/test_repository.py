"""Repository hygiene: clean notebooks with one skeleton, and dependency lists that agree."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(path):
    return json.loads(path.read_text())["cells"]


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == sorted({p.name[:2] for p in NOTEBOOKS}) and len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_carry_no_outputs(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell["outputs"] and cell["execution_count"] is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_follows_the_skeleton(path):
    cells = _cells(path)
    first_code = next(c for c in cells if c["cell_type"] == "code")
    reference = next(c for c in _cells(NOTEBOOKS[0]) if c["cell_type"] == "code")
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    assert "You will learn" in "".join(cells[0]["source"])
    assert first_code["source"] == reference["source"], "the set-up cell must be the same everywhere"
    text = "".join("".join(c["source"]) for c in cells)
    assert "load_config()" in text and ".show()" in text
    assert "## Summary" in text and "Things to try" in text
    assert "library_versions()" in "".join(cells[-1]["source"])
    assert "os.environ[" not in text, "notebooks read the configuration, they do not branch on the environment"


def _pyproject_deps():
    text = (ROOT / "pyproject.toml").read_text()
    block = re.findall(r'^(?:dependencies|test) = \[(.*?)\]', text, re.S | re.M)
    return {re.split(r"[<>=]", d)[0].strip().lower() for b in block for d in re.findall(r'"([^"]+)"', b)}


def test_environment_yml_matches_pyproject():
    import yaml
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = {re.split(r"[<>=]", d)[0].strip().lower() for d in env["dependencies"] if isinstance(d, str)}
    conda = {"torch" if n == "pytorch" else n for n in conda} - {"python", "pip"}
    assert conda == _pyproject_deps()
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.replace(" ", "") == "python>=3.11"


def test_every_module_opens_with_its_purpose():
    import ast
    for path in sorted((ROOT / "common").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and doc.splitlines()[0].endswith((".", ":")) and len(doc.splitlines()[0]) < 140, path.name


def test_common_is_grouped_by_role():
    """`ls common/` shows the architecture: what every role reads at the top, then one sub-package per role."""
    top = {p.name for p in (ROOT / "common").iterdir() if not p.name.startswith(("_", "."))}
    assert top == {"config.py", "runtime.py", "io.py", "data", "model", "train", "results", "use"}
    for role in ("data", "model", "train", "results", "use"):
        assert (ROOT / "common" / role / "__init__.py").read_text().startswith('"""'), role


def test_importing_common_needs_no_training_engine():
    import subprocess
    import sys
    code = ("import sys, common.train.run, common.results.plots, common.results.evaluation, common.results.compare, common.train.resume, "
            "common.data.datasets, common.results.records;"
            "assert 'lightning' not in sys.modules and 'ignite' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _setup_cell_source() -> str:
    cell = next(c for c in _cells(NOTEBOOKS[0]) if c["cell_type"] == "code")
    return "".join(cell["source"])


def test_setup_cell_is_short():
    """A learner's first cell: the fetching it cannot do without (the repository is not there yet), the rest in
    colab_setup.sh."""
    assert len(_setup_cell_source().splitlines()) <= 15


def test_setup_cell_outside_a_clone_says_what_to_do(tmp_path):
    import os
    import subprocess
    import sys
    env = dict(os.environ, TL_CLONE_DIR=str(tmp_path / "content"))
    out = subprocess.run([sys.executable, "-c", _setup_cell_source()], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "open it from a clone of the repository" in out.stderr.lower()
    assert not (tmp_path / "content").exists()


def test_setup_cell_finds_the_repository_locally(tmp_path):
    import subprocess
    import sys
    code = _setup_cell_source() + "\nprint(ROOT)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "notebooks", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(ROOT)


FAKE_COLAB = "import sys, types; sys.modules['google.colab'] = types.ModuleType('google.colab')\n"


def _fake_github_repository(tmp_path, branch: str) -> Path:
    """A tiny repository standing in for the GitHub one: the cell clones it through a git URL rewrite.
    Its colab_setup.sh only leaves a mark, so the test never installs anything."""
    import subprocess
    origin = tmp_path / "origin"
    (origin / "common").mkdir(parents=True)
    (origin / "common" / "__init__.py").write_text("")
    (origin / "notebooks").mkdir()
    (origin / "colab_setup.sh").write_text('touch "$(dirname "$0")/setup-ran"\n')
    git = ["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "main"], check=True)
    subprocess.run([*git, "checkout", "-qb", branch], check=True)
    (origin / "only-on-branch").write_text("")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "branch"], check=True)
    subprocess.run([*git, "checkout", "-q", "main"], check=True)
    return origin


def _run_setup_cell_on_colab(tmp_path, server, env_extra=None, source=None):
    import os
    import subprocess
    import sys
    host, port = server.url.removeprefix("http://").split(":")
    env = dict(os.environ, COLAB_JUPYTER_IP=host, KMP_TARGET_PORT=port, TL_CLONE_DIR=str(tmp_path / "content"),
               **(env_extra or {}))
    work = tmp_path / "elsewhere"
    work.mkdir(exist_ok=True)
    code = FAKE_COLAB + (source or _setup_cell_source()) + "\nprint(ROOT)"
    return subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)


def test_setup_cell_on_colab_clones_the_repository_and_branch_it_was_opened_from(tmp_path, server):
    import json
    from urllib.parse import quote
    origin = _fake_github_repository(tmp_path, branch="feature/speed")
    opened = "https://github.com/acme/tl-tutorial/blob/feature/speed/notebooks/01_plain_pytorch.ipynb"
    sessions = [{"name": "01_plain_pytorch.ipynb", "path": "fileId=" + quote(opened, safe="")}]
    server.routes["/api/sessions"] = (200, "application/json", json.dumps(sessions).encode())
    rewrite = dict(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0=f"url.file://{origin}.insteadOf",
                   GIT_CONFIG_VALUE_0="https://github.com/acme/tl-tutorial.git")
    out = _run_setup_cell_on_colab(tmp_path, server, rewrite)
    assert out.returncode == 0, out.stderr
    clone = tmp_path / "content" / "tl-tutorial"
    assert out.stdout.strip().splitlines()[-1] == str(clone)
    assert (clone / "only-on-branch").is_file(), "cloned the default branch, not the one the notebook came from"
    assert (clone / "setup-ran").is_file(), "colab_setup.sh did not run"
    # Run again (a second notebook, a restarted kernel): the clone is reused, nothing is fetched again.
    server.routes.clear()
    (clone / "setup-ran").unlink()
    again = _run_setup_cell_on_colab(tmp_path, server)
    assert again.returncode == 0 and (clone / "setup-ran").is_file(), again.stderr


def test_setup_cell_on_colab_not_opened_from_github_says_what_to_do(tmp_path, server):
    import json
    server.routes["/api/sessions"] = (200, "application/json", json.dumps([{"path": "fileId=1AbCdEf"}]).encode())
    out = _run_setup_cell_on_colab(tmp_path, server)
    assert out.returncode != 0 and "open the notebook from GitHub" in out.stderr
    assert not (tmp_path / "content" / "tl-tutorial").exists()


def test_setup_cell_on_kaggle_copies_the_repository_attached_as_input(tmp_path, server):
    """Kaggle with internet off: the repository attached as a dataset, at any mount depth, is copied out."""
    origin = _fake_github_repository(tmp_path, branch="unused")
    attached = tmp_path / "input" / "datasets" / "acme" / "tl-tutorial"
    import shutil
    shutil.copytree(origin, attached, ignore=shutil.ignore_patterns(".git"))
    (attached / "runs").mkdir()
    source = _setup_cell_source()
    assert '"/kaggle/input/' in source
    source = source.replace('"/kaggle/input/', f'"{tmp_path / "input"}/')
    out = _run_setup_cell_on_colab(tmp_path, server, source=source)
    assert out.returncode == 0, out.stderr
    clone = tmp_path / "content" / "tl-tutorial"
    assert (clone / "common" / "__init__.py").is_file() and (clone / "setup-ran").is_file()
    assert not (clone / "runs").exists(), "copied run records along with the code"
    assert server.requests == [], "asked Colab's session list although a copy was attached"


def test_colab_setup_is_harmless_locally():
    import subprocess
    import sys
    out = subprocess.run(["bash", str(ROOT / "colab_setup.sh")], env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True)
    assert "nothing to install" in out.stdout
