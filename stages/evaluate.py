"""Stages `evaluate@<model>-<benchmark>` and `passk@<model>-<benchmark>`: sample, grade, summarise.

    python -m stages.evaluate --model base --benchmark arith             # accuracy (evaluate.generation)
    python -m stages.evaluate --model base --benchmark arith --pass-k    # pass@k (evaluate.pass_k)

Writes ``data/eval/<model>/<benchmark>/`` (or ``data/passk/...``): ``problems.parquet`` (one row
per problem and sample), ``metrics.json`` (DVC metrics) and ``run.json`` (params, versions, commit).
The pass@k stage uses the same sampling settings with ``evaluate.pass_k``'s sample count and
problem subset.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import torch

from dashrl.config.params import Params, load_params, section_dict
from dashrl.data.loaders import register_user_datasets
from dashrl.data.schema import read_problems
from dashrl.engines.factory import make_sampling_engine
from dashrl.evaluation import evaluate, sampling_from, select_problems
from dashrl.infra.files import atomic_dir, run_record, write_json
from dashrl.infra.hardware import compute_record, resolve_dtype
from dashrl.models import default_device, load_tokenizer
from stages import paths
from stages.common import setup_logging

log = logging.getLogger("stages.evaluate")


def main(params: Params, model: str, benchmark: str, pass_k: bool = False) -> None:
    register_user_datasets(params.prepare.user_tasks())  # datasets of your own: their tasks
    gen = params.evaluate.generation
    if pass_k:
        k = params.evaluate.pass_k
        if model not in k.models:
            raise ValueError(f"params.yaml: evaluate.pass_k.models: {model!r} is not listed ({k.models})")
        gen = dataclasses.replace(gen, samples_per_problem=k.samples_per_problem, max_problems=k.max_problems)
    if model not in params.evaluate.models:
        raise ValueError(f"params.yaml: evaluate.models: {model!r} is not listed ({params.evaluate.models})")
    if benchmark not in params.evaluate.benchmarks:
        raise ValueError(f"params.yaml: evaluate.benchmarks: {benchmark!r} is not listed ({params.evaluate.benchmarks})")
    model_path, test_path = paths.model_dir(model), paths.prepared(benchmark, "test")
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"{model_path}: no model there (config.json missing); run its stage first")
    problems = select_problems(read_problems(test_path), gen.max_problems)

    torch.manual_seed(gen.seed)
    tokenizer = load_tokenizer(model_path)
    device = default_device()
    dtype = resolve_dtype(gen.dtype, device)
    engine = make_sampling_engine(gen.engine, model_path, tokenizer, dtype=dtype, device=device,
                                  max_batch_rows=gen.batch_size, seed=gen.seed, key="evaluate.generation.engine",
                                  progress_label=f"{'passk' if pass_k else 'evaluate'}@{model}-{benchmark}")
    log.info("evaluating %s on %s: %d problems x %d samples, %s", model, benchmark, len(problems), gen.samples_per_problem, dtype)
    rows, metrics = evaluate(
        problems,
        engine=engine,
        tokenizer=tokenizer,
        prompt=params.prompt,
        grader=params.grader,
        sampling=sampling_from(gen),
        samples_per_problem=gen.samples_per_problem,
    )
    metrics = {"model": model, "benchmark": benchmark, "dtype": dtype, **metrics}
    used = {"prompt": section_dict(params.prompt), "grader": section_dict(params.grader), "generation": section_dict(gen)}
    out = paths.passk_dir(model, benchmark) if pass_k else paths.eval_dir(model, benchmark)
    with atomic_dir(out) as tmp:
        rows.to_parquet(tmp / "problems.parquet", index=False)
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "run.json", run_record(used, model=model, benchmark=benchmark,
                                                compute=compute_record(device, dtype=dtype)))
    log.info("%s on %s: accuracy %.3f, boxed %.3f, truncated %.3f, %.1f tokens/s", model, benchmark,
             metrics["accuracy"], metrics["boxed_rate"], metrics["truncation_rate"], metrics["generation_tokens_per_s"])


if __name__ == "__main__":
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--benchmark", required=True)
    parser.add_argument("--pass-k", action="store_true", help="evaluate.pass_k's samples and subset, into data/passk/")
    args = parser.parse_args()
    main(load_params(paths.PARAMS), args.model, args.benchmark, pass_k=args.pass_k)
