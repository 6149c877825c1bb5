"""Profiles: named sets of params.yaml overrides (``profiles/<name>.yaml``), applied in place.

    python -m dashrl.profiles full                      # the paper's whole matrix on the embedded default
    python -m dashrl.profiles paper --set model.source=Qwen/Qwen2.5-1.5B
    python -m dashrl.profiles full --dry                # print the resulting params.yaml, write nothing

A profile is merged into ``params.yaml``: mappings merge key by key, lists and scalars replace.
The result is validated with ``dashrl.params`` BEFORE anything is written, then written atomically
with its comments kept, so ``git diff params.yaml`` shows exactly what the profile changed and DVC
reruns exactly the stages whose params changed. ``git checkout params.yaml`` restores the default.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from dashrl.io import atomic_file
from dashrl.params import Params, ParamsError, from_mapping


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
    node[leaf] = yaml.safe_load(raw_value)


def apply_profile(params_file: Path, profile_files: list[Path], sets: list[str] = (), write: bool = True) -> str:
    """Merge the profiles (in order) and ``--set`` overrides into ``params_file``; returns the new text."""
    rt = YAML()  # round-trip: keeps comments and key order
    rt.preserve_quotes = True
    rt.width = 120
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    tree = rt.load(params_file.read_text())
    for path in profile_files:
        if not path.is_file():
            known = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise ParamsError(f"{path}: no such profile (profiles: {', '.join(known)})")
        override = rt.load(path.read_text())
        if not isinstance(override, Mapping):
            raise ParamsError(f"{path}: a profile must be a mapping of params.yaml sections, got {override!r}")
        merge(tree, override)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ParamsError(f"--set {item!r}: expected key=value")
        set_dotted(tree, key.strip(), value)
    out = io.StringIO()
    rt.dump(tree, out)
    text = out.getvalue()
    # Validate the whole result (unknown keys, types, cross-section checks) before writing anything.
    from_mapping(Params, yaml.safe_load(text), where=f"{params_file} + {', '.join(str(p) for p in profile_files) or '--set'}")
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
