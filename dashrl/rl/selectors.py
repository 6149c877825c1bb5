"""Sample selectors: which prompts a step samples, how many completions each, which of them it trains on.

DASH (docs/algorithm.md §3) samples P prompts x G completions and lets the tau filter drop the
groups whose rewards are all equal. Later methods choose the samples more actively
(docs/algorithm.md §6); each is a registered selector (``rl.common.selector``), with four hooks that
``dashrl.rl.loop.rl_step`` calls where the algorithm needs them:

  prompts  0) before rollout: the step's P prompts (greso: skips those predicted to give a zero-
              variance group, refilled from a seeded stream)
  draws    1) completions sampled per prompt (pods: pods_factor x G)
  select   2b) after grading, before the advantages: what is trained (dapo: zero-variance groups out,
              more rounds of prompts until the share is informative; pods: the max-variance G of
              each group); the rest is generated, not trained
  observe  8) after the step, on every process: what the selector learns (greso: each prompt's
              zero-variance history; it lives in ``run.selector_state``, which checkpoints keep)

    none   today's DASH: every sampled completion goes to the tau filter
    dapo   dynamic sampling (DAPO, as in verl): drop zero-variance groups, sample more prompts
    pods   max-variance down-sampling (PODS): sample n = pods_factor x G, train the m = G of maximal
           reward variance
    greso  pre-rollout skipping (GRESO): skip prompts whose recent groups were all zero-variance,
           each kept with probability greso_explore

Every random choice derives from (seed, salt, step, ...), so a run reproduces and resumes exactly.
A selector counts what it does into the step's ``stats`` (prompts_skipped, prompts_explored,
extra_rounds); ``dashrl.rl.step_metrics`` reports them with the samples generated and back-propagated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from dashrl.config.params import RLRunParams
from dashrl.infra.seeds import DAPO_STREAM_SALT, GRESO_EXPLORE_SALT, GRESO_STREAM_SALT, rng
from dashrl.rl.samples import Group, Sample


class Run(Protocol):
    """What a selector reads of its run (``dashrl.rl.run.RLRun``, which builds the selector, has it)."""

    cfg: RLRunParams
    schedule: Any  # .problems: the training prompts (DataFrame with an "id" column)
    world: Any  # .rank, .size: this process among those training together
    selector_state: dict[str, Any]  # what the selector has learnt; checkpointed


Stats = dict[str, float]
Rollout = Callable[[pd.DataFrame, int], list[Group]]  # (prompts, round) -> their groups, sampled and graded
PromptsHook = Callable[[Run, int, pd.DataFrame, Stats], pd.DataFrame]
DrawsHook = Callable[[RLRunParams], int]
SelectHook = Callable[[Run, int, list[Group], Rollout, Stats], list[Group]]
ObserveHook = Callable[[Run, int, list[Sample]], None]


def scheduled_prompts(run: Run, step: int, problems: pd.DataFrame, stats: Stats) -> pd.DataFrame:
    """The schedule's P prompts, unchanged."""
    return problems


def group_size(cfg: RLRunParams) -> int:
    return cfg.group_size


def learn_nothing(run: Run, step: int, samples: list[Sample]) -> None:
    return None


@dataclass(frozen=True)
class Selector:
    name: str
    select: SelectHook
    prompts: PromptsHook = scheduled_prompts
    draws: DrawsHook = group_size
    observe: ObserveHook = learn_nothing
    drops_samples: bool = False  # some generated samples are never trained: the rollouts get a `selected` column


SELECTORS: dict[str, Selector] = {}


def register_selector(name: str, *, prompts: PromptsHook = scheduled_prompts, draws: DrawsHook = group_size,
                      observe: ObserveHook = learn_nothing, drops_samples: bool = False):
    """Register selector ``name``: the decorated function is its ``select`` hook, the others keyword args."""
    def decorate(select: SelectHook) -> SelectHook:
        if name in SELECTORS:
            raise ValueError(f"selector {name!r} registered twice")
        SELECTORS[name] = Selector(name, select, prompts, draws, observe, drops_samples)
        return select

    return decorate


def get_selector(name: str) -> Selector:
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r} (valid: {', '.join(sorted(SELECTORS))})")
    return SELECTORS[name]


def stream_prompts(problems: pd.DataFrame, n: int, exclude: set[str], *seed_parts: int,
                   part: tuple[int, int] = (0, 1)) -> pd.DataFrame:
    """Up to ``n`` prompts not in ``exclude`` (ids), in the order of one seeded shuffle of ``problems``.
    ``part`` (r, W): only every W-th position of the shuffle from r, so W processes drawing parts
    r = 0 .. W-1 of the same shuffle never draw the same problem."""
    rank, size = part
    order = rng(*seed_parts).permutation(len(problems))[rank::size]
    ids = problems["id"].to_numpy()
    rows = [int(i) for i in order if ids[i] not in exclude][:n]
    return problems.iloc[rows].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
# none: DASH as the paper has it


@register_selector("none")
def train_every_group(run: Run, step: int, groups: list[Group], rollout: Rollout, stats: Stats) -> list[Group]:
    """Every sampled completion goes on to the advantages and the tau filter."""
    return groups


# ------------------------------------------------------------------------------------------------
# dapo: dynamic sampling


@register_selector("dapo", drops_samples=True)
def dynamic_sampling(run: Run, step: int, groups: list[Group], rollout: Rollout, stats: Stats) -> list[Group]:
    """DAPO's dynamic sampling: zero-variance groups are generated, not trained; while fewer than the
    share's groups are informative and rounds remain (``dapo_max_rounds``, the first included), sample
    as many new prompts as groups are missing. The new prompts come from one stream per step, seeded
    by (seed, step), that skips the WHOLE step's prompts (every process's share) and those this
    process drew before; process r of W draws only every W-th position of it from r, so no problem
    is sampled twice in a step across the processes. Trains on the first informative groups, at most
    the share; returns them first, then the groups generated and not trained."""
    cfg, wanted = run.cfg, len(groups)
    step_ids = set(run.schedule.batch(step)["id"])  # every process's prompts of the step
    sampled = list(groups)
    rounds = 1
    while (missing := wanted - sum(not g.zero_variance for g in sampled)) > 0 and rounds < cfg.dapo_max_rounds:
        extra = stream_prompts(run.schedule.problems, missing, step_ids | {g.problem_id for g in sampled},
                               cfg.seed, DAPO_STREAM_SALT, step, part=(run.world.rank, run.world.size))
        if extra.empty:
            break  # every training prompt is in the step already
        sampled += rollout(extra, rounds)
        rounds += 1
    stats["extra_rounds"] += rounds - 1
    trained = [g for g in sampled if not g.zero_variance][:wanted]
    trained_ids = {id(g) for g in trained}
    for g in sampled:
        g.trained = id(g) in trained_ids
    return trained + [g for g in sampled if not g.trained]


# ------------------------------------------------------------------------------------------------
# pods: max-variance down-sampling


def max_variance_subset(rewards: list[float], m: int) -> list[int]:
    """The ``m`` of ``rewards`` with maximal variance (sample indices, ascending).

    A max-variance subset is the i lowest and the m - i highest rewards for some i (PODS); for binary
    rewards: as balanced as the group allows. Ties are broken deterministically: equal rewards by the
    lower sample index, equal variances by the smaller i (fewer low rewards).
    """
    n = len(rewards)
    if not 1 <= m <= n:
        raise ValueError(f"cannot keep {m} of {n} completions")
    ascending = sorted(range(n), key=lambda j: (rewards[j], j))
    best, best_var = [], -1.0
    for i in range(m + 1):
        low = ascending[:i]
        high = sorted(ascending[i:], key=lambda j: (-rewards[j], j))[: m - i]
        if len(low) + len(high) < m:
            continue
        var = float(np.var([rewards[j] for j in low + high]))
        if var > best_var + 1e-12:
            best, best_var = sorted(low + high), var
    return best


@register_selector("pods", draws=lambda cfg: cfg.pods_factor * cfg.group_size, drops_samples=True)
def max_variance_down_sampling(run: Run, step: int, groups: list[Group], rollout: Rollout, stats: Stats) -> list[Group]:
    """PODS: each prompt was sampled pods_factor x G times; train on the G of maximal reward variance
    (the advantages are computed over those G); the others are generated, not trained."""
    for g in groups:
        g.chosen = max_variance_subset(g.rewards.tolist(), run.cfg.group_size)
    return groups


# ------------------------------------------------------------------------------------------------
# greso: skip prompts predicted to give a zero-variance group, before rollout

GRESO_HISTORY = "zero_variance_history"  # run.selector_state key: problem id -> its last outcomes (1: zero variance)


def predicted_zero_variance(history: list[int], length: int) -> bool:
    """The prompt's last ``length`` groups (at least that many) were all zero-variance."""
    return len(history) >= length and all(history[-length:])


def greso_prompts(run: Run, step: int, problems: pd.DataFrame, stats: Stats) -> pd.DataFrame:
    """The schedule's prompts, less those whose history predicts a zero-variance group (each kept with
    probability ``greso_explore``), refilled from a stream seeded by (seed, step) until P are taken.
    The same on every process (the history is). Should even the stream run out, skipped ones refill."""
    cfg = run.cfg
    history: dict[str, list[int]] = run.selector_state.get(GRESO_HISTORY, {})
    coins = rng(cfg.seed, GRESO_EXPLORE_SALT, step)
    stream = stream_prompts(run.schedule.problems, len(run.schedule.problems), set(problems["id"]),
                            cfg.seed, GRESO_STREAM_SALT, step)
    candidates = pd.concat([problems, stream], ignore_index=True)
    taken, skipped = [], []
    for i, problem_id in enumerate(candidates["id"]):
        if len(taken) == cfg.prompts_per_step:
            break
        if not predicted_zero_variance(history.get(problem_id, []), cfg.greso_history):
            taken.append(i)
        elif coins.random() < cfg.greso_explore:
            taken.append(i)
            stats["prompts_explored"] += 1
        else:
            skipped.append(i)
    taken += skipped[: cfg.prompts_per_step - len(taken)]  # only when the stream is exhausted
    stats["prompts_skipped"] += len(set(skipped) - set(taken))
    return candidates.iloc[sorted(taken)].reset_index(drop=True)


def greso_observe(run: Run, step: int, samples: list[Sample]) -> None:
    """Append each sampled group's outcome (1: zero variance) to its prompt's history, keeping the
    last ``greso_history``."""
    rewards: dict[int, list[float]] = {}
    ids: dict[int, str] = {}
    for s in samples:
        rewards.setdefault(s.prompt_index, []).append(s.reward)
        ids[s.prompt_index] = s.problem_id
    history = run.selector_state.setdefault(GRESO_HISTORY, {})
    for index in sorted(rewards):
        outcome = int(max(rewards[index]) == min(rewards[index]))
        history[ids[index]] = [*history.get(ids[index], []), outcome][-run.cfg.greso_history :]


@register_selector("greso", prompts=greso_prompts, observe=greso_observe)
def train_every_greso_group(run: Run, step: int, groups: list[Group], rollout: Rollout, stats: Stats) -> list[Group]:
    """GRESO acts before rollout; what it sampled goes to the tau filter as in DASH."""
    return groups


__all__ = [
    "SELECTORS",
    "Selector",
    "get_selector",
    "max_variance_subset",
    "predicted_zero_variance",
    "register_selector",
    "stream_prompts",
]

