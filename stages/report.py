"""Stage `report`: the paper's tables (markdown + CSV) and figures (PNG) from the runs' recorded metrics.

    python -m stages.report

Reads ``data/eval``, ``data/passk``, ``data/rl/<run>/{summary.json,metrics.jsonl}`` and
``data/sft/<run>/summary.json``; writes ``data/report/``:

- ``results.md|csv``: every evaluated model x benchmark (accuracy, format, length, throughput);
- ``table1..6.md|csv``: the paper's Tables 1-6 (1, 3, 5, 6 on math; 2, 4 on code; rows of
  configurations this profile did not run say so);
- ``fig1_time_split.png``, ``fig3_filtering.png``, ``fig4_reward_vs_time.png``,
  ``fig5_pass_at_k.png``, ``fig6_kl.png``, plus ``accuracy.png``, ``accuracy_by_level.png``,
  ``rl_curves.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dashrl.data import task_of
from dashrl.io import atomic_dir
from dashrl.params import Params, load_params
from dashrl.reporting import (
    PAPER_TABLES,
    RunResults,
    compute_notes,
    compute_table,
    paper_table,
    plot_accuracy,
    plot_accuracy_by_level,
    plot_filtering,
    plot_kl_curves,
    plot_pass_at_k,
    plot_reward_vs_time,
    plot_rl_curves,
    plot_time_split,
    results_table,
    to_markdown,
)
from dashrl.run_log import read_metrics
from stages import paths
from stages.common import setup_logging

log = logging.getLogger("stages.report")


def _read_json(path: Path, stage: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `dvc repro {stage}` first")
    return json.loads(path.read_text())


def collect(params: Params) -> RunResults:
    """Every configured run's recorded metrics; a configured run without outputs is an error."""
    benchmarks = params.evaluate.benchmarks
    evals = {(m, b): _read_json(paths.eval_dir(m, b) / "metrics.json", f"evaluate@{m}-{b}")
             for m in params.evaluate.models for b in benchmarks}
    passk = {(m, b): _read_json(paths.passk_dir(m, b) / "metrics.json", f"passk@{m}-{b}")
             for m in params.evaluate.pass_k.models for b in benchmarks}
    rl_summary = {r: _read_json(paths.rl_dir(r) / "summary.json", f"rl@{r}") for r in params.rl.runs}
    rl_steps = {r: read_metrics(paths.rl_dir(r)) for r in params.rl.runs}
    sft_summary = {r: _read_json(paths.sft_dir(r) / "summary.json", f"sft@{r}") for r in params.sft.runs}
    tasks = {b: task_of(b) for b in benchmarks}
    tasks |= {r: task_of(params.rl.run(r).dataset) for r in params.rl.runs}
    tasks |= {r: task_of(params.sft.run(r).dataset) for r in params.sft.runs}
    return RunResults(benchmarks=benchmarks, evals=evals, passk=passk, rl_summary=rl_summary,
                      rl_steps=rl_steps, sft_summary=sft_summary, tasks=tasks)


def collect_compute(params: Params) -> dict[str, dict | None]:
    """Each stage's ``compute`` record from its run.json (dtype it resolved to, machine), by stage name."""
    runs = {f"sft@{r}": paths.sft_dir(r) for r in params.sft.runs}
    runs |= {f"rl@{r}": paths.rl_dir(r) for r in params.rl.runs}
    for b in params.evaluate.benchmarks:
        runs |= {f"evaluate@{m}-{b}": paths.eval_dir(m, b) for m in params.evaluate.models}
        runs |= {f"passk@{m}-{b}": paths.passk_dir(m, b) for m in params.evaluate.pass_k.models}
    return {stage: _read_json(folder / "run.json", stage).get("compute") for stage, folder in runs.items()}


def _grader_notes(params: Params, tasks: set[str]) -> list[str]:
    code = params.grader.code
    return [note for task, note in (
        ("math", f"Grader (math): math-verify equivalence, require_box={params.grader.require_box}."),
        ("code", f"Grader (code): the program passes the task's tests in the sandbox (its own processes, no network, "
                 f"{code.timeout_s:g} s wall / {code.cpu_s} CPU s / {code.memory_mb} MB per program). pass@1_first: the "
                 f"first of n samples (the paper's pass@1); pass@1_mean: the unbiased pass@1 over n; pass@n: unbiased."),
    ) if task in tasks]


def main(params: Params) -> None:
    results = collect(params)
    compute = collect_compute(params)
    table = results_table(results.evals)
    gen, dpi = params.evaluate.generation, params.report.plot_dpi
    notes = [
        "accuracy: one sample per problem (the paper's metric); pass@k is the unbiased estimator over k samples.",
        "Sampling: temperature {temperature}, top_p {top_p}, top_k {top_k}, up to {max_new_tokens} new tokens, "
        "{samples_per_problem} sample(s) per problem, seed {seed}, dtype {dtype} (resolved per stage: see Compute).".format(**vars(gen)),
        *_grader_notes(params, {task_of(b) for b in params.evaluate.benchmarks}),
        "Times are wall-clock seconds of the training loop on the machine that ran the stage (see Compute).",
        *compute_notes(compute),
    ]
    compute_md = to_markdown(compute_table(compute), "Compute: where and in which dtype each stage ran")
    with atomic_dir(paths.report_dir()) as tmp:
        (tmp / "results.md").write_text(to_markdown(table, "dashrl results", notes) + "\n" + compute_md.replace("# ", "## ", 1))
        (tmp / "compute.md").write_text(compute_md)
        compute_table(compute).to_csv(tmp / "compute.csv", index=False)
        table.to_csv(tmp / "results.csv", index=False)
        for name, (title, _) in PAPER_TABLES.items():
            frame = paper_table(results, name)
            (tmp / f"{name}.md").write_text(to_markdown(frame, title, notes))
            frame.to_csv(tmp / f"{name}.csv", index=False)
        plot_accuracy(table, tmp / "accuracy.png", dpi=dpi)
        plot_accuracy_by_level(results.evals, tmp / "accuracy_by_level.png", dpi=dpi)
        plot_rl_curves(results.rl_steps, tmp / "rl_curves.png", dpi=dpi)
        plot_time_split(results, tmp / "fig1_time_split.png", dpi=dpi)
        plot_filtering(results, tmp / "fig3_filtering.png", dpi=dpi)
        plot_reward_vs_time(results, tmp / "fig4_reward_vs_time.png", dpi=dpi)
        plot_pass_at_k(results, tmp / "fig5_pass_at_k.png", dpi=dpi)
        plot_kl_curves(results, tmp / "fig6_kl.png", dpi=dpi)
    log.info("wrote %s:\n%s", paths.report_dir(), table.to_string(index=False))


if __name__ == "__main__":
    setup_logging()
    main(load_params(paths.PARAMS))
