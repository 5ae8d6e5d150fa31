"""tools/docs_check.py and tools/docs_offline.py on tiny fake sites. The Chromium test runs only where
/usr/bin/chromium (or $CHROMIUM) and a cached MathJax (from an earlier `python tools/docs_offline.py`) exist;
nothing here touches the network."""
import base64, importlib.util, io, json, os, shutil, sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))
import docs_check as dc  # noqa: E402
import docs_offline as do  # noqa: E402

def png_data_uri(w=3, h=2) -> str:
    from PIL import Image
    buf = io.BytesIO(); Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

# ------------------------------------------------------------ TeX spans as MathJax counts them
def test_tex_spans_delimiters():
    t = r"a $x^2$ b $$\sum_i y_i$$ c \(z\) d \[w\] e \begin{align}p\end{align} f"
    assert dc.tex_spans(t) == ["$x^2$", r"$$\sum_i y_i$$", r"\(z\)", r"\[w\]", r"\begin{align}p\end{align}"]

def test_tex_spans_escapes_braces_and_unclosed():
    assert dc.tex_spans(r"costs \$5, not math") == []
    assert dc.tex_spans(r"$a{\$}b$") == [r"$a{\$}b$"]          # an escaped dollar inside math
    assert dc.tex_spans(r"$\text{a $ b}$") == [r"$\text{a $ b}$"]  # a dollar inside braces does not close
    assert dc.tex_spans("one $ alone") == []
    assert dc.tex_spans("$5 and $6") == ["$5 and $"]            # as MathJax does: pairs the two dollars
    assert dc.tex_spans(r"see \eqref{eq1}") == [r"\eqref{eq1}"]

# ------------------------------------------------------------ static page facts
PAGE = """<!DOCTYPE html><html><head><title>Lesson – llmbind</title><script src="_static/m.js"></script></head>
<body><nav id="llmbind-sidebar"><a href="index.html">home</a></nav>
<header id="title-block-header"><h1 class="title">Lesson</h1></header>
<div class="jp-Cell jp-MarkdownCell" id="cell-id=md1"><h2 id="Intro">Intro</h2>
<p>Inline $a_1$ and <code>$not_math$</code>, display $$b$$<br>and \\(c\\).</p><a name="old"></a>
<a href="other.html#Sec">x</a><img src="fig.png"></div>
<div class="jp-Cell jp-CodeCell" id="cell-id=code1"><pre>$x$ in code</pre><img src="DATA"></div></body></html>"""

def test_parse_page():
    f = dc.parse_page(PAGE.replace("DATA", png_data_uri()))
    assert f.title == "Lesson – llmbind" and f.h1 == "Lesson"
    assert {"Intro", "old", "llmbind-sidebar", "title-block-header"} <= f.ids
    assert [s for s, _ in f.tex] == ["$a_1$", "$$b$$", r"\(c\)"]        # not inside <code>/<pre>
    hrefs = dict(f.hrefs)
    assert hrefs["index.html"] == "page chrome" and hrefs["other.html#Sec"] == "cell 0 cell-id=md1"
    assert [w for _, w in f.imgs] == ["cell 0 cell-id=md1", "cell 1 cell-id=code1"]
    assert f.resources == ["_static/m.js"]

# ------------------------------------------------------------ links and figures on a fake site
@pytest.fixture
def site(tmp_path):
    (tmp_path / "index.html").write_text('<h2 id="The-%3Cdet%3E-heads">x</h2><a name="legacy"></a>')
    (tmp_path / "a.html").write_text('<h2 id="Sec">s</h2>')
    (tmp_path / "fig.png").write_bytes(b"png")
    return tmp_path

def test_link_problems(site):
    prefix = "https://example.github.io/proj/"
    hrefs = [("a.html", "c1"), ("a.html#Sec", "c1"), ("#legacy", "c2"), ("#The-%3Cdet%3E-heads", "c2"),
             ("./", "c2"), ("a.html#nope", "c3"), ("missing.html", "c4"), ("../outside.html", "c5"),
             ("https://other.org/x", "c6"), ("mailto:a@b.c", "c6"), (prefix + "a.html#sec", "c7")]
    n_int, n_ext, probs, anchors = dc.link_problems(site, "index.html", hrefs, prefix)
    assert (n_int, n_ext) == (9, 2)
    assert len(probs) == 3 and len(anchors) == 1
    assert "missing.html does not exist" in probs[0] and "published site" in probs[2]
    assert "outside.html does not exist" in probs[1]  # URLs resolve inside the site root, as in a browser
    assert "no id 'nope' in a.html" in anchors[0] and "(c3)" in anchors[0]

def test_figure_file_problems(site):
    imgs = [("fig.png", "c1"), (png_data_uri(), "c2"), ("nofig.png", "c3"), ("", "c4"), ("http://x.org/a.png", "c5")]
    probs = dc.figure_file_problems(site, "index.html", imgs)
    assert len(probs) == 3 and "nofig.png does not exist" in probs[0] and "no src" in probs[1] and "another host" in probs[2]

def test_locate(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "id": "m1", "source": "# T"},
                    {"cell_type": "code", "id": "c1", "source": "#| export\nclass Foo:\n    'Doc with `Foo.bar`.'"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    proc = {"cells": [nb["cells"][0], {"cell_type": "code", "source": "#| echo: false\nshow_doc(Foo)"}]}
    (tmp_path / "x.ipynb").write_text(json.dumps(nb)); (tmp_path / "p.ipynb").write_text(json.dumps(proc))
    dc._cells.cache_clear()
    assert dc.locate("cell 0 cell-id=m1", tmp_path / "x.ipynb").endswith("x.ipynb cell 0 (markdown)")
    assert dc.locate("cell 1 cell-id=proc-1", tmp_path / "x.ipynb", tmp_path / "p.ipynb").startswith("docstring of Foo, ")
    assert dc.locate("page chrome", tmp_path / "x.ipynb") == "page chrome"

def test_table_and_front_matter_pattern():
    rows = [dc.Row("index.html", True, "0/0", "0/0", "3/3"), dc.Row("a.html", False, "1/2", "1/1", "0/1", ["x"])]
    t = dc.table(rows).splitlines()
    assert t[0].split() == ["page", "title", "equations", "figures", "links", "status"]
    assert t[2].split()[-1] == "OK" and t[3].split()[-1] == "FAIL" and "BAD" in t[3]
    assert dc.FRONT_MATTER.search("--- description: x output-file: a.html title: A ---")
    assert not dc.FRONT_MATTER.search("a --- b")

# ------------------------------------------------------------ docs_offline: notebook cleaning and links
def test_clean_nb(tmp_path):
    cells = [{"cell_type": "raw", "metadata": {}, "source": "---\ntitle: T\ndescription: D\noutput-file: t.html\n---\n"},
             {"cell_type": "code", "metadata": {"execution": {"x": 1}}, "execution_count": 1,
              "source": "#| echo: false\n#| output: asis\nshow_doc(f)", "outputs": []},
             {"cell_type": "code", "id": "k", "metadata": {}, "execution_count": 2, "source": "#| include: false\nx = 1", "outputs": []},
             {"cell_type": "code", "id": "w", "metadata": {}, "execution_count": 3, "source": "bar()",
              "outputs": [{"output_type": "display_data", "metadata": {},
                           "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "m"}, "text/plain": "50%|#"}},
                          {"output_type": "display_data", "metadata": {},
                           "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "n"}}}]}]
    p = tmp_path / "n.ipynb"
    p.write_text(json.dumps({"cells": cells, "metadata": {"widgets": {}}, "nbformat": 4, "nbformat_minor": 5}))
    nb = do.clean_nb(p)
    assert do.front_matter(nb) == {"title": "T", "description": "D", "output-file": "t.html"}
    assert "widgets" not in nb["metadata"] and [c["id"] for c in nb["cells"]] == ["proc-1", "w"]
    sd, w = nb["cells"]
    assert sd["source"] == "show_doc(f)" and sd["metadata"] == {"transient": {"remove_source": True}}
    assert w["outputs"] == [{"output_type": "display_data", "metadata": {}, "data": {"text/plain": "50%|#"}}]

def test_rewrite_links_and_attrs():
    prefix = "https://example.github.io/proj/"
    published = {"index.html": "index.html", "lora_moe.html": "02_lora_moe.html"}
    ids = {"02_lora_moe.html": {"LoRAMoELinear", "Ranks,-ports-and-more"}, "index.html": set()}
    body = (f'<a href="{prefix}lora_moe.html#loramoelinear">x</a> <a href="{prefix}lora_moe.html#ranks-ports-and-more">y</a> '
            f'<a href="{prefix}">h</a> <a href="{prefix}other.html#a">o</a> <a href="02_lora_moe.ipynb#x">n</a>')
    out = do.rewrite_links(body, prefix, published, ids)
    assert 'href="02_lora_moe.html#LoRAMoELinear"' in out and 'href="02_lora_moe.html#Ranks,-ports-and-more"' in out
    assert 'href="index.html"' in out and f'href="{prefix}other.html#a"' in out and 'href="02_lora_moe.html#x"' in out
    src = '<p><a href="https://g/x.py#L3">source</a>{target="_blank" style="float:right; font-size:smaller"}</p>'
    assert do.pandoc_link_attrs(src) == '<p><a href="https://g/x.py#L3" target="_blank" style="float:right; font-size:smaller">source</a></p>'

def test_cell_options_and_titles(tmp_path):
    assert do.cell_options("#| echo: false\n#|hide\nx = 1") == ({"echo": "false"}, "x = 1")
    p = tmp_path / "a.ipynb"
    p.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": ["# My title\n", "\n> sub"]}]}))
    assert do.notebook_title(p) == "My title"
    nbs = tmp_path / "nbs"; nbs.mkdir()
    (nbs / "sidebar.yml").write_text("website:\n  sidebar:\n    contents:\n      - index.ipynb\n"
                                     "      - section: S\n        contents:\n          - 01_a.ipynb\n")
    for n in ("index.ipynb", "01_a.ipynb", "02_b.ipynb"): (nbs / n).write_text("{}")
    assert do.sidebar_pages(nbs) == [("", "index.ipynb"), ("S", "01_a.ipynb"), ("More", "02_b.ipynb")]

# ------------------------------------------------------------ the browser part (skipped without Chromium)
CHROMIUM = shutil.which(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
MJ = do.cache_dir() / f"mathjax-{do.MATHJAX_VERSION}" / "node_modules" / "mathjax" / "es5"
needs_browser = pytest.mark.skipif(not CHROMIUM or importlib.util.find_spec("websocket") is None
                                   or not (MJ / do.MATHJAX_COMPONENT).is_file(),
                                   reason="needs chromium, websocket-client and a cached MathJax (python tools/docs_offline.py)")

def _page(body: str) -> str:
    head = do.MATHJAX_HEAD % f"{do.MATHJAX_DIR}/{do.MATHJAX_COMPONENT}"
    return f'<!DOCTYPE html><html><head><title>T</title><link rel="icon" href="data:,">{head}</head><body>{body}</body></html>'

@needs_browser
def test_browser_good_and_bad_pages(tmp_path):
    do.copy_mathjax(MJ, tmp_path / do.MATHJAX_DIR)
    (tmp_path / "good.html").write_text(_page(
        f'<p>Inline $\\alpha_i$ and display $$\\sum_i x_i$$</p><img src="{png_data_uri(4, 3)}"><a href="bad.html">b</a>'))
    (tmp_path / "bad.html").write_text(_page(
        '<p>split <em>$x</em>_1$ math</p><p>$x^^2$ twice</p><p>$\\undefinedmacro$</p>'
        '<img src="nofig.png"><img src="http://example.invalid/x.png"><script>null.boom();</script>'))
    with dc.SiteServer(tmp_path) as srv:
        b = dc.Browser(CHROMIUM, tmp_path / "chromium.log", 60)
        try:
            for d in ("Page", "Runtime", "Log", "Network"): b.cdp.send(f"{d}.enable")
            good, gp = dc.browse_page(b.cdp, srv.base, "good.html", 60)
            bad, bp = dc.browse_page(b.cdp, srv.base, "bad.html", 60)
            assert dc.screenshot(b.cdp, tmp_path / "bad.png") and (tmp_path / "bad.png").stat().st_size > 1000
        finally:
            b.close()
    assert gp == [] and good["mathjax"].startswith("3.") and good["mjx"] == 2 and good["merror"] == []
    assert good["leftover"] == [] and good["imgs"][0]["w"] == 4 and good["http"] == 200
    text = "\n".join(bp)
    assert "JavaScript error" in text and "null" in text
    assert "HTTP 404 for nofig.png" in text and "request to http://example.invalid/x.png" in text
    assert [i["w"] for i in bad["imgs"]] == [0, 0]
    assert len(bad["merror"]) == 2 and "undefinedmacro" in bad["merror"][1]["text"]
    assert any("$x" in lo["text"] for lo in bad["leftover"])     # math cut by markup stays raw
