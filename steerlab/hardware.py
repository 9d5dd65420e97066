"""What machine this is, and what steerlab does on it: the `auto` device and dtype, and the machine block
that result files and benchmark tables carry.

The choice is a pure function of the facts (`Machine`), so it can be tested with any CPU flags and device
list. Why it matters: bfloat16 matrix products are ~3× faster than float32 on CPUs with `avx512_bf16` or
AMX, and ~3× *slower* on CPUs without them (measured on 2-core AMD EPYC VMs of both kinds, 1.5B model:
docs/performance.md), so `auto` picks bfloat16 only where the hardware has it.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from .errors import SteerlabError

#: CPU flags that change what steerlab should do (as /proc/cpuinfo spells them).
CPU_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(SteerlabError):
    """A device was asked for that this machine does not have."""


@dataclass(frozen=True)
class Accelerator:
    """One CUDA or MPS device."""

    name: str  # "cuda:0", "mps"
    model: str
    memory_gib: Optional[float] = None
    bf16: bool = False


@dataclass(frozen=True)
class Machine:
    """The facts about this machine that steerlab's choices depend on."""

    cpu_model: str
    cpu_flags: tuple[str, ...]  # those of CPU_FLAGS present
    cores: int
    torch_threads: int
    torch_version: str
    torch_cuda: Optional[str]  # the CUDA version torch was built with (None: a CPU build)
    accelerators: tuple[Accelerator, ...] = field(default_factory=tuple)

    @property
    def cpu_bf16(self) -> bool:
        """Whether the CPU computes bfloat16 natively (avx512_bf16 or AMX)."""
        return "avx512_bf16" in self.cpu_flags or "amx_bf16" in self.cpu_flags

    @property
    def devices(self) -> tuple[str, ...]:
        return ("cpu",) + tuple(a.name for a in self.accelerators)


def _cpu_facts() -> tuple[str, tuple[str, ...]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return model, ()
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    model = m.group(1).strip() if m else model
    f = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    if f:
        flags = set(f.group(1).split())
    return model, tuple(x for x in CPU_FLAGS if x in flags)


def _accelerators() -> tuple[Accelerator, ...]:
    out = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(Accelerator(f"cuda:{i}", p.name, round(p.total_memory / 2**30, 1),
                                   bool(torch.cuda.is_bf16_supported()) if i == 0 else p.major >= 8))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append(Accelerator("mps", "Apple GPU", None, False))
    return tuple(out)


def detect() -> Machine:
    """This machine's facts (cheap: reads /proc/cpuinfo and asks torch)."""
    model, flags = _cpu_facts()
    return Machine(cpu_model=model, cpu_flags=flags, cores=os.cpu_count() or 1, torch_threads=torch.get_num_threads(),
                   torch_version=torch.__version__, torch_cuda=torch.version.cuda, accelerators=_accelerators())


def choose_device(requested: Optional[str], machine: Machine) -> str:
    """`auto` (or None) → the first CUDA device, else MPS, else cpu; a named device is checked to exist.
    A missing device is a DeviceError naming what this machine has (raised before any model load)."""
    if requested in (None, "", "auto"):
        cuda = [a.name for a in machine.accelerators if a.name.startswith("cuda")]
        if cuda:
            return cuda[0]
        return "mps" if "mps" in machine.devices else "cpu"
    name = "cuda:0" if requested == "cuda" else requested
    if not re.fullmatch(r"cpu|mps|cuda:\d+", name):
        raise DeviceError(f"unknown device '{requested}': use auto, cpu, cuda, cuda:N or mps")
    if name not in machine.devices:
        raise DeviceError(f"device '{requested}' is not available on this machine (available: "
                          f"{', '.join(machine.devices)}{'' if machine.torch_cuda else '; torch is a CPU build'})")
    return name


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def choose_dtype(requested: Optional[str], device: str, machine: Machine) -> DtypeChoice:
    """`auto` (or None) → bfloat16 on a CUDA device that supports it and on CPUs with avx512_bf16 or AMX,
    float16 on MPS, float32 otherwise; a named dtype is taken as asked."""
    if requested not in (None, "", "auto"):
        if requested not in DTYPES:
            raise SteerlabError(f"unknown dtype '{requested}': choose one of auto, {', '.join(DTYPES)}")
        return DtypeChoice(DTYPES[requested], "asked for")
    if device.startswith("cuda"):
        acc = next((a for a in machine.accelerators if a.name == device), None)
        if acc is not None and acc.bf16:
            return DtypeChoice(torch.bfloat16, f"{acc.model} computes bfloat16 natively")
        return DtypeChoice(torch.float32, f"{acc.model if acc else device} lacks bfloat16 support")
    if device == "mps":
        return DtypeChoice(torch.float16, "MPS runs float16 fastest")
    if machine.cpu_bf16:
        flag = "avx512_bf16" if "avx512_bf16" in machine.cpu_flags else "amx_bf16"
        return DtypeChoice(torch.bfloat16, f"the CPU has {flag} (bfloat16 ~3x faster than float32 there)")
    return DtypeChoice(torch.float32, "the CPU has no avx512_bf16/AMX (bfloat16 would be ~3x slower there)")


def machine_block(*, dtype: Optional[str] = None, device: Optional[str] = None,
                  machine: Optional[Machine] = None) -> dict:
    """What every result file and benchmark table records about where it was made."""
    m = machine or detect()
    block = asdict(m)
    block["accelerators"] = [asdict(a) for a in m.accelerators]
    block["torch_threads"] = torch.get_num_threads()
    try:
        block["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        block["load_average"] = None
    if dtype is not None:
        # "auto" is a request, not a precision: record what it chose on this machine
        block["dtype"] = choose_dtype(dtype, device or "cpu", m).name if dtype == "auto" else dtype
    if device is not None:
        block["device"] = device
    return block


__all__ = ["Machine", "Accelerator", "DtypeChoice", "DeviceError", "detect", "choose_device", "choose_dtype",
           "machine_block", "CPU_FLAGS", "DTYPES"]
