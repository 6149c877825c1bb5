"""Stage `report`: the paper's tables (markdown + CSV) and figures (PNG) from the runs' recorded metrics.

    python -m stages.report

Reads ``data/eval``, ``data/passk``, ``data/rl/<run>/{summary.json,metrics.jsonl}`` and
``data/sft/<run>/summary.json``; writes ``data/report/``:

- ``results.md|csv``: every evaluated model x benchmark (accuracy with its 95% interval, format,
  length, throughput);
- ``table1..6.md|csv``: the paper's Tables 1-6 (1, 3, 5, 6 on math; 2, 4 on code; rows of
  configurations this profile did not run say so; a configuration's seeds ``X``, ``X-s1``, ... in one row);
- ``findings.md|csv``: each of the paper's claims the runs can test, with the interval that decides
  its verdict (reproduces / does not / inconclusive / not run); ``seeds.md|csv``: configurations
  with several seeds; ``selectors.md|csv`` + ``fig_selectors.png``: the sample selectors compared
  (profiles/selectors.yaml); ``metrics.json``: the DVC metrics of the report (``dvc exp show``);
- ``fig1_time_split.png``, ``fig3_filtering.png``, ``fig4_reward_vs_time.png``,
  ``fig5_pass_at_k.png``, ``fig6_kl.png``, plus ``accuracy.png``, ``accuracy_by_level.png``,
  ``rl_curves.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from dashrl.config.params import Params, load_params
from dashrl.data.loaders import register_user_datasets, task_of
from dashrl.infra.files import atomic_dir, read_jsonl, write_json
from dashrl.infra.usage import OUTSIDE_STEAL_SHARE, OUTSIDE_THREADS
from dashrl.report.curves import plot_rl_curves
from dashrl.report.figures import (
    plot_accuracy,
    plot_accuracy_by_level,
    plot_filtering,
    plot_kl_curves,
    plot_pass_at_k,
    plot_reward_vs_time,
    plot_time_split,
)
from dashrl.report.findings import findings_table, report_metrics, seeds_table
from dashrl.report.paper import (
    PAPER_TABLES,
    RunResults,
    StatsSettings,
    config_of,
    outside_load,
    paper_table,
    task_benchmarks,
)
from dashrl.report.selector_comparison import SELECTOR_RUNS, plot_selectors, selector_notes, selector_table
from dashrl.report.stats import VERDICTS
from dashrl.report.tables import accuracy_interval, compute_notes, compute_table, results_table, to_markdown
from stages import paths
from stages.common import setup_logging

log = logging.getLogger("stages.report")


def _read_json(path: Path, stage: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `dvc repro {stage}` first")
    return json.loads(path.read_text())


def _read_scores(path: Path, stage: str) -> pd.Series:
    """The first sample's score per problem (index: problem id) of one evaluation's problems.parquet."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `dvc repro {stage}` first")
    rows = pd.read_parquet(path, columns=["id", "sample", "reward"])
    first = rows[rows["sample"] == 0]
    return pd.Series(first["reward"].to_numpy(dtype=float), index=first["id"].to_numpy(), name="reward")


def collect(params: Params) -> RunResults:
    """Every configured run's recorded metrics; a configured run without outputs is an error."""
    benchmarks = params.evaluate.benchmarks
    evals = {(m, b): _read_json(paths.eval_dir(m, b) / "metrics.json", f"evaluate@{m}-{b}")
             for m in params.evaluate.models for b in benchmarks}
    passk = {(m, b): _read_json(paths.passk_dir(m, b) / "metrics.json", f"passk@{m}-{b}")
             for m in params.evaluate.pass_k.models for b in benchmarks}
    rl_summary = {r: _read_json(paths.rl_dir(r) / "summary.json", f"rl@{r}") for r in params.rl.runs}
    rl_steps = {r: read_jsonl(paths.rl_dir(r) / "metrics.jsonl") for r in params.rl.runs}
    sft_summary = {r: _read_json(paths.sft_dir(r) / "summary.json", f"sft@{r}") for r in params.sft.runs}
    sft_steps = {r: read_jsonl(paths.sft_dir(r) / "metrics.jsonl") for r in params.sft.runs}
    scores = {(m, b): _read_scores(paths.eval_dir(m, b) / "problems.parquet", f"evaluate@{m}-{b}") for m, b in evals}
    tasks = {b: task_of(b) for b in benchmarks}
    tasks |= {r: task_of(params.rl.run(r).dataset) for r in params.rl.runs}
    tasks |= {r: task_of(params.sft.run(r).dataset) for r in params.sft.runs}
    r = params.report
    return RunResults(benchmarks=benchmarks, evals=evals, passk=passk, rl_summary=rl_summary,
                      rl_steps=rl_steps, sft_summary=sft_summary, tasks=tasks, scores=scores, sft_steps=sft_steps,
                      stats=StatsSettings(r.equivalence_margin, r.bootstrap_samples, r.bootstrap_seed))


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
        ("custom", "Grader (custom): the reward function a dataset of your own names (prepare.<name>.reward_function); "
                   "accuracy is the mean reward of the first sample, pass@k counts samples with reward 1."),
    ) if task in tasks]


def _interval_notes(params: Params) -> list[str]:
    r = params.report
    return [
        "Intervals are 95%. One run's accuracy (`accuracy_lo`/`_hi` in results, a one-seed row of a table): Wilson "
        "over the problems (first sample per problem). A configuration with several seeds (runs X, X-s1, X-s2; "
        "`seeds` > 1): the mean over seeds, with a bootstrap that resamples seeds, then problems; seeds.md adds the "
        "t interval over seeds and the bootstrap over problems with the seeds fixed.",
        "time_vs_grpo: the geometric mean of per-seed ratios (runs paired by seed) with their min and max; its "
        "interval (`_lo`/`_hi`) is a t interval on the log ratios, given with >= 3 seeds.",
        f"Bootstraps: {r.bootstrap_samples} replicates, seeded by report.bootstrap_seed {r.bootstrap_seed} and the "
        "quantity's name.",
    ]


def _load_notes(results: RunResults) -> list[str]:
    """How the time claims guard against a shared machine, and which runs saw outside load."""
    notes = [
        "CPU time (cpu_time_vs_grpo, the findings' cpu_estimate): the ratio of the runs' process CPU seconds (user + "
        "system, the training call), which another process on the machine changes far less than wall time. "
        "outside_load: runs during which the 1-minute load average exceeded the run's own CPU use (CPU s / wall s) "
        f"by more than {OUTSIDE_THREADS} threads, or the hypervisor stole more than {OUTSIDE_STEAL_SHARE:.0%} of CPU "
        "time (data/rl/<run>/summary.json: usage)."]
    loaded, unrecorded = outside_load(results, dict.fromkeys(config_of(r)[0] for r in results.rl_summary))
    if loaded:
        notes.append(f"WARNING: {', '.join(loaded)} ran beside outside load: wall-time ratios involving them measure the "
                     "machine as well as the algorithm; read the CPU-time ratio, or rerun them on an idle machine.")
    if unrecorded:
        notes.append(f"{', '.join(unrecorded)}: no load record (run before it was recorded).")
    return notes


def _findings_notes(params: Params, findings: pd.DataFrame) -> list[str]:
    counts = findings["verdict"].value_counts()
    return [
        "Verdicts are decided by the 95% interval only (the estimate never decides): see `rule`. Accuracy claims "
        "read the difference a - b with a paired bootstrap over the same problems for both (and over seeds where "
        "a configuration has several: seeds resampled, then problems); time claims read the ratio a / b of "
        "training wall time over seeds (an interval needs >= 3 seeds per configuration: `make run PROFILE=seeds`); "
        "beside it, cpu_estimate (the CPU-time ratio) and outside_load (runs that shared the machine: the method "
        "warns that their wall times are not the algorithm's alone).",
        f"Equivalence margin (report.equivalence_margin): {params.report.equivalence_margin:g} accuracy.",
        "Tally: " + ", ".join(f"{v} {counts.get(v, 0)}" for v in (*VERDICTS, "not run")) + ".",
        "The paper's numbers are Qwen2.5 on MATH (docs/results.md); ours are what this profile ran.",
    ]


def selector_comparison(params: Params, results: RunResults) -> tuple[list[str], pd.DataFrame]:
    """The selector runs (profiles/selectors.yaml's, and any other run with a selector) and their table:
    one row per run (seed copies ``X-s1`` apart: the row is the run itself, as its time and sample
    counts are), each accuracy with its 95% Wilson interval over the problems."""
    extra = [r for r in params.rl.runs if params.rl.run(r).selector != "none" and not config_of(r)[1]]  # seeds apart
    runs = list(dict.fromkeys([*SELECTOR_RUNS, *extra]))
    table = selector_table(results.rl_summary, results.rl_steps, results.evals, runs)
    for benchmark in task_benchmarks(results, "math"):
        intervals = [accuracy_interval(results.evals[(run, benchmark)]) if (run, benchmark) in results.evals else None
                     for run in runs]
        table[f"accuracy_{benchmark}_lo"] = [i.lo if i else None for i in intervals]
        table[f"accuracy_{benchmark}_hi"] = [i.hi if i else None for i in intervals]
    return runs, table


def main(params: Params) -> None:
    register_user_datasets(params.prepare.user_tasks())  # datasets of your own: their tasks
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
        *_load_notes(results),
        *_interval_notes(params),
        *compute_notes(compute),
    ]
    findings = findings_table(results)
    seeds = seeds_table(results)
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
        (tmp / "findings.md").write_text(to_markdown(findings, "Findings: the paper's claims against these runs",
                                                     [*_findings_notes(params, findings), *_load_notes(results)]))
        findings.to_csv(tmp / "findings.csv", index=False)
        seeds_note = [] if len(seeds) else ["No configuration has several seeds: `make run PROFILE=seeds` repeats DASH and GRPO."]
        (tmp / "seeds.md").write_text(to_markdown(seeds, "Configurations over seeds", [*seeds_note, *_interval_notes(params)]))
        seeds.to_csv(tmp / "seeds.csv", index=False)
        selector_runs, selectors = selector_comparison(params, results)
        (tmp / "selectors.md").write_text(to_markdown(selectors, "Sample selectors on one budget (docs/algorithm.md §6)",
                                                      [*selector_notes(selectors), *_interval_notes(params)]))
        selectors.to_csv(tmp / "selectors.csv", index=False)
        plot_selectors(results.rl_summary, results.rl_steps, results.evals, tmp / "fig_selectors.png", dpi=dpi,
                       runs=selector_runs)
        write_json(tmp / "metrics.json", report_metrics(results, findings))
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
