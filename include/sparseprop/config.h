/* config.h - portability macros shared by every sparseprop kernel header.
 *
 * The headers under include/sparseprop are plain C (no Python): the math
 * lives here, validation and threading live in the Cython modules. */
#ifndef SPARSEPROP_CONFIG_H
#define SPARSEPROP_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define SP_RESTRICT __restrict__
#define SP_INLINE static inline
#define SP_ALWAYS_INLINE static inline __attribute__((always_inline))
#define SP_NOINLINE __attribute__((noinline))
#else
#define SP_RESTRICT
#define SP_INLINE static inline
#define SP_ALWAYS_INLINE static inline
#define SP_NOINLINE
#endif

/* SP_X86: build the AVX2 and AVX-512 paths.  SP_ARM64: build the NEON path
 * (AdvSIMD is part of every AArch64 CPU, so it needs no target attribute).
 * Elsewhere only the scalar path exists and the dispatcher never offers more. */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define SP_X86 1
#include <immintrin.h>
#else
#define SP_X86 0
#endif
/* SP_X86_BF16X: the compiler knows the AVX512_BF16 target (GCC 10+, clang 9+),
 * so the bfloat16 kernels get a region that uses it (linear.h). */
#if SP_X86 && ((defined(__clang__) && __clang_major__ >= 9) || \
               (!defined(__clang__) && __GNUC__ >= 10))
#define SP_X86_BF16X 1
#else
#define SP_X86_BF16X 0
#endif
#if defined(__aarch64__) && defined(__ARM_NEON) && (defined(__GNUC__) || defined(__clang__))
#define SP_ARM64 1
#include <arm_neon.h>
#else
#define SP_ARM64 0
#endif

/* A pragma whose text contains macros (expanded first). */
#define SP_PRAGMA_(...) _Pragma(#__VA_ARGS__)
#define SP_PRAGMA(...) SP_PRAGMA_(__VA_ARGS__)

/* bfloat16 <-> float32, one value (the scalar kernels and every tail).  A
 * bfloat16 is the top 16 bits of a float32, kept as uint16_t bits: widening is
 * a shift; narrowing rounds to nearest, ties to even, and keeps a NaN a
 * (quiet) NaN of the same sign.  Overflow rounds to infinity, as IEEE RNE
 * does; subnormals are kept (the AVX512_BF16 conversion flushes them). */
SP_INLINE float sp_bf16_widen(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
SP_INLINE uint16_t sp_bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: quiet it, keep sign and top payload */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#define SP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SP_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif /* SPARSEPROP_CONFIG_H */
