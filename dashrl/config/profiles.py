"""Profiles: named sets of params.yaml overrides (``profiles/<name>.yaml``), applied in place.

    python -m dashrl.config.profiles full                      # the paper's whole matrix on the embedded default
    python -m dashrl.config.profiles paper --set model.source=Qwen/Qwen2.5-1.5B
    python -m dashrl.config.profiles full --dry                # print the resulting params.yaml, write nothing

A profile is merged into ``params.yaml``: mappings merge key by key, lists and scalars replace.
The result is validated with ``dashrl.config.params`` BEFORE anything is written, then written atomically
with its comments kept, so ``git diff params.yaml`` shows exactly what the profile changed and DVC
reruns exactly the stages whose params changed. ``git checkout params.yaml`` restores the default.

Seeds as an axis: a profile's top-level ``repeat`` key (read here, never written to params.yaml)

    repeat:
      runs: [dash, grpo]       # rl.runs or sft.runs entries
      seeds: [1, 2]            # more seeds; the run itself keeps its own (rl.common.seed: 0)

writes each run once more per seed as an explicit run ``<run>-s<seed>`` (``rl.runs.dash-s1`` is
``rl.runs.dash`` with ``seed: 1``), and lists it in ``evaluate.models`` (and ``evaluate.pass_k.models``)
after the run wherever the run is listed. DVC then has one stage per run and seed (``rl@dash-s1``,
``evaluate@dash-s1-arith``); the report groups ``X``, ``X-s1``, ... as one configuration. The copies
are taken after every profile and ``--set`` are merged, and replaced when a profile is applied again.
"""

from __future__ import annotations

import argparse
import copy
import io
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from dashrl.config.params import Params, ParamsError, from_mapping, read_yaml
from dashrl.infra.files import atomic_file


def merge(base: Any, override: Any) -> Any:
    """Deep-merge ``override`` into ``base`` in place (mappings key by key; anything else replaces)."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        for key, value in override.items():
            if key in base and isinstance(base[key], Mapping) and isinstance(value, Mapping):
                merge(base[key], value)
            else:
                base[key] = value
        return base
    return override


def set_dotted(tree: dict, dotted: str, raw_value: str) -> None:
    """``a.b.c=value`` with the value parsed as YAML (``null``, ``3e-6``, ``[1, 2]``)."""
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(node.get(key), Mapping):
            raise ParamsError(f"--set {dotted}: {key!r} is not a section of params.yaml")
        node = node[key]
    node[leaf] = read_yaml(raw_value)


SEEDED = re.compile(r"^(?P<run>.+)-s(?P<seed>\d+)$")  # <run>-s<seed>: a run repeated with another seed
REPEAT_KEYS = ("runs", "seeds")


def seeded_name(run: str, seed: int) -> str:
    return f"{run}-s{seed}"


def _check_repeat(repeat: Any, where: str) -> tuple[list[str], list[int]]:
    """The ``repeat`` key of a profile: {runs: [names], seeds: [ints]}, each listed once."""
    if not isinstance(repeat, Mapping):
        raise ParamsError(f"{where}: repeat: expected a mapping with runs and seeds, got {repeat!r}")
    unknown = sorted(set(repeat) - set(REPEAT_KEYS))
    if unknown:
        raise ParamsError(f"{where}: repeat.{unknown[0]}: unknown key (valid: {', '.join(REPEAT_KEYS)})")
    for key in REPEAT_KEYS:
        value = repeat.get(key)
        if not isinstance(value, list) or not value:
            raise ParamsError(f"{where}: repeat.{key}: expected a non-empty list, got {value!r}")
    runs, seeds = list(repeat["runs"]), list(repeat["seeds"])
    for i, run in enumerate(runs):
        if not isinstance(run, str):
            raise ParamsError(f"{where}: repeat.runs[{i}]: expected a run name, got {run!r}")
        if run in runs[:i]:
            raise ParamsError(f"{where}: repeat.runs: {run!r}: listed twice")
        if SEEDED.match(run):
            raise ParamsError(f"{where}: repeat.runs: {run!r}: is a seeded copy (<run>-s<seed>); name the run itself")
    for i, seed in enumerate(seeds):
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ParamsError(f"{where}: repeat.seeds[{i}]: expected an integer >= 0, got {seed!r}")
        if seed in seeds[:i]:
            raise ParamsError(f"{where}: repeat.seeds: {seed!r}: listed twice")
    return runs, seeds


def _insert_after_group(names: Any, run: str, name: str) -> None:
    """Put ``name`` into the list ``names`` after ``run`` and its seeded copies (once)."""
    if name in names:
        return
    group = [i for i, n in enumerate(names) if n == run or ((m := SEEDED.match(str(n))) and m["run"] == run)]
    names.insert(group[-1] + 1, name)


def _detach_section_end(entries: Any) -> Any:
    """ruamel keeps the blank lines that end a section as a comment on its last value: take them
    off the last run (to put them back below whatever run is last after the copies are written)."""
    last = entries[next(reversed(entries))] if entries else None
    if not isinstance(last, CommentedMap) or not last:
        return None
    key = next(reversed(last))
    token = (last.ca.items.get(key) or [None] * 4)[2]
    if token is None or "\n" not in token.value:
        return None
    head, _, tail = token.value.partition("\n")
    if not tail or tail.strip():
        return None
    moved = copy.deepcopy(token)
    token.value, moved.value = head + "\n", "\n" + tail
    return moved


def _attach_section_end(entries: Any, token: Any) -> None:
    last = entries[next(reversed(entries))]
    if token is not None and isinstance(last, CommentedMap) and last:
        slot = last.ca.items.setdefault(next(reversed(last)), [None] * 4)
        if slot[2] is None or slot[2].value == "\n":
            slot[2] = token


def expand_repeat(tree: Any, repeat: Any, where: str) -> list[str]:
    """Write ``repeat``'s runs once per seed into ``tree`` (params.yaml, merged); returns the new names."""
    runs, seeds = _check_repeat(repeat, where)
    added = []
    for run in runs:
        section = next((s for s in ("rl", "sft") if run in ((tree.get(s) or {}).get("runs") or {})), None)
        if section is None:
            known = [*((tree.get("rl") or {}).get("runs") or {}), *((tree.get("sft") or {}).get("runs") or {})]
            known = [n for n in known if not SEEDED.match(n)]
            raise ParamsError(f"{where}: repeat.runs: {run!r}: no such run in rl.runs or sft.runs (runs: {', '.join(known)})")
        entries, common = tree[section]["runs"], tree[section].get("common") or {}
        section_end = _detach_section_end(entries)
        own = (entries[run] or {}).get("seed", common.get("seed"))
        for seed in seeds:
            if seed == own:
                raise ParamsError(f"{where}: repeat.seeds: {seed!r}: is {section}.runs.{run}'s own seed (the run itself "
                                  f"is that seed; list only other seeds)")
            name = seeded_name(run, seed)
            entry = CommentedMap((k, copy.deepcopy(v)) for k, v in (entries[run] or {}).items())  # values, not comments
            entry["seed"] = seed
            if name in entries:
                entries[name] = entry
            else:
                position = max(i for i, n in enumerate(entries) if n == run or ((m := SEEDED.match(n)) and m["run"] == run))
                entries.insert(position + 1, name, entry, comment=f"{run} with seed {seed} (repeat in {Path(where).name})")
            for models in (tree["evaluate"]["models"], tree["evaluate"]["pass_k"]["models"]):
                if run in models:
                    _insert_after_group(models, run, name)
            added.append(name)
        _attach_section_end(entries, section_end)
    return added


def apply_profile(params_file: Path, profile_files: list[Path], sets: list[str] = (), write: bool = True) -> str:
    """Merge the profiles (in order) and ``--set`` overrides into ``params_file``; returns the new text."""
    rt = YAML()  # round-trip: keeps comments and key order
    rt.preserve_quotes = True
    rt.width = 120
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    tree = rt.load(params_file.read_text())
    repeats = []  # (profile, its repeat key): expanded after every profile and --set is merged
    for path in profile_files:
        if not path.is_file():
            known = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise ParamsError(f"{path}: no such profile (profiles: {', '.join(known)})")
        override = rt.load(path.read_text())
        if not isinstance(override, Mapping):
            raise ParamsError(f"{path}: a profile must be a mapping of params.yaml sections, got {override!r}")
        if "repeat" in override:
            repeats.append((path, override.pop("repeat")))
        merge(tree, override)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ParamsError(f"--set {item!r}: expected key=value")
        set_dotted(tree, key.strip(), value)
    for path, repeat in repeats:
        expand_repeat(tree, repeat, str(path))
    out = io.StringIO()
    rt.dump(tree, out)
    text = out.getvalue()
    # Validate the whole result (unknown keys, types, cross-section checks) before writing anything.
    from_mapping(Params, read_yaml(text), where=f"{params_file} + {', '.join(str(p) for p in profile_files) or '--set'}")
    if write:
        with atomic_file(params_file) as tmp:
            tmp.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply params profiles (profiles/<name>.yaml) to params.yaml.")
    parser.add_argument("profiles", nargs="*", help="profile names, applied in order (e.g. full, paper)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="one more override after the profiles (value parsed as YAML); repeatable")
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--profiles-dir", default="profiles", type=Path)
    parser.add_argument("--dry", action="store_true", help="print the result, write nothing")
    args = parser.parse_args(argv)
    names = [n for n in args.profiles if n != "default"]  # default = params.yaml as committed
    try:
        text = apply_profile(args.params, [args.profiles_dir / f"{n}.yaml" for n in names], args.sets, write=not args.dry)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry:
        print(text, end="")
    else:
        print(f"{args.params}: applied {', '.join(names + [f'--set {s}' for s in args.sets]) or 'nothing'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
