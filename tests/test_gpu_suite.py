"""The GPU suite (benchmarks/gpu.py) in its tiny CPU configuration: every section runs and prints
its table, and the last lines are the two step-time ratios."""

from __future__ import annotations

import re

import pytest

from benchmarks import gpu


@pytest.fixture(scope="module")
def suite_output(tmp_path_factory) -> list[str]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert gpu.main(["--tiny", "--skip-tests", "--budget-s", "600"]) == 0
    return out.getvalue().splitlines()


def test_gpu_suite_runs_every_section_in_its_tiny_configuration(suite_output):
    text = "\n".join(suite_output)
    assert "FAILED" not in text and "skipped" not in text, text
    for model in gpu.TINY:
        table = [line for line in suite_output if line.startswith(("| dash", "| grpo"))]
        assert f"(b) {model}:" in text
        assert len(table) >= 2 * len(gpu.TINY)
    rows = {line.split("|")[1].strip(): line for line in suite_output if line.startswith("| ")}
    assert "dash" in rows and "grpo (scaled)" in rows  # standard GRPO ran 2 of its micro-steps, scaled
    assert re.search(r"\(c\) tiny-b, one optimizer step, gradient checkpointing.*: plan \d+\.\d+ GiB", text)
    assert re.search(r"\(d\) SmolLM2-135M-Instruct, 1 DASH steps on arith .* reward per step \d", text)


def test_gpu_suite_ends_with_the_two_ratio_lines(suite_output):
    last = suite_output[-2:]
    assert re.fullmatch(r"gpu dash/grpo step time ratio: \d+\.\d{3}", last[0])
    assert re.fullmatch(r"gpu dash/trl step time ratio: (\d+\.\d{3}|n/a)", last[1])
