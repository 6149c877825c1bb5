"""DVC's stage plan for the flows: `plan_stages` asks DVC's own planner for the stages `dvc repro
[targets]` would visit, upstream first, and the stages the targets named.

This is the one place in the project that uses DVC's *private* Python API
(`dvc.repo.reproduce.collect_stages / get_active_graph / plan_repro`, `Repo.index.graph`), written
and checked against dvc==3.67.1 (the version pinned in pyproject.toml). It is kept in a file of its
own so that a DVC upgrade that breaks it has one place to fix. DVC has no public API or command
that gives this order with `dvc repro`'s own target semantics (foreach/matrix group names, upstream
closure, frozen stages). `dvc dag` prints the graph, not the plan, and `dvc repro --dry` lists only
what is stale. Parsing `dvc dag --dot` instead would lose two of those semantics: a frozen stage's
edges to its upstream stages (which `get_active_graph` cuts, so `dvc repro` does not visit them)
and foreach/matrix group names such as `rl` (which `collect_stages` expands to all of the group's
items, while the dot graph only has the items). Anything else the flows ask DVC goes through the
`dvc` command line (flows/dvc_process.py).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path


def _address(stage, root: Path) -> str:
    """The stage's name as `dvc repro` takes it from the repo root (dvc's own `addressing` is
    relative to the current directory, which need not be the root)."""
    rel = Path(os.path.relpath(stage.path, root)).as_posix()
    name = getattr(stage, "name", None)
    if name is None:  # a .dvc file
        return rel
    return name if rel == "dvc.yaml" else f"{rel}:{name}"


def plan_stages(root: str | os.PathLike, stages: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(plan, selected): the stages `dvc repro [stages]` would visit, upstream first, and the ones
    the targets named. Both come from DVC itself (stage collection, active graph, `plan_repro`).

    >>> plan_stages(".", ["report"])  # doctest: +SKIP
    (['prepare@arith', 'model', 'evaluate@base-arith', 'report'], ['report'])
    """
    # DVC's private API (see the module docstring for why): the only such use in the project.
    from dvc.dvcfile import PROJECT_FILE
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    root = Path(root).resolve()
    # Targets are resolved like `dvc repro` run from the root; dvc 3.67's own DeprecationWarnings
    # (pygtrie) are noise here.
    with contextlib.chdir(root), Repo(str(root)) as repo, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        targets = collect_stages(repo, list(stages) if stages else [PROJECT_FILE])
        graph = get_active_graph(repo.index.graph)
        ordered = plan_repro(graph, targets)
        return [_address(s, root) for s in ordered], [_address(s, root) for s in targets]
