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
#if defined(__aarch64__) && defined(__ARM_NEON) && (defined(__GNUC__) || defined(__clang__))
#define SP_ARM64 1
#include <arm_neon.h>
#else
#define SP_ARM64 0
#endif

/* A pragma whose text contains macros (expanded first). */
#define SP_PRAGMA_(...) _Pragma(#__VA_ARGS__)
#define SP_PRAGMA(...) SP_PRAGMA_(__VA_ARGS__)

#define SP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SP_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif /* SPARSEPROP_CONFIG_H */
