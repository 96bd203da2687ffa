"""The layering ARCHITECTURE.md promises, checked on the code's own imports (read with `ast`, so
imports inside functions count as much as those at the top of a file).

- no import cycle between modules;
- each package imports only what sits below it (the table in ARCHITECTURE.md);
- the bundled Flickr-compatible server imports nothing of the pipeline;
- only the catalog speaks SQL (imports a database driver, or holds an SQL statement), in the library
  and in flows/, which the library never imports; in bench/ only the scripts of an explicit list,
  each with its reason;
- no module of the library is over 400 lines.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mlc_pipeline"
CORE = {"config", "config_checks", "config_messages", "catalog_address", "layout", "fsutil", "manifest", "imageformat", "images", "locking", "secrets", "catalog",
        "executor", "objectstore", "s3client", "sync", "publishing", "storefiles", "storemodels", "storereports", "storestate",
        "storeversions", "withdrawal", "progress", "rounds", "interrupts"}
STAGES = {"collect", "curate", "dataset", "model", "report"}
TOP = {"pipeline", "shipping", "cli", "commands", "model_commands", "catalog_commands"}
# What each part must never import (ARCHITECTURE.md, "Who may import whom").
NEVER = {
    "core": STAGES | TOP | {"review"},
    "collect": {"curate", "dataset", "model", "report"} | TOP,
    "curate": {"collect", "dataset", "model", "report"} | TOP,
    "dataset": {"collect", "curate", "model", "report"} | TOP,
    "model": {"collect", "curate", "report"} | TOP,
    "report": TOP,
    "review": TOP,
    "flickr_server": {"core", "review"} | STAGES | TOP,
}
SQL_DRIVERS = {"sqlite3", "psycopg", "psycopg2", "sqlalchemy"}
FLOWS = ROOT / "flows"
# An SQL statement in a string: what a module that talks to the database through another's connection
# would hold (the driver check alone misses `catalog.db.execute("SELECT ...")`).
SQL_STATEMENT = re.compile(r"\b(SELECT\s.+?\sFROM\s|INSERT\s+(OR\s+\w+\s+)?INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|"
                           r"CREATE\s+(UNIQUE\s+)?(TABLE|INDEX)\s)", re.S)
MAX_LINES = 400


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def in_catalog(module: str) -> bool:
    """The catalog package itself: not `catalog_commands` or `catalog_address`, which a prefix test
    let through the SQL checks (a `mlc catalog` command holding a SELECT passed them)."""
    return module == "mlc_pipeline.catalog" or module.startswith("mlc_pipeline.catalog.")

def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of the library that `path` imports, wherever in the file, resolved to module names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import mod` imports a module; `from mod import name` the module itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known}
    return out - {name}


def external_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def part_of(module: str) -> str:
    first = module.split(".")[1] if "." in module else module
    return "core" if first in CORE else first


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(p, known) for m, p in known.items()}


def test_every_part_is_placed_in_the_layers():
    """A new top-level module or package is core, a stage, the top or one of the fenced packages: one
    left out of the sets above would be free to import anything (storefiles and progress were)."""
    placed = CORE | STAGES | TOP | set(NEVER)
    parts = {module.split(".")[1] for module in modules() if "." in module}
    assert parts <= placed, f"parts in no layer of ARCHITECTURE.md's table: {sorted(parts - placed)}"


def test_no_import_cycles(graph):
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_each_part_imports_only_what_sits_below_it(graph):
    wrong = []
    for module, targets in graph.items():
        forbidden = NEVER.get(part_of(module), set())
        for target in targets:
            if part_of(target) in forbidden:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against ARCHITECTURE.md:\n" + "\n".join(sorted(wrong))


def driver_imports(path: Path) -> set[str]:
    """The database-driver modules `path` imports, by full name (`psycopg.conninfo`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] in SQL_DRIVERS}


# libpq's own URL parser, no connection: catalog_address checks a catalog.url with it when the config loads
URL_PARSER_ONLY = {"mlc_pipeline.catalog_address": {"psycopg.conninfo"}}


def test_only_the_catalog_speaks_sql():
    speakers = sorted(module_name(p) for p in PKG.rglob("*.py") if not in_catalog(module_name(p))
                      and driver_imports(p) - URL_PARSER_ONLY.get(module_name(p), set()))
    assert not speakers, f"modules other than the catalog that import a database driver: {speakers}"
    assert driver_imports(PKG / "catalog_address.py") == {"psycopg.conninfo"}, "the exception above is stale"


def sql_strings(path: Path) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_STATEMENT.search(node.value)]


def test_no_sql_statement_outside_the_catalog_nor_in_flows():
    files = [p for p in [*PKG.rglob("*.py"), *FLOWS.rglob("*.py")] if not in_catalog(module_name(p))]
    found = {str(p.relative_to(ROOT)): lines for p in files if (lines := sql_strings(p))}
    assert not found, f"SQL statements outside mlc_pipeline/catalog (file: lines): {found}"
    drivers = sorted(str(p.relative_to(ROOT)) for p in FLOWS.rglob("*.py") if external_imports(p) & SQL_DRIVERS)
    assert not drivers, f"flows that import a database driver: {drivers}"
    assert sql_strings(PKG / "catalog" / "store.py"), "the check sees no SQL in the catalog itself: a useless test"


BENCH = ROOT / "bench"
# Code a bench script runs in a child process (`python -c "import sqlite3 ..."`) speaks SQL too.
DRIVER_IN_STRING = re.compile(r"\b(import\s+(sqlite3|psycopg2?|sqlalchemy)\b|(sqlite3|psycopg2?)\.connect\()")
# The bench scripts that speak SQL themselves, and why (each says so where it does). Every other
# one reads the catalog through mlc_pipeline.catalog, as the library does: what a bench asks of
# the catalog, a user or a test may ask too (the benches used to open catalog.sqlite themselves).
BENCH_SPEAKS_SQL = {
    "bench/misuse_runtime.py": "the locked-catalog case: another program (not mlc) holds the SQLite "
                               "write lock with BEGIN IMMEDIATE, as a DB browser or the sqlite3 shell would",
}


def bench_speaks_sql(path: Path) -> bool:
    strings = [node.value for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    return bool(external_imports(path) & SQL_DRIVERS or sql_strings(path)
                or any(DRIVER_IN_STRING.search(s) for s in strings))


def test_bench_scripts_speak_sql_only_where_listed():
    """The catalog is the single source of truth and the only code that speaks SQL: a bench that
    reads catalog.sqlite itself measures a schema of its own (and breaks on a PostgreSQL catalog).
    Only the scripts in BENCH_SPEAKS_SQL may, and each of them still must (a stale entry fails)."""
    speakers = {str(p.relative_to(ROOT)) for p in BENCH.rglob("*.py") if bench_speaks_sql(p)}
    assert not speakers - set(BENCH_SPEAKS_SQL), (
        f"bench scripts that speak SQL (read the catalog with mlc_pipeline.catalog; a read it lacks "
        f"belongs there, with a test): {sorted(speakers - set(BENCH_SPEAKS_SQL))}")
    assert not set(BENCH_SPEAKS_SQL) - speakers, f"listed but no longer speaking SQL: {sorted(set(BENCH_SPEAKS_SQL) - speakers)}"
    assert bench_speaks_sql(PKG / "catalog" / "sqlite.py"), "the bench check sees no SQL where there is: a useless test"


def sql_conditions_passed(path: Path) -> list[int]:
    """Lines where `path` hands the catalog an SQL condition: `catalog.candidates("status='accepted'")`
    (a string, or any positional or `where=` argument), which the keyword filters replace."""
    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "candidates"
            and (node.args or any(k.arg in ("where", "params") for k in node.keywords))]


def test_the_library_asks_the_catalog_for_rows_by_keywords_not_sql():
    """Seven modules outside the catalog passed `catalog.candidates` SQL conditions of their own
    (`"source=? AND status='failed' AND reason LIKE 'transient:%'"`), which the statement check above
    cannot see: they ask by keywords (catalog/rows.py) since 2026-12-07."""
    files = [p for p in [*PKG.rglob("*.py"), *FLOWS.rglob("*.py"), *BENCH.rglob("*.py")] if not in_catalog(module_name(p))]
    found = {str(p.relative_to(ROOT)): lines for p in files if (lines := sql_conditions_passed(p))}
    assert not found, f"SQL conditions handed to the catalog (file: lines): {found}"
    assert sql_conditions_passed(ROOT / "tests" / "catalog" / "test_rows.py"), "the check sees nothing: a useless test"


def test_the_library_never_imports_the_flows():
    """flows/ wires the library into Prefect; the library runs without it, and without Prefect loaded
    (secrets.py reads Prefect Secret blocks inside the function that needs them)."""
    def top_level(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        return {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names} | \
               {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    wrong = sorted(module_name(p) for p in PKG.rglob("*.py") if "flows" in external_imports(p) or "prefect" in top_level(p))
    assert not wrong, f"library modules that import flows/, or prefect when imported: {wrong}"


# The catalog, the single source of truth, sits low: of the core it may use only these (it held `mlc
# catalog`'s command, which imports sync and the object store, until 2026-12-06: the arch24 audit).
CATALOG_MAY_IMPORT = {"config", "config_checks", "config_messages", "catalog_address", "secrets", "fsutil", "layout"}



def test_the_catalog_imports_nothing_above_it(graph):
    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() if in_catalog(m) for t in targets
                   if not in_catalog(t) and t.split(".")[1] not in CATALOG_MAY_IMPORT)
    assert not wrong, "the catalog imports what sits above it:\n" + "\n".join(wrong)
    # and what the catalog may use never uses it back: config checked a catalog URL with
    # catalog/address.py, one upward arrow, until catalog_address.py moved below both (2026-12-07)
    back = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.split(".")[-1] in CATALOG_MAY_IMPORT
                  and m.count(".") == 1 for t in targets if in_catalog(t))
    assert not back, "the core below the catalog imports it:\n" + "\n".join(back)


# Readers of models/LATEST that never train: they ask model/registry (torch-free), not model/stage.
# shipping asked model/stage.latest_model, one of three wrappers of registry.latest_bundle, and
# loaded torch and fastai with it (the mends25 reread). model/learned (what a bundle learned from) is
# read by shipping and `mlc remove`.
# And what a process imports before it knows whether it will train: a Prefect flow run (the flow's
# module, the stage loop), `mlc`'s parser. torch, torchvision and fastai took ~21 s of a flow run's
# ~28 s start on the 2-core box, for runs cancelled or stopped before training too (the lazy30 audit):
# model/stage.py imports model/train where it trains, model/options.py torchvision for an arch not ours.
TORCH_FREE = ["mlc_pipeline.model.registry", "mlc_pipeline.model.learned", "mlc_pipeline.shipping",
              "mlc_pipeline.report.latest", "mlc_pipeline.report.published", "mlc_pipeline.review.queues",
              "flows.collect_and_train", "mlc_pipeline.pipeline", "mlc_pipeline.model.stage", "mlc_pipeline.cli"]
HEAVY = "('torch', 'torchvision', 'fastai')"


def loaded_by(code: str) -> str:
    """The heavy packages in sys.modules after `code` ran in a fresh interpreter."""
    code += f"; import sys; print(sorted(m for m in {HEAVY} if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_readers_of_the_latest_model_load_no_torch(module):
    out = loaded_by(f"import {module}")
    assert out == "[]", f"importing {module} loads {out}"


def test_a_flow_run_checks_the_default_training_settings_without_torch():
    """A collect-and-train run checks `train:` before collecting (options.check_train_settings): with
    `arch: auto` and `pretrained: auto` there is no network to build and no weights to read, so no torch;
    a torchvision arch is still built and run, with torch and fastai, before collecting."""
    check = ("from mlc_pipeline.config import load_config; from mlc_pipeline.model.options import "
             "check_train_settings; import flows.collect_and_train; "
             "check_train_settings(load_config('configs/offline.yaml', {}))")
    assert loaded_by(check) == "[]"
    assert loaded_by(check.replace("{}", "{'train': {'arch': 'resnet18'}}")) == "['fastai', 'torch', 'torchvision']"


def test_no_module_over_400_lines():
    long = {module_name(p): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checks_see_real_imports(graph):
    """The checks above would pass on an empty graph: make sure they read what is there."""
    assert "mlc_pipeline.model.bundle" in graph["mlc_pipeline.model.predict"]
    assert "mlc_pipeline.manifest" in graph["mlc_pipeline.model.train"]
    assert "mlc_pipeline.curate.stage" in graph["mlc_pipeline.pipeline"]
    assert "mlc_pipeline.model.weights" in graph["mlc_pipeline.model.weights_cli"]   # `from ...model import weights`
    assert len(graph) > 40


def test_test_modules_have_unique_basenames():
    """tests/ has no __init__.py: pytest imports each test module by its basename, and a second
    test_stage.py (model/ beside curate/) stopped the whole run at collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in set(names) if names.count(n) > 1)
