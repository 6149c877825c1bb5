"""A digest of every pipeline output, to prove that a code change left the outputs identical.

Not collected by pytest (run by hand, at two commits, on one machine, then compare):

    python tests/output_digest.py reduced base.json [DIR]  # the dvc_repo fixture's 12 stages, run here
                                                           # (in DIR, kept, when given; else a temp dir)
    python tests/output_digest.py data data/ full.json  # the data/ directory of an existing `dvc repro`
    python tests/output_digest.py compare base.json final.json

``reduced`` builds the tiny git + DVC repository exactly as ``tests/test_dvc_pipeline.py``'s
``dvc_repo`` fixture does (``make_dvc_repo`` with ``tiny_params_dict``, evaluate models base, sft_h,
dash, grpo; pass@k of base and dash), runs ``dvc repro`` in it and digests its ``data/``.

Per file, by suffix:
  .parquet      sha256 of the frame's rows as canonical JSON (columns that hold times dropped)
  .safetensors  sha256 of the bytes
  .json/.jsonl  sha256 of canonical JSON with time and version keys dropped
  .csv          sha256 of the rows as canonical JSON (columns that hold times dropped)
  .md           sha256 of the text with the cells of time columns blanked
  .png          existence only
  other         sha256 of the bytes
Time and version fields (dropped everywhere): keys or columns named ``time*``/``*_time``,
``*_s`` (seconds), ``*_per_s``, ``*_utc``, ``packages``, ``git_commit``, ``compute``, ``usage`` (CPU
seconds and machine load) and the others in VOLATILE_KEYS; the rows and metrics of the report's
training-time claims (findings whose comparison is a training time); seconds quoted in a report's
notes ("at 2 s of training"); the report's warnings about runs that saw outside load. The
temporary directory of a ``reduced`` run is written as ``<tmp>`` wherever it appears (the tiny
model's path is a param). Everything else must match bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keys whose values are times, speeds, machine or version facts: they differ between two identical runs.
VOLATILE_KEYS = {"versions", "packages", "git_commit", "compute", "python", "platform", "hostname", "argv",
                 "usage", "outside_load"}  # usage: CPU seconds and machine load (dashrl.infra.usage)
VOLATILE_PATTERN = re.compile(
    r"(^time|_time$|time_|_s$|_per_s$|_utc$|seconds|_sec$|^wall|_wall|elapsed|duration|timestamp|speed|tokens_per)",
    re.IGNORECASE,
)


SECONDS_IN_TEXT = re.compile(r"\b\d+(?:\.\d+)? s\b")
# The report's warnings about runs that saw outside load (a time claim's method, the notes): machine facts.
OUTSIDE_LOAD_TEXT = re.compile(r"(; )?WARNING: [^|\n]*?outside load[^|\n]*")
TIME_COMPARISON = "training time"  # the findings' comparison of a time claim: "dash / grpo (training time)"
# Set per digest: the temporary root to write as <tmp>, and the ids of the report's time claims.
CONTEXT: dict[str, object] = {"root": None, "time_claims": set()}


def volatile(key: str) -> bool:
    key = str(key).strip().lower()
    if key.split(".")[0] in CONTEXT["time_claims"]:
        return True
    return key in VOLATILE_KEYS or bool(VOLATILE_PATTERN.search(key.replace(" ", "_")))


def _text(value: str) -> str:
    root = CONTEXT["root"]
    value = OUTSIDE_LOAD_TEXT.sub("", value)
    return value.replace(str(root), "<tmp>") if root else value


def _canonical(value):
    """JSON-ready value with volatile keys dropped, floats written exactly (repr), the temp root masked."""
    if isinstance(value, dict):
        return {_text(str(k)): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0])) if not volatile(k)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return _text(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _canonical(value.tolist())
    return value


def _time_claim_row(cells) -> bool:
    return any(isinstance(c, str) and TIME_COMPARISON in c for c in cells)


# Columns of a findings row that come from the claim's definition, not from the runs.
CLAIM_COLUMNS = {"id", "claim", "benchmark", "comparison", "paper", "rule", "method", "seeds"}


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _frame_digest(frame) -> str:
    kept = [c for c in frame.columns if not volatile(c)]
    rows = frame[kept].to_dict(orient="records")
    rows = [{k: (v if k in CLAIM_COLUMNS else None) for k, v in r.items()} if _time_claim_row(r.values()) else r
            for r in rows]
    return _sha(json.dumps({"columns": [str(c) for c in kept], "rows": _canonical(rows)}, sort_keys=True))


def _markdown_digest(text: str) -> str:
    """Blank the cells of table columns whose header is a time; everything else verbatim."""
    out, header, names = [], None, None
    for line in _text(text).splitlines():
        if line.startswith("|"):
            cells = line.strip().strip("|").split("|")
            if header is None:
                names = [c.strip() for c in cells]
                header = [volatile(c) or "time" in c.lower() or "(s)" in c or " s]" in c for c in cells]
            elif len(cells) == len(header):
                if _time_claim_row(cells):
                    header_row = [n not in CLAIM_COLUMNS for n in names]
                    cells = ["" if drop else c for c, drop in zip(cells, header_row, strict=True)]
                cells = ["" if drop else c for c, drop in zip(cells, header, strict=True)]
            out.append("|".join(cells))
        else:
            header = None
            out.append(SECONDS_IN_TEXT.sub("<t> s", line))
    return _sha("\n".join(out))


def file_digest(path: Path) -> str:
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _frame_digest(pd.read_parquet(path))
    if suffix == ".csv":
        return _frame_digest(pd.read_csv(path))
    if suffix == ".json":
        return _sha(json.dumps(_canonical(json.loads(path.read_text())), sort_keys=True))
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return _sha(json.dumps(_canonical(rows), sort_keys=True))
    if suffix == ".md":
        return _markdown_digest(path.read_text())
    if suffix == ".png":
        return "exists"
    return _sha(path.read_bytes())


def digest_dir(data: Path, skip: tuple[str, ...] = ("work",), root: Path | None = None) -> dict[str, str]:
    """Digest of every file under ``data`` (relative path -> digest); ``skip``: top folders left out
    (``work``: checkpoints of runs in progress, removed when a run finishes); ``root``: a temporary
    directory written as <tmp>."""
    import pandas as pd

    findings = data / "report" / "findings.csv"
    time_claims = set()
    if findings.is_file():
        frame = pd.read_csv(findings)
        time_claims = {row["id"] for row in frame.to_dict(orient="records") if _time_claim_row(row.values())}
    CONTEXT.update(root=root, time_claims=time_claims)
    found = {}
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        rel = path.relative_to(data)
        if rel.parts[0] in skip or path.name.startswith("."):
            continue
        found[rel.as_posix()] = file_digest(path)
    return found


def reduced_pipeline_digest(keep: Path | None = None) -> dict[str, str]:
    """The ``dvc_repo`` fixture's repository, built and run here (in ``keep`` when given, else in a
    temporary directory); the digest of its data/."""
    from tests.conftest import (
        DVC,
        build_tiny_model,
        build_tiny_tokenizer,
        make_dvc_repo,
        run_cmd,
        save_model_dir,
        stages_run,
        tiny_params_dict,
    )

    with tempfile.TemporaryDirectory() as tmp:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=False)
            tmp = str(keep)
        tokenizer = build_tiny_tokenizer()
        model_dir = save_model_dir(build_tiny_model(len(tokenizer)), tokenizer, Path(tmp) / "tiny_model")
        raw = tiny_params_dict()
        raw["evaluate"]["models"] = ["base", "sft_h", "dash", "grpo"]
        raw["evaluate"]["pass_k"]["models"] = ["base", "dash"]
        repo = Path(tmp) / "repo"
        repo.mkdir()
        repo, env = make_dvc_repo(repo, raw, model_dir)
        ran = stages_run(run_cmd([*DVC, "repro"], repo, env, timeout=3600))
        print(f"dvc repro ran {len(ran)} stages: {', '.join(sorted(ran))}", file=sys.stderr)
        return digest_dir(repo / "data", root=Path(tmp))


def compare(a: dict[str, str], b: dict[str, str]) -> list[str]:
    lines = [f"only in the first: {k}" for k in sorted(set(a) - set(b))]
    lines += [f"only in the second: {k}" for k in sorted(set(b) - set(a))]
    lines += [f"differs: {k}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    return lines


def write_digest(found: dict[str, str], out: Path) -> int:
    out.write_text(json.dumps(found, indent=1, sort_keys=True))
    print(f"{out}: {len(found)} files digested")
    return 0


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command == "reduced" and len(args) in (1, 2):
        return write_digest(reduced_pipeline_digest(Path(args[1]) if len(args) == 2 else None), Path(args[0]))
    if command == "data" and len(args) == 2:
        return write_digest(digest_dir(Path(args[0])), Path(args[1]))
    if command == "compare" and len(args) == 2:
        first, second = (json.loads(Path(p).read_text()) for p in args)
        lines = compare(first, second)
        print("\n".join(lines) if lines else f"identical: {len(first)} files")
        return 1 if lines else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
