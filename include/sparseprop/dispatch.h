/* dispatch.h - which instruction sets this CPU (and OS) can run.
 *
 * The kernels for every ISA of the target architecture are compiled into the
 * extension; the choice is made once at import (sparseprop/_config.pyx),
 * capped by SPARSEPROP_ISA.
 *
 * Two numberings:
 *   - an ISA *id* (SP_ISA_*) names a code region; the kernel headers test it
 *     in #if, so every id is distinct across architectures;
 *   - an ISA *level* is a position on this build's ladder, lowest first
 *     (x86-64: scalar, avx2, avx512; aarch64: scalar, neon).  Python sees
 *     levels only: capping is "the lower of two levels", and the select
 *     functions take a level. */
#ifndef SPARSEPROP_DISPATCH_H
#define SPARSEPROP_DISPATCH_H

#include "sparseprop/config.h"
#if SP_X86
#include <cpuid.h>
#endif

/* Macros, not an enum: the kernel headers test them in #if. */
#define SP_ISA_SCALAR 0 /* plain C, any CPU */
#define SP_ISA_AVX2 1   /* AVX2 + FMA (256-bit) */
#define SP_ISA_AVX512 2 /* AVX-512 F/VL/DQ/BW (512-bit, mask registers) */
#define SP_ISA_NEON 3   /* AArch64 AdvSIMD (128-bit, 32 registers) */

/* The ladder of this build: id of each level, and its name. */
#if SP_X86
#define SP_ISA_LEVELS 3
static const int sp_isa_ladder[SP_ISA_LEVELS] = {SP_ISA_SCALAR, SP_ISA_AVX2, SP_ISA_AVX512};
static const char* const sp_isa_ladder_names[SP_ISA_LEVELS] = {"scalar", "avx2", "avx512"};
#elif SP_ARM64
#define SP_ISA_LEVELS 2
static const int sp_isa_ladder[SP_ISA_LEVELS] = {SP_ISA_SCALAR, SP_ISA_NEON};
static const char* const sp_isa_ladder_names[SP_ISA_LEVELS] = {"scalar", "neon"};
#else
#define SP_ISA_LEVELS 1
static const int sp_isa_ladder[SP_ISA_LEVELS] = {SP_ISA_SCALAR};
static const char* const sp_isa_ladder_names[SP_ISA_LEVELS] = {"scalar"};
#endif

/* Levels on the ladder, and the name of level i (NULL out of range). */
SP_INLINE int sp_isa_levels(void) { return SP_ISA_LEVELS; }
SP_INLINE const char* sp_isa_level_name(int level)
{
    return level >= 0 && level < SP_ISA_LEVELS ? sp_isa_ladder_names[level] : NULL;
}
/* The id of a level, clamped to the ladder. */
SP_INLINE int sp_isa_id(int level)
{
    return sp_isa_ladder[level < 0 ? 0 : (level >= SP_ISA_LEVELS ? SP_ISA_LEVELS - 1 : level)];
}

/* Best level this CPU supports.  __builtin_cpu_supports also checks that the
 * OS saves the wide registers (XCR0), so a "yes" is safe to execute. */
SP_INLINE int sp_cpu_best_isa(void)
{
#if SP_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
#elif SP_ARM64
    return 1; /* AdvSIMD is mandatory in AArch64 */
#endif
    return 0;
}

/* Whether this CPU has the AVX512_BF16 extension (CPUID leaf 7, subleaf 1,
 * EAX bit 5) on top of the AVX-512 level, and this build has the region that
 * uses it.  Not a level of the ladder: only the bfloat16 kernels look at it,
 * and on plain AVX-512 they widen by shifts instead (linear.h). */
SP_INLINE int sp_cpu_has_avx512bf16(void)
{
#if SP_X86 && SP_X86_BF16X
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (sp_cpu_best_isa() < 2 || __get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 1, eax, ebx, ecx, edx);
    (void)ebx, (void)ecx, (void)edx;
    return (eax >> 5) & 1u;
#else
    return 0;
#endif
}

/* Highest level compiled into this build. */
SP_INLINE int sp_compiled_max_isa(void) { return SP_ISA_LEVELS - 1; }

/* SP_SELECT(SET, level, is_f64, AVX512_REGION): run SET(dtype, region) for
 * the code region of an ISA level (already capped by the caller) and dtype,
 * e.g. SET(f32, avx2).  AVX512_REGION names the family's AVX-512 region:
 * avx512 (512-bit vectors) or avx512y (256-bit vectors, see simd_begin.h).
 * Every family's select function is this one statement. */
#if SP_X86
#define SP_SELECT_ARCH_(SET, id_, is_f64_, A512_)                                          \
    if ((id_) == SP_ISA_AVX512) {                                                          \
        if (is_f64_)                                                                       \
            SET(f64, A512_);                                                               \
        else                                                                               \
            SET(f32, A512_);                                                               \
    } else if ((id_) == SP_ISA_AVX2) {                                                     \
        if (is_f64_)                                                                       \
            SET(f64, avx2);                                                                \
        else                                                                               \
            SET(f32, avx2);                                                                \
    } else
#elif SP_ARM64
#define SP_SELECT_ARCH_(SET, id_, is_f64_, A512_)                                          \
    if ((id_) == SP_ISA_NEON) {                                                            \
        if (is_f64_)                                                                       \
            SET(f64, neon);                                                                \
        else                                                                               \
            SET(f32, neon);                                                                \
    } else
#else
#define SP_SELECT_ARCH_(SET, id_, is_f64_, A512_)
#endif
#define SP_SELECT(SET, level_, is_f64_, A512_)                                             \
    do {                                                                                   \
        const int sp_sel_id_ = sp_isa_id(level_);                                          \
        (void)sp_sel_id_;                                                                  \
        SP_SELECT_ARCH_(SET, sp_sel_id_, is_f64_, A512_)                                   \
        {                                                                                  \
            if (is_f64_)                                                                   \
                SET(f64, scalar);                                                          \
            else                                                                           \
                SET(f32, scalar);                                                          \
        }                                                                                  \
    } while (0)

/* SP_DEFINE_SELECT(type, name, SET, AVX512_REGION): define
 *     type name(int isa_level, int is_f64)
 * returning a family's kernel table filled by SET(dtype, region) (which
 * assigns the fields of a local `k`). */
#define SP_DEFINE_SELECT(type_, name_, SET, A512_)                                          \
    SP_INLINE type_ name_(int isa, int is_f64)                                             \
    {                                                                                      \
        type_ k;                                                                           \
        SP_SELECT(SET, isa, is_f64, A512_);                                                \
        return k;                                                                          \
    }

#endif /* SPARSEPROP_DISPATCH_H */
