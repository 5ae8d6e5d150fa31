"""Build the documentation site offline, without quarto.

1. `nbdev_proc_nbs` runs nbdev's processors (show_doc tables, directives, hidden cells) into _proc/.
2. Each processed notebook, in the order of nbs/sidebar.yml, is rendered to HTML by nbconvert with its
   saved outputs, under a title header taken from its front matter (title, description), with a sidebar
   listing every page. Links to `X.ipynb` become `X.html`; nbdev's links to the published site
   (doc_host + doc_baseurl in settings.ini, e.g. `.../train.html#launch`) become links to the local page
   and its heading (`11_train.html#launch`).
3. The site is self-contained: MathJax 3 (TeX input with `$...$` and `$$...$$`, CommonHTML output and
   its woff fonts) is copied into site_offline/_static/mathjax/ and referenced relatively; require.js
   and the Jupyter widget manager are not loaded (widget outputs show their text fallback).
   site_offline/index.html is the rendered nbs/index.ipynb.

MathJax comes from the npm package `mathjax` (version MATHJAX_VERSION), installed once with npm into a
cache folder ($LLMBIND_DOCS_CACHE, default ~/.cache/llmbind-docs); `--mathjax DIR` uses an existing
copy (the package folder or its es5/ folder) instead. Check the result with `python tools/docs_check.py`.

Usage: python tools/docs_offline.py [--out site_offline] [--mathjax DIR] [--reuse-proc].
`nbdev_docs` (quarto) builds the real site.
"""
import argparse, configparser, html, json, os, re, shutil, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATHJAX_VERSION = "3.2.2"
MATHJAX_COMPONENT = "tex-chtml-full.js"  # every TeX extension built in: nothing is autoloaded at typeset time
MATHJAX_DIR = "_static/mathjax"          # inside the site

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

def page_name(nb_name: str) -> str:
    "The offline site's file for a notebook: `02_lora_moe.ipynb` -> `02_lora_moe.html`."
    return Path(nb_name).stem + ".html"

def notebook_title(nb_path: Path) -> str:
    "A notebook's title: its first markdown `# Title` line, or `title:` of a raw front-matter cell."
    nb = json.loads(Path(nb_path).read_text())
    for c in nb["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        if c["cell_type"] == "raw":
            fm = front_matter_text(src)
            if fm.get("title"): return str(fm["title"]).strip()
        if c["cell_type"] == "markdown":
            for l in src.splitlines():
                if l.startswith("# "): return l[2:].strip()
    return ""

def front_matter_text(src: str) -> dict:
    "The YAML mapping of a `---`-fenced front-matter cell, or {}."
    import yaml
    m = re.match(r"\s*---\s*\n(.*?)\n---\s*$", src, flags=re.S)
    if not m: return {}
    try: d = yaml.safe_load(m.group(1))
    except yaml.YAMLError: return {}
    return d if isinstance(d, dict) else {}

def front_matter(nb: dict) -> dict:
    "Front matter of a processed notebook (nbdev_proc_nbs moves `# Title` / `> description` into a raw cell)."
    if "llmbind_front_matter" in nb.get("metadata", {}): return nb["metadata"]["llmbind_front_matter"]
    for c in nb["cells"]:
        if c["cell_type"] == "raw":
            fm = front_matter_text("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            if fm: return fm
    return {}

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

def cell_options(src: str) -> tuple[dict, str]:
    "Quarto's `#| key: value` lines of a code cell, and the source without them."
    opts, keep = {}, []
    for l in src.splitlines():
        m = re.match(r"\s*#\|\s*([\w\-]+)\s*:\s*(.*?)\s*$", l)
        if m: opts[m.group(1)] = m.group(2)
        elif not re.match(r"\s*#\|", l): keep.append(l)
    return opts, "\n".join(keep).strip("\n")

def clean_nb(path: Path) -> dict:
    """A processed notebook ready for nbconvert, as quarto would show it: front matter kept in
    metadata["llmbind_front_matter"] and its raw cell dropped, `#|` lines removed from code,
    `echo: false` hides the code, `output: false` the outputs, `include: false` the cell; no execution
    metadata; no widget views (their text fallback stays)."""
    nb = json.loads(path.read_text())
    nb.get("metadata", {}).pop("widgets", None)
    nb.setdefault("metadata", {})["llmbind_front_matter"] = front_matter(nb)
    cells = []
    for i, c in enumerate(nb["cells"]):
        if not c.get("id"): c["id"] = f"proc-{i}"  # cells nbdev added (show_doc): stable ids that name the _proc cell
        if c["cell_type"] == "raw" and front_matter_text("".join(c["source"]) if isinstance(c["source"], list) else c["source"]):
            continue  # the front matter becomes the page's title header
        if c["cell_type"] == "code":
            opts, src = cell_options("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            c["source"] = src
            if opts.get("include") == "false": continue
            if opts.get("output") == "false": c["outputs"] = []
            if opts.get("echo") == "false" or not src.strip():
                c.setdefault("metadata", {}).setdefault("transient", {})["remove_source"] = True
            if not src.strip() and not c.get("outputs"): continue
        cells.append(c)
    nb["cells"] = cells
    for c in nb["cells"]:
        c.get("metadata", {}).pop("execution", None)
        outs = []
        for o in c.get("outputs", []):
            data = o.get("data")
            if data and WIDGET_MIME in data:
                data.pop(WIDGET_MIME)
                if not data: continue
            outs.append(o)
        if "outputs" in c: c["outputs"] = outs
    return nb

MATHJAX_HEAD = """<script>
window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
        processEscapes: true, processEnvironments: true, tags: 'ams',
        packages: {'[-]': ['noundefined']}},  // an undefined macro is a TeX error (shown, and found by docs_check)
  options: {ignoreHtmlClass: 'tex2jax_ignore', processHtmlClass: 'tex2jax_process'}
};
</script>
<script defer id="MathJax-script" src="%s"></script>"""

TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}
<link rel="icon" href="data:,">
{{ resources.llmbind.mathjax_head }}
{%- endblock html_head_js_mathjax -%}
{% block extra_css %}
<style type="text/css">
body { margin-left: 250px; }
#llmbind-sidebar { position: fixed; top: 0; left: 0; width: 230px; height: 100%; overflow: auto; padding: 12px;
  box-sizing: border-box; background: #f7f7f9; border-right: 1px solid #ddd; font: 14px sans-serif; }
#llmbind-sidebar ul { padding-left: 14px; margin: 4px 0; }
#llmbind-sidebar .section { margin-top: 8px; color: #666; }
#llmbind-sidebar a[aria-current] { font-weight: bold; }
#title-block-header { padding: 16px 20px 4px 20px; font-family: var(--jp-content-font-family, sans-serif); }
#title-block-header h1.title { margin: 0 0 6px 0; }
#title-block-header p.description { color: #555; margin: 0; }
</style>
{% endblock extra_css %}
{%- block body_header -%}
{{ super() }}
{{ resources.llmbind.nav }}
<header id="title-block-header"><h1 class="title">{{ resources.llmbind.title | e }}</h1>
{%- if resources.llmbind.description %}<p class="description">{{ resources.llmbind.description | e }}</p>{% endif -%}
</header>
{%- endblock body_header -%}
"""

def exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    return HTMLExporter(template_name="lab", template_file="llmbind_offline.html.j2",
                        extra_loaders=[DictLoader({"llmbind_offline.html.j2": TEMPLATE})],
                        exclude_input_prompt=True, exclude_output_prompt=True)

def pandoc_link_attrs(body: str) -> str:
    "Pandoc's `[text](url){key=\"value\"}` (nbdev's `source` links) as attributes of the link, not as text."
    def attrs(m):
        kv = re.findall(r'([\w\-]+)="([^"]*)"', m.group(3))
        return m.group(1) + "".join(f' {k}="{html.escape(v, quote=True)}"' for k, v in kv) + f">{m.group(2)}</a>"
    return re.sub(r'(<a [^>]*?)>([^<]*)</a>\{((?:\s*[\w\-]+="[^"]*")+\s*)\}', attrs, body)

def render(nb_json: dict, title: str, description: str, nav: str, mathjax_src: str, exp=None) -> str:
    "One notebook as a complete HTML page (title header, sidebar, local MathJax)."
    import nbformat
    nb = nbformat.reads(json.dumps(nb_json), as_version=4)
    nb.metadata["title"] = f"{title} – llmbind"
    res = {"llmbind": {"title": title, "description": description, "nav": nav,
                       "mathjax_head": MATHJAX_HEAD % html.escape(mathjax_src, quote=True)}}
    body, _ = (exp or exporter()).from_notebook_node(nb, resources=res)
    return pandoc_link_attrs(body)

def nav_html(pages: list[tuple[str, str, str]], current: str) -> str:
    "The sidebar: (section, page file, title) in order; `current` is marked with aria-current."
    nav = ['<nav id="llmbind-sidebar"><b><a href="index.html">llmbind</a></b><ul>']
    last = None
    for section, page, title in pages:
        if section and section != last:
            nav.append(f'</ul><div class="section">{html.escape(section)}</div><ul>'); last = section
        cur = ' aria-current="page"' if page == current else ""
        nav.append(f'<li><a href="{page}"{cur}>{html.escape(title)}</a></li>')
    nav.append("</ul></nav>")
    return "".join(nav)

def doc_prefix(settings: Path = ROOT / "settings.ini") -> str:
    "The published site's URL (doc_host + doc_baseurl), ending in '/'; '' if settings.ini has none."
    cp = configparser.ConfigParser(interpolation=None); cp.read(settings)
    d = cp.defaults()
    host = d.get("doc_host", "").rstrip("/")
    return f"{host}{d.get('doc_baseurl', '').rstrip('/')}/" if host else ""

def anchor_key(a: str) -> str:
    "How heading anchors of quarto (`ranks-ports`) and nbconvert (`Ranks,-ports`) are matched."
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9_.\-]", "", a.lower().replace(" ", "-")))

def page_ids(text: str) -> set[str]:
    "The id and name attributes of an HTML page (link targets)."
    return set(html.unescape(m) for m in re.findall(r'\s(?:id|name)="([^"]*)"', text))

def rewrite_links(body: str, prefix: str, published: dict[str, str], ids: dict[str, set[str]]) -> str:
    """Links to notebooks (`X.ipynb#a`) and to the published site (`prefix + lora_moe.html#a`) -> local pages.
    `published` maps a published file name (`lora_moe.html`) to the local page (`02_lora_moe.html`), `ids`
    the local page to its ids; an anchor takes the spelling of the matching id of the target page."""
    def local(page: str, anchor: str | None) -> str:
        if not anchor: return page
        a = html.unescape(anchor)
        if a not in ids.get(page, ()):
            keys = {anchor_key(i): i for i in sorted(ids.get(page, ()))}
            a = keys.get(anchor_key(a), a)
        return f"{page}#{html.escape(a, quote=True)}"
    body = re.sub(r'href="(?:\./)?([\w\-]+)\.ipynb(?:#([^"]*))?"',
                  lambda m: f'href="{local(m.group(1) + ".html", m.group(2))}"', body)
    if prefix:
        def pub(m):
            name = m.group(1) or "index.html"
            return f'href="{local(published[name], m.group(2))}"' if name in published else m.group(0)
        body = re.sub(r'href="' + re.escape(prefix) + r'([\w\-.]*\.html)?(?:#([^"]*))?"', pub, body)
    return body

def cache_dir() -> Path:
    if os.environ.get("LLMBIND_DOCS_CACHE"): return Path(os.environ["LLMBIND_DOCS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmbind-docs"

def mathjax_es5(given: str | None = None) -> Path:
    "MathJax's es5/ folder: `given` (package or es5 folder), else the cache, installed there with npm if missing."
    if given:
        p = Path(given)
        for cand in (p, p / "es5", p / "node_modules" / "mathjax" / "es5"):
            if (cand / MATHJAX_COMPONENT).is_file(): return cand
        sys.exit(f"--mathjax {given}: no {MATHJAX_COMPONENT} there (give the npm package `mathjax@3` folder or its es5/)")
    dest = cache_dir() / f"mathjax-{MATHJAX_VERSION}"
    es5 = dest / "node_modules" / "mathjax" / "es5"
    if (es5 / MATHJAX_COMPONENT).is_file(): return es5
    npm = shutil.which("npm")
    if not npm:
        sys.exit(f"MathJax {MATHJAX_VERSION} is not in {dest} and npm is not installed: install Node.js/npm "
                 f"(apt-get install -y npm), or pass --mathjax DIR with an unpacked npm package mathjax@3")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="mathjax-", dir=dest.parent))
    print(f"installing MathJax {MATHJAX_VERSION} with npm into {dest}", flush=True)
    r = subprocess.run([npm, "install", "--prefix", str(tmp), "--no-save", "--no-package-lock", "--no-audit",
                        "--no-fund", "--loglevel=error", f"mathjax@{MATHJAX_VERSION}"], capture_output=True, text=True)
    if r.returncode or not (tmp / "node_modules/mathjax/es5" / MATHJAX_COMPONENT).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(f"npm install mathjax@{MATHJAX_VERSION} failed (needs the npm registry once; afterwards the "
                 f"cache {dest} is used offline):\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    if dest.exists(): shutil.rmtree(tmp)  # another build finished first
    else: tmp.rename(dest)
    return es5

def copy_mathjax(es5: Path, dest: Path):
    "The component, the CommonHTML woff fonts, and what MathJax's menu loads on demand (ui, a11y, sre)."
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(es5 / MATHJAX_COMPONENT, dest / MATHJAX_COMPONENT)
    for sub in ("output/chtml/fonts/woff-v2", "ui", "a11y", "sre", "input/tex/extensions", "input/mml/extensions"):
        if (es5 / sub).is_dir(): shutil.copytree(es5 / sub, dest / sub, dirs_exist_ok=True)
    for lic in ("LICENSE",):
        if (es5.parent / lic).is_file(): shutil.copy2(es5.parent / lic, dest / lic)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "site_offline"), help="output folder (replaced)")
    ap.add_argument("--mathjax", default=None, help="an unpacked npm package mathjax@3 (or its es5/) to use instead of the cache")
    ap.add_argument("--reuse-proc", action="store_true", help="use the existing _proc/ instead of running nbdev_proc_nbs")
    a = ap.parse_args(argv)
    out = Path(a.out); nbs = ROOT / "nbs"; proc = ROOT / "_proc"
    es5 = mathjax_es5(a.mathjax)
    r = None
    if not (a.reuse_proc and proc.exists()):
        r = subprocess.run(["nbdev_proc_nbs"], cwd=ROOT, capture_output=True, text=True)
    if not proc.exists(): sys.exit(f"nbdev_proc_nbs produced no _proc/ folder:\n{r.stderr[-2000:] if r else ''}")
    pages = sidebar_pages(nbs)
    items = []
    for section, name in pages:
        src = proc / name
        if not (nbs / name).exists(): sys.exit(f"{name} is listed in nbs/sidebar.yml but does not exist")
        if not src.exists():
            log = f"\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}" if r else " (run without --reuse-proc)"
            sys.exit(f"nbdev_proc_nbs did not process {name} (a docs cell failed):{log}")
        nb = clean_nb(src); fm = front_matter(nb)
        title = str(fm.get("title") or notebook_title(nbs / name) or Path(name).stem)
        items.append((section, name, page_name(name), title, str(fm.get("description") or ""),
                      str(fm.get("output-file") or ""), nb))
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    copy_mathjax(es5, out / MATHJAX_DIR)
    toc = [(s, p, t) for s, _, p, t, *_ in items]
    exp = exporter()
    bodies = {p: render(nb, t, d, nav_html(toc, p), f"{MATHJAX_DIR}/{MATHJAX_COMPONENT}", exp)
              for _, _, p, t, d, _, nb in items}
    ids = {p: page_ids(b) for p, b in bodies.items()}
    published = {(of or p): p for _, _, p, _, _, of, _ in items}
    prefix = doc_prefix()
    for p, body in bodies.items():
        (out / p).write_text(rewrite_links(body, prefix, published, ids))
    print(f"wrote {len(items)} pages to {out} (MathJax {MATHJAX_VERSION} from {es5})")
    return 0

if __name__ == "__main__":
    sys.exit(main())
