"Every code cell of every notebook parses: nbdev_test runs cells through IPython, which reports a SyntaxError without failing."
import ast, json
from pathlib import Path
import pytest

NBS = sorted((Path(__file__).resolve().parent.parent / "nbs").glob("*.ipynb"))

def code_cells(path):
    for i, c in enumerate(json.loads(path.read_text())["cells"]):
        if c["cell_type"] != "code": continue
        src = "".join(c["source"])
        if src.lstrip().startswith("%%"): continue                      # cell magics are not Python
        lines = ["" if l.lstrip().startswith(("%", "!")) else l for l in src.splitlines()]
        yield i, "\n".join(lines)

def test_notebooks_found():
    assert len(NBS) >= 10, f"expected the project's notebooks in nbs/, found {len(NBS)}"

@pytest.mark.parametrize("path", NBS, ids=[p.stem for p in NBS])
def test_cells_parse(path):
    bad = []
    for i, src in code_cells(path):
        try: ast.parse(src)
        except SyntaxError as e: bad.append(f"cell {i}, line {e.lineno}: {e.msg}: {(e.text or '').strip()!r}")
    assert not bad, f"{path.name}: " + "; ".join(bad)

def test_checker_catches_a_broken_cell(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": [".TemporaryDirectory() as d:\n", "    pass\n"]},
                    {"cell_type": "code", "source": ["%time x = 1\n", "!ls\n"]}]}
    p = tmp_path / "broken.ipynb"; p.write_text(json.dumps(nb))
    with pytest.raises(AssertionError, match="cell 0"): test_cells_parse(p)
