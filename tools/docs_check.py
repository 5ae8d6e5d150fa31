"""Check the offline documentation site (site_offline/, built by tools/docs_offline.py) in headless Chromium.

The site is served on a localhost port and every page listed in nbs/sidebar.yml is opened in Debian's
Chromium (driven over the DevTools protocol). For each page it checks that
- it loads (HTTP 200), without JavaScript errors, failed requests or requests leaving localhost;
- its title (`<title>` and the header) is the notebook's title (the `# Title` line of nbs/X.ipynb);
- every equation is typeset: MathJax loaded, one MathJax element per `$...$`, `$$...$$`, `\\(...\\)`,
  `\\[...\\]` or `\\begin{env}` found in the page (counted as MathJax counts them), no TeX errors, and no
  raw TeX (`$x_1$`, `$\\alpha$`, `\\(`) left in the text;
- every figure (<img>) loads and has a nonzero natural size;
- every link inside the site resolves to an existing file, and its #anchor to an id of that page.
Links to other hosts are counted but not followed (no network). It prints a table, then each problem
with the notebook cell it comes from, saves screenshots (index page, a lesson page and a close-up of its
first equation) and report.txt to --artifacts, and exits 1 when anything failed (2 when it cannot run).

`--no-browser` runs only what needs no browser (pages present, titles, equation counts, links, figure
files, no external scripts or styles): a quick check where Chromium is not installed.

Usage: python tools/docs_check.py [--site site_offline] [--artifacts docs_artifacts] [--no-browser]
Needs: apt-get install -y chromium (/usr/bin/chromium) and the Python package websocket-client.
"""
import argparse, base64, functools, html, json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time
import urllib.parse, urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import docs_offline  # noqa: E402  (sidebar order, titles, the published-site prefix)

# ---------------------------------------------------------------- TeX spans, as MathJax 3 finds them
# MathJax's FindTeX with the configuration docs_offline.py writes: inline $..$ and \(..\), display $$..$$
# and \[..\], processEscapes (\$ is a dollar), processEnvironments (\begin{x}..\end{x}), processRefs.
_START = re.compile(r"(\$\$|\\\[|\\\(|\$)|\\([\\$])|\\begin\s*\{([^}]*)\}|\\(eq)?ref\s*\{([^}]*)\}")
_CLOSE = {"$$": "$$", "\\[": "\\]", "\\(": "\\)", "$": "$"}

def _end_pattern(close: str) -> re.Pattern:
    return re.compile(re.escape(close) + r"|\\(?:[a-zA-Z]+|[\s\S])|[{}]")

def _find_end(text: str, i: int, close: str) -> int | None:
    "Index just past `close` after position i, skipping control sequences and text inside braces."
    braces = 0; pat = _end_pattern(close)
    for m in pat.finditer(text, i):
        if m.group(0) == close and braces == 0: return m.end()
        if m.group(0) == "{": braces += 1
        elif m.group(0) == "}" and braces: braces -= 1
    return None

def tex_spans(text: str) -> list[str]:
    "The math items MathJax 3 finds in one string of text (escaped dollars are not math)."
    out, pos = [], 0
    while True:
        m = _START.search(text, pos)
        if not m: return out
        if m.group(2) is not None:                      # \$ or \\ : an escape, not math
            pos = m.end(); continue
        if m.group(3) is not None:                      # \begin{env} ... \end{env}
            end = _find_end(text, m.end(), "\\end{" + m.group(3) + "}")
        elif m.group(5) is not None:                    # \ref{..} / \eqref{..}
            end = m.end()
        else:
            end = _find_end(text, m.end(), _CLOSE[m.group(1)])
        if end is None:
            pos = m.end(); continue
        out.append(text[m.start():end]); pos = end

# ---------------------------------------------------------------- what a page holds, read statically
SKIP_TAGS = {"script", "noscript", "style", "textarea", "pre", "code", "annotation", "annotation-xml"}
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
             "track", "wbr"}

@dataclass
class PageFacts:
    title: str = ""
    h1: str = ""
    ids: set = field(default_factory=set)
    hrefs: list = field(default_factory=list)      # (href, where)
    imgs: list = field(default_factory=list)       # (src, where)
    resources: list = field(default_factory=list)  # script src / stylesheet / icon href
    tex: list = field(default_factory=list)        # (span, where)
    text: list = field(default_factory=list)       # (visible text outside code, where)

class _PageParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.f = PageFacts(); self.stack = []; self.buf = []; self.ncell = -1
        self.in_title = self.in_h1 = False

    def where(self) -> str:
        for tag, skip, cell in reversed(self.stack):
            if cell: return cell
        return "page chrome" if any(t == "nav" or t == "header" for t, *_ in self.stack) else "page"

    def skipping(self) -> bool:
        return any(s for _, s, _ in self.stack)

    def flush(self):
        if self.buf and not self.skipping() and any(t == "body" for t, *_ in self.stack):
            w = self.where(); t = "".join(self.buf)
            self.f.tex += [(s, w) for s in tex_spans(t)]
            if t.strip(): self.f.text.append((t, w))
        self.buf = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"): self.f.ids.add(a["id"])
        if tag == "a" and a.get("name"): self.f.ids.add(a["name"])
        if tag == "br": self.buf.append("\n"); return
        if tag == "wbr": return
        self.flush()
        if tag == "a" and a.get("href") is not None: self.f.hrefs.append((a["href"], self.where()))
        if tag == "img": self.f.imgs.append((a.get("src") or "", self.where()))
        if tag == "script" and a.get("src"): self.f.resources.append(a["src"])
        if tag == "link" and a.get("href") and set((a.get("rel") or "").split()) & {"stylesheet", "icon", "preload"}:
            self.f.resources.append(a["href"])
        if tag == "title": self.in_title = True
        if tag == "h1" and "title" in (a.get("class") or "").split(): self.in_h1 = True
        if tag in VOID_TAGS: return
        cell = None
        if tag == "div" and "jp-Cell" in (a.get("class") or "").split():
            self.ncell += 1; cell = f"cell {self.ncell}" + (f" {a['id']}" if a.get("id") else "")
        skip = tag in SKIP_TAGS or "tex2jax_ignore" in (a.get("class") or "").split()
        self.stack.append((tag, skip, cell))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS: self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in VOID_TAGS: return
        self.flush()
        if tag == "title": self.in_title = False
        if tag == "h1": self.in_h1 = False
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag: del self.stack[i:]; break

    def handle_data(self, data):
        if self.in_title: self.f.title += data
        if self.in_h1: self.f.h1 += data
        self.buf.append(data)

def parse_page(text: str) -> PageFacts:
    "Title, header, ids, links, images, external resources and TeX spans of an HTML page."
    p = _PageParser(); p.feed(text); p.close(); p.flush()
    p.f.title = " ".join(p.f.title.split()); p.f.h1 = " ".join(p.f.h1.split())
    return p.f

# ---------------------------------------------------------------- links
BASE = "http://site.invalid/"  # the site root when links are resolved without a server

FRONT_MATTER = re.compile(r"(^|\s)---\s+(title|description|output-file)\s*:")

def link_problems(site: Path, page: str, hrefs, prefix: str = "", ids_of=None) -> tuple[int, int, list[str], list[str]]:
    """(internal links, external links, problems, missing anchors) for the links of `page` in `site`.
    Internal: relative links and links into the site; each must name an existing file inside the site
    and, with an #anchor on an HTML page, an id of that page. A link to the published site (`prefix`) is
    a problem (the offline site should link its own page). Other schemes/hosts are external, not followed."""
    site = Path(site).resolve()
    cache = {} if ids_of is None else ids_of
    def ids(p: Path) -> set:
        if p not in cache: cache[p] = parse_page(p.read_text(errors="replace")).ids
        return cache[p]
    internal = external = 0; problems = []; anchors = []
    for href, where in hrefs:
        href = href.strip()
        if prefix and href.startswith(prefix):
            internal += 1
            problems.append(f"link {href!r} ({where}) points at the published site, not at a page of this site")
            continue
        url = urllib.parse.urljoin(BASE + page, href)
        if not url.startswith(BASE):
            if urllib.parse.urlsplit(url).scheme in ("javascript",):
                problems.append(f"link {href!r} ({where}) is a javascript: URL")
            else: external += 1
            continue
        internal += 1
        parts = urllib.parse.urlsplit(url[len(BASE) - 1:])
        path = urllib.parse.unquote(parts.path).lstrip("/") or "index.html"
        if path.endswith("/"): path += "index.html"
        target = (site / path).resolve()
        if site not in target.parents and target != site:
            problems.append(f"link {href!r} ({where}) leaves the site folder"); continue
        if target.is_dir(): target = target / "index.html"
        if not target.is_file():
            problems.append(f"link {href!r} ({where}): {path} does not exist"); continue
        frag = parts.fragment  # a browser tries the fragment as written, then percent-decoded
        if frag and target.suffix == ".html" and not ({frag, urllib.parse.unquote(frag)} & ids(target)):
            anchors.append(f"link {href!r} ({where}): no id {urllib.parse.unquote(frag)!r} in {path}")
    return internal, external, problems, anchors

def figure_file_problems(site: Path, page: str, imgs) -> list[str]:
    "Static check of <img> sources: a data: URI must decode, a local file must exist (sizes need the browser)."
    out = []
    for src, where in imgs:
        if not src: out.append(f"figure ({where}) has no src"); continue
        if src.startswith("data:"):
            try:
                head, _, data = src.partition(",")
                raw = base64.b64decode(data, validate=False) if ";base64" in head else urllib.parse.unquote_to_bytes(data)
                if not raw: out.append(f"figure ({where}): empty data URI")
            except ValueError as e: out.append(f"figure ({where}): bad data URI ({e})")
            continue
        url = urllib.parse.urljoin(BASE + page, src)
        if not url.startswith(BASE): out.append(f"figure {src!r} ({where}) is loaded from another host"); continue
        path = urllib.parse.unquote(urllib.parse.urlsplit(url).path).lstrip("/")
        if not (Path(site) / path).is_file(): out.append(f"figure {src!r} ({where}): {path} does not exist")
    return out

@functools.lru_cache(maxsize=64)
def _cells(path: Path) -> tuple:
    try: return tuple(json.loads(Path(path).read_text())["cells"])
    except (OSError, ValueError, KeyError): return ()

def _src(c: dict) -> str:
    return "".join(c["source"]) if isinstance(c["source"], list) else c["source"]

def locate(where: str, nb: Path | None, proc: Path | None = None) -> str:
    """Where a problem comes from: `cell 7 cell-id=abc` -> `nbs/X.ipynb cell 9 (markdown)` by the cell id;
    a show_doc cell that nbdev_proc_nbs added -> the docstring of NAME and the cell defining NAME."""
    m = re.match(r"cell (\d+)(?: cell-id=(\S+))?$", where)
    if not m or nb is None or not nb.exists(): return where
    name = nb.relative_to(ROOT) if ROOT in nb.parents else nb
    cid = m.group(2)
    if cid:
        for i, c in enumerate(_cells(nb)):
            if c.get("id") == cid: return f"{name} cell {i} ({c['cell_type']})"
        pcells = _cells(proc) if proc is not None else ()
        pm = re.fullmatch(r"proc-(\d+)", cid)  # docs_offline.clean_nb's id for a cell nbdev_proc_nbs added
        for j, c in enumerate(pcells):
            if not (c.get("id") == cid or (pm and int(pm.group(1)) == j and not c.get("id"))): continue
            sd = re.search(r"show_doc\(([\w.]+)", _src(c))
            if sd:
                last = sd.group(1).split(".")[-1]
                for i, d in enumerate(_cells(nb)):
                    if d["cell_type"] == "code" and re.search(rf"^\s*(?:async\s+)?(?:class|def)\s+{re.escape(last)}\b", _src(d), re.M):
                        return f"docstring of {sd.group(1)}, {name} cell {i}"
                return f"docstring of {sd.group(1)} ({name})"
    return f"rendered cell {m.group(1)} of {name}"

# ---------------------------------------------------------------- serving the site
class _Handler(SimpleHTTPRequestHandler):
    log = None
    def log_request(self, code="-", size="-"):
        if self.log is not None: self.log.append((self.path, int(code) if str(code).isdigit() else 0))
    def log_message(self, *a): pass
    def end_headers(self):
        self.send_header("Cache-Control", "no-store"); super().end_headers()

class SiteServer:
    "site/ on http://127.0.0.1:PORT/ from a background thread."
    def __init__(self, site: Path):
        self.log = []
        handler = type("H", (_Handler,), {"log": self.log})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    def __enter__(self): self.thread.start(); return self
    def __exit__(self, *a): self.httpd.shutdown(); self.httpd.server_close()

# ---------------------------------------------------------------- Chromium over the DevTools protocol
class CDPError(RuntimeError): pass

class CDP:
    "A minimal DevTools-protocol client on one page target: commands wait for their reply, events are kept."
    def __init__(self, ws_url: str, timeout: float):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True,
                                              http_no_proxy=["127.0.0.1", "localhost"])
        self.next_id = 0; self.events = []; self.timeout = timeout

    def _recv(self, deadline: float) -> dict:
        import websocket
        left = deadline - time.monotonic()
        if left <= 0: raise TimeoutError
        self.ws.settimeout(left)
        try: return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException: raise TimeoutError from None
        except (websocket.WebSocketException, OSError) as e: raise CDPError(f"connection to Chromium lost: {e}") from None

    def send(self, method: str, params: dict | None = None, timeout: float | None = None) -> dict:
        import websocket
        self.next_id += 1; mid = self.next_id
        try: self.ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        except (websocket.WebSocketException, OSError) as e: raise CDPError(f"connection to Chromium lost: {e}") from None
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try: msg = self._recv(deadline)
            except TimeoutError: raise TimeoutError(f"no reply to {method} within {timeout or self.timeout:.0f}s") from None
            if msg.get("id") == mid:
                if "error" in msg: raise CDPError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            if "method" in msg: self.events.append(msg)

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        for e in self.events:
            if e["method"] == method: return e
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try: msg = self._recv(deadline)
            except TimeoutError: raise TimeoutError(f"no {method} within {timeout or self.timeout:.0f}s") from None
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method: return msg

    def close(self):
        try: self.ws.close()
        except Exception: pass

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage", "--no-proxy-server",
                  "--hide-scrollbars", "--mute-audio", "--disable-features=Translate,MediaRouter,OptimizationHints",
                  "--window-size=1280,900", "--remote-debugging-port=0"]

class Browser:
    "Headless Chromium with a fresh profile, ended (with its process group) on close."
    def __init__(self, exe: str, log_path: Path, timeout: float):
        self.profile = tempfile.mkdtemp(prefix="llmbind-chromium-")
        self.log_path = log_path; self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            port_file = Path(self.profile) / "DevToolsActivePort"; deadline = time.monotonic() + timeout
            while not (port_file.exists() and port_file.read_text().strip()):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Chromium exited with code {self.proc.returncode}:\n{self._log_tail()}")
                if time.monotonic() > deadline: raise RuntimeError(f"Chromium did not start within {timeout:.0f}s:\n{self._log_tail()}")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            targets = []
            while not any(t.get("type") == "page" for t in targets):
                targets = json.loads(opener.open(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
                if time.monotonic() > deadline: raise RuntimeError("Chromium has no page to drive")
                time.sleep(0.1)
            page = next(t for t in targets if t.get("type") == "page")
            self.cdp = CDP(page["webSocketDebuggerUrl"], timeout)
        except BaseException:
            self.close(); raise

    def _log_tail(self) -> str:
        self.log.flush()
        return self.log_path.read_bytes()[-2000:].decode(errors="replace")

    def close(self):
        if getattr(self, "cdp", None): self.cdp.close()
        if self.proc.poll() is None:
            try: os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError: pass
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

COLLECT_JS = r"""(async () => {
  const out = {mathjax: null};
  const MJ = window.MathJax;
  if (MJ && MJ.startup && MJ.startup.promise) {
    try { await MJ.startup.promise; out.mathjax = MJ.version || 'loaded'; } catch (e) { out.mathjax_error = String(e); }
  }
  if (document.fonts && document.fonts.ready) await document.fonts.ready;
  await Promise.all(Array.from(document.images).map(i => i.complete ? null : new Promise(r => {
    i.addEventListener('load', r, {once: true}); i.addEventListener('error', r, {once: true}); })));
  const cells = Array.from(document.querySelectorAll('.jp-Cell'));
  const where = el => {
    const c = el.closest('.jp-Cell');
    if (c) return 'cell ' + cells.indexOf(c) + (c.id ? ' ' + c.id : '');
    return el.closest('#llmbind-sidebar, #title-block-header') ? 'page chrome' : 'page';
  };
  out.title = document.title;
  const h1 = document.querySelector('#title-block-header h1');
  out.h1 = h1 ? h1.textContent.trim() : null;
  out.mjx = document.querySelectorAll('mjx-container').length;
  out.merror = Array.from(document.querySelectorAll('mjx-merror')).map(e => ({
    text: (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 160), where: where(e)}));
  const SKIP = new Set(['SCRIPT', 'NOSCRIPT', 'STYLE', 'TEXTAREA', 'PRE', 'CODE', 'ANNOTATION',
                        'ANNOTATION-XML', 'MJX-CONTAINER']);
  const blocks = new Map();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {acceptNode(n) {
    for (let e = n.parentElement; e; e = e.parentElement)
      if (SKIP.has(e.tagName) || e.classList.contains('tex2jax_ignore')) return NodeFilter.FILTER_REJECT;
    return NodeFilter.FILTER_ACCEPT; }});
  for (let n; (n = walker.nextNode()); ) {
    const b = n.parentElement.closest('p,li,td,th,h1,h2,h3,h4,h5,h6,dd,dt,blockquote,div') || document.body;
    blocks.set(b, (blocks.get(b) || '') + n.nodeValue);
  }
  const RAW = /(^|[^\\])\$\$?[^$]*?(\\[a-zA-Z]+|[_^{}])[^$]*?\$|\\\(|\\\[|\\begin\{/;
  out.leftover = [];
  for (const [b, t] of blocks) {
    const m = t.match(RAW);
    if (m) out.leftover.push({text: t.slice(Math.max(0, m.index - 30), m.index + m[0].length + 30).replace(/\s+/g, ' '),
                              where: where(b)});
  }
  out.imgs = Array.from(document.images).map(i => {
    const s = i.getAttribute('src') || '';
    return {src: s.startsWith('data:') ? s.slice(0, 22) + '... (' + s.length + ' chars)' : s,
            complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, where: where(i)};
  });
  return out;
})()"""

SETTLE_JS = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"

def browse_page(cdp: CDP, base: str, page: str, timeout: float) -> tuple[dict, list[str]]:
    "Open one page; (what COLLECT_JS found, runtime problems: status, JS errors, failed/external requests)."
    try: return _browse_page(cdp, base, page, timeout)
    except (TimeoutError, CDPError) as e: return {}, [f"the browser failed on this page: {e}"]

def _browse_page(cdp: CDP, base: str, page: str, timeout: float) -> tuple[dict, list[str]]:
    cdp.events.clear()
    problems = []
    nav = cdp.send("Page.navigate", {"url": base + page}, timeout)
    if nav.get("errorText"): return {}, [f"navigation failed: {nav['errorText']}"]
    try: cdp.wait_event("Page.loadEventFired", timeout)
    except TimeoutError as e: return {}, [f"page did not finish loading: {e}"]
    try:
        r = cdp.send("Runtime.evaluate", {"expression": COLLECT_JS, "awaitPromise": True, "returnByValue": True}, timeout)
    except TimeoutError: return {}, [f"MathJax, fonts or images did not settle within {timeout:.0f}s"]
    if r.get("exceptionDetails"):
        d = r["exceptionDetails"]
        return {}, [f"page inspection failed: {d.get('exception', {}).get('description') or d.get('text')}"]
    facts = r["result"]["value"]
    urls = {}
    for ev in cdp.events:
        m, p = ev["method"], ev.get("params", {})
        if m == "Network.requestWillBeSent":
            url = p["request"]["url"]; urls[p["requestId"]] = url
            if not url.startswith((base, "data:", "blob:", "about:")):
                problems.append(f"request to {url[:120]} (the site must be self-contained)")
        elif m == "Network.responseReceived":
            st, url = p["response"]["status"], p["response"]["url"]
            if p.get("type") == "Document" and url.split("#")[0] == base + page: facts["http"] = st
            if st >= 400 and not url.endswith("/favicon.ico"): problems.append(f"HTTP {st} for {url[len(base):] if url.startswith(base) else url}")
        elif m == "Network.loadingFailed" and not p.get("canceled"):
            url = urls.get(p["requestId"], "?")
            if not url.endswith("/favicon.ico"): problems.append(f"failed to load {url[:120]}: {p.get('errorText')}")
        elif m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            msg = (d.get("exception") or {}).get("description") or d.get("text")
            problems.append(f"JavaScript error: {str(msg).splitlines()[0][:200]} ({d.get('url', '')}:{d.get('lineNumber', '')})")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            problems.append(f"console.error: {text[:200]}")
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            e = p["entry"]
            if not (e.get("url") or "").endswith("/favicon.ico") and e.get("source") != "network":
                problems.append(f"browser error: {e.get('text', '')[:200]}")
    if facts.get("http", 200) != 200: problems.append(f"HTTP {facts['http']} for the page")
    return facts, problems

def screenshot(cdp: CDP, path: Path, scroll_to_math: bool = False) -> bool:
    if scroll_to_math:
        found = cdp.send("Runtime.evaluate", {"returnByValue": True, "expression":
            "(() => { const m = document.querySelector('mjx-container[display=\"true\"]') || document.querySelector('mjx-container');"
            " if (!m) return false; m.scrollIntoView({block: 'center'}); return true; })()"})["result"].get("value")
        if not found: return False
    cdp.send("Runtime.evaluate", {"expression": SETTLE_JS, "awaitPromise": True})
    data = cdp.send("Page.captureScreenshot", {"format": "png"})["data"]
    path.write_bytes(base64.b64decode(data))
    if scroll_to_math: cdp.send("Runtime.evaluate", {"expression": "window.scrollTo(0, 0)"})
    return True

# ---------------------------------------------------------------- the check
@dataclass
class Row:
    page: str
    title_ok: bool = False
    equations: str = "-"
    figures: str = "-"
    links: str = "-"
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    @property
    def status(self): return "OK" if not self.problems else "FAIL"

def check_site(site: Path, nbs: Path, browser: Browser | None, base: str | None, timeout: float,
               pages: list[str] | None = None, shots: list[str] = (), artifacts: Path | None = None,
               anchors_fail: bool = True) -> list[Row]:
    "One Row per page of nbs/sidebar.yml (or `pages`): static checks, then the browser's when `browser` is given."
    prefix = docs_offline.doc_prefix()
    listed = [(docs_offline.page_name(n), nbs / n) for _, n in docs_offline.sidebar_pages(nbs)]
    if pages: listed = [(p, nb) for p, nb in listed if p in pages] + [(p, None) for p in pages if p not in dict(listed)]
    ids_cache, rows = {}, []
    for page, nb in listed:
        row = Row(page); rows.append(row)
        f = site / page
        if not f.is_file():
            row.problems.append(f"{page} is missing from {site} (run python tools/docs_offline.py)"); continue
        if nb is not None and nb.exists() and nb.stat().st_mtime > f.stat().st_mtime:
            print(f"warning: {nb.name} is newer than {page}: rebuild with python tools/docs_offline.py", file=sys.stderr)
        facts = parse_page(f.read_text(errors="replace"))
        where = lambda w: locate(w, nb, ROOT / "_proc" / nb.name if nb is not None else None)
        # title
        want = docs_offline.notebook_title(nb) if nb is not None and nb.exists() else ""
        got_title, got_h1 = facts.title, facts.h1
        # equations (static count), links, figure files, resources
        expected = len(facts.tex)
        n_int, n_ext, link_probs, anchor_probs = link_problems(site, page, [(h, where(w)) for h, w in facts.hrefs], prefix, ids_cache)
        row.problems += link_probs
        (row.problems if anchors_fail else row.warnings).extend(anchor_probs)
        row.links = f"{n_int - len(link_probs) - len(anchor_probs)}/{n_int}" + (f" +{n_ext} ext" if n_ext else "")
        for r in facts.resources:
            u = urllib.parse.urljoin(BASE + page, r)
            if not u.startswith(BASE) and not u.startswith("data:"):
                row.problems.append(f"loads {r[:120]} from another host (the site must be self-contained)")
            elif u.startswith(BASE) and not (site / urllib.parse.unquote(urllib.parse.urlsplit(u).path).lstrip("/")).is_file():
                row.problems.append(f"loads {r} which does not exist in the site")
        for t, w in facts.text:
            if FRONT_MATTER.search(t):
                row.problems.append(f"front matter shown as text ({where(w)}): {' '.join(t.split())[:80]}...")
        fig_probs = figure_file_problems(site, page, [(s, where(w)) for s, w in facts.imgs])
        row.problems += fig_probs
        row.figures = f"{len(facts.imgs) - len(fig_probs)}/{len(facts.imgs)}"
        row.equations = f"{expected} found"
        if browser is not None:
            dom, runtime = browse_page(browser.cdp, base, page, timeout)
            row.problems += runtime
            if dom:
                got_title, got_h1 = dom.get("title", ""), dom.get("h1") or ""
                typeset = dom.get("mjx", 0)
                row.equations = f"{typeset}/{expected}"
                if expected and not dom.get("mathjax"):
                    row.problems.append("MathJax did not load: " + (dom.get("mathjax_error") or "window.MathJax.startup is missing"))
                elif typeset < expected:
                    row.problems.append(f"only {typeset} of {expected} equations were typeset")
                for e in dom.get("merror", []):
                    row.problems.append(f"TeX error in an equation ({where(e['where'])}): {e['text']}")
                if dom.get("merror"): row.equations += f" {len(dom['merror'])} err"
                for lo in dom.get("leftover", []):
                    row.problems.append(f"raw TeX left in the text ({where(lo['where'])}): ...{lo['text']}...")
                bad = [i for i in dom.get("imgs", []) if not i["complete"] or not i["w"] or not i["h"]]
                for i in bad:
                    row.problems.append(f"figure {i['src']} ({where(i['where'])}) did not load or has zero size ({i['w']}x{i['h']})")
                n_img = len(dom.get("imgs", []))
                row.figures = f"{n_img - len(bad)}/{n_img}"
            if artifacts is not None and page in shots:
                stem = Path(page).stem
                screenshot(browser.cdp, artifacts / f"{stem}.png")
                if page != "index.html": screenshot(browser.cdp, artifacts / f"{stem}_math.png", scroll_to_math=True)
        want_title = f"{want} – llmbind"
        row.title_ok = bool(want) and got_title == want_title and got_h1 == want
        if nb is None: row.problems.append(f"{page} is not a page of nbs/sidebar.yml (no notebook to take its title from)")
        elif not want: row.problems.append(f"the notebook {nb.name} has no `# Title`")
        elif not row.title_ok:
            row.problems.append(f"title {got_title!r} / header {got_h1!r}, expected {want_title!r} / {want!r}")
    return rows

def table(rows: list[Row]) -> str:
    head = ("page", "title", "equations", "figures", "links", "status")
    data = [(r.page, "ok" if r.title_ok else "BAD", r.equations, r.figures, r.links, r.status) for r in rows]
    w = [max(len(str(x[i])) for x in [head, *data]) for i in range(len(head))]
    line = lambda xs: "  ".join(str(x).ljust(w[i]) for i, x in enumerate(xs)).rstrip()
    return "\n".join([line(head), line(["-" * n for n in w]), *map(line, data)])

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default=str(ROOT / "site_offline"), help="the built site (tools/docs_offline.py)")
    ap.add_argument("--artifacts", default=str(ROOT / "docs_artifacts"), help="screenshots and report.txt go here")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                    help="the browser (default $CHROMIUM or /usr/bin/chromium, from apt-get install -y chromium)")
    ap.add_argument("--timeout", type=float, default=60, help="seconds per page (load, MathJax, images)")
    ap.add_argument("--pages", default="", help="comma-separated page files to check (default: every sidebar page)")
    ap.add_argument("--screenshots", default="index.html,02_lora_moe.html",
                    help="pages to screenshot (a missing lesson falls back to the first lesson page)")
    ap.add_argument("--no-browser", action="store_true", help="static checks only (no Chromium)")
    ap.add_argument("--anchors", choices=("error", "warn"), default="error",
                    help="a link to a missing #anchor of an existing page: a failure (default) or a warning")
    a = ap.parse_args(argv)
    site, nbs, artifacts = Path(a.site), ROOT / "nbs", Path(a.artifacts)
    if not (site / "index.html").is_file():
        print(f"docs check: no site at {site}: build it first with python tools/docs_offline.py", file=sys.stderr); return 2
    pages = [p.strip() for p in a.pages.split(",") if p.strip()] or None
    all_pages = [docs_offline.page_name(n) for _, n in docs_offline.sidebar_pages(nbs)]
    shots = [p for p in a.screenshots.split(",") if p.strip()]
    lessons = [p for p in all_pages if p != "index.html"]
    shots = [p if p in all_pages or not lessons or p == "index.html" else lessons[0] for p in shots]
    artifacts.mkdir(parents=True, exist_ok=True)
    if not a.no_browser:
        for old in artifacts.glob("*.png"): old.unlink()
    t0 = time.monotonic()
    if a.no_browser:
        rows = check_site(site, nbs, None, None, a.timeout, pages, anchors_fail=a.anchors == "error")
    else:
        exe = shutil.which(a.chromium) or (a.chromium if Path(a.chromium).is_file() else None)
        if not exe:
            print(f"docs check: Chromium not found at {a.chromium}: apt-get install -y chromium "
                  "(or --chromium PATH, or --no-browser for the static checks)", file=sys.stderr); return 2
        try: import websocket  # noqa: F401
        except ImportError:
            print("docs check: the Python package websocket-client is missing: pip install websocket-client", file=sys.stderr); return 2
        with SiteServer(site) as srv:
            try: browser = Browser(exe, artifacts / "chromium.log", a.timeout)
            except RuntimeError as e:
                print(f"docs check: {e}", file=sys.stderr); return 2
            try:
                c = browser.cdp
                for d in ("Page", "Runtime", "Log", "Network"): c.send(f"{d}.enable")
                c.send("Network.setCacheDisabled", {"cacheDisabled": True})
                c.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
                rows = check_site(site, nbs, browser, srv.base, a.timeout, pages, shots, artifacts, a.anchors == "error")
            except (OSError, TimeoutError, CDPError) as e:  # the browser died or stopped answering
                print(f"docs check: Chromium stopped responding ({type(e).__name__}: {e}); "
                      f"its log: {artifacts / 'chromium.log'}", file=sys.stderr); return 2
            finally:
                browser.close()
    report = [table(rows), ""]
    bad = [r for r in rows if r.problems]
    for r in rows:
        if r.problems or r.warnings: report.append(f"{r.page}:")
        report += [f"  - {p}" for p in r.problems] + [f"  - warning: {p}" for p in r.warnings]
    n = sum(len(r.problems) for r in bad)
    mode = "static checks only" if a.no_browser else "Chromium"
    verdict = (f"docs check FAILED: {n} problem(s) on {len(bad)} of {len(rows)} pages ({mode}, {time.monotonic() - t0:.1f}s)"
               if bad else f"docs check passed: {len(rows)} pages ({mode}, {time.monotonic() - t0:.1f}s)")
    report.append(verdict)
    text = "\n".join(report)
    print(text)
    (artifacts / "report.txt").write_text(text + "\n")
    if not a.no_browser:
        print(f"screenshots: {', '.join(str(p) for p in sorted(artifacts.glob('*.png')))}")
    return 1 if bad else 0

if __name__ == "__main__":
    sys.exit(main())
