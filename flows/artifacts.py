"""The Markdown the flow publishes as Prefect artifacts: numbers rounded to significant digits
(`round_sig`, also used for the `dashrl-results` table) and the metrics section of `dashrl-report`
(`metrics_markdown`: `dvc metrics diff` against HEAD as a table, or `dvc metrics show --md` when the
repo has no commit; `metrics_diff_markdown` renders the diff, `NO_BASELINE` when HEAD has no value
for any metric). Creating the artifacts is the `publish-report` task's job in flows/pipeline.py;
this module only renders. Nothing here knows about Prefect.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path

from flows.dvc_process import dvc_command, has_commit, run_quiet

NO_BASELINE = "Nothing to compare against (no git-committed metrics / no DVC remote)"


def round_sig(value: object, digits: int = 4) -> str:
    """A number with `digits` significant digits, positional: 0.123456 -> "0.1235", 1234.56 -> "1235",
    1.5e-05 -> "0.000015"; integers ("200"), non-numbers and nan/inf are given back unchanged.

    >>> [round_sig(v) for v in ("0.123456", "200", "12345.678", "abc", 2.0 / 3)]
    ['0.1235', '200', '12350', 'abc', '0.6667']
    """
    if isinstance(value, bool | int) or value is None:
        return str(value)
    if isinstance(value, str):
        try:
            int(value)
            return value
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            return value
    elif isinstance(value, float):
        number = value
    else:
        return str(value)
    if not math.isfinite(number):
        return str(value)
    return format(Decimal(f"{number:.{digits}g}"), "f")


def metrics_diff_markdown(diff: dict) -> str:
    """`dvc metrics diff --json` as markdown: a table of the metrics that have a value at HEAD, or
    `NO_BASELINE` when none has one (their HEAD copy is neither in git nor fetchable from a remote)."""
    rows = [
        (path, metric, values.get("old"), values.get("new"), values.get("diff"))
        for path, metrics in diff.items()
        for metric, values in metrics.items()
    ]
    if not rows:
        return "No metric changed since HEAD."
    compared = [row for row in rows if row[2] is not None]
    if not compared:
        return f"{NO_BASELINE}: HEAD has a value for none of the workspace's metrics ({len(rows)})."

    def cell(value: object) -> str:
        return "-" if value is None else round_sig(value)

    lines = ["| Path | Metric | HEAD | workspace | Change |", "|---|---|---|---|---|"]
    lines += [
        f"| {path} | {metric} | {' | '.join(map(cell, values))} |" for path, metric, *values in compared
    ]
    if len(compared) < len(rows):
        n = len(rows) - len(compared)
        files = ", ".join(sorted({row[0] for row in rows if row[2] is None}))
        lines += [
            "",
            f"Not listed: {n} metric{'s' if n > 1 else ''} with no value at HEAD (new, or not in git / a DVC remote), in {files}.",
        ]
    return "\n".join(lines)


def metrics_markdown(root: Path) -> str:
    """The metrics diff against HEAD (`dvc metrics diff`), or `dvc metrics show --md` when there is
    no commit."""
    if has_commit(root):
        title = "Metrics diff (HEAD → workspace, `dvc metrics diff`)"
        rc, out, err = run_quiet([*dvc_command(), "metrics", "diff", "--json"], root)
        if rc == 0:
            try:
                body = metrics_diff_markdown(json.loads(out or "{}"))
            except (ValueError, AttributeError) as exc:
                body = f"(unreadable `dvc metrics diff --json` output: {exc})\n\n```\n{out}\n```"
    else:
        title = "Metrics (`dvc metrics show`; no commit to diff against)"
        rc, out, err = run_quiet([*dvc_command(), "metrics", "show", "--md"], root)
        body = out or "No metrics."
    if rc != 0:
        output = "\n".join(text for text in (out, err) if text)
        body = f"(dvc exited with {rc})\n\n```\n{output}\n```"
    return f"## {title}\n\n{body}\n"
