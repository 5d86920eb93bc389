"""`precision: auto`: bf16 where the hardware computes it natively, fp16 on a GPU without bf16, fp32 elsewhere.

Why it matters (one-off measurements, 2026-11-29). On this project's CPU (AMD EPYC with AVX512-BF16) a
512^3 bf16 matmul ran at 218 GFLOP/s against 103 for fp32 (one thread). With ATen and oneDNN held to AVX2
(`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`), where bf16 is emulated, that bf16 matmul ran at 2.2
GFLOP/s against 101 for fp32: 46x slower. The `make demo` student's forward + backward (ViT-Tiny/8, depth 4,
crop 128, 16 crops) on an Intel Xeon with AMX, two cores: fp32 0.72 s, bf16 0.32 s; held to AVX2, fp32
0.56 s and bf16 14.5 s (26x slower than fp32). So bf16 autocast on a CPU is chosen only where the CPU has
AVX512-BF16 or AMX and torch dispatches to AVX512 kernels.

The decision is a pure function of the facts (`choose_precision`); `hardware_facts` reads them from the
libraries: `torch.backends.cpu.get_cpu_capability()` (the vector ISA torch's kernels run: "AVX2", "AVX512",
"DEFAULT", ...; capped by `ATEN_CPU_CAPABILITY`), the CPU's bf16 flags (torch's cpuinfo, and
/proc/cpuinfo on Linux), `torch.cuda.is_bf16_supported()`. AVX512 alone does not imply bf16 (Skylake-X
to Ice Lake have AVX512 without AVX512-BF16). No timing is needed: the flags say whether the instructions
exist, and with them oneDNN's bf16 kernels run natively.

`AUTO_LABEL_CPU_BF16=0` (or `1`) overrides what the CPU reports, e.g. to run and test the fp32 path on a
bf16 CPU, or to try bf16 on a CPU not listed here (Arm's bf16 extensions are not measured and get fp32).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ENV_CPU_BF16 = "AUTO_LABEL_CPU_BF16"
# CPU flags (as /proc/cpuinfo names them) -> the names the reports use.
CPU_BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX"}
# Lightning precision -> the dtype name (gdino's `precision`, the benchmarks' labels).
DTYPE_NAMES = {"bf16-mixed": "bf16", "16-mixed": "fp16", "32-true": "fp32"}
PURPOSES = ("train", "label")


def capability_label(cpu_capability: str | None, cpu_flags: frozenset[str]) -> str:
    """What reports print beside every number: torch's CPU capability and the bf16 extensions, e.g.
    "AVX2", "AVX512", "AVX512 + AVX512-BF16", "AVX512 + AVX512-BF16 + AMX"."""
    names = [name for flag, name in CPU_BF16_FLAGS.items() if flag in cpu_flags]
    return " + ".join([cpu_capability or "unknown", *names])


def native_cpu_bf16(cpu_capability: str | None, cpu_flags: frozenset[str], override: bool | None = None) -> bool:
    """Whether bf16 runs natively on this CPU: AVX512-BF16 or AMX present and torch's kernels at AVX512
    (with `ATEN_CPU_CAPABILITY=avx2` the flags stay but the kernels do not use them). `override` (the
    AUTO_LABEL_CPU_BF16 variable) wins."""
    if override is not None:
        return override
    return cpu_capability == "AVX512" and any(flag in cpu_flags for flag in CPU_BF16_FLAGS)


def choose_precision(
    device_type: str,
    cpu_capability: str | None,
    cpu_flags: frozenset[str],
    cuda_bf16: bool | None,
    cpu_bf16_override: bool | None = None,
    purpose: str = "train",
) -> tuple[str, str]:
    """(Lightning precision, reason) for a model running on `device_type` ("cpu", "cuda", "mps", ...).

    CUDA: bf16-mixed where the GPU has bf16 (Ampere and later), else 16-mixed. CPU: for `purpose` "train",
    bf16-mixed only with native bf16 (`native_cpu_bf16`), else 32-true; for "label" (predicting labels with
    weights a user brought) always 32-true, the original models' own numerics on a CPU: bf16 moved MAL's
    masks to IoU 0.976-0.996 against the original's on ../shared/parity/mal (README, Fidelity). Anything else
    (MPS, XLA): 32-true.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if device_type == "cuda":
        if cuda_bf16:
            return "bf16-mixed", "CUDA GPU with bf16: bf16-mixed"
        return "16-mixed", "CUDA GPU without bf16: 16-mixed (fp16 autocast)"
    if device_type == "cpu":
        cpu = f"CPU {capability_label(cpu_capability, cpu_flags)}"
        if cpu_bf16_override is not None:
            cpu += f", {ENV_CPU_BF16}={int(cpu_bf16_override)}"
        if purpose == "label":
            return "32-true", f"{cpu}: labelling in 32-true, the original models' numerics (bf16 is a switch away)"
        if native_cpu_bf16(cpu_capability, cpu_flags, cpu_bf16_override):
            return "bf16-mixed", f"{cpu}: native bf16, bf16-mixed"
        return "32-true", f"{cpu}: no native bf16 (emulated bf16 ran matmuls ~45x slower), 32-true"
    return "32-true", f"{device_type.upper()}: 32-true (mixed precision is chosen automatically on CUDA and bf16 CPUs)"


def device_type(accelerator, cuda_available: bool, mps_available: bool) -> str:
    """The device a Lightning `accelerator` setting ends up on, as Lightning picks it: "auto" and "gpu"
    take CUDA, then MPS; "auto" falls back to the CPU."""
    if not isinstance(accelerator, str):  # an Accelerator instance: CUDAAccelerator -> "cuda"
        return type(accelerator).__name__.removesuffix("Accelerator").lower()
    if accelerator in ("auto", "gpu"):
        if cuda_available:
            return "cuda"
        if mps_available:
            return "mps"
        return "cpu" if accelerator == "auto" else "cuda"  # "gpu" without one: Lightning reports the error
    return {"tpu": "xla"}.get(accelerator, accelerator)


# ----------------------------------------------------------------------------- facts of this machine


def cpu_bf16_override() -> bool | None:
    """AUTO_LABEL_CPU_BF16: "1" or "0" overrides the CPU's own report; unset or empty: no override."""
    value = os.environ.get(ENV_CPU_BF16, "").strip()
    if value in ("", "0", "1"):
        return None if value == "" else value == "1"
    raise ValueError(f"{ENV_CPU_BF16} must be 0 or 1 (or unset), got {value!r}")


@functools.cache
def cpu_bf16_flags() -> frozenset[str]:
    """The bf16 flags this CPU has: torch's cpuinfo (any OS, x86), and /proc/cpuinfo's flags on Linux."""
    flags = set()
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        flags.add("avx512_bf16")
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    listed = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    flags.update(flag for flag in listed if flag in CPU_BF16_FLAGS)
    return frozenset(flags)


def cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def cpu_has_native_bf16() -> bool:
    """Whether bf16 runs natively on this CPU (the override honoured): for the CPU fast paths that pay only
    with native bf16, such as the unfused bf16 attention."""
    return native_cpu_bf16(cpu_capability(), cpu_bf16_flags(), cpu_bf16_override())


def cpu_label() -> str:
    """This CPU's capability for reports, e.g. "AVX512 + AVX512-BF16"."""
    return capability_label(cpu_capability(), cpu_bf16_flags())


def hardware_facts(device: str) -> dict:
    """The arguments of `choose_precision` for `device` on this machine."""
    return {
        "device_type": device,
        "cpu_capability": cpu_capability(),
        "cpu_flags": cpu_bf16_flags(),
        "cuda_bf16": torch.cuda.is_bf16_supported() if device == "cuda" and torch.cuda.is_available() else None,
        "cpu_bf16_override": cpu_bf16_override(),
    }


def accelerator_device(accelerator) -> str:
    """`device_type` of a Lightning accelerator setting on this machine."""
    return device_type(accelerator, torch.cuda.is_available(), torch.backends.mps.is_available())


def resolve_precision(precision, device: str, purpose: str = "train") -> tuple[str, str]:
    """(precision, reason): an explicit precision as given, "auto" decided for `device` and `purpose` on this
    machine and logged in one line."""
    if precision != "auto":
        return precision, "set explicitly"
    chosen, reason = choose_precision(**hardware_facts(device), purpose=purpose)
    log.info("precision auto -> %s (%s)", chosen, reason)
    return chosen, reason


def resolve_dtype_name(precision: str, device: str) -> tuple[str, str]:
    """`resolve_precision` for labellers whose setting is named by dtype (Grounding DINO's, SAM's fp32 / bf16 /
    fp16, or auto)."""
    if precision != "auto":
        return precision, "set explicitly"
    chosen, reason = resolve_precision("auto", device, purpose="label")
    return DTYPE_NAMES[chosen], reason
