/* instantiate.h - compile one kernel family once per code region: scalar
 * float32 and float64 always; AVX2+FMA and AVX-512 on x86-64; NEON on
 * AArch64.
 *
 *     #define SP_FAMILY_IMPL "sparseprop/conv_impl.h"
 *     #define SP_FAMILY_AVX512 SP_AVX512_Y      (optional, see below)
 *     #include "sparseprop/instantiate.h"
 *
 * Each copy of SP_FAMILY_IMPL is compiled inside a simd_begin.h /
 * simd_end.h region, so it sees SP_CUR_ISA, SP_CUR_F64 and the vocabulary
 * of that region, and its functions get SP_FN's suffixed names.
 * SP_FAMILY_AVX512 says which AVX-512 region(s) the family has:
 *   SP_AVX512_Z  (default) 512-bit vectors, suffix avx512
 *   SP_AVX512_Y  256-bit vectors with the AVX-512 target, suffix avx512y
 *                (the conv kernels: see conv.h)
 *   SP_AVX512_YZ both (the shared helpers of common.h)
 * SP_FAMILY_BF16 1 (optional) also compiles the family's bfloat16 regions
 * (float32 compute, bfloat16 activations; see simd_begin.h): scalar, and on
 * x86-64 avx2 and the family's AVX-512 region(s) - avx512 / avx512y, each
 * also with AVX512_BF16 where the compiler knows the target (avx512bf16 /
 * avx512ybf16); neon on AArch64.
 * No include guard: every family header includes this once. */
#ifndef SP_FAMILY_IMPL
#error "define SP_FAMILY_IMPL (the implementation header) before including instantiate.h"
#endif
#ifndef SP_AVX512_Z
#define SP_AVX512_Z 1
#define SP_AVX512_Y 2
#define SP_AVX512_YZ 3
#endif
#ifndef SP_FAMILY_AVX512
#define SP_FAMILY_AVX512 SP_AVX512_Z
#endif

#define SP_CUR_ISA SP_ISA_SCALAR
#define SP_CUR_F64 0
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#define SP_CUR_ISA SP_ISA_SCALAR
#define SP_CUR_F64 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"

#if SP_X86
#define SP_CUR_ISA SP_ISA_AVX2
#define SP_CUR_F64 0
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#define SP_CUR_ISA SP_ISA_AVX2
#define SP_CUR_F64 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#if SP_FAMILY_AVX512 & SP_AVX512_Z
#define SP_CUR_ISA SP_ISA_AVX512
#define SP_CUR_F64 0
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#define SP_CUR_ISA SP_ISA_AVX512
#define SP_CUR_F64 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#endif
#if SP_FAMILY_AVX512 & SP_AVX512_Y
#define SP_CUR_ISA SP_ISA_AVX512
#define SP_CUR_F64 0
#define SP_CUR_V256 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#define SP_CUR_ISA SP_ISA_AVX512
#define SP_CUR_F64 1
#define SP_CUR_V256 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#endif
#endif /* SP_X86 */

#if SP_ARM64
#define SP_CUR_ISA SP_ISA_NEON
#define SP_CUR_F64 0
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#define SP_CUR_ISA SP_ISA_NEON
#define SP_CUR_F64 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#endif

#if defined(SP_FAMILY_BF16) && SP_FAMILY_BF16
#define SP_CUR_ISA SP_ISA_SCALAR
#define SP_CUR_F64 0
#define SP_CUR_BF16 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#if SP_X86
#define SP_CUR_ISA SP_ISA_AVX2
#define SP_CUR_F64 0
#define SP_CUR_BF16 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#if SP_FAMILY_AVX512 & SP_AVX512_Z
#define SP_CUR_ISA SP_ISA_AVX512
#define SP_CUR_F64 0
#define SP_CUR_BF16 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#if SP_X86_BF16X
#define SP_CUR_ISA SP_ISA_AVX512
#define SP_CUR_F64 0
#define SP_CUR_BF16 1
#define SP_CUR_BF16X 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#endif
#endif
#if SP_FAMILY_AVX512 & SP_AVX512_Y
#define SP_CUR_ISA SP_ISA_AVX512
#define SP_CUR_F64 0
#define SP_CUR_V256 1
#define SP_CUR_BF16 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#if SP_X86_BF16X
#define SP_CUR_ISA SP_ISA_AVX512
#define SP_CUR_F64 0
#define SP_CUR_V256 1
#define SP_CUR_BF16 1
#define SP_CUR_BF16X 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#endif
#endif
#endif /* SP_X86 */
#if SP_ARM64
#define SP_CUR_ISA SP_ISA_NEON
#define SP_CUR_F64 0
#define SP_CUR_BF16 1
#include "sparseprop/simd_begin.h"
#include SP_FAMILY_IMPL
#include "sparseprop/simd_end.h"
#endif
#endif /* SP_FAMILY_BF16 */

#undef SP_FAMILY_IMPL
#undef SP_FAMILY_AVX512
#undef SP_FAMILY_BF16
