"""Start-up checks name the params key and what is missing, before any stage runs."""

from __future__ import annotations

from pathlib import Path

import torch

from dashrl import preflight
from dashrl.config.params import load_params
from dashrl.config.profiles import apply_profile

REPO = Path(__file__).resolve().parents[1]


def test_the_default_params_pass():
    assert preflight.problems(load_params(REPO / "params.yaml")) == []


def test_the_paper_profile_on_a_machine_without_gpu_vllm_or_hub(tmp_path, monkeypatch):
    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    apply_profile(params_file, [REPO / "profiles/full.yaml", REPO / "profiles/paper.yaml"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(preflight, "hub_reachable", lambda repo_id, kind: f"{repo_id} ({kind}): offline in this test")
    monkeypatch.setattr("dashrl.engines.vllm.vllm_device_error", lambda: "the vllm package is not installed")
    found = preflight.problems(load_params(params_file))
    assert found[0] == "params.yaml: rl.runs.dash.engine: vllm: the vllm package is not installed"
    assert "params.yaml: model.source: 'Qwen/Qwen2.5-0.5B': the Hugging Face Hub does not answer (Qwen/Qwen2.5-0.5B (model)" in found[1]
    assert [line.split(":")[1].strip() for line in found[2:]] == ["prepare.math_train.path", "prepare.math500.path", "prepare.gsm8k.path"]
    # vllm present but no GPU: said as such.
    monkeypatch.setattr("dashrl.engines.vllm.vllm_device_error", lambda: None)
    assert "no CUDA GPU visible" in preflight.problems(load_params(params_file))[0]


def test_missing_local_files_and_exit_code(tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    apply_profile(params_file, [], [f"model.source={tmp_path / 'nowhere'}", "prepare.datasets=[arith, gsm8k]",
                                    "prepare.gsm8k.path=/no/such/gsm8k.jsonl"])
    assert preflight.main(["--params", str(params_file), "--no-hub"]) == 2
    err = capsys.readouterr().err
    assert f"model.source: '{tmp_path / 'nowhere'}': no such directory" in err
    assert "prepare.gsm8k.path: '/no/such/gsm8k.jsonl': no such file" in err
