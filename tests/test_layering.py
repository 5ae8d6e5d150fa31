"""The package's import graph obeys the layer sentence of the README (nbs/index.ipynb, "Layers: ...").

The sentence is a list of chains separated by `;`. In a chain, `a` ← `b`, `c` ← `d` says that `b` and `c`
sit on `a` and `d` sits on both; modules in one group (between two arrows) are peers unless another chain
orders them. A module may be named in several chains; "below" is the transitive closure of every chain. "`x` sits on top" puts `x`
above every other module.

An import from `a` to `b` is allowed when `b` is below `a`, or when they are peers (and then only if no
cycle results). Everything counts as an import: module-level and function-level `import`/`from`
statements, relative and absolute, and string constants that name a module ("llmbind.X" or
"llmbind.X:function", as handed to importlib or to `launch`).
"""
import ast, re
from dataclasses import dataclass, field
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = "llmbind"
NOT_MODULES = {"__init__", "_modidx"}                    # package machinery, not layers
ARROW = "←"


# ----------------------------------------------------------------------------- the layer sentence
@dataclass
class Layers:
    below: dict = field(default_factory=dict)            # module -> set of modules strictly below it
    peers: set = field(default_factory=set)              # frozensets {a, b} listed in the same group

    @property
    def modules(self) -> set: return set(self.below)


def layer_sentence(readme: str) -> str:
    "The first sentence of the paragraph of `readme` that starts with 'Layers:', on one line (module names hold no '.')."
    paras = re.split(r"\n\s*\n", readme)
    found = [p for p in paras if p.lstrip().startswith("Layers:")]
    if len(found) != 1: raise ValueError(f"expected one paragraph starting with 'Layers:' in the README, found {len(found)}")
    return re.match(r"[^.]*\.?", " ".join(found[0].split())).group(0)


def parse_layers(sentence: str) -> Layers:
    "The order the layer sentence defines (raises ValueError on a sentence it cannot read or that orders a module below itself)."
    body = sentence.strip().removeprefix("Layers:").strip().rstrip(".")
    L = Layers()
    above: dict = {}                                     # direct edges: module -> modules right below it
    top = []
    for clause in (c.strip() for c in body.split(";")):
        if not clause: continue
        m = re.fullmatch(r"`(\w+)` sits on top", clause)
        if m: top.append(m.group(1)); continue
        groups = [re.findall(r"`(\w+)`", g) for g in clause.split(ARROW)]
        for g, raw in zip(groups, clause.split(ARROW)):
            if not g or re.sub(r"`\w+`|,|\s", "", raw): raise ValueError(f"cannot read the layer group {raw.strip()!r} in {clause!r}")
        for lo, hi in zip(groups, groups[1:]):
            for h in hi: above.setdefault(h, set()).update(lo)
        for g in groups:
            for a in g:
                above.setdefault(a, set())
                L.peers.update(frozenset((a, b)) for b in g if b != a)
    for t in top: above[t] = set(above) - {t}
    for m in above:                                       # transitive closure by depth-first search
        seen, stack = set(), list(above[m])
        while stack:
            x = stack.pop()
            if x in seen: continue
            seen.add(x); stack.extend(above.get(x, ()))
        if m in seen: raise ValueError(f"the layer sentence puts `{m}` below itself")
        L.below[m] = seen
    L.peers = {p for p in L.peers if not any(a in L.below[b] for a in p for b in p)}   # ordered elsewhere: the order wins
    return L


# ----------------------------------------------------------------------------- the import graph
@dataclass(frozen=True)
class Edge:
    src: str      # importing module
    dst: str      # imported module
    line: int
    how: str      # "import", "import (in a function)", "string"

    def __str__(self): return f"{PKG}/{self.src}.py:{self.line}: {self.src} -> {self.dst} ({self.how})"


def package_modules(pkg_dir: Path) -> set:
    return {p.stem for p in pkg_dir.glob("*.py") if p.stem not in NOT_MODULES}


def module_edges(src: str, name: str, modules: set) -> list:
    "Every reference from module `name` (source `src`) to another module of the package."
    tree = ast.parse(src)
    in_function = set()
    for f in ast.walk(tree):
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(f) if n is not f)
    out = []
    def add(node, dst, how):
        if dst in modules and dst != name:
            out.append(Edge(name, dst, node.lineno, how + (" (in a function)" if how == "import" and id(node) in in_function else "")))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == PKG and len(parts) > 1: add(node, parts[1], "import")
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1: raise ValueError(f"{name}: `from {'.' * node.level}{node.module or ''} import ...` leaves the package")
            mod = node.module or ""
            if node.level == 1: parts = [PKG] + (mod.split(".") if mod else [])
            else: parts = mod.split(".")
            if parts[0] != PKG: continue
            if len(parts) > 1: add(node, parts[1], "import")
            else:
                for a in node.names: add(node, a.name, "import")      # `from . import data`, `from llmbind import data`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = re.fullmatch(rf"{PKG}\.(\w+)(?:[.:][\w.]+)?", node.value.strip())
            if m: add(node, m.group(1), "string")
    return sorted(set(out), key=lambda e: (e.line, e.dst))


def import_graph(pkg_dir: Path) -> tuple:
    "(modules, edges) of the package in `pkg_dir`."
    modules = package_modules(pkg_dir)
    edges = [e for m in sorted(modules) for e in module_edges((pkg_dir / f"{m}.py").read_text(encoding="utf-8"), m, modules)]
    return modules, edges


# ----------------------------------------------------------------------------- the checks
def find_cycles(edges) -> list:
    "One cycle [a, b, ..., a] in each group of modules that import each other in a circle (strongly connected component)."
    graph = {}
    for e in edges: graph.setdefault(e.src, set()).add(e.dst); graph.setdefault(e.dst, set())
    index, low, stack, on_stack, comps = {}, {}, [], set(), []
    def strongconnect(v):                                  # Tarjan's algorithm
        index[v] = low[v] = len(index); stack.append(v); on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index: strongconnect(w); low[v] = min(low[v], low[w])
            elif w in on_stack: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop(); on_stack.discard(w); comp.add(w)
                if w == v: break
            if len(comp) > 1: comps.append(comp)
    for v in sorted(graph):
        if v not in index: strongconnect(v)
    cycles = []
    for comp in sorted(comps, key=min):                    # a shortest way back to the start, inside the component
        start = min(comp)
        prev, frontier = {start: None}, [start]
        while start not in [n for f in frontier for n in graph[f]]:
            nxt = []
            for f in frontier:
                for n in sorted(graph[f] & comp):
                    if n not in prev: prev[n] = f; nxt.append(n)
            frontier = nxt
        last = next(f for f in frontier if start in graph[f])
        path = [last]
        while prev[path[-1]] is not None: path.append(prev[path[-1]])
        cycles.append(path[::-1] + [start])
    return cycles


def cycle_report(cycle, edges) -> str:
    first = {}
    for e in edges: first.setdefault((e.src, e.dst), e)
    return " -> ".join(cycle) + "; via " + "; ".join(str(first[(a, b)]) for a, b in zip(cycle, cycle[1:]))


def layer_violations(edges, layers: Layers) -> list:
    "The edges the layer sentence does not allow, each with the reason."
    bad = []
    for e in edges:
        if e.src not in layers.below or e.dst not in layers.below: continue    # reported as unplaced
        if e.dst in layers.below[e.src] or frozenset((e.src, e.dst)) in layers.peers: continue
        if e.src in layers.below[e.dst]: bad.append(f"{e}: imports upward")
        else: bad.append(f"{e}: imports a module the layer sentence does not place below it")
    return bad


def check(pkg_dir: Path, sentence: str) -> list:
    "Every problem of the package in `pkg_dir` against `sentence`, as messages (empty: the layering holds)."
    layers = parse_layers(sentence)
    modules, edges = import_graph(pkg_dir)
    problems = [f"module {m} ({PKG}/{m}.py) is missing from the layer sentence" for m in sorted(modules - layers.modules)]
    problems += [f"the layer sentence names `{m}`, which is not a module of {PKG}/" for m in sorted(layers.modules - modules)]
    problems += ["import cycle: " + cycle_report(c, edges) for c in find_cycles(edges)]
    return problems + layer_violations(edges, layers)


# ----------------------------------------------------------------------------- the package itself
def readme_sentence() -> str:
    return layer_sentence((ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_sentence_parses():
    L = parse_layers(readme_sentence())
    assert "config" in L.below["model"] and "model" in L.below["cli"]


def test_every_module_is_placed():
    L, modules = parse_layers(readme_sentence()), package_modules(ROOT / PKG)
    missing, extra = sorted(modules - L.modules), sorted(L.modules - modules)
    assert not missing, f"modules missing from the README's layer sentence: {missing}"
    assert not extra, f"the README's layer sentence names modules that {PKG}/ does not have: {extra}"


def test_no_import_cycle():
    _, edges = import_graph(ROOT / PKG)
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(cycle_report(c, edges) for c in cycles)


def test_no_upward_import():
    _, edges = import_graph(ROOT / PKG)
    bad = layer_violations(edges, parse_layers(readme_sentence()))
    assert not bad, "imports against the layer sentence:\n" + "\n".join(bad)



# ----------------------------------------------------------------------------- the checker, on made-up packages
SENTENCE = "Layers: `base` ← `low`, `side` ← `mid` ← `high`; `low` ← `branch`; `app` sits on top."


def write_pkg(tmp_path, files: dict) -> Path:
    d = tmp_path / PKG; d.mkdir()
    (d / "__init__.py").write_text("")
    for name in ("base", "low", "side", "mid", "high", "branch", "app"): (d / f"{name}.py").write_text(files.get(name, ""))
    return d


def test_parse_sentence():
    L = parse_layers(SENTENCE)
    assert L.below["mid"] == {"base", "low", "side"} and L.below["high"] == {"base", "low", "side", "mid"}
    assert L.below["branch"] == {"base", "low"} and L.below["app"] == L.modules - {"app"}
    assert frozenset(("low", "side")) in L.peers
    L2 = parse_layers("Layers: `a` ← `b` ← `c`; `a`, `b` ← `d`.")    # a and b share a group but are ordered: not peers
    assert L2.peers == set() and L2.below["d"] == {"a", "b"}
    with pytest.raises(ValueError, match="below itself"): parse_layers("Layers: `a` ← `b` ← `a`.")
    with pytest.raises(ValueError, match="cannot read"): parse_layers("Layers: `a` ← b.")
    text = "intro\n\nLayers: `a` ←\n`b`. A test reads \"llmbind.X\".\n\nmore"
    assert layer_sentence(text) == "Layers: `a` ← `b`."


def test_clean_package_passes(tmp_path):
    d = write_pkg(tmp_path, {"mid": "from .low import f\nfrom . import base\nimport llmbind.side\n",
                             "low": "from .side import g\n",                        # peers, acyclic: allowed
                             "app": "import importlib\nm = importlib.import_module('llmbind.high')\n"})
    assert check(d, SENTENCE) == []


def test_upward_import_is_reported(tmp_path):
    d = write_pkg(tmp_path, {"low": "import torch\nfrom llmbind.mid import thing\n"})
    problems = check(d, SENTENCE)
    assert problems == [f"{PKG}/low.py:2: low -> mid (import): imports upward"]


def test_function_level_import_is_reported(tmp_path):
    d = write_pkg(tmp_path, {"mid": "def f():\n    x = 1\n    from .high import g\n    return g\n"})
    assert check(d, SENTENCE) == [f"{PKG}/mid.py:3: mid -> high (import (in a function)): imports upward"]


def test_string_reference_is_reported(tmp_path):
    d = write_pkg(tmp_path, {"mid": "FNS = {'model_fn': 'llmbind.app:model_fn'}\nDOC = 'see llmbind.app:model_fn for more'\n"})
    assert check(d, SENTENCE) == [f"{PKG}/mid.py:1: mid -> app (string): imports upward"]   # prose is not a reference


def test_unordered_modules_are_reported(tmp_path):
    d = write_pkg(tmp_path, {"branch": "from llmbind import side\n"})                     # side is not below branch
    assert check(d, SENTENCE) == [f"{PKG}/branch.py:1: branch -> side (import): imports a module the layer sentence "
                                  f"does not place below it"]


def test_cycle_is_reported(tmp_path):
    d = write_pkg(tmp_path, {"low": "from . import side\n", "side": "def f():\n    import llmbind.low\n"})
    problems = check(d, SENTENCE)
    assert len(problems) == 1 and problems[0].startswith("import cycle: low -> side -> low; via ")
    assert f"{PKG}/side.py:2: side -> low (import (in a function))" in problems[0]


def test_unplaced_module_is_reported(tmp_path):
    d = write_pkg(tmp_path, {})
    (d / "extra.py").write_text("from .base import x\n")
    assert check(d, SENTENCE) == [f"module extra ({PKG}/extra.py) is missing from the layer sentence"]
