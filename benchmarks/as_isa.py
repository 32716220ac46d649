"""Run a benchmark as if the CPU had only a given ISA, for sparseprop *and* torch.

    python benchmarks/as_isa.py avx2 benchmarks/bench_linear.py --threads 1 2
    python benchmarks/as_isa.py avx2 benchmarks/run_all.py --quick --skip-e2e

Capping only sparseprop (``SPARSEPROP_ISA=avx2``) on an AVX-512 machine
compares its AVX2 kernels against dense torch at AVX-512, which is not what a
user of an AVX2-only CPU (Zen 2/3, Intel client chips) sees.  This launcher
sets the documented caps of every library in the dense baseline too, then runs
the script in a fresh interpreter (the caps are read when each library loads):

* ``SPARSEPROP_ISA``          - sparseprop's kernels (scalar | avx2 | avx512)
* ``ATEN_CPU_CAPABILITY``     - torch's own vectorised kernels (default | avx2 | avx512)
* ``MKL_ENABLE_INSTRUCTIONS`` - MKL's SGEMM behind ``F.linear`` (AVX2 | AVX512)
* ``ONEDNN_MAX_CPU_ISA``      - oneDNN's convolutions (AVX2 | AVX512_CORE ...)

It emulates the instruction set, not the micro-architecture: clock, caches
and the number of FMA pipes stay those of the machine it runs on, so figures
from it are labelled with that machine (``machine_info()`` records the caps)
and are no substitute for a run on the CPU itself.
"""
import os
import sys

#: ISA name -> the environment that caps every library at it.
CAPS = {
    "avx2": {"SPARSEPROP_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"SPARSEPROP_ISA": "avx512", "ATEN_CPU_CAPABILITY": "avx512",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}


def main(argv):
    if len(argv) < 2 or argv[0] not in CAPS:
        sys.exit(f"usage: python {sys.argv[0]} {{{'|'.join(CAPS)}}} SCRIPT [ARGS...]")
    env = dict(os.environ, **CAPS[argv[0]])
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


if __name__ == "__main__":
    main(sys.argv[1:])
