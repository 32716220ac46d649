/* conv.h - kernels of the sparse conv2d layer (the paper's section 3.3).
 *
 * Semantics are those of torch.nn.functional.conv2d on NCHW arrays with a
 * sparse weight of shape (OC, IC/groups, KH, KW):
 *     Y[b, oc, p, q] = bias[oc] + sum W[oc, i', kr, kc] *
 *                      X[b, g*ICg + i', p*sh - pt + kr*dh, q*sw - pl + kc*dw]
 * with dX and dW (at the stored weights only) in the backward pass.
 *
 * Both algorithms work on one *unit* of the batch at a time and on the same
 * packed, zero-padded copy of the input:
 *   - over-width (batch_last = 0): a unit is one image, a position holds one
 *     value (U = 1) and SIMD lanes run along the output width;
 *   - batch-last (batch_last = 1): a unit is SP lanes of images, a position
 *     holds one value per image (U = lanes) and SIMD lanes run over the batch
 *     (the paper's Algorithm 2 layout, for small spatial sizes).
 * The packed input is laid out [channel][padded row][column phase][unit][U]:
 * each padded row is split into `sw` phases (padded column w goes to phase
 * w % sw, unit w / sw), so for any stride the output columns q, q+1, ... of
 * one kernel tap read consecutive units, and every vector load is contiguous.
 * Padding, and every position past the data, stays zero.
 *
 * Every stored weight becomes one precomputed offset into that buffer
 * (channel, tap row * dilation, tap phase and unit), so the inner loops are
 * the same for every stride, dilation and padding:
 *   - forward (output-stationary): for each band of R output rows and each
 *     output channel, a register tile of R rows x NC vectors accumulates over
 *     the channel's nonzeros, one broadcast and R*NC load+FMA per nonzero.
 *     Bands are the outer loop (their input rows stay in cache for every
 *     output channel) and input channels are cut into blocks whose band rows
 *     fit in L1, each (output channel, block) slice of the weights found
 *     through the paper's per-(oc, ic) offsets; partial tiles then live in a
 *     band buffer.  Unblocked over-width rows of whole vectors: one tile call
 *     walks all of the task's output channels (docs/tuning.md);
 *   - backward (input-stationary, fused): for each input channel and each
 *     (row phase, column phase) class, a tile of R x NC input vectors keeps X
 *     and the dX accumulators in registers; every stored weight of that
 *     channel and class loads its dY vectors once and feeds both the dX FMA
 *     (v * dY) and the dW FMA (dY * X).  dW partials are vectors per weight,
 *     summed over lanes (and over batch groups) once at the end.  Row bands
 *     are again the outer loop, so a band's dY rows stay in cache for every
 *     input channel.  One tile call walks all of the task's input channels
 *     at one tile position (the call and its setup cost as much as a tile's
 *     ~6 weights at 0.99 sparsity).  Over-width with column stride 1 and rows
 *     of whole vectors needs no padded X: its tiles read X and write dX in
 *     place (prefetching the rows of the channels ahead), skipping two copies
 *     of the input's size (the three measured in docs/tuning.md).
 * dY is packed [out channel][row + TP][col + LP][U] with zero borders so a
 * tap whose output falls outside the image reads zeros.
 *
 * The caller (sparseprop/_conv2d.pyx) owns threading: a task owns a range of
 * units and a range of output channels (forward) or input channels
 * (backward); every dX channel and every dW entry belongs to exactly one
 * input channel, so tasks never write the same element.  Tasks that split
 * the batch keep private dW partials summed afterwards.  No atomics, no
 * barriers inside a pass.
 * Tasks that split channels each pack the whole input they share (forward:
 * X; backward: dY): packing it once into a shared buffer was slower on 2
 * cores (docs/tuning.md, "Shared packing").
 *
 * SIMD width: the conv kernels use 256-bit vectors in the AVX-512 region too
 * (region avx512y, with its 32 registers and mask moves): 8 float32 lanes fit
 * the widths 7/14/28/56 and batch 8 of typical layers exactly, where 16 lanes
 * would waste up to half of them (and Zen 4 splits 512-bit FMAs in two).
 * NEON has 128-bit vectors (4 float32 lanes) and 32 registers.
 */
#ifndef SPARSEPROP_CONV_H
#define SPARSEPROP_CONV_H

#include "sparseprop/common.h"

/* Largest register tile: rows x vectors. */
#define SP_CONV_MAX_R 7
#define SP_CONV_MAX_NC 7
/* Bytes of input a forward block of input channels may occupy (L1 is 32 KiB). */
#define SP_CONV_L1_BYTES (20 * 1024)
/* Over-width forward: a register tile whose output channel has at most this
 * many nonzeros is written to Y with non-temporal (streaming) stores when Y
 * is at least SP_CONV_STREAM_MIN_BYTES.  Such a tile is a few FMAs per
 * store, bound by writing Y, and streaming skips reading Y's lines first
 * (the cut at 12 is measured: docs/tuning.md, "Streaming stores"). */
#ifndef SP_CONV_STREAM_MAX_NNZ
#define SP_CONV_STREAM_MAX_NNZ 12
#endif
#define SP_CONV_STREAM_MIN_BYTES ((int64_t)8 << 20)

typedef struct {
    int batch_last;            /* 1: batch-last units, 0: over-width       */
    int64_t L;                 /* SIMD lanes of the kernel                  */
    int64_t U;                 /* elements per position: L or 1            */
    int64_t cv;                /* positions per vector: 1 or L              */
    int64_t B, C, H, W;        /* input (B, C, H, W)                        */
    int64_t OC, OH, OW;        /* output (B, OC, OH, OW)                    */
    int64_t ICg, OCg;          /* channels per group                        */
    int64_t sh, sw, pt, pl;    /* stride, top and left padding              */
    /* packed input (and dX): [C][Hb][sw][Wq][U]                             */
    int64_t Hb, Wq, rowlen_x, plane_x;
    /* packed dY: [OC][Hdy][Wdy][U], output (p, q) at row p+TP, unit q+LP    */
    int64_t Hdy, Wdy, TP, LP, rowlen_dy, plane_dy;
} sp_conv_geom;

typedef struct {
    const sp_conv_geom* g;
    const void* X;             /* (B, C, H, W), last axis contiguous        */
    int64_t sxb, sxc, sxh;     /* strides of X in elements                  */
    void* Y;                   /* (B, OC, OH, OW) C-contiguous              */
    const void* bias;          /* (OC,) or NULL                             */
    const int64_t* och;        /* (OC+1,) nonzeros of each output channel   */
    const int32_t* ich;        /* (OC*(ICg+1),) per input channel, relative */
    const int64_t* xoff;       /* (nnz,) buffer offset of each nonzero      */
    const void* vals;          /* (nnz,) W.data                             */
} sp_conv_fwd_args;

typedef struct {
    const sp_conv_geom* g;
    const void* X;
    int64_t sxb, sxc, sxh;
    const void* dY;            /* (B, OC, OH, OW), last axis contiguous     */
    int64_t syb, syc, syh;
    void* dX;                  /* (B, C, H, W) C-contiguous, or NULL        */
    const int64_t* lptr;       /* (C*sh*sw+1,) list of each (c, rph, wph)   */
    const int64_t* dyoff;      /* (nnz,) dY-buffer offset, list order       */
    const void* vals;          /* (nnz,) values in list order               */
} sp_conv_bwd_args;

/* One task: units [u0, u1) and output channels [c0, c1) (forward) or input
 * channels [c0, c1) (backward, dW partials (nnz*L) written at the task's
 * lists).  scratch: sp_conv_*_scratch() elements of the dtype. */
typedef void (*sp_conv_fwd_fn)(const sp_conv_fwd_args*, int64_t u0, int64_t u1,
                               int64_t c0, int64_t c1, void* scratch);
typedef void (*sp_conv_bwd_fn)(const sp_conv_bwd_args*, int64_t u0, int64_t u1,
                               int64_t c0, int64_t c1, void* scratch, void* dwv);
/* dW[perm[k]] = sum over parts and lanes of dwv[p*stride + k*L + l], k0 <= k < k1 */
typedef void (*sp_conv_reduce_fn)(const void* dwv, int64_t stride, int64_t nparts,
                                  int64_t L, const int64_t* perm, void* dW,
                                  int64_t k0, int64_t k1);

/* out[k] = data[perm[k]], k0 <= k < k1 */
typedef void (*sp_conv_gather_fn)(const void* data, const int64_t* perm, void* out, int64_t k0,
                                  int64_t k1);

typedef struct {
    sp_conv_fwd_fn fwd;
    sp_conv_bwd_fn bwd;
    sp_conv_reduce_fn reduce;
    sp_conv_gather_fn gather;
    int64_t lanes;
} sp_conv_kernels;

/* Scratch (elements) of one task handling n_ic input / n_oc output channels. */
SP_INLINE int64_t sp_conv_fwd_scratch(const sp_conv_geom* g, int64_t n_ic, int64_t n_oc)
{
    int64_t tmp = g->W * g->U;                                          /* packed row */
    int64_t band = n_oc * SP_CONV_MAX_R * (g->OW + g->cv - 1) / g->cv * g->cv * g->U;
    return n_ic * g->plane_x + tmp + band + 64;
}
SP_INLINE int64_t sp_conv_bwd_scratch(const sp_conv_geom* g, int64_t n_ic, int64_t n_oc,
                                      int with_dx)
{
    return n_ic * g->plane_x * (with_dx ? 2 : 1) + n_oc * g->plane_dy + g->W * g->U + 64;
}

/* Register budget (vectors) of the forward and backward tiles per ISA. */
SP_INLINE void sp_conv_pick_tile(int64_t units, int64_t cv, int maxacc, int* R, int* NC)
{
    int64_t nc = (units + cv - 1) / cv;
    if (nc > SP_CONV_MAX_NC)
        nc = SP_CONV_MAX_NC;
    if (nc > maxacc)
        nc = maxacc;
    if (nc < 1)
        nc = 1;
    int64_t r = maxacc / nc;
    if (r > SP_CONV_MAX_R)
        r = SP_CONV_MAX_R;
    if (r < 1)
        r = 1;
    *R = (int)r;
    *NC = (int)nc;
}

/* ---- instantiations ------------------------------------------------------
 * 256-bit vectors in the AVX-512 region (avx512y): see "SIMD width" above. */
#define SP_FAMILY_IMPL "sparseprop/conv_impl.h"
#define SP_FAMILY_AVX512 SP_AVX512_Y
#define SP_FAMILY_BF16 1 /* bfloat16 X, dY, Y, dX; float32 weights and sums */
#include "sparseprop/instantiate.h"

#define SP_CONV_SET_(dt, isa)                                                      \
    do {                                                                           \
        k.fwd = sp_conv_fwd_##dt##_##isa;                                          \
        k.bwd = sp_conv_bwd_##dt##_##isa;                                          \
        k.reduce = sp_conv_reduce_##dt##_##isa;                                    \
        k.gather = sp_conv_gather_##dt##_##isa;                                    \
        k.lanes = sp_conv_lanes_##dt##_##isa();                                    \
    } while (0)

/* sp_conv_select(isa_level, is_f64): the kernels of an ISA level (already capped by
 * the caller) and dtype (0: float32). */
SP_DEFINE_SELECT(sp_conv_kernels, sp_conv_select, SP_CONV_SET_, avx512y)

/* The bfloat16 kernels (bfloat16 activations, float32 weights, bias, dW and
 * sums: conv_impl.h) of an ISA level (already capped by the caller); on the
 * AVX-512 level, those whose rounding stores use AVX512_BF16 when use_bf16x
 * (the caller checks sp_cpu_has_avx512bf16).  256-bit vectors there too
 * (avx512y, avx512ybf16: "SIMD width" above). */
SP_INLINE sp_conv_kernels sp_conv_select_bf16(int isa, int use_bf16x)
{
    sp_conv_kernels k;
    const int id = sp_isa_id(isa);
    (void)id, (void)use_bf16x;
#if SP_X86
#if SP_X86_BF16X
    if (id == SP_ISA_AVX512 && use_bf16x)
        SP_CONV_SET_(bf16, avx512ybf16);
    else
#endif
    if (id == SP_ISA_AVX512)
        SP_CONV_SET_(bf16, avx512y);
    else if (id == SP_ISA_AVX2)
        SP_CONV_SET_(bf16, avx2);
    else
#elif SP_ARM64
    if (id == SP_ISA_NEON)
        SP_CONV_SET_(bf16, neon);
    else
#endif
        SP_CONV_SET_(bf16, scalar);
    return k;
}
#undef SP_CONV_SET_

#endif /* SPARSEPROP_CONV_H */
