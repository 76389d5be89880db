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


def test_importing_common_needs_no_training_engine():
    import subprocess
    import sys
    code = ("import sys, common.training, common.plots, common.evaluation;"
            "assert 'lightning' not in sys.modules and 'ignite' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _setup_cell_source() -> str:
    cell = next(c for c in _cells(NOTEBOOKS[0]) if c["cell_type"] == "code")
    return "".join(cell["source"]).replace("%matplotlib inline", "")


def test_setup_cell_finds_the_repository_locally(tmp_path):
    import subprocess
    import sys
    code = _setup_cell_source() + "\nprint(ROOT)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "notebooks", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(ROOT)


def test_setup_cell_on_colab_without_a_clone_says_what_to_set(tmp_path):
    import subprocess
    import sys
    fake_colab = "import sys, types; sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
    out = subprocess.run([sys.executable, "-c", fake_colab + _setup_cell_source()], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "Set REPO_URL" in out.stderr


def test_colab_setup_is_harmless_locally():
    import subprocess
    import sys
    out = subprocess.run(["bash", str(ROOT / "colab_setup.sh")], env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True)
    assert "nothing to install" in out.stdout
