/* instantiate.h - compile one kernel family once per (ISA, dtype): scalar
 * float32 and float64 always, AVX2+FMA and AVX-512 on x86-64 as well.
 *
 *     #define SP_FAMILY_IMPL "sparseprop/conv_impl.h"
 *     #include "sparseprop/instantiate.h"
 *
 * Each copy of SP_FAMILY_IMPL is compiled inside a simd_begin.h /
 * simd_end.h region, so it sees SP_CUR_ISA, SP_CUR_F64 and the SIMD macros
 * of that (ISA, dtype), and its functions get SP_FN's suffixed names.
 * No include guard: every family header includes this once. */
#ifndef SP_FAMILY_IMPL
#error "define SP_FAMILY_IMPL (the implementation header) before including instantiate.h"
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

#undef SP_FAMILY_IMPL
