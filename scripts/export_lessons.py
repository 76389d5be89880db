"""Write the library modules whose source is a lesson: the code cells of a notebook that open with ``#| export``.

What notebooks 01, 02, 03, 07 and 08 teach is also run by other notebooks and the tests (notebook 05 trains with the
plain loop; notebook 07 runs every engine's code on several processes), so its text lives once, in the notebooks'
cells; the modules in ``EXPORTS`` are generated from them (as nbdev's ``#| export`` or d2l's ``#@save`` do). After changing a marked cell, run

    .venv/bin/python scripts/export_lessons.py           # rewrite the generated modules
    .venv/bin/python scripts/export_lessons.py --check   # exit 1, naming the module, if one is out of date

``tests/test_lessons.py`` runs the check, so a lesson and its module never drift apart.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "#| export"

# notebook -> (generated module, the module's own opening: its purpose, then the future import every module has)
EXPORTS = {
    "notebooks/01_plain_pytorch.ipynb": ("common/train/loop.py", '''"""The plain training loop, generated from notebook 01's cells marked ``#| export``: edit the notebook, not this file.

Notebook 01 writes the loop out cell by cell; ``scripts/export_lessons.py`` copies those cells here, and
``tests/test_lessons.py`` fails when the two differ. Notebooks 05 and 07 train with ``fit`` and ``train``.
"""
from __future__ import annotations
'''),
    "notebooks/02_ignite.ipynb": ("common/train/ignite_engine.py", '''"""The Ignite run, generated from notebook 02's cells marked ``#| export``: edit the notebook, not this file.

Notebook 07 runs ``train_in_process`` in each of several processes.
"""
from __future__ import annotations
'''),
    "notebooks/03_lightning.ipynb": ("common/train/lightning_engine.py", '''"""Lightning's module, data module, callbacks and Trainer, from notebook 03's cells marked ``#| export``.

Generated: edit the notebook, not this file. Notebook 07 trains them on several processes.
"""
from __future__ import annotations
'''),
    "notebooks/07_several_devices.ipynb": ("common/train/parallel.py", '''"""Several devices, one process each, for the three engines: notebook 07's cells marked ``#| export``.

Generated: edit the notebook, not this file. The final ``train`` of notebooks 01-03 calls these when ``devices``
is above 1.
"""
from __future__ import annotations
'''),
    "notebooks/08_why_transfer_works.ipynb": ("common/results/why_transfer.py", '''"""Why transfer works: notebook 08's cells marked ``#| export`` (feature probes, the accuracy-against-data curve).

Generated: edit the notebook, not this file. The tests check its probes against scikit-learn's and its curve's resume.
"""
from __future__ import annotations
'''),
}


def exported_cells(notebook: Path) -> list[str]:
    """The code of the notebook's cells marked for export, the marker line dropped, in notebook order."""
    cells = json.loads(notebook.read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    return [source.split("\n", 1)[1].strip("\n") for source in sources if source.startswith(MARKER + "\n")]


def module_text(notebook: str) -> str:
    """What the generated module of ``notebook`` must contain."""
    _, header = EXPORTS[notebook]
    cells = exported_cells(ROOT / notebook)
    if not cells:
        raise ValueError(f"{notebook} has no cell opening with {MARKER!r}: nothing to export.")
    return header + "\n" + "\n\n\n".join(_without_repeated_imports([_without_lesson_marks(c) for c in cells])) + "\n"


def _without_lesson_marks(cell: str) -> str:
    """A variation marks the lines it adds with ``# new:`` for the learner; in the module they are plain comments."""
    return cell.replace("  # new: ", "  # ")


def _without_repeated_imports(cells: list[str]) -> list[str]:
    """Each cell imports what it uses, so that a learner can read it alone; in one module, an import line that an
    earlier cell already made is dropped."""
    seen, out = set(), []
    for cell in cells:
        lines = cell.splitlines()
        kept = [line for line in lines if not (line.startswith(("import ", "from ")) and line in seen)]
        seen.update(line for line in lines if line.startswith(("import ", "from ")))
        out.append("\n".join(kept).strip("\n"))
    return out


def main(check: bool) -> int:
    stale = []
    for notebook, (module, _) in EXPORTS.items():
        text, path = module_text(notebook), ROOT / module
        if not path.is_file() or path.read_text() != text:  # a new lesson has no module yet
            stale.append(module)
            if not check:
                path.write_text(text)
    if check and stale:
        print(f"Out of date with their notebooks: {', '.join(stale)}. Run: .venv/bin/python scripts/export_lessons.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv[1:]))
