/* dispatch.h - which instruction sets this CPU (and OS) can run.
 *
 * The kernels for every ISA are compiled into the extension; the choice is
 * made once at import (sparseprop/_config.pyx), capped by SPARSEPROP_ISA. */
#ifndef SPARSEPROP_DISPATCH_H
#define SPARSEPROP_DISPATCH_H

#include "sparseprop/config.h"

/* Macros, not an enum: the kernel headers test them in #if. */
#define SP_ISA_SCALAR 0 /* plain C, any CPU */
#define SP_ISA_AVX2 1   /* AVX2 + FMA (256-bit) */
#define SP_ISA_AVX512 2 /* AVX-512 F/VL/DQ/BW (512-bit, mask registers) */

/* Best ISA this CPU supports.  __builtin_cpu_supports also checks that the
 * OS saves the wide registers (XCR0), so a "yes" is safe to execute. */
SP_INLINE int sp_cpu_best_isa(void)
{
#if SP_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return SP_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return SP_ISA_AVX2;
#endif
    return SP_ISA_SCALAR;
}

/* Highest ISA compiled into this build (AVX paths exist only on x86-64). */
SP_INLINE int sp_compiled_max_isa(void)
{
#if SP_X86
    return SP_ISA_AVX512;
#else
    return SP_ISA_SCALAR;
#endif
}

#endif /* SPARSEPROP_DISPATCH_H */
