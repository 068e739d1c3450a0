"""The dtype vLLM's CPU build runs the embedded model in: ``bfloat16`` where this CPU executes bf16 dot products,
``float32`` elsewhere, with the reason carried into the run report and the card.

Whether the CPU *executes* them is found by executing them, not by reading ``/proc/cpuinfo``: a virtual machine can
report a feature it does not let guests run (AMX needs the kernel's permission for its tile state, which a VM may
withhold). Each probe runs one instruction in a child interpreter (``ctypes`` on an executable page); an instruction
the CPU does not run kills that child with ``SIGILL``, never this process:

- ``AVX512-BF16``: ``vdpbf16ps zmm0, zmm0, zmm0``;
- ``AMX-BF16``: the tile-data permission asked of the kernel (``arch_prctl(ARCH_REQ_XCOMP_PERM)``), then
  ``ldtilecfg`` with three 1x4-byte tiles, ``tdpbf16ps tmm0, tmm1, tmm2`` and ``tilerelease``.

bf16 halves the bytes every matrix product reads; on an AMD EPYC with AVX512-BF16 (2 cores) vLLM generated 1.8x
faster in bf16 than in float32 (``benchmarks/results/embedded.md``). Without them, PyTorch emulates bf16 in float32
and is slower than float32 itself.
"""

from __future__ import annotations

import platform
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache

# the machine code of each probe (x86-64; assembled with GNU as, checked with objdump); the AMX one takes the
# tile configuration's address in rdi
PROBES: dict[str, tuple[str, bool]] = {  # name -> (code, needs the kernel's AMX permission)
    "AVX512-BF16": ("62f27e4852c0" "c3", False),  # vdpbf16ps %zmm0,%zmm0,%zmm0; ret
    "AMX-BF16": ("c4e2784907" "c4e26a5cc1" "c4e27849c0" "c3", True),  # ldtilecfg (%rdi); tdpbf16ps; tilerelease; ret
}

RUN_PROBE = r"""
import ctypes, mmap, sys
code, amx = bytes.fromhex(sys.argv[1]), sys.argv[2] == "1"
if amx:  # Linux grants a process the AMX tile state on request only (arch_prctl 0x1023, XFEATURE_XTILEDATA = 18)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(158, 0x1023, 18) != 0:
        print(f"the kernel refuses the AMX tile state (arch_prctl errno {ctypes.get_errno()})")
        sys.exit(3)
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
run = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
config = (ctypes.c_ubyte * 64)()
config[0] = 1  # palette 1; tiles 0-2: 1 row of 4 bytes
for tile in range(3):
    config[16 + 2 * tile], config[48 + tile] = 4, 1
run(ctypes.addressof(config))
print("executed")
"""


def probe(code: str, amx: bool = False) -> tuple[bool, str]:
    """Execute ``code`` (hex machine code, a function taking one pointer) in a child interpreter: (ran, how it
    ended)."""
    proc = subprocess.run([sys.executable, "-c", RUN_PROBE, code, "1" if amx else "0"], capture_output=True,
                          text=True, timeout=60)
    if proc.returncode == 0:
        return True, "executed"
    if proc.returncode == -signal.SIGILL:
        return False, "SIGILL"
    why = (proc.stdout.strip() or (proc.stderr.strip().splitlines() or ["?"])[-1])[:200]
    return False, f"exit {proc.returncode}: {why}"


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # bfloat16 | float32
    reason: str


def choose_dtype(probes: dict[str, tuple[str, bool]] = PROBES, machine: str | None = None) -> DtypeChoice:
    """``bfloat16`` when one of ``probes`` executes here, else ``float32`` and why."""
    machine = machine or platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return DtypeChoice("float32", f"float32: bf16 support is probed on x86-64 only (this is {machine})")
    failed = []
    for name, (code, amx) in probes.items():
        ran, how = probe(code, amx)
        if ran:
            return DtypeChoice("bfloat16", f"bfloat16: this CPU executes {name} instructions")
        failed.append(f"{name}: {how}")
    return DtypeChoice("float32", f"float32: this CPU does not execute bf16 dot products ({'; '.join(failed)})")


@lru_cache(maxsize=1)
def machine_dtype() -> DtypeChoice:
    """:func:`choose_dtype` for this machine, probed once per process."""
    return choose_dtype()
