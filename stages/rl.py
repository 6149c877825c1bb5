"""Stage `rl@<run>`: train one named RL run (DASH, GRPO, PPO variants ... from params.yaml rl.runs).

    python -m stages.rl dash
    torchrun --nproc_per_node 2 -m stages.rl dash      # data parallel over 2 processes


Reads ``data/models/<init_from>`` and ``data/prepared/<dataset>/train.parquet``; writes the final
policy ``data/models/<run>/`` (input of evaluate: weights, tokenizer, ``dashrl_model.json`` and the
model card ``README.md``, all functions of the inputs alone), ``data/rl/<run>/rollouts/`` (one parquet
per step), ``metrics.jsonl`` (per step), ``summary.json`` (DVC metrics: times, CPU seconds and machine
load beside the training metrics), ``run.json`` (versions, commit, machine), ``curves.png``, and
``live/``: DVCLive's per-step metrics (DVC metrics and plots), written as each step ends, with the
other trackers of ``report_to`` (``dashrl.infra.tracking``).
``data/work/rl/<run>/`` keeps checkpoints so a killed run resumes where it stopped.
Under ``torchrun`` every process trains (``dashrl.infra.distributed``); rank 0 alone writes the outputs.
"""

from __future__ import annotations

import argparse
import logging
import shutil

import numpy as np

from dashrl.config.params import Params, load_params, section_dict
from dashrl.data.loaders import register_user_datasets
from dashrl.infra.distributed import SINGLE, World, init_from_env, teardown
from dashrl.infra.files import atomic_dir, atomic_file, dir_sha256, read_jsonl, run_record, write_json
from dashrl.infra.hardware import compute_record
from dashrl.infra.tracking import TrackerContext, check_installed, open_trackers, write_dvclive
from dashrl.infra.usage import UsageMonitor
from dashrl.models import load_tokenizer
from dashrl.report.curves import plot_rl_curves
from dashrl.report.model_card import card_metrics, model_card, rl_algorithm
from dashrl.rl.checkpoints import gather_policy_state, save_policy
from dashrl.rl.loop import train
from stages import paths
from stages.common import base_model_of, model_params, setup_logging, training_inputs, write_model_record

log = logging.getLogger("stages.rl")


def main(params: Params, run_name: str, world: World = SINGLE) -> None:
    cfg = params.rl.run(run_name)
    register_user_datasets(params.prepare.user_tasks())  # datasets of your own: their tasks
    # Everything that can be wrong is checked before the first sample.
    check_installed(cfg.report_to, f"rl.runs.{run_name}.report_to")
    init_dir, train_file, problems = training_inputs(f"rl.runs.{run_name}", cfg.init_from, cfg.dataset, cfg.train_levels)
    tokenizer = load_tokenizer(init_dir)

    work_dir = paths.rl_work_dir(run_name)
    used = {"rl": section_dict(cfg), "prompt": section_dict(params.prompt), "grader": section_dict(params.grader)}
    trackers = None
    if world.is_main:  # a resumed run's DVCLive files start with the steps its log keeps (replayed)
        trackers = open_trackers(cfg.report_to, TrackerContext(f"rl@{run_name}", paths.live_dir("rl", run_name),
                                                               paths.tracking_dir("rl", run_name), config=used),
                                 history=read_jsonl(work_dir / "metrics.jsonl"))
    try:
        with UsageMonitor() as usage:  # CPU seconds and machine load beside the wall time (dashrl.infra.usage)
            run = train(cfg=cfg, prompt=params.prompt, grader=params.grader, init_dir=init_dir, tokenizer=tokenizer,
                        problems=problems, train_file=train_file, work_dir=work_dir, world=world,
                        progress_label=f"rl@{run_name}", tracker=trackers)
    finally:
        if trackers is not None:
            trackers.close()
    policy_state = gather_policy_state(run)  # parallel: fsdp: the shards gathered onto rank 0 (all ranks call it)
    if not world.is_main:
        return  # rank 0 holds the same weights and writes them
    metrics = read_jsonl(work_dir / "metrics.jsonl")
    if "dvclive" not in cfg.report_to:  # the DVC metrics and plots dvc.yaml declares, at the end
        write_dvclive(paths.live_dir("rl", run_name), metrics)
    summary = summarise_run(metrics, usage.record(), run_name)
    wall_s = summary["stage_wall_s"]

    compute = compute_record(world.device, train_dtype=run.cfg.train_dtype, rollout_dtype=run.cfg.rollout_dtype)
    algorithm, tags = rl_algorithm(used["rl"])
    base_model = base_model_of(init_dir)
    with atomic_dir(paths.model_dir(run_name)) as tmp:
        save_policy(run, tmp, policy_state)
        tokenizer.save_pretrained(tmp)
        content_sha256 = dir_sha256(tmp)
        # Only what the inputs determine: evaluate@ and passk@ depend on this directory.
        write_model_record(tmp, {"params": model_params(used), "base_model": base_model, "model": {
            "source": f"rl@{run_name}", "init_from": cfg.init_from, "content_sha256": content_sha256}})
        (tmp / "README.md").write_text(model_card(
            run=run_name, stage=f"rl@{run_name}", algorithm=algorithm, tags=tags, base_model=base_model,
            init_from=cfg.init_from, datasets=[cfg.dataset], params=model_params(used), metrics=card_metrics(summary)))
    out = paths.rl_dir(run_name)
    with atomic_dir(out / "rollouts") as tmp:
        for path in sorted((work_dir / "rollouts").glob("step-*.parquet")):
            shutil.copy2(path, tmp / path.name)
    with atomic_file(out / "metrics.jsonl") as tmp:
        shutil.copy2(work_dir / "metrics.jsonl", tmp)
    write_json(out / "summary.json", summary)
    write_json(out / "run.json", run_record(used, run=run_name, steps=len(metrics), compute=compute,
                                            model={"content_sha256": content_sha256}))
    with atomic_file(out / "curves.png") as tmp:
        plot_rl_curves({run_name: metrics}, tmp, dpi=params.report.plot_dpi)
    log.info("rl@%s done in %.0f s: reward %.3f -> %.3f", run_name, wall_s,
             metrics[0]["reward_mean"], metrics[-1]["reward_mean"])


def summarise_run(metrics: list[dict], usage: dict, run_name: str) -> dict:
    """Totals over the run: time per phase, tokens, kept fraction, reward at the start and end; the
    training call's wall and CPU seconds and the machine's load meanwhile (``usage``: dashrl.infra.usage)."""
    def total(key: str) -> float:
        return float(sum(m[key] for m in metrics))

    k = max(1, min(3, len(metrics) // 3))
    return {
        "run": run_name,
        "steps": len(metrics),
        "stage_wall_s": usage["wall_s"],
        "stage_cpu_s": usage["cpu_s"],
        "usage": usage,
        "train_wall_s": total("time_step_s"),
        **{f"total_{key[5:]}": total(key) for key in metrics[0] if key.startswith("time_") and key != "time_step_s"},
        "reward_first_steps": float(np.mean([m["reward_mean"] for m in metrics[:k]])),
        "reward_last_steps": float(np.mean([m["reward_mean"] for m in metrics[-k:]])),
        "kept_fraction_mean": float(np.mean([m["kept_fraction"] for m in metrics])),
        "samples_total": int(total("samples")),
        "samples_kept_total": int(total("samples_kept")),
        "completion_tokens_mean": float(np.mean([m["completion_tokens_mean"] for m in metrics])),
        "completion_tokens_last_steps": float(np.mean([m["completion_tokens_mean"] for m in metrics[-k:]])),
        "mean_abs_advantage_kept": float(np.mean([m["mean_abs_advantage_kept"] for m in metrics])),
    }


if __name__ == "__main__":
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    args = parser.parse_args()
    world = init_from_env()  # torchrun's environment, or a single process
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 logs for the run
    try:
        main(load_params(paths.PARAMS), args.run, world)
    finally:
        teardown(world)
