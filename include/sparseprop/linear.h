/* linear.h - kernels of the sparse linear layer (the paper's section 3.2).
 *
 * Semantics are those of torch.nn.functional.linear with a sparse weight W of
 * shape (N, M) = (out_features, in_features):
 *     forward        Y  = X W^T (+ bias)             X: (B, M), Y: (B, N)
 *     backward  dX = dY W                             (SpMM)
 *               dW = (dY^T X) at W's nonzeros only    (SDDMM)
 *
 * One call handles one *chunk* of at most fwd_chunk / bwd_chunk batch rows
 * (sp_linear_kernels).  Inside a call the chunk is held batch-last ("lanes":
 * row r of a buffer is one feature, its SIMD lanes the chunk's batch rows);
 * the transposes in and out are done SP_VL x SP_VL in registers and write
 * whole, aligned row segments (linear_impl.h: sp_lin_to_lanes/from_lanes).
 *   - forward is output-stationary: for each output row n the chunk of Y^T[n]
 *     stays in registers across the row's nonzeros.  W may be cut into nblk
 *     blocks of columns, walked one after the other, so that the block of X^T
 *     a pass reads stays in L1; Y^T partial sums wait in scratch between
 *     passes.  Rows are finished SP_LINEAR_FWD_TILE at a time and transposed
 *     into Y.  Batches smaller than a chunk run the same kernel compiled for
 *     1 or 2 vectors of lanes (fwd_narrow), and batches of a row or two the
 *     row-wise gather kernel (fwd_gather: for each output row, SP_VL of its
 *     nonzeros at a time, the X entries they name gathered from X's rows);
 *     the driver picks by batch size (sparseprop/_linear.pyx).
 *   - backward walks W by columns (a CSC copy of the structure, each column's
 *     list padded to a multiple of 8 with dummies that point at an all-zero
 *     row N of dY^T): X^T[m] and the dX^T[m] accumulator stay in registers for
 *     the whole column, and each loaded dY^T[n] feeds both the dX FMA and the
 *     dW dot product; the dY^T rows of the nonzeros two groups ahead are
 *     prefetched.  dW partials of 8 nonzeros are reduced together.  Only dY^T
 *     (all N rows) stays resident; X^T and dX^T are transposed per block of
 *     columns.
 * bfloat16: the same kernels with bfloat16 activations (X, Y, dY, dX as
 * uint16_t bits) and float32 everything else (weights, bias, dW, the
 * batch-last buffers, every sum): the transposes in and out widen and round
 * (round to nearest even), so the kernels read and write half the bytes of
 * the activations and compute exactly as the float32 kernels do.  The
 * AVX512_BF16 extension is used for that rounding (vcvtneps2bf16), not for
 * the products: vdpbf16ps multiplies bfloat16 pairs, and the weights stay
 * float32.  sp_linear_select_bf16 picks the region.
 * The caller (sparseprop/_linear.pyx) owns threading: tasks own disjoint
 * (chunk, output row) or (chunk, input column) ranges and write dW into
 * per-task partial buffers summed afterwards - no atomics, no barriers
 * inside a pass.
 */
#ifndef SPARSEPROP_LINEAR_H
#define SPARSEPROP_LINEAR_H

#include "sparseprop/common.h"

/* Column lists in the backward structure are padded to a multiple of this. */
#define SP_LINEAR_PAD 8

typedef struct {
    const void* X;          /* chunk's first row of X; rows are ldx apart     */
    int64_t ldx;
    void* Y;                /* chunk's first row of Y; rows are ldy apart     */
    int64_t ldy;
    const void* bias;       /* (N,) or NULL                                   */
    int64_t rows;           /* rows in this chunk, 1..chunk                   */
    int64_t M, N;           /* in_features, out_features                      */
    int64_t row_begin;      /* this task computes outputs [row_begin,row_end) */
    int64_t row_end;
    /* W's nonzeros, cut into nblk blocks of columns and stored block by
     * block (nblk == 1: plain CSR): row n's entries of block j are
     * [ptr[j*N + n], ptr[j*N + n + 1]), and block j holds the columns
     * [blk_cols[j], blk_cols[j+1]) (blk_cols unused when nblk == 1). */
    const int64_t* ptr;     /* (nblk*N + 1,)                                  */
    const int32_t* indices; /* (nnz,) column of each nonzero                  */
    const void* vals;       /* (nnz,)                                         */
    int64_t nblk;
    const int64_t* blk_cols;/* (nblk+1,)                                      */
    void* scratch;          /* sp_linear_fwd_scratch(...) elements, per task  */
} sp_linear_fwd_args;

typedef struct {
    const void* X;          /* chunk's first row of X                         */
    int64_t ldx;
    const void* dY;         /* chunk's first row of dY                        */
    int64_t lddy;
    void* dX;               /* chunk's first row of dX, or NULL: no dX        */
    int64_t lddx;
    int64_t rows;           /* rows in this chunk, 1..chunk                   */
    int64_t M, N;
    int64_t col_begin;      /* this task handles columns [col_begin,col_end)  */
    int64_t col_end;
    const int64_t* colptr;  /* padded CSC of W: (M+1,), multiples of 8 apart  */
    const int32_t* rowidx;  /* (nnz_pad,), dummies hold N                     */
    const void* vals;       /* (nnz_pad,) values in padded CSC order, dummy 0 */
    void* dW;               /* (nnz_pad,) accumulated (+=) in padded order    */
    void* scratch;          /* sp_linear_bwd_scratch(...) elements, per task  */
} sp_linear_bwd_args;

typedef void (*sp_linear_fwd_fn)(const sp_linear_fwd_args*);
typedef void (*sp_linear_bwd_fn)(const sp_linear_bwd_args*);

typedef struct {
    sp_linear_fwd_fn fwd;
    sp_linear_bwd_fn bwd;
    int64_t fwd_chunk; /* batch rows per forward call  */
    int64_t bwd_chunk; /* batch rows per backward call */
    /* the forward for batches smaller than a chunk: the same kernel
     * compiled for 1 and 2 vectors of lanes (fwd_narrow_chunk[i] rows; equal
     * to fwd_chunk where the full chunk is that narrow already) */
    sp_linear_fwd_fn fwd_narrow[2];
    int64_t fwd_narrow_chunk[2];
    /* row-wise forward with gathers for 1..fwd_gather_rows batch rows (plain
     * CSR order only); NULL and 0 in the bfloat16 tables */
    sp_linear_fwd_fn fwd_gather;
    int64_t fwd_gather_rows;
} sp_linear_kernels;

/* Batch rows the gather forward handles in one call (a fixed instantiation
 * count, linear_impl.h: sp_linear_fwd_gather). */
#define SP_LINEAR_GATHER_ROWS 4

/* Output rows per forward tile (transposed into Y together). */
#define SP_LINEAR_FWD_TILE 16

/* Scratch (in elements of the dtype) one task needs. */
SP_INLINE int64_t sp_linear_fwd_scratch(int64_t chunk, int64_t M, int64_t rows, int64_t nblk)
{
    /* X^T (a block of it when nblk > 1), the output tile, Y^T partial sums */
    return chunk * M + chunk * SP_LINEAR_FWD_TILE + (nblk > 1 ? chunk * rows : 0);
}
/* Widest column block of X^T / dX^T the backward keeps (4 vectors). */
#define SP_LINEAR_BWD_CB_MAX 64
SP_INLINE int64_t sp_linear_bwd_scratch(int64_t chunk, int64_t N)
{
    /* dY^T + its zero row, then a column block of X^T and one of dX^T */
    return chunk * (N + 1) + 2 * SP_LINEAR_BWD_CB_MAX * chunk;
}

/* A barrier of the caller's OpenMP parallel region (an orphaned directive:
 * the Cython driver runs several phases in one region); nothing without
 * OpenMP. */
SP_INLINE void sp_linear_barrier(void)
{
#ifdef _OPENMP
#pragma omp barrier
#endif
}

/* ---- instantiations ------------------------------------------------------
 * SP_CV / SP_CVB: vectors of batch lanes per forward / backward chunk, per
 * (ISA, dtype); linear_impl.h picks them.  The float32 choices were measured
 * (docs/tuning.md, "Linear chunk widths"); the SP_LINEAR_* macros exist to
 * repeat such measurements with -D. */
#ifndef SP_LINEAR_CV_F32_AVX512
#define SP_LINEAR_CV_F32_AVX512 2
#endif
#ifndef SP_LINEAR_CVB_F32_AVX512
#define SP_LINEAR_CVB_F32_AVX512 4
#endif

#ifndef SP_LINEAR_CV_F32_AVX2
#define SP_LINEAR_CV_F32_AVX2 4
#endif
#ifndef SP_LINEAR_CVB_F32_AVX2
#define SP_LINEAR_CVB_F32_AVX2 4
#endif
/* dW partials reduced 4 at a time: with 16 registers, 4 vectors of X^T, 4 of
 * dX^T and 8 partials would not fit beside the dY load and the weight */
#ifndef SP_LINEAR_RG_F32_AVX2
#define SP_LINEAR_RG_F32_AVX2 4
#endif

/* NEON (both dtypes): chosen by register count, not measured. */
#ifndef SP_LINEAR_CV_NEON
#define SP_LINEAR_CV_NEON 8
#endif
#ifndef SP_LINEAR_CVB_NEON
#define SP_LINEAR_CVB_NEON 8
#endif

#define SP_FAMILY_IMPL "sparseprop/linear_impl.h"
#define SP_FAMILY_BF16 1
#include "sparseprop/instantiate.h"

#define SP_LINEAR_SET_(dt, isa)                                                    \
    do {                                                                           \
        k.fwd = sp_linear_fwd_##dt##_##isa;                                        \
        k.bwd = sp_linear_bwd_##dt##_##isa;                                        \
        k.fwd_chunk = sp_linear_fwd_chunk_##dt##_##isa();                          \
        k.bwd_chunk = sp_linear_bwd_chunk_##dt##_##isa();                          \
        k.fwd_narrow[0] = sp_linear_fwd_cv1_##dt##_##isa;                          \
        k.fwd_narrow[1] = sp_linear_fwd_cv2_##dt##_##isa;                          \
        k.fwd_narrow_chunk[0] = sp_linear_fwd_chunk1_##dt##_##isa();               \
        k.fwd_narrow_chunk[1] = sp_linear_fwd_chunk2_##dt##_##isa();               \
        k.fwd_gather = sp_linear_fwd_gather_fn_##dt##_##isa();                     \
        k.fwd_gather_rows = sp_linear_fwd_gather_rows_##dt##_##isa();              \
    } while (0)

/* sp_linear_select(isa_level, is_f64): the kernels of an ISA level (already capped by
 * the caller) and dtype (0: float32). */
SP_DEFINE_SELECT(sp_linear_kernels, sp_linear_select, SP_LINEAR_SET_, avx512)

/* The bfloat16 kernels of an ISA level (already capped by the caller); on the
 * AVX-512 level, those that use AVX512_BF16 when use_bf16x (the caller
 * checks sp_cpu_has_avx512bf16).  AArch64: neon (widening by shifts). */
SP_INLINE sp_linear_kernels sp_linear_select_bf16(int isa, int use_bf16x)
{
    sp_linear_kernels k;
    const int id = sp_isa_id(isa);
    (void)id, (void)use_bf16x;
#if SP_X86
#if SP_X86_BF16X
    if (id == SP_ISA_AVX512 && use_bf16x)
        SP_LINEAR_SET_(bf16, avx512bf16);
    else
#endif
    if (id == SP_ISA_AVX512)
        SP_LINEAR_SET_(bf16, avx512);
    else if (id == SP_ISA_AVX2)
        SP_LINEAR_SET_(bf16, avx2);
    else
#elif SP_ARM64
    if (id == SP_ISA_NEON)
        SP_LINEAR_SET_(bf16, neon);
    else
#endif
        SP_LINEAR_SET_(bf16, scalar);
    return k;
}
#undef SP_LINEAR_SET_

#endif /* SPARSEPROP_LINEAR_H */
