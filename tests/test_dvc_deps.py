"""Every DVC stage depends on every project module it runs: a change there must rerun the stage.

The modules a stage runs are found from its command (``python -m stages.<name>``) by following the
project's imports transitively (module level and inside functions), plus files a module runs as a
script (``RUNS_AS_SCRIPT``). After adding or moving a module, ``python tests/test_dvc_deps.py --write``
rewrites the code deps of every stage in dvc.yaml (data deps and everything else are kept).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dashrl", "stages")
# Files started as scripts, not imported: the module on the left runs the file on the right.
RUNS_AS_SCRIPT = {"dashrl/grading/sandbox.py": ("dashrl/grading/sandbox_runner.py",)}


def module_file(name: str) -> str | None:
    """Repository path of a project module (``dashrl.rl.loop`` -> ``dashrl/rl/loop.py``), None if not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if (ROOT / candidate).is_file():
            return candidate.as_posix()
    return None


def imported_files(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            file = module_file(name)
            if file and not file.endswith("__init__.py"):
                found.add(file)
    return found | set(RUNS_AS_SCRIPT.get(path, ()))


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_files(path))
    return seen


def stage_templates() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in stages.items()}


def test_every_stage_depends_on_the_modules_it_runs():
    missing = {}
    for name, spec in stage_templates().items():
        module = spec["cmd"].split("python -m ", 1)[1].split()[0]
        runs = closure(module_file(module))
        deps = {d for d in spec.get("deps", []) if isinstance(d, str)}
        if runs - deps:
            missing[name] = sorted(runs - deps)
    assert missing == {}, f"dvc.yaml deps miss modules the stages run: {missing}"


def test_no_stage_depends_on_code_it_does_not_run():
    """The other direction: an extra code dep (a module the stage never imports, a whole package
    directory) would rerun the stage for edits that cannot change its outputs."""
    extra = {}
    for name, spec in stage_templates().items():
        module = spec["cmd"].split("python -m ", 1)[1].split()[0]
        runs = closure(module_file(module))
        code = {d for d in spec.get("deps", []) if isinstance(d, str) and d.split("/")[0] in PACKAGES}
        if code - runs:
            extra[name] = sorted(code - runs)
    assert extra == {}, f"dvc.yaml deps name code the stages do not run: {extra}"


def test_the_import_walk_sees_lazy_imports():
    """The walk must not be vacuous: the rl factory imports the vLLM engine inside a function, the sandbox runs its runner."""
    runs = closure("stages/rl.py")
    assert {"dashrl/rl/loop.py", "dashrl/engines/vllm.py", "dashrl/grading/sandbox_runner.py", "stages/common.py"} <= runs


def write_deps() -> None:
    """Rewrite each stage's ``.py`` deps in dvc.yaml as the modules it runs (stages first, sorted)."""
    lines, out, stage, i = (ROOT / "dvc.yaml").read_text().split("\n"), [], None, 0
    templates = stage_templates()
    while i < len(lines):
        line = lines[i]
        if match := re.match(r"^  (\w+):\s*$", line):
            stage = match.group(1)
        if re.match(r"^\s+deps:\s*$", line) and stage in templates:
            indent = re.match(r"^(\s+)", lines[i + 1]).group(1)
            out.append(line)
            i += 1
            while i < len(lines) and lines[i].startswith(indent + "- "):
                if not lines[i].strip().endswith(".py"):
                    out.append(lines[i])  # data deps stay, in their order
                i += 1
            module = templates[stage]["cmd"].split("python -m ", 1)[1].split()[0]
            runs = sorted(closure(module_file(module)), key=lambda f: (not f.startswith("stages/"), f))
            out += [f"{indent}- {f}" for f in runs]
            continue
        out.append(line)
        i += 1
    (ROOT / "dvc.yaml").write_text("\n".join(out))


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write_deps()
