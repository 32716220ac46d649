/* common.h - per-(ISA, dtype) helpers every kernel family uses: a blocked
 * SIMD transpose and an 8-way horizontal reduction.  See common_impl.h. */
#ifndef SPARSEPROP_COMMON_H
#define SPARSEPROP_COMMON_H

#include "sparseprop/config.h"
#include "sparseprop/dispatch.h"

#define SP_CUR_ISA SP_ISA_SCALAR
#define SP_CUR_F64 0
#include "sparseprop/simd_begin.h"
#include "sparseprop/common_impl.h"
#include "sparseprop/simd_end.h"
#define SP_CUR_ISA SP_ISA_SCALAR
#define SP_CUR_F64 1
#include "sparseprop/simd_begin.h"
#include "sparseprop/common_impl.h"
#include "sparseprop/simd_end.h"

#if SP_X86
#define SP_CUR_ISA SP_ISA_AVX2
#define SP_CUR_F64 0
#include "sparseprop/simd_begin.h"
#include "sparseprop/common_impl.h"
#include "sparseprop/simd_end.h"
#define SP_CUR_ISA SP_ISA_AVX2
#define SP_CUR_F64 1
#include "sparseprop/simd_begin.h"
#include "sparseprop/common_impl.h"
#include "sparseprop/simd_end.h"
#define SP_CUR_ISA SP_ISA_AVX512
#define SP_CUR_F64 0
#include "sparseprop/simd_begin.h"
#include "sparseprop/common_impl.h"
#include "sparseprop/simd_end.h"
#define SP_CUR_ISA SP_ISA_AVX512
#define SP_CUR_F64 1
#include "sparseprop/simd_begin.h"
#include "sparseprop/common_impl.h"
#include "sparseprop/simd_end.h"
#endif

#endif /* SPARSEPROP_COMMON_H */
