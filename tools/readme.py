"""Write README.md from nbs/index.ipynb without quarto (nbdev_readme needs quarto).

Markdown cells are copied; visible code cells become ```python blocks with their text outputs;
cells marked `#| hide` and nbdev directive lines are dropped; links to notebooks (X.ipynb) are left as
they are, since they resolve in the repository view. `--check` exits 1 if README.md is stale.
"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def render(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    parts = []
    for c in nb["cells"]:
        src = "".join(c["source"])
        lines = src.splitlines()
        if c["cell_type"] == "markdown":
            parts.append(src.strip())
            continue
        if c["cell_type"] != "code" or any(l.strip() in ("#| hide", "#|hide") for l in lines): continue
        code = "\n".join(l for l in lines if not l.lstrip().startswith("#|")).strip()
        if code: parts.append(f"```python\n{code}\n```")
        for o in c.get("outputs", []):
            text = o.get("text") or o.get("data", {}).get("text/plain")
            if text: parts.append("```\n" + "".join(text).rstrip() + "\n```")
    body = "\n\n".join(p for p in parts if p)
    # the notebook's `# Title` + `> subtitle` become the README's header
    return body + "\n"

def main(argv):
    out = render(ROOT / "nbs" / "index.ipynb")
    readme = ROOT / "README.md"
    if "--check" in argv:
        if not readme.exists() or readme.read_text() != out:
            print("README.md is out of date with nbs/index.ipynb: run `python tools/readme.py`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(out)
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
