"""The layout rules, read from the code's own imports: commands at the top import the library
(wikigpt/), the library imports model.py, never the other way; no cycles; short files; docs whose
links lead somewhere."""
import ast
import re
import sys
from pathlib import Path

from conftest import ROOT

TOP = sorted(p for p in ROOT.glob("*.py"))
LIBRARY = sorted((ROOT / "wikigpt").rglob("*.py"))
BENCH = sorted((ROOT / "bench").rglob("*.py"))
COMMANDS = {p.stem for p in TOP} - {"model"}


def module(p: Path) -> str:
    parts = p.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(p: Path) -> set[str]:
    """Every module p imports, at any depth of its code (lazy imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


GRAPH = {module(p): imports(p) for p in TOP + LIBRARY + BENCH}


def test_the_top_level_is_the_journey():
    assert {"model", "train", "sample", "prepare_wiki", "chat_sft"} <= {p.stem for p in TOP}
    assert len(TOP) <= 12 and len(LIBRARY) >= 10, [p.name for p in TOP]


def test_the_library_shows_its_concepts_in_at_most_16_entries():
    """`ls wikigpt/` is the reading path (the files train() needs) plus one folder per concept."""
    entries = {p.name for p in (ROOT / "wikigpt").iterdir() if p.name != "__pycache__"}
    folders = {p.name for p in (ROOT / "wikigpt").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert len(entries) <= 16, sorted(entries)
    assert {"knowledge", "adapt", "run", "decoding", "server", "prep", "chat"} <= folders, folders
    for folder in folders:
        doc = ast.get_docstring(ast.parse((ROOT / "wikigpt" / folder / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"wikigpt/{folder}/__init__.py says what the folder is about"


def test_knowledge_and_decoding_never_import_training():
    """Answering from Wikipedia and decoding need a model, not the machinery that trains one."""
    training = ("wikigpt.run.dist", "wikigpt.run.fsdp", "wikigpt.run.train_log", "wikigpt.batches",
                "wikigpt.optim", "wikigpt.adapt.distill", "wikigpt.chat.sft_rows")
    for name, deps in GRAPH.items():
        if name.startswith(("wikigpt.knowledge", "wikigpt.decoding", "wikigpt.server")):
            assert not {d for d in deps if d.startswith(training)}, (name, deps)


def test_model_py_needs_only_the_standard_library_and_torch():
    outside = {m.split(".")[0] for m in GRAPH["model"]} - set(sys.stdlib_module_names) - {"torch"}
    assert not outside, outside


def test_the_library_and_benchmarks_never_import_a_command():
    for name, deps in GRAPH.items():
        if name.startswith(("wikigpt", "bench")):
            assert not {d.split(".")[0] for d in deps} & COMMANDS, (name, deps & COMMANDS)


def test_no_import_cycles():
    project = {m: {d for d in deps if d in GRAPH and d != m} for m, deps in GRAPH.items()}

    def reaches(start, goal, seen):
        return any(d == goal or (d not in seen and not seen.add(d) and reaches(d, goal, seen)) for d in project[start])
    cyclic = [m for m in project if reaches(m, m, set())]
    assert not cyclic, cyclic


def test_files_and_functions_stay_short():
    for p in TOP + LIBRARY + BENCH:
        text = p.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 500, p
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 100, f"{p.name}:{node.lineno} {node.name} is over 100 lines"


def names_used(node: ast.AST) -> set[str]:
    """The names a function or class reads in its code: its annotations left out (a type
    handed in, like the Tokenizer main builds, is not code the reader must follow)."""
    skip = set()
    for n in ast.walk(node):
        if isinstance(n, ast.arg) and n.annotation:
            skip.add(id(n.annotation))
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns:
            skip.add(id(n.returns))
        elif isinstance(n, ast.AnnAssign):
            skip.add(id(n.annotation))
    used, todo = set(), [node]
    while todo:
        n = todo.pop()
        if id(n) in skip:
            continue
        if isinstance(n, ast.Name):
            used.add(n.id)
        todo.extend(ast.iter_child_nodes(n))
    return used


def modules_train_needs() -> tuple[set[str], set[str]]:
    """(The files following train() requires, those train.py imports). Required: model.py,
    train.py, and the module of every name train.py imports that its functions and classes
    use, main() aside (main only builds train()'s arguments: the tokenizer, the dataset)."""
    tree = ast.parse((ROOT / "train.py").read_text(encoding="utf-8"))
    module_of = {alias.asname or alias.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom)
                 and node.module and node.module.split(".")[0] in ("wikigpt", "model") for alias in node.names}
    used = set().union(*(names_used(node) for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                         and node.name != "main"))
    path = {name: module.replace(".", "/") + ".py" for name, module in module_of.items()}
    return {"model.py", "train.py"} | {path[name] for name in used & set(path)}, set(path.values())


def test_the_readmes_reading_order_counts_the_lines_there_are():
    """README's "Read the code" table: every file it names exists, its line counts (and the total
    it gives) are within 5 % of `wc -l`, the total about 2,000 lines (at most 2,050: an evening's reading),
    and it names every file following train() requires, computed from train.py's code (the
    modules only main() needs belong in the "then" list after it, checked the same way but not
    counted)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Read the code")[1].split("\n## ")[0]
    tables = [t for t in section.split("\n\n") if t.startswith("|")]
    listed, totals = [], []
    for table in tables:
        total, names_here = 0, set()
        for row in table.splitlines()[2:]:
            cells = row.split("|")[1:-1]
            files, counts = (cells[1], cells[2]) if len(cells) == 4 else (cells[0], cells[1])
            names = [f.strip(" `") for f in files.split(",")]
            stated = [int(c) for c in counts.split("+")]
            for name, lines in zip(names, stated, strict=True):
                actual = len((ROOT / name).read_text(encoding="utf-8").splitlines())
                assert abs(actual - lines) <= 0.05 * actual, f"README says {name} has {lines} lines; it has {actual}"
                total += actual
                names_here.add(name)
        totals.append(total)
        listed.append(names_here)
    needed, imported = modules_train_needs()
    missing = needed - listed[0]
    assert not missing, f"following train() requires {sorted(missing)}: the counted table must list them"
    assert imported <= listed[0] | listed[1], f"train.py imports {sorted(imported - listed[0] - listed[1])}: list them"
    said = int(section.split("lines in all")[0].rsplit("about ", 1)[1].replace(",", ""))
    assert abs(said - totals[0]) <= 0.05 * totals[0], f"README says about {said} lines; the table's files hold {totals[0]}"
    assert said <= 2050 and totals[0] <= 2050, f"the reading path is {totals[0]} lines: at most 2,050"


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lowercased, punctuation dropped, spaces as
    hyphens, a repeated one numbered (headings inside code blocks are none)."""
    out, fenced = set(), False
    for line in markdown.splitlines():
        fenced ^= line.startswith("```")
        if not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            slug = re.sub(r"[^\w\- ]", "", m[1].strip().lower()).replace(" ", "-")
            n, base = 1, slug
            while slug in out:
                slug, n = f"{base}-{n}", n + 1
            out.add(slug)
    return out


def test_every_link_between_the_docs_leads_to_a_file_and_heading_there_is():
    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md")) + sorted(ROOT.glob("*/README.md"))
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.S)):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text(encoding="utf-8")):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken
