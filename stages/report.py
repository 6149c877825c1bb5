"""Stage `report`: results table (markdown + CSV) and plots from every evaluation's metrics.

    python -m stages.report
"""

from __future__ import annotations

import json
import logging

from dashrl.io import atomic_dir
from dashrl.params import Params, load_params
from dashrl.reporting import plot_accuracy, plot_accuracy_by_level, results_table, to_markdown
from stages import paths
from stages.common import setup_logging

log = logging.getLogger("stages.report")


def main(params: Params) -> None:
    metrics = {}
    for model in params.evaluate.models:
        for benchmark in params.evaluate.benchmarks:
            path = paths.eval_dir(model, benchmark) / "metrics.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; run `dvc repro evaluate@{model}-{benchmark}` first")
            metrics[(model, benchmark)] = json.loads(path.read_text())
    table = results_table(metrics)
    notes = [
        "accuracy: one sample per problem (the paper's metric); pass@k is the unbiased estimator over k samples.",
        "Sampling: temperature {temperature}, top_p {top_p}, top_k {top_k}, up to {max_new_tokens} new tokens, "
        "{samples_per_problem} sample(s) per problem, seed {seed}, {dtype}.".format(**vars(params.evaluate.generation)),
        f"Grader: math-verify equivalence, require_box={params.grader.require_box}.",
    ]
    with atomic_dir(paths.report_dir()) as tmp:
        (tmp / "results.md").write_text(to_markdown(table, "dashrl results", notes))
        table.to_csv(tmp / "results.csv", index=False)
        plot_accuracy(table, tmp / "accuracy.png", dpi=params.report.plot_dpi)
        plot_accuracy_by_level(metrics, tmp / "accuracy_by_level.png", dpi=params.report.plot_dpi)
    log.info("wrote %s:\n%s", paths.report_dir(), table.to_string(index=False))


if __name__ == "__main__":
    setup_logging()
    main(load_params(paths.PARAMS))
