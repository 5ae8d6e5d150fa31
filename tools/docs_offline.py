"""Build the documentation site offline, without quarto.

1. `nbdev_proc_nbs` runs nbdev's processors (show_doc tables, directives, hidden cells) into _proc/.
2. Each processed notebook, in the order of nbs/sidebar.yml, is rendered to HTML by nbconvert with its
   saved outputs, and a sidebar with every page is added; links to `X.ipynb` become `X.html`.
3. site_offline/index.html is the rendered nbs/index.ipynb.

Usage: python tools/docs_offline.py [--out site_offline]. `nbdev_docs` (quarto) builds the real site.
"""
import argparse, json, re, shutil, subprocess, sys, html
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def sidebar_pages(nbs: Path) -> list[tuple[str, str]]:
    "(section, notebook file) in sidebar order; notebooks missing from sidebar.yml are appended."
    import yaml
    sb = yaml.safe_load((nbs / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    out = []
    def walk(items, section):
        for it in items:
            if isinstance(it, str): out.append((section, it))
            elif isinstance(it, dict) and "contents" in it: walk(it["contents"], it.get("section", section))
            elif isinstance(it, dict) and "href" in it: out.append((section, it["href"]))
    walk(sb, "")
    listed = {p for _, p in out}
    for nb in sorted(nbs.glob("*.ipynb")):
        if nb.name not in listed: out.append(("More", nb.name))
    return out

def clean_nb(path: Path):
    nb = json.loads(path.read_text())
    for c in nb["cells"]:
        c.get("metadata", {}).pop("execution", None)
    return nb

def render(nb_json: dict) -> tuple[str, str]:
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.reads(json.dumps(nb_json), as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    title = next((l[2:].strip() for c in nb.cells if c.cell_type == "markdown" for l in c.source.splitlines() if l.startswith("# ")), "")
    if not title:  # nbdev_proc_nbs moves the title into a raw front-matter cell
        title = next((l.split(":", 1)[1].strip() for c in nb.cells if c.cell_type == "raw"
                      for l in c.source.splitlines() if l.startswith("title:")), "")
    return body, title

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "site_offline"))
    a = ap.parse_args(argv)
    out = Path(a.out); nbs = ROOT / "nbs"; proc = ROOT / "_proc"
    r = subprocess.run(["nbdev_proc_nbs"], cwd=ROOT, capture_output=True, text=True)
    if not proc.exists(): sys.exit(f"nbdev_proc_nbs produced no _proc/ folder:\n{r.stderr[-2000:]}")
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    pages = sidebar_pages(nbs)
    rendered = []
    for section, name in pages:
        src = proc / name
        if not (nbs / name).exists(): sys.exit(f"{name} is listed in nbs/sidebar.yml but does not exist")
        if not src.exists():
            sys.exit(f"nbdev_proc_nbs did not process {name} (a docs cell failed):\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}")
        body, title = render(clean_nb(src))
        rendered.append((section, name, title or name, body))
    nav = ['<nav style="position:fixed;top:0;left:0;width:230px;height:100%;overflow:auto;padding:12px;'
           'background:#f7f7f9;border-right:1px solid #ddd;font:14px sans-serif" id="llmbind-sidebar">'
           '<b><a href="index.html">llmbind</a></b><ul style="padding-left:14px">']
    last = None
    for section, name, title, _ in rendered:
        if section != last and section: nav.append(f'</ul><div style="margin-top:8px;color:#666">{html.escape(section)}</div><ul style="padding-left:14px">'); last = section
        nav.append(f'<li><a href="{Path(name).stem}.html">{html.escape(title)}</a></li>')
    nav.append("</ul></nav>")
    nav_html = "".join(nav)
    for section, name, title, body in rendered:
        body = re.sub(r'href="([\w\-]+)\.ipynb(#[^"]*)?"', lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', body)
        body = re.sub(r"<title>.*?</title>", f"<title>{html.escape(title)} – llmbind</title>", body, count=1, flags=re.S)
        body = body.replace("<body", '<body style="margin-left:250px"', 1)
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav_html, body, count=1)
        (out / f"{Path(name).stem}.html").write_text(body)
    print(f"wrote {len(rendered)} pages to {out}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
