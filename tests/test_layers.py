"""The package's layers: imports go one way only, and no module is on an import cycle.

The components are the sub-packages of ``dashrl/`` (``infra``, ``config``, ``algo``, ``data``,
``grading``, ``engines``, ``rl``, ``report``), its top-level modules (``models``, ``sft``,
``evaluation``, ``preflight``), ``stages`` and ``flows``. ``ALLOWED`` lists what each may import
(besides itself); the imports are read as ``tests/test_dvc_deps.py`` reads them (module level,
inside functions and under ``TYPE_CHECKING`` alike), so a lazy import cannot hide an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_dvc_deps import ROOT, imported_files

ALLOWED: dict[str, set[str]] = {
    "infra": set(),  # no domain knowledge
    "config": {"infra"},  # what params.yaml may say; it knows no algorithm
    "algo": {"infra"},  # the equations: tensors in, tensors out
    "data": {"infra"},
    "report": {"infra"},  # tables and figures from recorded metrics (infra: the seeded bootstrap streams)
    "models": {"config", "infra"},
    "memory": {"engines", "models", "config", "infra"},  # the memory plan: a model's config and a run's params in, bytes out
    "grading": {"data", "config", "infra"},
    "engines": {"algo", "models", "config", "infra"},
    "rl": {"algo", "engines", "grading", "data", "models", "config", "infra"},
    "evaluation": {"engines", "grading", "data", "models", "config", "infra"},
    "sft": {"evaluation", "algo", "engines", "grading", "data", "models", "config", "infra"},
    "preflight": {"memory", "engines", "grading", "data", "models", "config", "infra"},  # grading: probes a reward function
    "stages": {"infra", "config", "algo", "data", "report", "models", "grading", "engines", "rl", "evaluation", "sft",
               "preflight"},
    "flows": set(),  # drives the pipeline only through `dvc repro`
}


def component(path: str) -> str:
    """``dashrl/rl/loop.py`` -> ``rl``; ``dashrl/models.py`` -> ``models``; ``stages/rl.py`` -> ``stages``."""
    parts = Path(path).with_suffix("").parts
    return parts[1] if parts[0] == "dashrl" else parts[0]


def project_files() -> list[str]:
    """Every module of the library, the stages and the flows (package ``__init__`` files are empty)."""
    return sorted(p.relative_to(ROOT).as_posix() for top in ("dashrl", "stages", "flows")
                  for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts and p.name != "__init__.py")


def import_graph() -> dict[str, set[str]]:
    return {f: imported_files(f) for f in project_files()}


def test_every_file_belongs_to_a_known_component():
    assert {component(f) for f in project_files()} == set(ALLOWED)


def test_every_package_init_is_empty():
    """No package face: one import path per name, and no import the dvc.yaml deps walk (which skips
    ``__init__`` files) could miss."""
    faces = [p.relative_to(ROOT).as_posix() for top in ("dashrl", "stages", "flows")
             for p in (ROOT / top).rglob("__init__.py") if p.read_text().strip()]
    assert faces == []


def test_imports_go_only_where_the_layers_allow():
    wrong = sorted(f"{f} -> {g}" for f, targets in import_graph().items() for g in targets
                   if component(g) != component(f) and component(g) not in ALLOWED[component(f)])
    assert wrong == [], "imports against the layers:\n" + "\n".join(wrong)


def test_no_module_is_on_an_import_cycle():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                members.append(w)
                if w == v:
                    break
            if len(members) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(members))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_library_never_imports_the_pipeline_glue():
    """dashrl/ knows nothing of stages/, flows/ or benchmarks/ (stages and flows are checked above)."""
    offenders = []
    for f in project_files():
        if not f.startswith("dashrl/"):
            continue
        for node in ast.walk(ast.parse((ROOT / f).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{f}: {n}" for n in names if n.split(".")[0] in ("stages", "flows", "benchmarks")]
    assert offenders == []


def test_the_check_is_not_vacuous():
    """The walk sees the edges the rules are about: a forbidden edge would be found."""
    graph = import_graph()
    assert "dashrl/config/params.py" in graph and graph["dashrl/config/params.py"] == set()
    assert {"dashrl/rl/samples.py", "dashrl/rl/run.py", "dashrl/grading/tasks.py"} <= graph["dashrl/rl/loop.py"]
    assert "dashrl/engines/factory.py" in graph["dashrl/rl/run.py"]
    assert any(component(g) == "report" for g in graph["stages/rl.py"])  # the curves it draws
    assert component("dashrl/report/curves.py") not in ALLOWED["rl"]  # ... which the library's rl may not import


def test_a_stage_depends_only_on_the_code_it_runs():
    """The costliest fan-outs are gone: editing the report reruns only `report`, the pyfunc generator
    only `prepare`, the loss and the selectors only the training stages (dvc.yaml's deps are these
    closures: tests/test_dvc_deps.py)."""
    from test_dvc_deps import closure

    stages = {s: closure(f"stages/{s}.py") for s in ("prepare", "model", "sft", "rl", "evaluate", "report")}

    def users(path: str) -> set[str]:
        return {s for s, files in stages.items() if path in files}

    for path in (ROOT / "dashrl/report").glob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if path.name not in ("__init__.py", "curves.py", "model_card.py"):
            assert users(rel) == {"report"}, rel
    assert users("dashrl/report/curves.py") == {"sft", "rl", "report"}
    assert users("dashrl/report/model_card.py") == {"sft", "rl"}  # the card inside each trained model's directory
    assert users("dashrl/data/pyfunc.py") == {"prepare"}
    assert users("dashrl/algo/losses.py") == users("dashrl/algo/batching.py") == {"sft", "rl"}
    assert users("dashrl/rl/selectors.py") == users("dashrl/rl/loop.py") == {"rl"}
    assert users("dashrl/grading/sandbox.py") == {"sft", "rl", "evaluate"}
