"""Result tables (markdown, CSV) from evaluation metrics, and the number formats every table uses.

Input: one metrics dict per (model, benchmark), as written by the evaluate stage. Output: a table
with one row per model x benchmark; nothing here reads or writes files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from dashrl.report.stats import Interval, bootstrap_mean, wilson

TABLE_COLUMNS = (
    "model", "benchmark", "n_problems", "accuracy", "accuracy_lo", "accuracy_hi", "boxed_rate", "truncation_rate",
    "completion_tokens_mean", "generation_tokens_per_s", "grader_timeouts", "grader_parse_errors",
)

def accuracy_interval(metrics: Mapping[str, Any], scores: np.ndarray | None = None, samples: int = 10000,
                      rng: np.random.Generator | None = None) -> Interval:
    """One run's accuracy on one benchmark with its 95% interval over problems: Wilson when the
    per-problem scores are 0/1 (always, for the graders here); else a bootstrap over ``scores``."""
    n, accuracy = int(metrics["n_problems"]), float(metrics["accuracy"])
    successes = accuracy * n
    if abs(successes - round(successes)) < 1e-6 or scores is None:
        return wilson(min(n, max(0, round(successes))), n)
    return bootstrap_mean(scores, samples, rng if rng is not None else np.random.default_rng(0))

def results_table(metrics: Mapping[tuple[str, str], Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (model, benchmark); pass@k / mean@k columns appear when any run has them.
    ``accuracy_lo``/``accuracy_hi``: its 95% Wilson interval over the problems."""
    rows = []
    for (model, benchmark), m in metrics.items():
        counts = m.get("grader_status_counts", {})
        interval = accuracy_interval(m)
        row = {
            "model": model,
            "benchmark": benchmark,
            "n_problems": m["n_problems"],
            "accuracy": m["accuracy"],
            "accuracy_lo": rounded(interval.lo),
            "accuracy_hi": rounded(interval.hi),
            **{c: m[c] for c in TABLE_COLUMNS[6:10]},
            "grader_timeouts": counts.get("timeout", 0),
            "grader_parse_errors": counts.get("parse_error", 0),
        }
        row.update({k: v for k, v in m.items() if k.startswith(("pass@", "mean@"))})
        rows.append(row)
    table = pd.DataFrame(rows)
    extra = sorted((c for c in table.columns if c not in TABLE_COLUMNS), key=_k_sort_key)
    return table[[*TABLE_COLUMNS, *extra]]

COMPUTE_COLUMNS = ("stage", "dtypes", "device", "cpu", "cpu_flags", "torch_cpu_kernels", "bf16_native")

def compute_table(records: Mapping[str, Mapping[str, Any] | None]) -> pd.DataFrame:
    """Where and in which dtype each stage computed: stage -> its run.json ``compute`` record (None:
    not recorded, e.g. a run from before dtypes were recorded)."""
    rows = []
    for stage, c in records.items():
        if c is None:
            rows.append({"stage": stage, **{k: None for k in COMPUTE_COLUMNS[1:]}})
            continue
        rows.append({
            "stage": stage,
            "dtypes": ", ".join(f"{k} {v}" for k, v in c["dtypes"].items()),
            "device": c.get("gpu") or c["device"],
            "cpu": c["cpu_model"],
            "cpu_flags": " ".join(c["cpu_flags"]) or "—",
            "torch_cpu_kernels": " ".join([str(c.get("torch_cpu_capability")),
                                           *(f"{k}={v}" for k, v in c.get("isa_caps", {}).items())]),
            "bf16_native": c["bf16_native"],
        })
    return pd.DataFrame(rows, columns=list(COMPUTE_COLUMNS))

def compute_notes(records: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """Notes for the report: results in different dtypes or from different machines do not compare."""
    known = [c for c in records.values() if c is not None]
    dtypes = sorted({v for c in known for v in c["dtypes"].values()})
    machines = sorted({c.get("gpu") or c["cpu_model"] for c in known})
    notes = ["Results computed in different dtypes are not comparable: bf16 and fp32 sample different tokens "
             "within a few dozen steps, so a run's numbers move with the dtype and the machine, not only the seed."]
    if len(dtypes) > 1:
        notes.append(f"WARNING: these results mix dtypes ({', '.join(dtypes)}): compare only rows computed alike.")
    if len(machines) > 1:
        notes.append(f"WARNING: these results come from different machines ({'; '.join(machines)}).")
    if len(known) < len(records):
        notes.append("Stages marked — did not record their dtype and machine (run before this was recorded).")
    return notes

def _k_sort_key(column: str) -> tuple[str, int]:
    name, _, k = column.partition("@")
    return name, int(k) if k.isdigit() else 0

def to_markdown(table: pd.DataFrame, title: str, notes: list[str] = ()) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency)."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    parts = [f"# {title}", "", header, rule, *body, ""]
    parts += [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"

def _fmt(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"  # not run / not applicable
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)

def rounded(value: float | None) -> float | None:
    """Interval numbers rounded to 6 decimals (no 0.024999999999999994 in the tables)."""
    return None if value is None else round(float(value), 6)

def json_value(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value
