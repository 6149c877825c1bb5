"""dtype ``auto`` follows the CPU's native bf16 support; progress bars print whole lines off a terminal."""

from __future__ import annotations

import io
import logging

import pytest

import dashrl.infra.hardware as hw
from dashrl.infra.progress import LineStream, TqdmLoggingHandler, progress


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU with the given flags, torch capability and oneDNN cap."""

    def set_cpu(flags: set[str], capability: str = "AVX512", onednn_cap: str | None = None) -> None:
        monkeypatch.setattr(hw, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(hw.torch.backends.cpu, "get_cpu_capability", lambda: capability)
        if onednn_cap is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_cap)

    return set_cpu


@pytest.mark.parametrize(("flags", "capability", "onednn_cap", "expected"), [
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512", None, "bfloat16"),  # Cooper Lake / Zen 4
    ({"avx2", "amx_bf16", "amx_tile"}, "AVX512", None, "bfloat16"),  # Sapphire Rapids
    ({"avx2", "fma"}, "AVX2", None, "float32"),  # AVX2-only (the 2-core EPYC of issue 12)
    ({"avx2", "avx512f"}, "AVX512", None, "float32"),  # AVX-512 without bf16 (Skylake)
    ({"avx2", "avx512_bf16"}, "AVX2", None, "float32"),  # torch told to use AVX2 kernels (ATEN_CPU_CAPABILITY)
    ({"avx2", "avx512_bf16"}, "AVX512", "AVX2", "float32"),  # oneDNN capped below native bf16
    ({"avx2", "avx512_bf16"}, "AVX512", "AVX512_CORE_BF16", "bfloat16"),
])
def test_auto_dtype_follows_native_bf16(cpu, flags, capability, onednn_cap, expected):
    cpu(flags, capability, onednn_cap)
    assert hw.resolve_dtype("auto", "cpu") == expected
    # explicit names are kept whatever the machine
    assert hw.resolve_dtype("float32", "cpu") == "float32"
    assert hw.resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="'fp8' is not one of auto, float32, bfloat16"):
        hw.resolve_dtype("fp8")


def test_compute_record_names_the_machine_and_the_resolved_dtypes(cpu):
    cpu({"avx2", "fma", "sse4_2"}, "AVX2")
    record = hw.compute_record("cpu", train_dtype="float32", rollout_dtype="float32")
    assert record["cpu_flags"] == ["avx2", "fma"]  # only the flags that decide speed
    assert record["bf16_native"] is False and "no avx512_bf16" in record["bf16_reason"]
    assert record["dtypes"] == {"train_dtype": "float32", "rollout_dtype": "float32"}
    assert record["torch_cpu_capability"] == "AVX2"


def test_the_rl_loop_resolves_auto(cpu):
    """The RL loop resolves auto before it builds anything: on an AVX2 CPU it trains in fp32."""
    from test_rl import make_cfg as rl_cfg

    from dashrl.rl.run import resolve_dtypes

    cpu({"avx2"}, "AVX2")
    cfg = resolve_dtypes(rl_cfg(train_dtype="auto", rollout_dtype="auto"), "cpu")
    assert (cfg.train_dtype, cfg.rollout_dtype) == ("float32", "float32")
    cpu({"avx2", "amx_bf16"}, "AVX512")
    cfg = resolve_dtypes(rl_cfg(train_dtype="auto", rollout_dtype="float32"), "cpu")
    assert (cfg.train_dtype, cfg.rollout_dtype) == ("bfloat16", "float32")


def test_progress_off_a_terminal_prints_one_line_per_update(monkeypatch):
    monkeypatch.setenv("DASHRL_PROGRESS_INTERVAL_S", "0")
    monkeypatch.delenv("DASHRL_PROGRESS", raising=False)
    out = io.StringIO()  # not a tty
    with progress(desc="rl@dash", total=3, unit="step", stream=out) as bar:
        for step in range(3):
            bar.set_postfix({"reward": f"{0.1 * step:.3f}"}, refresh=False)
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("rl@dash:   0%")
    assert lines[-1].startswith("rl@dash: 100%") and "3/3" in lines[-1] and "reward=0.200" in lines[-1]
    assert all(line.startswith("rl@dash:") for line in lines)


def test_progress_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("DASHRL_PROGRESS", "0")
    out = io.StringIO()
    with progress(desc="x", total=2, stream=out) as bar:
        bar.update(2)
    assert out.getvalue() == ""
    out = io.StringIO()
    monkeypatch.delenv("DASHRL_PROGRESS")
    with progress(desc="x", total=2, stream=out, disable=True) as bar:  # e.g. ranks > 0
        bar.update(2)
    assert out.getvalue() == ""


def test_line_stream_drops_carriage_returns_and_cursor_moves():
    out = io.StringIO()
    stream = LineStream(out)
    stream.write("\r  a 10%|#  |\x1b[A")
    stream.write("")
    stream.write("\n")
    assert out.getvalue() == "a 10%|#  |\n"


def test_log_records_go_through_tqdm_write():
    out = io.StringIO()
    handler = TqdmLoggingHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("dashrl.test.progress")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("step %d done", 3)
    finally:
        logger.removeHandler(handler)
    assert out.getvalue() == "WARNING step 3 done\n"


def test_report_lists_each_stages_compute_and_warns_when_dtypes_mix():
    from dashrl.report.tables import compute_notes, compute_table

    def record(dtype: str, caps: dict) -> dict:
        return {"device": "cpu", "cpu_model": "Some CPU", "cpu_flags": ["avx2"], "torch_cpu_capability": "AVX2",
                "isa_caps": caps, "bf16_native": False, "dtypes": {"dtype": dtype}}

    records = {"evaluate@base-arith": record("float32", {"ATEN_CPU_CAPABILITY": "avx2"}),
               "evaluate@dash-arith": record("bfloat16", {}), "rl@dash": None}
    table = compute_table(records)
    assert table["stage"].tolist() == list(records)
    assert table["dtypes"].tolist()[:2] == ["dtype float32", "dtype bfloat16"]
    assert table["torch_cpu_kernels"].iloc[0] == "AVX2 ATEN_CPU_CAPABILITY=avx2"
    assert table.iloc[2].drop("stage").isna().all()  # not recorded
    notes = " ".join(compute_notes(records))
    assert "not comparable" in notes
    assert "mix dtypes (bfloat16, float32)" in notes
    assert "did not record" in notes
    assert "mix dtypes" not in " ".join(compute_notes({"a": record("float32", {}), "b": record("float32", {})}))


def test_evaluation_progress_counts_every_sequence_as_it_finishes(tiny_model_dir, monkeypatch):
    """One bar line per update off a terminal; the last says every sequence of the call is done."""
    import dashrl.engines.hf as rollout
    from dashrl.models import load_model, load_tokenizer

    monkeypatch.setenv("DASHRL_PROGRESS_INTERVAL_S", "0")
    out = io.StringIO()
    real = rollout.progress
    monkeypatch.setattr(rollout, "progress", lambda **kw: real(**kw, stream=out))
    tokenizer, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    engine = rollout.HFEngine(model, tokenizer, max_batch_rows=4, progress_label="evaluate@tiny")
    engine.generate(["a", "bb", "ccc"], 2, rollout.SamplingConfig(temperature=1.0, max_new_tokens=6, seed=0))
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("evaluate@tiny: 100%") and "6/6" in lines[-1]
    done = [int(line.split("|")[2].split("/")[0]) for line in lines]
    assert done == sorted(done)  # monotone

