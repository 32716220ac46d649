/* common.h - per-(ISA, dtype) helpers every kernel family uses: a blocked
 * SIMD transpose and an 8-way horizontal reduction.  See common_impl.h. */
#ifndef SPARSEPROP_COMMON_H
#define SPARSEPROP_COMMON_H

#include "sparseprop/config.h"
#include "sparseprop/dispatch.h"

#define SP_FAMILY_IMPL "sparseprop/common_impl.h"
#define SP_FAMILY_AVX512 SP_AVX512_YZ
#define SP_FAMILY_BF16 1 /* the helpers of the bfloat16 regions (linear.h) */
#include "sparseprop/instantiate.h"

#endif /* SPARSEPROP_COMMON_H */
