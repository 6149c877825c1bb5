"""Every random stream of the project, derived from a params seed: the one table of salts.

A stream is a seed from ``params.yaml`` plus integers that say what the draws are for. Two streams
never share their integers: a *salt* (a constant of this table, chosen above any step, epoch or
level a run reaches) separates the streams that would otherwise start from the same numbers.

    stream                           derived as                                        used by
    -------------------------------  ------------------------------------------------  ---------------------------
    problem texts of level L         rng(seed, L)                                      data.generate (arith, pyfunc)
    order of split s (test 0, tr 1)  rng(seed, 0, s)                                   data.generate
    MBPP+ train/test split           random.Random(MBPPPLUS_SPLIT_SEED)                data.code_tasks (the paper's)
    RL sampling, step t, unit u      derive_seed(seed, t, u)                           rl.loop.sampling_config
    RL prompt order, epoch e         derive_seed(seed, PROMPT_ORDER_SALT, e)           rl.run.PromptSchedule
    dapo extra prompts, step t       rng(seed, DAPO_STREAM_SALT, t)[rank::W]           rl.selectors (dapo)
    greso refill prompts             rng(seed, GRESO_STREAM_SALT, t)                   rl.selectors (greso)
    greso exploration coins          rng(seed, GRESO_EXPLORE_SALT, t)                  rl.selectors (greso)
    SFT example order, epoch e       derive_seed(seed, e)                              sft
    engine chunk c of a call         derive_seed(call seed, c)                         engines.hf
    engine shard k of a call (k>0)   derive_seed(call seed, k)                         engines.base.ShardedEngine
    vLLM request i of a call         derive_seed(call seed, i)                         engines.vllm
    report bootstrap of quantity q   keyed_rng(bootstrap_seed, q)                      report (stats, tables)
    torch global RNG                 torch.manual_seed(seed)                           rl.run, stages sft/evaluate

``derive_seed`` gives a 63-bit integer seed (for torch generators and vLLM requests), ``rng`` a
numpy generator; both hash all their integers with numpy's ``SeedSequence``, so the draws are the
same on every platform and every run, and a resumed run continues the streams exactly.
"""

from __future__ import annotations

import zlib

import numpy as np

# Salts: above any step, epoch or level a run reaches, so a salted stream never meets an unsalted one.
PROMPT_ORDER_SALT = 1_000_003
DAPO_STREAM_SALT = 1_000_033
GRESO_STREAM_SALT = 1_000_037
GRESO_EXPLORE_SALT = 1_000_039
# The paper's MBPP+ split: random.seed(42); random.shuffle(rows) (a fixed split, not a params seed).
MBPPPLUS_SPLIT_SEED = 42


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, index, ...), stable across runs and platforms."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def rng(*parts: int) -> np.random.Generator:
    """A generator seeded by integers (seed, salt, step, ...): the same draws on every platform."""
    return np.random.default_rng([int(p) for p in parts])


def keyed_rng(seed: int, key: str) -> np.random.Generator:
    """A generator for one named quantity: a seed and the quantity's name (stable across runs)."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])
