/* linear_impl.h - one instantiation of the sparse linear kernels; included by
 * linear.h inside a simd_begin.h region with SP_CV (vectors per chunk) set.
 * See linear.h for the algorithm and the argument structs. */

#define SP_BC (SP_CV * SP_VL) /* batch rows per chunk = lanes of the chunk */

SP_INLINE int64_t SP_FN(sp_linear_chunk)(void) { return SP_BC; }

/* buf (n x SP_BC): zero the lanes [rows, SP_BC) of every row. */
SP_ALWAYS_INLINE void SP_FN(sp_lin_zero_tail)(SP_T* buf, int64_t n, int64_t rows)
{
    if (rows >= SP_BC)
        return;
    for (int64_t i = 0; i < n; i++)
        for (int64_t r = rows; r < SP_BC; r++)
            buf[i * SP_BC + r] = (SP_T)0;
}

static void SP_FN(sp_linear_fwd)(const sp_linear_fwd_args* a)
{
    const SP_T* SP_RESTRICT X = (const SP_T*)a->X;
    SP_T* SP_RESTRICT Y = (SP_T*)a->Y;
    const SP_T* SP_RESTRICT vals = (const SP_T*)a->vals;
    const SP_T* SP_RESTRICT bias = (const SP_T*)a->bias;
    const int64_t* SP_RESTRICT indptr = a->indptr;
    const int32_t* SP_RESTRICT indices = a->indices;
    const int64_t rows = a->rows, M = a->M;
    SP_T* SP_RESTRICT XT = (SP_T*)a->scratch;        /* M x SP_BC              */
    SP_T* SP_RESTRICT tile = XT + M * SP_BC;         /* FWD_TILE x SP_BC       */

    /* X chunk -> X^T (batch last), padding lanes zeroed so they stay finite */
    SP_FN(sp_transpose)(X, a->ldx, XT, SP_BC, rows, M);
    SP_FN(sp_lin_zero_tail)(XT, M, rows);

    for (int64_t n0 = a->row_begin; n0 < a->row_end; n0 += SP_LINEAR_FWD_TILE) {
        const int64_t nb = SP_MIN((int64_t)SP_LINEAR_FWD_TILE, a->row_end - n0);
        for (int64_t j = 0; j < nb; j++) {
            const int64_t n = n0 + j;
            /* two accumulator sets hide FMA latency when SP_CV is small */
            SP_V acc0[SP_CV], acc1[SP_CV];
            const SP_V init = bias ? SP_VSET1(bias[n]) : SP_VZERO();
            for (int k = 0; k < SP_CV; k++) {
                acc0[k] = init;
                acc1[k] = SP_VZERO();
            }
            int64_t p = indptr[n];
            const int64_t pe = indptr[n + 1];
            for (; p + 1 < pe; p += 2) {
                const SP_T* x0 = XT + (int64_t)indices[p] * SP_BC;
                const SP_T* x1 = XT + (int64_t)indices[p + 1] * SP_BC;
                const SP_V w0 = SP_VSET1(vals[p]);
                const SP_V w1 = SP_VSET1(vals[p + 1]);
                for (int k = 0; k < SP_CV; k++) {
                    acc0[k] = SP_VFMA(w0, SP_VLOAD(x0 + k * SP_VL), acc0[k]);
                    acc1[k] = SP_VFMA(w1, SP_VLOAD(x1 + k * SP_VL), acc1[k]);
                }
            }
            if (p < pe) {
                const SP_T* x0 = XT + (int64_t)indices[p] * SP_BC;
                const SP_V w0 = SP_VSET1(vals[p]);
                for (int k = 0; k < SP_CV; k++)
                    acc0[k] = SP_VFMA(w0, SP_VLOAD(x0 + k * SP_VL), acc0[k]);
            }
            for (int k = 0; k < SP_CV; k++)
                SP_VSTORE(tile + j * SP_BC + k * SP_VL, SP_VADD(acc0[k], acc1[k]));
        }
        /* tile (nb x lanes) -> Y[0:rows, n0:n0+nb] */
        SP_FN(sp_transpose)(tile, SP_BC, Y + n0, a->ldy, nb, rows);
    }
}

/* The column loop of the backward pass; with_dx is a literal at each call so
 * the compiler emits a dX-free copy for need_input_grad=False. */
SP_ALWAYS_INLINE void SP_FN(sp_lin_bwd_columns)(const sp_linear_bwd_args* a,
                                                const SP_T* SP_RESTRICT XT,
                                                const SP_T* SP_RESTRICT dYT,
                                                SP_T* SP_RESTRICT dXT,
                                                const int with_dx)
{
    const int64_t* SP_RESTRICT colptr = a->colptr;
    const int32_t* SP_RESTRICT rowidx = a->rowidx;
    const SP_T* SP_RESTRICT vals = (const SP_T*)a->vals;
    SP_T* SP_RESTRICT dW = (SP_T*)a->dW;

    for (int64_t m = a->col_begin; m < a->col_end; m++) {
        const SP_T* xrow = XT + (m - a->col_begin) * SP_BC;
        SP_V xt[SP_CV], dxa[SP_CV], dxb[SP_CV];
        for (int k = 0; k < SP_CV; k++) {
            xt[k] = SP_VLOAD(xrow + k * SP_VL);
            dxa[k] = SP_VZERO();
            dxb[k] = SP_VZERO();
        }
        const int64_t qe = colptr[m + 1];
        for (int64_t q = colptr[m]; q < qe; q += SP_LINEAR_PAD) {
            SP_V prod[8];
            for (int g = 0; g < 8; g++) {
                const SP_T* dy = dYT + (int64_t)rowidx[q + g] * SP_BC;
                const SP_V w = SP_VSET1(vals[q + g]);
                SP_V d = SP_VLOAD(dy);
                prod[g] = SP_VMUL(d, xt[0]);
                if (with_dx) {
                    if (g & 1)
                        dxb[0] = SP_VFMA(w, d, dxb[0]);
                    else
                        dxa[0] = SP_VFMA(w, d, dxa[0]);
                }
                for (int k = 1; k < SP_CV; k++) {
                    d = SP_VLOAD(dy + k * SP_VL);
                    prod[g] = SP_VFMA(d, xt[k], prod[g]);
                    if (with_dx) {
                        if (g & 1)
                            dxb[k] = SP_VFMA(w, d, dxb[k]);
                        else
                            dxa[k] = SP_VFMA(w, d, dxa[k]);
                    }
                }
            }
            SP_FN(sp_reduce8_add)(prod, dW + q);
        }
        if (with_dx)
            for (int k = 0; k < SP_CV; k++)
                SP_VSTORE(dXT + (m - a->col_begin) * SP_BC + k * SP_VL, SP_VADD(dxa[k], dxb[k]));
    }
}

static void SP_FN(sp_linear_bwd)(const sp_linear_bwd_args* a)
{
    const int64_t rows = a->rows, N = a->N;
    const int64_t ncols = a->col_end - a->col_begin;
    SP_T* SP_RESTRICT XT = (SP_T*)a->scratch;      /* ncols x SP_BC           */
    SP_T* SP_RESTRICT dYT = XT + a->M * SP_BC;     /* (N + 1) x SP_BC         */
    SP_T* SP_RESTRICT dXT = dYT + (N + 1) * SP_BC; /* ncols x SP_BC           */

    SP_FN(sp_transpose)((const SP_T*)a->X + a->col_begin, a->ldx, XT, SP_BC, rows, ncols);
    SP_FN(sp_lin_zero_tail)(XT, ncols, rows);
    SP_FN(sp_transpose)((const SP_T*)a->dY, a->lddy, dYT, SP_BC, rows, N);
    SP_FN(sp_lin_zero_tail)(dYT, N, rows);
    for (int64_t r = 0; r < SP_BC; r++) /* row N: target of the padding dummies */
        dYT[N * SP_BC + r] = (SP_T)0;

    if (a->dX) {
        SP_FN(sp_lin_bwd_columns)(a, XT, dYT, dXT, 1);
        SP_FN(sp_transpose)(dXT, SP_BC, (SP_T*)a->dX + a->col_begin, a->lddx, ncols, rows);
    } else {
        SP_FN(sp_lin_bwd_columns)(a, XT, dYT, dXT, 0);
    }
}

#undef SP_BC
