"""The real DVC pipeline on tiny params in a temporary git + DVC repository.

Checks what DVC is for: a first `dvc repro` runs every stage; a second runs none; changing one
RL run's key (rl.runs.dash.filter_threshold) reruns exactly that run, the evaluations of its
model and the report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_params_dict

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture
def dvc_repo(tmp_path, tiny_model_dir) -> tuple[Path, dict[str, str]]:
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    for package in ("dashrl", "stages"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    raw = tiny_params_dict()
    raw["model"]["source"] = str(tiny_model_dir)
    raw["evaluate"]["models"] = ["base", "sft_h", "dash", "grpo"]
    raw["evaluate"]["pass_k"]["models"] = ["base", "dash"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(tmp_path), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run(["git", "init", "-q"], tmp_path, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], tmp_path, env)
    run(["git", "add", "-A"], tmp_path, env)
    run(["git", "commit", "-qm", "tiny pipeline"], tmp_path, env)
    return tmp_path, env


def test_changing_one_rl_run_reruns_only_that_run_its_evaluations_and_the_report(dvc_repo):
    repo, env = dvc_repo
    dvc = [sys.executable, "-m", "dvc"]
    first = stages_run(run([*dvc, "repro"], repo, env))
    assert first == {
        "prepare@arith", "model", "sft@sft_h", "rl@dash", "rl@grpo", "evaluate@base-arith", "evaluate@sft_h-arith",
        "evaluate@dash-arith", "evaluate@grpo-arith", "passk@base-arith", "passk@dash-arith", "report",
    }
    for table in ("table1", "table3", "table5", "table6"):
        assert (repo / f"data/report/{table}.md").is_file() and (repo / f"data/report/{table}.csv").is_file()
    assert stages_run(run([*dvc, "repro"], repo, env)) == set()

    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["rl"]["runs"]["dash"]["filter_threshold"] = 0.3
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert stages_run(run([*dvc, "repro"], repo, env)) == {"rl@dash", "evaluate@dash-arith", "passk@dash-arith", "report"}
    assert "filter_threshold: 0.3" in (repo / "dvc.lock").read_text()
