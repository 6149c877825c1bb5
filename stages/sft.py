"""Stage `sft@<run>`: supervised fine-tuning baseline (the paper's SFT-H / SFT-M), loss on the completion only.

    python -m stages.sft sft_h

Reads ``data/models/<init_from>`` and ``data/prepared/<dataset>/train.parquet``; writes the model
``data/models/<run>/`` (input of evaluate and of RL runs that start from it: weights, tokenizer,
``dashrl_model.json`` and the model card ``README.md``, all functions of the inputs alone) and
``data/sft/<run>/``: ``examples.parquet`` (what was trained on), ``metrics.jsonl`` (loss per
optimizer step), ``summary.json`` (DVC metrics: times, CPU seconds and machine load beside the
loss), ``loss.png``, ``run.json`` (versions, commit, machine), and ``live/``: DVCLive's per-step
metrics (DVC metrics and plots), written as each step ends, with the other trackers of
``report_to`` (``dashrl.infra.tracking``).
``source: self`` samples the teacher (``teacher``, default the initial model) on the same problems
with the evaluation grader and keeps its distinct correct, finished samples (rejection sampling).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from dashrl.config.params import Params, SFTRunParams, load_params, section_dict
from dashrl.data.loaders import register_user_datasets
from dashrl.engines.base import SamplingConfig
from dashrl.engines.hf import HFEngine
from dashrl.infra.files import atomic_dir, atomic_file, dir_sha256, run_record, write_json
from dashrl.infra.hardware import compute_record, resolve_dtype
from dashrl.infra.tracking import TrackerContext, check_installed, open_trackers, write_dvclive
from dashrl.infra.usage import UsageMonitor
from dashrl.models import default_device, load_model, load_tokenizer, materialise_model
from dashrl.report.curves import plot_sft_loss
from dashrl.report.model_card import card_metrics, model_card, sft_algorithm
from dashrl.sft import Example, reference_examples, rejection_sampled_examples, sft_train
from stages import paths
from stages.common import base_model_of, model_params, setup_logging, training_inputs, write_model_record

log = logging.getLogger("stages.sft")


def main(params: Params, run_name: str) -> None:
    cfg = params.sft.run(run_name)
    register_user_datasets(params.prepare.user_tasks())  # datasets of your own: their tasks
    check_installed(cfg.report_to, f"sft.runs.{run_name}.report_to")
    init_dir, train_file, problems = training_inputs(f"sft.runs.{run_name}", cfg.init_from, cfg.dataset, cfg.train_levels)
    if cfg.max_problems is not None:
        problems = problems.head(cfg.max_problems)
    if cfg.source == "reference" and (problems["solution"].fillna("").str.strip() == "").any():
        missing = problems.loc[problems["solution"].fillna("").str.strip() == "", "id"].iloc[0]
        raise ValueError(f"{train_file}: field solution: empty for problem {missing!r}; source: reference needs worked solutions")
    tokenizer = load_tokenizer(init_dir)

    with UsageMonitor() as usage:  # CPU seconds and machine load beside the wall time (dashrl.infra.usage)
        start = time.perf_counter()
        if cfg.source == "reference":
            examples = reference_examples(problems, tokenizer, params.prompt)
        else:
            examples = teacher_examples(cfg, params, problems, init_dir, run_name)
        sampling_s = time.perf_counter() - start
        log.info("sft@%s: %d examples from %d problems (source %s)", run_name, len(examples), len(problems), cfg.source)

        torch.manual_seed(cfg.seed)
        device = default_device()
        train_dtype = resolve_dtype(cfg.train_dtype, device)
        model = load_model(init_dir, dtype="float32", device=device)
        used = {"sft": section_dict(cfg), "prompt": section_dict(params.prompt), "grader": section_dict(params.grader)}
        trackers = open_trackers(cfg.report_to, TrackerContext(f"sft@{run_name}", paths.live_dir("sft", run_name),
                                                               paths.tracking_dir("sft", run_name), config=used))
        try:
            history = sft_train(model, tokenizer, examples, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                max_length=cfg.max_length, seed=cfg.seed, train_dtype=train_dtype, packing=cfg.packing,
                                gradient_checkpointing=cfg.gradient_checkpointing,
                                progress_label=f"sft@{run_name}", tracker=trackers)
        finally:
            trackers.close()
    if "dvclive" not in cfg.report_to:  # the DVC metrics and plots dvc.yaml declares, at the end
        write_dvclive(paths.live_dir("sft", run_name), history)
    record = usage.record()
    wall_s = record["wall_s"]
    summary = {
        "run": run_name, "source": cfg.source, "problems": len(problems), "examples": len(examples),
        "optimizer_steps": len(history), "loss_first": history[0]["loss"], "loss_last": history[-1]["loss"],
        "stage_wall_s": wall_s, "stage_cpu_s": record["cpu_s"], "sampling_wall_s": sampling_s, "usage": record,
    }

    algorithm, tags = sft_algorithm(used["sft"])
    base_model = base_model_of(init_dir)
    with atomic_dir(paths.model_dir(run_name)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        content_sha256 = dir_sha256(tmp)
        # Only what the inputs determine: evaluate@, passk@ and RL runs that start here depend on this directory.
        write_model_record(tmp, {"params": model_params(used), "base_model": base_model, "model": {
            "source": f"sft@{run_name}", "init_from": cfg.init_from, "content_sha256": content_sha256}})
        (tmp / "README.md").write_text(model_card(
            run=run_name, stage=f"sft@{run_name}", algorithm=algorithm, tags=tags, base_model=base_model,
            init_from=cfg.init_from, datasets=[cfg.dataset], params=model_params(used), metrics=card_metrics(summary)))
    out = paths.sft_dir(run_name)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "examples.parquet") as tmp:
        pd.DataFrame([vars(e) for e in examples]).to_parquet(tmp, index=False)
    with atomic_file(out / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    write_json(out / "summary.json", summary)
    dtypes = {"train_dtype": train_dtype} | ({"teacher_dtype": resolve_dtype("auto", device)} if cfg.source == "self" else {})
    write_json(out / "run.json", run_record(used, run=run_name, compute=compute_record(device, **dtypes),
                                            model={"content_sha256": content_sha256}))
    with atomic_file(out / "loss.png") as tmp:
        plot_sft_loss(run_name, history, tmp, dpi=params.report.plot_dpi)
    log.info("sft@%s done in %.0f s: loss %.3f -> %.3f over %d steps", run_name, wall_s,
             summary["loss_first"], summary["loss_last"], len(history))


def teacher_examples(cfg: SFTRunParams, params: Params, problems: pd.DataFrame, init_dir: Path, run_name: str) -> list[Example]:
    """Rejection sampling: the teacher's distinct correct samples, in the RL prompt format."""
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    with tempfile.TemporaryDirectory(prefix="dashrl-teacher-") as scratch:
        teacher_dir = resolve_teacher(cfg.teacher, init_dir, Path(scratch) / "teacher")
        tokenizer = load_tokenizer(teacher_dir)
        device = default_device()
        engine = HFEngine(load_model(teacher_dir, dtype=resolve_dtype("auto", device), device=device), tokenizer,
                          max_batch_rows=cfg.sampling_batch_rows, progress_label=f"sft@{run_name} teacher samples")
        examples = rejection_sampled_examples(problems, engine=engine, tokenizer=tokenizer, prompt=params.prompt,
                                              grader=params.grader, sampling=sampling, samples_per_problem=cfg.samples_per_problem)
    if not examples:
        raise RuntimeError(f"sft@{run_name}: the teacher got no problem right in {cfg.samples_per_problem} samples each; "
                           "raise sft samples_per_problem or use a stronger teacher")
    return examples


def resolve_teacher(teacher: str | None, init_dir: Path, scratch: Path) -> Path:
    """None: the initial model; a directory under data/models/ or on disk; else a Hub id, downloaded to scratch."""
    if teacher is None:
        return init_dir
    for candidate in (paths.model_dir(teacher), Path(teacher)):
        if (candidate / "config.json").is_file():
            return candidate
    materialise_model(teacher, scratch, dtype="bfloat16")
    return scratch


if __name__ == "__main__":
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    main(load_params(paths.PARAMS), parser.parse_args().run)
