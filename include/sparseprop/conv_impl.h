/* conv_impl.h - one instantiation of the sparse conv2d kernels, compiled by
 * conv.h once per code region through instantiate.h.  See conv.h for the
 * algorithms, the buffer layouts and the argument structs.  The parts:
 *   conv_tiles_impl.h  register tiles and their per-shape tables
 *   conv_pack_impl.h   packed buffers: lanes, phases, borders
 *   conv_fwd_impl.h    the forward driver of one task
 *   conv_bwd_impl.h    the backward driver, the dW reduction, the gather
 * All of them are written in simd_begin.h's vocabulary; on x86 the conv
 * family's vectors are 256-bit in both regions (avx2, avx512y: see conv.h).
 *
 * bfloat16 regions (SP_CUR_BF16): X and dY are read as bfloat16 and Y and dX
 * written as bfloat16 (SP_IOT); the weights, bias, dW and every sum are
 * float32, and every packed buffer (X, dY, dX, the forward's band) holds
 * float32.  Activations are widened where they enter those buffers (the
 * packing) and rounded where they leave them (the unpacking and copies out),
 * or, on the paths that skip the buffers, in the tiles themselves.  The
 * float32 values between are those of the float32 kernels on the widened
 * inputs, in the same order, so the outputs are theirs rounded to bfloat16. */

/* Register budgets of the tiles (vectors): forward accumulators, backward X
 * and dX tiles (the larger one when a task's lists are short: the per-tile
 * costs then weigh more than the vectors gcc keeps on the stack).  Why these
 * numbers: docs/tuning.md, "Conv register budgets". */
#if SP_VL == 1
#define SP_CW_FWD_ACC 8
#define SP_CW_BWD_ACC 4
#define SP_CW_BWD_ACC_FEW 4
#elif SP_CUR_ISA == SP_ISA_AVX512 || SP_CUR_ISA == SP_ISA_NEON
/* 32 registers */
#define SP_CW_FWD_ACC 28 /* + broadcast + load */
#define SP_CW_BWD_ACC 12 /* X and dX tiles: 24, + 2 dW chains + dY + w */
#define SP_CW_BWD_ACC_FEW 14
#else
/* 16 registers */
#ifndef SP_CONV_FWD_ACC_16
#define SP_CONV_FWD_ACC_16 12
#endif
#ifndef SP_CONV_BWD_ACC_16
#define SP_CONV_BWD_ACC_16 7 /* 14 tile vectors + dY + w: measured, docs/tuning.md */
#endif
#define SP_CW_FWD_ACC SP_CONV_FWD_ACC_16
#define SP_CW_BWD_ACC SP_CONV_BWD_ACC_16
#define SP_CW_BWD_ACC_FEW SP_CONV_BWD_ACC_16
#endif

/* Forward input-channel blocks: the fewest weights per (output channel,
 * block) that make a block worth its pass of partial tiles; 0: never block.
 * With 16 registers the tiles are small and the extra loads and stores of
 * the partials cost more than the L1 hits save (docs/tuning.md, "Conv input
 * channel blocks"). */
#ifdef SP_CONV_BLOCK_WEIGHTS
#define SP_CW_BLOCK_WEIGHTS SP_CONV_BLOCK_WEIGHTS
#elif SP_VL == 1 || SP_CUR_ISA == SP_ISA_NEON
#define SP_CW_BLOCK_WEIGHTS 16 /* scalar and NEON: not measured since 16 was set */
#elif SP_CUR_ISA == SP_ISA_AVX512
#define SP_CW_BLOCK_WEIGHTS 40
#else
#define SP_CW_BLOCK_WEIGHTS 0
#endif

SP_INLINE int64_t SP_FN(sp_conv_lanes)(void) { return SP_VL; }

/* The tiles on the float32 (SP_T) buffers: every path of a float32 or
 * float64 region, and the packed paths of a bfloat16 one. */
#define SP_CW_OT SP_T
#define SP_CW_OLOAD(p) SP_VLOAD(p)
#define SP_CW_OSTORE(p, v) SP_VSTORE((p), (v))
#define SP_CW_OSTREAM 1
#define SP_CW_OSTREAM_(p, v) SP_VSTREAM((p), (v))
#define SP_CW_OSTREAM_ALIGN SP_VSTREAM_ALIGN
#define SP_CWN(name) SP_FN(name)
#include "sparseprop/conv_tiles_impl.h"
#undef SP_CW_OT
#undef SP_CW_OLOAD
#undef SP_CW_OSTORE
#undef SP_CW_OSTREAM
#undef SP_CW_OSTREAM_
#undef SP_CW_OSTREAM_ALIGN
#undef SP_CWN
#if SP_CUR_BF16
/* bfloat16: the tiles that touch the user's arrays in place (over-width Y of
 * whole vectors, the backward's direct X and dX) widen and round there, in
 * registers, like the float32 ones load and store: no float32 copy of those
 * arrays.  Streaming stores on x86 (where the float32 kernels stream): a
 * rounded vector is 16 bytes, streamed where it is 16-byte aligned (every
 * vector of rows of whole vectors, in an aligned Y). */
#define SP_CW_OT SP_IOT
#define SP_CW_OLOAD(p) SP_VLOADIO(p)
#define SP_CW_OSTORE(p, v) SP_VSTOREIO((p), (v))
#if SP_VBITS == 256
#define SP_CW_OSTREAM 1
#define SP_CW_OSTREAM_(p, v) _mm_stream_si128((__m128i*)(p), SP_FN(sp_vround_bf16)(v))
#define SP_CW_OSTREAM_ALIGN 16
#else
#define SP_CW_OSTREAM 0
#endif
#define SP_CWN(name) SP_FN(name##_io)
#include "sparseprop/conv_tiles_impl.h"
#undef SP_CW_OT
#undef SP_CW_OLOAD
#undef SP_CW_OSTORE
#undef SP_CW_OSTREAM
#undef SP_CW_OSTREAM_
#undef SP_CW_OSTREAM_ALIGN
#undef SP_CWN
/* the tables of the tiles on the activations' type */
#define SP_CW_IOTAB(name) SP_FN(name##_io)
#else
#define SP_CW_IOTAB(name) SP_FN(name)
#endif
#include "sparseprop/conv_pack_impl.h"
#include "sparseprop/conv_fwd_impl.h"
#include "sparseprop/conv_bwd_impl.h"

#undef SP_CW_FWD_ACC
#undef SP_CW_BWD_ACC
#undef SP_CW_BWD_ACC_FEW
#undef SP_CW_BLOCK_WEIGHTS
#undef SP_CW_IOTAB
