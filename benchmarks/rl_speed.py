"""Side-by-side speed of standard GRPO, No-GF and DASH on the embedded default (a script, not a test).

    python -m benchmarks.rl_speed [--steps 3] [--params params.yaml]

Three runs from the same initial model, same prompts and samples per step, same number of steps:

    grpo   sampling: per_micro_batch, no filter  (the paper's "standard GRPO")
    no_gf  sampling: preemptive,      no filter  (DASH without gradient filtering)
    dash   sampling: preemptive,      filter_threshold from rl.common (or 0.1)

Their steps are interleaved (step s of each run back to back, the order rotating every step) so the
machine's noise falls on all three alike. Prints seconds per step by phase, tokens/s, kept fraction
and reward, and ends with ``dash/grpo time ratio: X`` (total step time, DASH over GRPO).
Needs ``data/models/<init_from>`` and ``data/prepared/<dataset>/train.parquet`` (``make run`` or
``dvc repro model prepare@arith``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections import defaultdict

import numpy as np

from dashrl.config.params import check_rl_run, load_params, min_nonzero_abs_advantage
from dashrl.data.schema import read_problems
from dashrl.models import load_tokenizer
from dashrl.rl.loop import rl_step
from dashrl.rl.run import build_run
from stages import paths

VARIANTS = ("grpo", "no_gf", "dash")
PHASES = ("sampling", "reward", "forward_backward", "optimizer", "weight_sync")


def variant_configs(common, tau: float) -> dict:
    base = dataclasses.replace(common, steps=None, epochs=None)
    return {
        "grpo": dataclasses.replace(base, sampling="per_micro_batch", filter_threshold=0.0),
        "no_gf": dataclasses.replace(base, sampling="preemptive", filter_threshold=0.0),
        "dash": dataclasses.replace(base, sampling="preemptive", filter_threshold=tau),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--params", default=str(paths.PARAMS))
    parser.add_argument("--run", default="dash", help="rl.runs entry whose settings (init_from, geometry) are used")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    params = load_params(args.params)
    common = params.rl.run(args.run)
    tau = common.filter_threshold or min(0.1, 0.5 * min_nonzero_abs_advantage(common.group_size, common.scale_rewards))
    configs = variant_configs(common, tau)
    init_dir, train_file = paths.model_dir(common.init_from), paths.prepared(common.dataset, "train")
    problems = read_problems(train_file)
    if common.train_levels is not None:
        problems = problems[problems["level"].isin(common.train_levels)]
    tokenizer = load_tokenizer(init_dir)
    runs = {}
    for name, cfg in configs.items():
        check_rl_run(dataclasses.replace(cfg, steps=args.steps), f"benchmark.{name}")
        runs[name] = build_run(cfg=dataclasses.replace(cfg, steps=args.steps), prompt=params.prompt, grader=params.grader,
                               weights_dir=init_dir, init_dir=init_dir, tokenizer=tokenizer, problems=problems)

    print(f"{args.steps} steps x {common.prompts_per_step} prompts x G={common.group_size}, micro-batch "
          f"{common.micro_batch_size}, max_new_tokens {common.max_new_tokens}, tau(dash) {tau}, "
          f"train {common.train_dtype}, rollout {common.rollout_dtype}", flush=True)
    history: dict[str, list[dict]] = defaultdict(list)
    for step in range(args.steps):
        order = VARIANTS[step % 3 :] + VARIANTS[: step % 3]
        for name in order:
            m = rl_step(runs[name], step).metrics
            history[name].append(m)
            print(f"  step {step + 1} {name:6s} {m['time_step_s']:7.1f} s  reward {m['reward_mean']:.3f}  "
                  f"kept {m['samples_kept']}/{m['samples']}", flush=True)

    print()
    header = ["variant", *[f"{p} s/step" for p in PHASES], "total s/step", "sample tok/s", "train tok/s",
              "kept frac", "reward first", "reward last"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    totals = {}
    for name in VARIANTS:
        ms = history[name]
        totals[name] = float(np.mean([m["time_step_s"] for m in ms]))
        row = [name, *[f"{np.mean([m[f'time_{p}_s'] for m in ms]):.1f}" for p in PHASES], f"{totals[name]:.1f}",
               f"{np.mean([m['sampling_tokens_per_s'] for m in ms]):.0f}",
               f"{np.mean([m['training_tokens_per_s'] for m in ms]):.0f}",
               f"{np.mean([m['kept_fraction'] for m in ms]):.2f}",
               f"{ms[0]['reward_mean']:.3f}", f"{ms[-1]['reward_mean']:.3f}"]
        print("| " + " | ".join(row) + " |")
    print()
    print(f"no_gf/grpo time ratio: {totals['no_gf'] / totals['grpo']:.2f}")
    print(f"dash/grpo time ratio: {totals['dash'] / totals['grpo']:.2f}")


if __name__ == "__main__":
    main()
