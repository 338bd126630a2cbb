"""The layout rules, read from the code's own imports: commands at the top import the library
(wikigpt/), the library imports model.py, never the other way; no cycles; short files."""
import ast
import sys
from pathlib import Path

from conftest import ROOT

TOP = sorted(p for p in ROOT.glob("*.py"))
LIBRARY = sorted((ROOT / "wikigpt").rglob("*.py"))
BENCH = sorted((ROOT / "bench").glob("*.py"))
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
                assert node.end_lineno - node.lineno < 120, f"{p.name}:{node.lineno} {node.name}"


def test_the_readmes_reading_order_counts_the_lines_there_are():
    """README's "Read the code" table: every file it names exists, its line counts (and the total
    it gives) are within 5 % of `wc -l`, so the evening's reading it promises stays true, and it
    names every wikigpt module train.py imports (its module-level imports: the default path;
    LoRA, distillation, FSDP are imported where they are used). The "then" list after it
    (decoding, chat) is checked the same way but not counted."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Read the code")[1].split("\n## ")[0]
    tables = [t for t in section.split("\n\n") if t.startswith("|")]
    listed, totals = set(), []
    for table in tables:
        total = 0
        for row in table.splitlines()[2:]:
            cells = row.split("|")[1:-1]
            files, counts = (cells[1], cells[2]) if len(cells) == 4 else (cells[0], cells[1])
            names = [f.strip(" `") for f in files.split(",")]
            stated = [int(c) for c in counts.split("+")]
            for name, lines in zip(names, stated, strict=True):
                actual = len((ROOT / name).read_text(encoding="utf-8").splitlines())
                assert abs(actual - lines) <= 0.05 * actual, f"README says {name} has {lines} lines; it has {actual}"
                total += actual
                listed.add(name)
        totals.append(total)
    tree = ast.parse((ROOT / "train.py").read_text(encoding="utf-8"))
    imported = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)
                and node.module and node.module.split(".")[0] in ("wikigpt", "model")}
    missing = {m for m in imported if m.replace(".", "/") + ".py" not in listed}
    assert not missing, f"train.py imports {sorted(missing)}: the reading path must list them"
    said = int(section.split("lines in all")[0].rsplit("about ", 1)[1].replace(",", ""))
    assert len(tables[0].splitlines()) >= 12 and abs(said - totals[0]) <= 0.05 * totals[0], (said, totals[0])
