/* linear_impl.h - one instantiation of the sparse linear kernels; compiled by
 * linear.h once per (ISA, dtype) through instantiate.h.
 * See linear.h for the algorithm and the argument structs.
 *
 * Activations (X, Y, dY, dX) are SP_IOT: SP_T, or bfloat16 bits in a
 * bfloat16 region.  They are touched only by the transposes into and out of
 * the batch-last buffers, which widen (SP_VLOADIO) and round (SP_VSTOREIO);
 * everything between - the buffers, weights, bias, dW, every accumulation -
 * is SP_T (float32 in a bfloat16 region). */

/* SP_CV / SP_CVB: vectors of batch lanes per forward / backward chunk (the
 * float32 SIMD choices are measured, see linear.h). */
#if SP_CUR_ISA == SP_ISA_SCALAR
#define SP_CV 8
#define SP_CVB 8
#elif SP_CUR_ISA == SP_ISA_NEON
/* 32 registers of 4 floats / 2 doubles: see docs/tuning.md (unmeasured) */
#define SP_CV SP_LINEAR_CV_NEON
#define SP_CVB SP_LINEAR_CVB_NEON
#elif SP_CUR_ISA == SP_ISA_AVX2 && !SP_CUR_F64
#define SP_CV SP_LINEAR_CV_F32_AVX2
#define SP_CVB SP_LINEAR_CVB_F32_AVX2
#elif SP_CUR_ISA == SP_ISA_AVX2
#define SP_CV 4
#define SP_CVB 2
#elif !SP_CUR_F64
#define SP_CV SP_LINEAR_CV_F32_AVX512
#define SP_CVB SP_LINEAR_CVB_F32_AVX512
#else
#define SP_CV 4
#define SP_CVB 4
#endif

#define SP_BC (SP_CV * SP_VL)   /* batch rows per forward chunk  */
#define SP_BCB (SP_CVB * SP_VL) /* batch rows per backward chunk */

SP_INLINE int64_t SP_FN(sp_linear_fwd_chunk)(void) { return SP_BC; }
SP_INLINE int64_t SP_FN(sp_linear_bwd_chunk)(void) { return SP_BCB; }

/* In-register transposes of one SP_VL x SP_VL block: SP_FN(sp_vtr)
 * (common_impl.h); the scalar path uses sp_transpose instead. */
#define SP_LIN_HAVE_TR (SP_VL > 1)

/* ---- batch-last ("lanes") layout <-> row-major -------------------------- */

/* Elements before the first vector-aligned address at or after p, in
 * [0, SP_VL) (0 when p is not even element aligned). */
SP_ALWAYS_INLINE int64_t SP_FN(sp_lin_head)(const SP_IOT* p)
{
    const uintptr_t a = (uintptr_t)p, vb = SP_VL * sizeof(SP_IOT);
    if (a % sizeof(SP_IOT))
        return 0;
    return (int64_t)(((vb - a % vb) % vb) / sizeof(SP_IOT));
}

/* dst[c * bc + r] = src[r * lds + c] for c < cols and r < bc = cv * SP_VL,
 * reading only rows r < rows and writing zeros to the lanes r >= rows (so
 * padding lanes stay finite).  Each SP_VL x SP_VL block is transposed in
 * registers and every destination row segment is written whole. */
SP_ALWAYS_INLINE void SP_FN(sp_lin_to_lanes)(const SP_IOT* SP_RESTRICT src, int64_t lds,
                                             int64_t rows, int64_t cols,
                                             SP_T* SP_RESTRICT dst, const int cv)
{
    const int64_t bc = (int64_t)cv * SP_VL;
#if SP_LIN_HAVE_TR
    const int64_t ch = SP_FN(sp_lin_head)(src);
    for (int v = 0; v < cv; v++) {
        const int64_t b0 = (int64_t)v * SP_VL;
        const int64_t nr = SP_MIN((int64_t)SP_VL, rows - b0);
        SP_T* d = dst + b0;
        const SP_IOT* s = src + b0 * lds;
        if (nr <= 0) {
            for (int64_t c = 0; c < cols; c++)
                SP_VSTORE(d + c * bc, SP_VZERO());
        } else if (cols < SP_VL) {
            for (int64_t c = 0; c < cols; c++)
                for (int64_t i = 0; i < SP_VL; i++)
                    d[c * bc + i] = i < nr ? SP_FROMIO(s[i * lds + c]) : (SP_T)0;
        } else if (nr == SP_VL) {
            for (int64_t c0 = 0;;) {
                SP_V r[SP_VL];
                for (int i = 0; i < SP_VL; i++)
                    r[i] = SP_VLOADIO(s + i * lds + c0);
                SP_FN(sp_vtr)(r);
                for (int i = 0; i < SP_VL; i++)
                    SP_VSTORE(d + (c0 + i) * bc, r[i]);
                if (c0 >= cols - SP_VL)
                    break;
                c0 = SP_MIN(cols - SP_VL, c0 < ch ? ch : c0 + SP_VL);
            }
        } else {
            for (int64_t c0 = 0;;) {
                SP_V r[SP_VL];
                for (int i = 0; i < SP_VL; i++)
                    r[i] = i < nr ? SP_VLOADIO(s + i * lds + c0) : SP_VZERO();
                SP_FN(sp_vtr)(r);
                for (int i = 0; i < SP_VL; i++)
                    SP_VSTORE(d + (c0 + i) * bc, r[i]);
                if (c0 >= cols - SP_VL)
                    break;
                c0 = SP_MIN(cols - SP_VL, c0 < ch ? ch : c0 + SP_VL);
            }
        }
    }
#elif SP_CUR_BF16
    (void)cv;
    for (int64_t r = 0; r < SP_MIN(rows, bc); r++)
        for (int64_t c = 0; c < cols; c++)
            dst[c * bc + r] = SP_FROMIO(src[r * lds + c]);
    if (rows < bc)
        for (int64_t c = 0; c < cols; c++)
            for (int64_t r = rows; r < bc; r++)
                dst[c * bc + r] = (SP_T)0;
#else
    (void)cv;
    SP_FN(sp_transpose)(src, lds, dst, bc, SP_MIN(rows, bc), cols);
    if (rows < bc)
        for (int64_t c = 0; c < cols; c++)
            for (int64_t r = rows; r < bc; r++)
                dst[c * bc + r] = (SP_T)0;
#endif
}

/* dst[r * ldd + c] = src[c * bc + r] for r < rows (<= bc = cv * SP_VL) and
 * c < cols.  Whole SP_VL-wide row segments are stored at once (aligned but
 * for the first and last of a row), so each cache line of dst is completed
 * by consecutive stores: no partial lines left to be evicted and re-read. */
SP_ALWAYS_INLINE void SP_FN(sp_lin_from_lanes)(const SP_T* SP_RESTRICT src, int64_t rows,
                                               int64_t cols, SP_IOT* SP_RESTRICT dst,
                                               int64_t ldd, const int cv)
{
    const int64_t bc = (int64_t)cv * SP_VL;
#if SP_LIN_HAVE_TR
    const int64_t ch = SP_FN(sp_lin_head)(dst);
    for (int v = 0; v < cv; v++) {
        const int64_t b0 = (int64_t)v * SP_VL;
        const int64_t nr = SP_MIN((int64_t)SP_VL, rows - b0);
        if (nr <= 0)
            break;
        const SP_T* s = src + b0;
        SP_IOT* d = dst + b0 * ldd;
        if (cols < SP_VL) {
            for (int64_t i = 0; i < nr; i++)
                for (int64_t c = 0; c < cols; c++)
                    d[i * ldd + c] = SP_TOIO(s[c * bc + i]);
            continue;
        }
        for (int64_t c0 = 0;;) {
            SP_V r[SP_VL];
            for (int i = 0; i < SP_VL; i++)
                r[i] = SP_VLOAD(s + (c0 + i) * bc);
            SP_FN(sp_vtr)(r);
            for (int64_t i = 0; i < nr; i++)
                SP_VSTOREIO(d + i * ldd + c0, r[i]);
            if (c0 >= cols - SP_VL)
                break;
            c0 = SP_MIN(cols - SP_VL, c0 < ch ? ch : c0 + SP_VL);
        }
    }
#elif SP_CUR_BF16
    (void)cv;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            dst[r * ldd + c] = SP_TOIO(src[c * bc + r]);
#else
    (void)cv;
    SP_FN(sp_transpose)(src, bc, dst, ldd, cols, rows);
#endif
}

/* ---- forward ------------------------------------------------------------- */

/* The forward is compiled for cv = SP_CV vectors of batch lanes (the full
 * chunk) and for the narrow chunks SP_LIN_CV1 and SP_LIN_CV2 (1 and 2
 * vectors; a batch smaller than a chunk would leave lanes empty): cv is a
 * literal at each instantiation, so the loops over it unroll and the
 * accumulators stay in registers. */
#define SP_LIN_CV1 1
#define SP_LIN_CV2 (SP_CV >= 2 ? 2 : SP_CV)

/* Independent accumulator sets: enough FMA chains in flight to hide the FMA
 * latency when cv is small. */
#define SP_LIN_FSETS(cv) ((cv) >= 3 ? 2 : 4 / (cv))
#define SP_LIN_FSETS_MAX 4

/* acc[k] += sum over p in [p, pe) of vals[p] * XT[indices[p]][k], k < cv */
SP_ALWAYS_INLINE void SP_FN(sp_lin_fwd_seg)(SP_V* SP_RESTRICT acc, const SP_T* SP_RESTRICT XT,
                                            const int32_t* SP_RESTRICT indices,
                                            const SP_T* SP_RESTRICT vals, int64_t p,
                                            const int64_t pe, const int cv)
{
    const int64_t bc = (int64_t)cv * SP_VL;
    const int fs = SP_LIN_FSETS(cv);
    SP_V part[SP_LIN_FSETS_MAX - 1][SP_CV];
    for (int u = 0; u < fs - 1; u++)
        for (int k = 0; k < cv; k++)
            part[u][k] = SP_VZERO();
    for (; p + fs <= pe; p += fs) {
        for (int u = 0; u < fs; u++) {
            const SP_T* x = XT + (int64_t)indices[p + u] * bc;
            const SP_V w = SP_VSET1(vals[p + u]);
            for (int k = 0; k < cv; k++) {
                if (u == 0)
                    acc[k] = SP_VFMA(w, SP_VLOAD(x + k * SP_VL), acc[k]);
                else
                    part[u - 1][k] = SP_VFMA(w, SP_VLOAD(x + k * SP_VL), part[u - 1][k]);
            }
        }
    }
    for (; p < pe; p++) {
        const SP_T* x = XT + (int64_t)indices[p] * bc;
        const SP_V w = SP_VSET1(vals[p]);
        for (int k = 0; k < cv; k++)
            acc[k] = SP_VFMA(w, SP_VLOAD(x + k * SP_VL), acc[k]);
    }
    for (int u = 0; u < fs - 1; u++)
        for (int k = 0; k < cv; k++)
            acc[k] = SP_VADD(acc[k], part[u][k]);
}

/* One chunk of at most cv * SP_VL batch rows (see linear.h). */
SP_ALWAYS_INLINE void SP_FN(sp_lin_fwd_body)(const sp_linear_fwd_args* a, const int cv)
{
    const SP_IOT* SP_RESTRICT X = (const SP_IOT*)a->X;
    SP_IOT* SP_RESTRICT Y = (SP_IOT*)a->Y;
    const SP_T* SP_RESTRICT vals = (const SP_T*)a->vals;
    const SP_T* SP_RESTRICT bias = (const SP_T*)a->bias;
    const int32_t* SP_RESTRICT indices = a->indices;
    const int64_t rows = a->rows, M = a->M, N = a->N, nblk = a->nblk;
    const int64_t rb = a->row_begin, re = a->row_end;
    const int64_t bc = (int64_t)cv * SP_VL;
    SP_T* SP_RESTRICT XT = (SP_T*)a->scratch;            /* M x bc    */
    SP_T* SP_RESTRICT tile = XT + M * bc;                /* TILE x bc */
    SP_T* SP_RESTRICT YT = tile + SP_LINEAR_FWD_TILE * bc; /* rows of Y^T */

    for (int64_t j = 0; j < nblk; j++) {
        const int64_t c0 = nblk > 1 ? a->blk_cols[j] : 0;
        const int64_t c1 = nblk > 1 ? a->blk_cols[j + 1] : M;
        /* row n's entries of this block: [beg[n], beg[n + 1]) */
        const int64_t* SP_RESTRICT beg = a->ptr + j * N;
        const int first = j == 0, last = j == nblk - 1;
        /* X chunk's columns [c0, c1) -> X^T block; XTb is indexed by the
         * global column */
        SP_FN(sp_lin_to_lanes)(X + c0, a->ldx, rows, c1 - c0, XT, cv);
        const SP_T* XTb = XT - c0 * bc;

        for (int64_t n0 = rb; n0 < re; n0 += SP_LINEAR_FWD_TILE) {
            const int64_t nb = SP_MIN((int64_t)SP_LINEAR_FWD_TILE, re - n0);
            for (int64_t i = 0; i < nb; i++) {
                const int64_t n = n0 + i;
                SP_T* yt = YT + (n - rb) * bc;
                SP_V acc[SP_CV];
                if (first) {
                    const SP_V init = bias ? SP_VSET1(bias[n]) : SP_VZERO();
                    for (int k = 0; k < cv; k++)
                        acc[k] = init;
                } else {
                    for (int k = 0; k < cv; k++)
                        acc[k] = SP_VLOAD(yt + k * SP_VL);
                }
                SP_FN(sp_lin_fwd_seg)(acc, XTb, indices, vals, beg[n], beg[n + 1], cv);
                SP_T* dst = last ? tile + i * bc : yt;
                for (int k = 0; k < cv; k++)
                    SP_VSTORE(dst + k * SP_VL, acc[k]);
            }
            if (last) /* tile (nb x lanes) -> Y[0:rows, n0:n0+nb] */
                SP_FN(sp_lin_from_lanes)(tile, rows, nb, Y + n0, a->ldy, cv);
        }
    }
}

static void SP_FN(sp_linear_fwd)(const sp_linear_fwd_args* a)
{
    SP_FN(sp_lin_fwd_body)(a, SP_CV);
}
static void SP_FN(sp_linear_fwd_cv1)(const sp_linear_fwd_args* a)
{
    SP_FN(sp_lin_fwd_body)(a, SP_LIN_CV1);
}
static void SP_FN(sp_linear_fwd_cv2)(const sp_linear_fwd_args* a)
{
    SP_FN(sp_lin_fwd_body)(a, SP_LIN_CV2);
}
SP_INLINE int64_t SP_FN(sp_linear_fwd_chunk1)(void) { return SP_LIN_CV1 * SP_VL; }
SP_INLINE int64_t SP_FN(sp_linear_fwd_chunk2)(void) { return SP_LIN_CV2 * SP_VL; }

/* ---- forward, a few batch rows: row-wise over CSR with gathers ------------
 * For each output row n and each of the R (<= SP_LINEAR_GATHER_ROWS) batch
 * rows, Y[r, n] = bias[n] + sum_p vals[p] * X[r, indices[p]]: SP_VL of row
 * n's nonzeros at a time, their values loaded as a vector and the X entries
 * they name gathered (X's rows stay in L1), two accumulators per batch row,
 * one horizontal sum per output.  No batch-last buffers and no lanes left
 * empty; W must be in plain CSR order (nblk == 1).  Not in the bfloat16
 * regions (those use the lane kernels at every batch). */
#if !SP_CUR_BF16
#ifdef SP_LINEAR_GATHER_PREFETCH
#define SP_LIN_GATHER_PF SP_LINEAR_GATHER_PREFETCH
#else
#define SP_LIN_GATHER_PF 256 /* elements ahead; 0: none */
#endif
SP_ALWAYS_INLINE void SP_FN(sp_lin_gather_body)(const sp_linear_fwd_args* a, const int R)
{
    const SP_T* SP_RESTRICT X = (const SP_T*)a->X;
    SP_T* SP_RESTRICT Y = (SP_T*)a->Y;
    const SP_T* SP_RESTRICT vals = (const SP_T*)a->vals;
    const SP_T* SP_RESTRICT bias = (const SP_T*)a->bias;
    const int32_t* SP_RESTRICT indices = a->indices;
    const int64_t* SP_RESTRICT ptr = a->ptr;
    const int64_t ldx = a->ldx, ldy = a->ldy;

    for (int64_t n = a->row_begin; n < a->row_end; n++) {
        SP_V acc[SP_LINEAR_GATHER_ROWS][2];
        for (int r = 0; r < R; r++)
            acc[r][0] = acc[r][1] = SP_VZERO();
        int64_t p = ptr[n];
        const int64_t pe = ptr[n + 1];
        /* W streams from L3 or memory when other layers ran in between:
         * the next rows' values and indices, ahead of the hardware's
         * prefetcher (docs/tuning.md) */
        if (SP_LIN_GATHER_PF > 0) {
            const int64_t q = SP_MIN(pe + SP_LIN_GATHER_PF, ptr[a->row_end]);
            for (int64_t o = p + SP_LIN_GATHER_PF; o < q; o += 64 / (int64_t)sizeof(SP_T)) {
                __builtin_prefetch(vals + o);
                __builtin_prefetch(indices + o);
            }
        }
        for (; p + 2 * SP_VL <= pe; p += 2 * SP_VL) {
            for (int u = 0; u < 2; u++) {
                const SP_V w = SP_VLOAD(vals + p + u * SP_VL);
                for (int r = 0; r < R; r++)
                    acc[r][u] = SP_VFMA(w, SP_FN(sp_vgather)(X + r * ldx, indices + p + u * SP_VL),
                                        acc[r][u]);
            }
        }
        if (p + SP_VL <= pe) {
            const SP_V w = SP_VLOAD(vals + p);
            for (int r = 0; r < R; r++)
                acc[r][0] = SP_VFMA(w, SP_FN(sp_vgather)(X + r * ldx, indices + p), acc[r][0]);
            p += SP_VL;
        }
        if (p < pe) { /* fewer than SP_VL left: masked */
            const SP_V w = SP_FN(sp_vmload)(vals + p, SP_FN(sp_vmask)(pe - p));
            for (int r = 0; r < R; r++)
                acc[r][1] = SP_VFMA(w, SP_FN(sp_vmgather)(X + r * ldx, indices + p, pe - p),
                                    acc[r][1]);
        }
        const SP_T b = bias ? bias[n] : (SP_T)0;
        for (int r = 0; r < R; r++)
            Y[r * ldy + n] = b + SP_FN(sp_vhsum)(SP_VADD(acc[r][0], acc[r][1]));
    }
}

static void SP_FN(sp_linear_fwd_gather)(const sp_linear_fwd_args* a)
{
    switch (a->rows) {
    case 1: SP_FN(sp_lin_gather_body)(a, 1); break;
    case 2: SP_FN(sp_lin_gather_body)(a, 2); break;
    case 3: SP_FN(sp_lin_gather_body)(a, 3); break;
    default: SP_FN(sp_lin_gather_body)(a, SP_LINEAR_GATHER_ROWS); break;
    }
}
#define SP_LIN_GATHER_FN SP_FN(sp_linear_fwd_gather)
#define SP_LIN_GATHER_ROWS SP_LINEAR_GATHER_ROWS
#else
#define SP_LIN_GATHER_FN NULL
#define SP_LIN_GATHER_ROWS 0
#endif
SP_INLINE sp_linear_fwd_fn SP_FN(sp_linear_fwd_gather_fn)(void) { return SP_LIN_GATHER_FN; }
SP_INLINE int64_t SP_FN(sp_linear_fwd_gather_rows)(void) { return SP_LIN_GATHER_ROWS; }
#undef SP_LIN_GATHER_FN
#undef SP_LIN_GATHER_ROWS
#undef SP_LIN_GATHER_PF

/* ---- backward ------------------------------------------------------------ */

/* Accumulator sets of dX^T: two when a column's FMA chains are too few to
 * hide the FMA latency. */
#define SP_LIN_DXSETS (SP_CVB >= 3 ? 1 : 2)

/* Partial dot products reduced together (SP_LINEAR_PAD = 8 is a multiple):
 * 8 shares the shuffles best, 4 keeps 4 fewer vectors live. */
#if SP_CUR_ISA == SP_ISA_AVX2 && !SP_CUR_F64
#define SP_LIN_RG SP_LINEAR_RG_F32_AVX2
#else
#define SP_LIN_RG 8
#endif

/* Nonzeros ahead whose dY^T rows the backward prefetches into L1 (0: no
 * prefetch; overridable to repeat the measurement). */
#ifdef SP_LINEAR_BWD_PREFETCH
#define SP_LIN_BWD_PF SP_LINEAR_BWD_PREFETCH
#else
#define SP_LIN_BWD_PF 16
#endif

/* The columns [m0, m1) of the backward pass, X^T and dX^T of those columns
 * at XT[(m - m0) * SP_BCB], dXT[...]; with_dx is a literal at each call so
 * the compiler emits a dX-free copy for need_input_grad=False. */
SP_ALWAYS_INLINE void SP_FN(sp_lin_bwd_columns)(const sp_linear_bwd_args* a, int64_t m0,
                                                int64_t m1, const SP_T* SP_RESTRICT XT,
                                                const SP_T* SP_RESTRICT dYT,
                                                SP_T* SP_RESTRICT dXT, const int with_dx)
{
    const int64_t* SP_RESTRICT colptr = a->colptr;
    const int32_t* SP_RESTRICT rowidx = a->rowidx;
    const SP_T* SP_RESTRICT vals = (const SP_T*)a->vals;
    SP_T* SP_RESTRICT dW = (SP_T*)a->dW;
    const int64_t qlim = colptr[m1];

    for (int64_t m = m0; m < m1; m++) {
        const SP_T* xrow = XT + (m - m0) * SP_BCB;
        SP_V xt[SP_CVB], dxa[SP_CVB], dxb[SP_CVB];
        for (int k = 0; k < SP_CVB; k++) {
            xt[k] = SP_VLOAD(xrow + k * SP_VL);
            dxa[k] = SP_VZERO();
            dxb[k] = SP_VZERO();
        }
        const int64_t qe = colptr[m + 1];
        for (int64_t q = colptr[m]; q < qe; q += SP_LINEAR_PAD) {
            /* the dY^T rows of two groups ahead: the loads are scattered
             * over L2 and their latency, not its bandwidth, limits */
            if (SP_LIN_BWD_PF > 0 && q + SP_LIN_BWD_PF + 8 <= qlim)
                for (int g = 0; g < 8; g++) {
                    const char* pf = (const char*)(dYT + (int64_t)rowidx[q + SP_LIN_BWD_PF + g] * SP_BCB);
                    for (int o = 0; o < SP_BCB * (int)sizeof(SP_T); o += 64)
                        __builtin_prefetch(pf + o);
                }
            /* the 8 nonzeros in groups of SP_LIN_RG partial dot products */
            for (int h = 0; h < SP_LINEAR_PAD; h += SP_LIN_RG) {
                SP_V prod[SP_LIN_RG];
                for (int g = 0; g < SP_LIN_RG; g++) {
                    const SP_T* dy = dYT + (int64_t)rowidx[q + h + g] * SP_BCB;
                    const SP_V w = SP_VSET1(vals[q + h + g]);
                    SP_V d = SP_VLOAD(dy);
                    prod[g] = SP_VMUL(d, xt[0]);
                    if (with_dx) {
                        if (SP_LIN_DXSETS == 2 && (g & 1))
                            dxb[0] = SP_VFMA(w, d, dxb[0]);
                        else
                            dxa[0] = SP_VFMA(w, d, dxa[0]);
                    }
                    for (int k = 1; k < SP_CVB; k++) {
                        d = SP_VLOAD(dy + k * SP_VL);
                        prod[g] = SP_VFMA(d, xt[k], prod[g]);
                        if (with_dx) {
                            if (SP_LIN_DXSETS == 2 && (g & 1))
                                dxb[k] = SP_VFMA(w, d, dxb[k]);
                            else
                                dxa[k] = SP_VFMA(w, d, dxa[k]);
                        }
                    }
                }
                if (SP_LIN_RG == 8)
                    SP_FN(sp_reduce8_add)(prod, dW + q);
                else
                    SP_FN(sp_reduce4_add)(prod, dW + q + h);
            }
        }
        if (with_dx)
            for (int k = 0; k < SP_CVB; k++)
                SP_VSTORE(dXT + (m - m0) * SP_BCB + k * SP_VL, SP_VADD(dxa[k], dxb[k]));
    }
}

/* Columns per block of X^T / dX^T kept in L1 while the block is walked. */
#define SP_LIN_BWD_CB (4 * SP_VL)

static void SP_FN(sp_linear_bwd)(const sp_linear_bwd_args* a)
{
    const int64_t rows = a->rows, N = a->N;
    SP_T* SP_RESTRICT dYT = (SP_T*)a->scratch;            /* (N + 1) x SP_BCB */
    SP_T* SP_RESTRICT XT = dYT + (N + 1) * SP_BCB;        /* CB x SP_BCB      */
    SP_T* SP_RESTRICT dXT = XT + SP_LIN_BWD_CB * SP_BCB;  /* CB x SP_BCB      */
    const SP_IOT* X = (const SP_IOT*)a->X;
    SP_IOT* dX = (SP_IOT*)a->dX;

    SP_FN(sp_lin_to_lanes)((const SP_IOT*)a->dY, a->lddy, rows, N, dYT, SP_CVB);
    for (int64_t r = 0; r < SP_BCB; r++) /* row N: target of the padding dummies */
        dYT[N * SP_BCB + r] = (SP_T)0;

    for (int64_t m0 = a->col_begin; m0 < a->col_end; m0 += SP_LIN_BWD_CB) {
        const int64_t m1 = SP_MIN(a->col_end, m0 + SP_LIN_BWD_CB);
        SP_FN(sp_lin_to_lanes)(X + m0, a->ldx, rows, m1 - m0, XT, SP_CVB);
        if (dX) {
            SP_FN(sp_lin_bwd_columns)(a, m0, m1, XT, dYT, dXT, 1);
            SP_FN(sp_lin_from_lanes)(dXT, rows, m1 - m0, dX + m0, a->lddx, SP_CVB);
        } else {
            SP_FN(sp_lin_bwd_columns)(a, m0, m1, XT, dYT, dXT, 0);
        }
    }
}

#undef SP_LIN_BWD_CB
#undef SP_LIN_RG
#undef SP_LIN_BWD_PF
#undef SP_LIN_DXSETS
#undef SP_LIN_HAVE_TR
#undef SP_LIN_FSETS
#undef SP_LIN_FSETS_MAX
#undef SP_LIN_CV1
#undef SP_LIN_CV2
#undef SP_BC
#undef SP_BCB
#undef SP_CV
#undef SP_CVB
