"""What the machine can compute fast, and the `auto` dtype policy that follows from it.

bf16 is only a speed-up where the hardware has native bf16 arithmetic: CUDA GPUs that support it,
and CPUs with AVX512-BF16 or AMX-BF16 instructions. Elsewhere (an AVX2-only CPU, say) torch
emulates bf16 and a bf16 matmul runs ~40x slower than fp32 (measured on a 2-core AMD EPYC:
0.9 vs 37 GFLOP/s). So the params' dtype keys default to ``auto``:

    auto -> bfloat16  on CUDA when ``torch.cuda.is_bf16_supported()``
            bfloat16  on a CPU with avx512_bf16 or amx_bf16 whose kernels torch will use
                      (its CPU capability is AVX512 or better, and ONEDNN_MAX_CPU_ISA does not cap
                      oneDNN below avx512_core_bf16)
            float32   everywhere else

The decision reads CPU flags, not a timing probe: the same machine always resolves the same way,
so a rerun reproduces its numbers. ``python -m dashrl.infra.hardware`` prints the decision beside a
measured fp32/bf16 matmul rate, to check it on a new machine. Results computed in different dtypes
are not comparable (bf16 and fp32 sample different tokens within a few dozen steps): every run
records the dtype it resolved to and the machine it ran on (``compute_record``).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from typing import Any

import torch

DTYPE_CHOICES = ("auto", "float32", "bfloat16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ISA_CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
RECORDED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "avx512_fp16")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still include native bf16 instructions.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                     "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where that file does not exist."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_reason() -> tuple[bool, str]:
    """(native bf16 on this CPU as torch will run it, why)."""
    flags = cpu_flags()
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if not native and not flags:  # no /proc/cpuinfo (macOS, Windows): ask torch
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        native = ["avx512_bf16 (torch)"] if probe is not None and probe() else []
    if not native:
        return False, "no avx512_bf16 / amx_bf16 CPU flag"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("DEFAULT", "NO AVX", "AVX2", "ZVECTOR", "VSX"):
        return False, f"torch's CPU kernels run at capability {capability} (ATEN_CPU_CAPABILITY?)"
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa_cap and isa_cap not in _ONEDNN_BF16_ISAS:
        return False, f"ONEDNN_MAX_CPU_ISA={isa_cap} caps oneDNN below native bf16"
    return True, f"CPU flags {', '.join(native)}, torch CPU capability {capability}"


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> str:
    """``auto`` -> ``bfloat16`` or ``float32`` for ``device`` (see the module docstring); an explicit
    dtype name is returned as it is."""
    if name not in DTYPE_CHOICES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPE_CHOICES)}")
    if name != "auto":
        return name
    return "bfloat16" if bf16_is_fast(device)[0] else "float32"


def bf16_is_fast(device: str | torch.device = "cpu") -> tuple[bool, str]:
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, f"CUDA {'supports' if ok else 'does not support'} bf16"
    if device.type == "cpu":
        return cpu_bf16_reason()
    return False, f"device {device.type}: float32 unless set explicitly"


def compute_record(device: str | torch.device = "cpu", **resolved_dtypes: str) -> dict[str, Any]:
    """The machine a run computed on and the dtypes it resolved, for ``run.json``."""
    device = torch.device(device)
    fast, why = bf16_is_fast(device)
    flags = cpu_flags()
    record: dict[str, Any] = {
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_flags": [f for f in RECORDED_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        # ISA caps set in the environment (e.g. to run an AVX2-only machine's kernels on a newer CPU)
        "isa_caps": {k: os.environ[k] for k in ISA_CAP_VARIABLES if os.environ.get(k)},
        "bf16_native": fast,
        "bf16_reason": why,
        "dtypes": dict(resolved_dtypes),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def matmul_flops_per_s(dtype: torch.dtype, m: int = 1024, k: int = 576, n: int = 1536, seconds: float = 1.0,
                       device: str = "cpu") -> float:
    """Measured rate of an (m, k) x (k, n) matmul in ``dtype`` (FLOP/s; 2mkn per product).

    The default shape is the embedded model's MLP up-projection over a 1,024-token batch."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * m * k * n * count / (time.perf_counter() - start)


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    record = compute_record(device, auto=resolve_dtype("auto", device))
    for key, value in record.items():
        print(f"{key:22s} {value}")
    for dtype in (torch.float32, torch.bfloat16):
        print(f"{'matmul ' + str(dtype).split('.')[-1]:22s} {matmul_flops_per_s(dtype, device=device) / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
