/* conv_tiles_impl.h - the register tiles of the conv kernels (forward
 * output-stationary, backward input-stationary and fused), one function per
 * tile shape in tables indexed [R-1][NC-1].  Part of conv_impl.h (one code
 * region); see conv.h for the algorithms.
 *
 * Included once per region with the tiles' own element type for the arrays
 * a tile reads or writes whole - the forward's `out`, the backward's X and
 * dX tiles - and, in a bfloat16 region, a second time with the activations'
 * type (the tiles that read the user's X and write Y / dX in place).  The
 * includer (conv_impl.h) defines:
 *   SP_CW_OT          that element type (SP_T, or SP_IOT)
 *   SP_CW_OLOAD(p) SP_CW_OSTORE(p, v)   a vector of it, as float32 lanes
 *   SP_CW_OSTREAM     1: SP_CW_STREAM_OUT uses non-temporal stores,
 *                     SP_CW_OSTREAM_(p, v) at addresses SP_CW_OSTREAM_ALIGN apart
 *   SP_CWN(name)      the name of a function or table of this copy
 * The weights, the dY buffer and the dW partials are always SP_T. */

/* ---- forward register tile ------------------------------------------------
 * out[r*ors + c*L + lane] = start + sum_k vals[k] * xb[off[k] + delta + r*xrs + c*L + lane]
 * for r < R, c < NC, where start is `init` or, if mode is SP_CW_ACCUMULATE,
 * out's old value.  SP_CW_STREAM_OUT writes like SP_CW_OVERWRITE, with
 * non-temporal stores where a vector is aligned for them (the caller fences). */
#ifndef SP_CW_OVERWRITE
#define SP_CW_OVERWRITE 0
#define SP_CW_ACCUMULATE 1
#define SP_CW_STREAM_OUT 2
#endif

/* A non-temporal store where q is aligned for one, else a plain store (always
 * a plain one in a copy without streaming). */
SP_ALWAYS_INLINE void SP_CWN(sp_cw_stream)(SP_CW_OT* q, SP_V v)
{
#if SP_CW_OSTREAM
    if ((uintptr_t)q % SP_CW_OSTREAM_ALIGN == 0)
        SP_CW_OSTREAM_(q, v);
    else
        SP_CW_OSTORE(q, v);
#else
    SP_CW_OSTORE(q, v);
#endif
}
SP_ALWAYS_INLINE void SP_CWN(sp_cw_fwd_body)(const SP_T* SP_RESTRICT xb, int64_t xrs,
                                             const int64_t* SP_RESTRICT off, int64_t delta,
                                             const SP_T* SP_RESTRICT vals, int64_t n, SP_T init,
                                             int mode, SP_CW_OT* SP_RESTRICT out, int64_t ors,
                                             const int R, const int NC)
{
    SP_V acc[SP_CONV_MAX_R][SP_CONV_MAX_NC];
    if (n <= 0) { /* separate exit: keeps the tile in registers (no stack copy) */
        if (mode == SP_CW_OVERWRITE)
            for (int r = 0; r < R; r++)
                for (int c = 0; c < NC; c++)
                    SP_CW_OSTORE(out + r * ors + c * SP_VL, SP_VSET1(init));
        else if (mode == SP_CW_STREAM_OUT)
            for (int r = 0; r < R; r++)
                for (int c = 0; c < NC; c++)
                    SP_CWN(sp_cw_stream)(out + r * ors + c * SP_VL, SP_VSET1(init));
        return;
    }
    if (mode == SP_CW_ACCUMULATE) {
        for (int r = 0; r < R; r++)
            for (int c = 0; c < NC; c++)
                acc[r][c] = SP_CW_OLOAD(out + r * ors + c * SP_VL);
    } else {
        const SP_V vi = SP_VSET1(init);
        for (int r = 0; r < R; r++)
            for (int c = 0; c < NC; c++)
                acc[r][c] = vi;
    }
    const SP_T* base = xb + delta;
    for (int64_t k = 0; k < n; k++) {
        /* row pointers, so every load is pointer + immediate offset */
        const SP_T* p = base + off[k];
        const SP_V v = SP_VSET1(vals[k]);
        for (int r = 0; r < R; r++) {
            for (int c = 0; c < NC; c++)
                acc[r][c] = SP_VFMA(v, SP_VLOAD(p + c * SP_VL), acc[r][c]);
            p += xrs;
        }
    }
    if (mode == SP_CW_STREAM_OUT) {
        for (int r = 0; r < R; r++)
            for (int c = 0; c < NC; c++)
                SP_CWN(sp_cw_stream)(out + r * ors + c * SP_VL, acc[r][c]);
        return;
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NC; c++)
            SP_CW_OSTORE(out + r * ors + c * SP_VL, acc[r][c]);
}

/* ---- backward register tile (input-stationary, fused) ----------------------
 * X tile xb[r*xrs + c*L] and, if with_dx, the dX tile stay in registers; for
 * each weight k: d = dyb[off[k] + delta + r*dyrs + c*L],
 *     dX tile += vals[k] * d,     dwv[k*L .. +L] += sum over the tile of d * X.
 * The dX tile is stored to dxb[r*dxrs + c*L]. */
SP_ALWAYS_INLINE void SP_CWN(sp_cw_bwd_body)(const SP_CW_OT* SP_RESTRICT xb,
                                             SP_CW_OT* SP_RESTRICT dxb, int64_t xrs,
                                             int64_t dxrs, const SP_T* SP_RESTRICT dyb,
                                             int64_t dyrs, const int64_t* SP_RESTRICT off,
                                             int64_t delta, const SP_T* SP_RESTRICT vals,
                                             int64_t n, SP_T* SP_RESTRICT dwv, const int R,
                                             const int NC, const int with_dx)
{
    SP_V xr[SP_CONV_MAX_R][SP_CONV_MAX_NC], dx[SP_CONV_MAX_R][SP_CONV_MAX_NC];
    if (n <= 0) { /* separate exit: keeps the tiles in registers (no stack copy) */
        if (with_dx)
            for (int r = 0; r < R; r++)
                for (int c = 0; c < NC; c++)
                    SP_CW_OSTORE(dxb + r * dxrs + c * SP_VL, SP_VZERO());
        return;
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NC; c++) {
            xr[r][c] = SP_CW_OLOAD(xb + r * xrs + c * SP_VL);
            SP_VPIN(xr[r][c]); /* else gcc copies the tile through the stack */
            dx[r][c] = SP_VZERO();
        }
    const SP_T* base = dyb + delta;
    for (int64_t k = 0; k < n; k++) {
        const SP_T* p = base + off[k];
        const SP_V v = SP_VSET1(vals[k]);
        SP_V w0 = SP_VZERO(), w1 = SP_VZERO();
        for (int r = 0; r < R; r++, p += dyrs)
            for (int c = 0; c < NC; c++) {
                SP_V d = SP_VLOAD(p + c * SP_VL);
                SP_VPIN(d); /* one load feeding both FMAs (gcc would load twice) */
                if (with_dx)
                    dx[r][c] = SP_VFMA(v, d, dx[r][c]);
                if ((r * NC + c) & 1)
                    w1 = SP_VFMA(d, xr[r][c], w1);
                else
                    w0 = SP_VFMA(d, xr[r][c], w0);
            }
        SP_T* q = dwv + k * SP_VL;
        SP_VSTORE(q, SP_VADD(SP_VLOAD(q), SP_VADD(w0, w1)));
    }
    if (with_dx)
        for (int r = 0; r < R; r++)
            for (int c = 0; c < NC; c++) {
                SP_VPIN(dx[r][c]);
                SP_CW_OSTORE(dxb + r * dxrs + c * SP_VL, dx[r][c]);
            }
}

/* The same tile position in nch input channels, one after the other: channel
 * i's X tile at xb + i*sxc, its dX tile at dxb + i*sdc and its weights
 * [lp[i*ls], lp[i*ls + 1]) of the lists (off, vals, dwv indexed from there).
 * With pf, the tiles of the channel SP_CW_BWD_PFD ahead are prefetched: read
 * in place (not from a packed buffer) they are cold, and a tile is only a
 * few FMAs per weight.  One call per run keeps the call and its argument
 * setup out of the per-channel loop (~6 weights a channel at 0.99). */
#ifndef SP_CW_BWD_PFD
#define SP_CW_BWD_PFD 2
#endif
SP_ALWAYS_INLINE void SP_CWN(sp_cw_bwd_run)(const SP_CW_OT* SP_RESTRICT xb, int64_t sxc,
                                            SP_CW_OT* SP_RESTRICT dxb, int64_t sdc, int64_t xrs,
                                            int64_t dxrs, const SP_T* SP_RESTRICT dyb,
                                            int64_t dyrs, const int64_t* SP_RESTRICT off,
                                            int64_t delta, const SP_T* SP_RESTRICT vals,
                                            SP_T* SP_RESTRICT dwv,
                                            const int64_t* SP_RESTRICT lp, int64_t ls,
                                            int64_t nch, int pf, const int R, const int NC,
                                            const int with_dx)
{
    const int64_t nb = (int64_t)NC * SP_VL * (int64_t)sizeof(SP_CW_OT);
    for (int64_t i = 0; i < nch; i++) {
        if (pf && i + SP_CW_BWD_PFD < nch) {
            const char* px = (const char*)(xb + (i + SP_CW_BWD_PFD) * sxc);
            const char* pd = with_dx ? (const char*)(dxb + (i + SP_CW_BWD_PFD) * sdc) : NULL;
            for (int r = 0; r < R; r++)
                for (int64_t o = 0; o < nb + 63; o += 64) { /* the last line too */
                    __builtin_prefetch(
                        px + r * xrs * (int64_t)sizeof(SP_CW_OT) + SP_MIN(o, nb - 1), 0, 3);
                    if (with_dx)
                        __builtin_prefetch(
                            pd + r * dxrs * (int64_t)sizeof(SP_CW_OT) + SP_MIN(o, nb - 1), 1, 3);
                }
        }
        const int64_t k0 = lp[i * ls], n = lp[i * ls + 1] - k0;
        if (n == 0 && !with_dx)
            continue;
        SP_CWN(sp_cw_bwd_body)(xb + i * sxc, with_dx ? dxb + i * sdc : NULL, xrs, dxrs, dyb,
                               dyrs, off + k0, delta, vals + k0, n, dwv + k0 * SP_VL, R, NC,
                               with_dx);
    }
}

/* Over-width forward: the same tile position of nout output channels, one
 * after the other (the call and its setup cost as much as a tile of ~6
 * weights at 0.99 sparsity).  Channel j: weights [och[j], och[j+1]), start
 * bias[j] (or 0 without bias), output at out + j*ops with rows ors apart,
 * written whole (every vector inside the row); streamed when `stream` and the
 * channel has at most SP_CONV_STREAM_MAX_NNZ weights.  Returns whether any
 * tile was streamed (the caller fences). */
SP_ALWAYS_INLINE int SP_CWN(sp_cw_fwd_run)(const SP_T* SP_RESTRICT xb, int64_t xrs,
                                           const int64_t* SP_RESTRICT off, int64_t delta,
                                           const SP_T* SP_RESTRICT vals,
                                           const int64_t* SP_RESTRICT och,
                                           const SP_T* SP_RESTRICT bias, int64_t nout,
                                           SP_CW_OT* SP_RESTRICT out, int64_t ops, int64_t ors,
                                           int stream, const int R, const int NC)
{
    int streamed = 0;
    for (int64_t j = 0; j < nout; j++) {
        const int64_t k0 = och[j], n = och[j + 1] - k0;
        const int st = stream && n <= SP_CONV_STREAM_MAX_NNZ;
        streamed |= st;
        SP_CWN(sp_cw_fwd_body)(xb, xrs, off + k0, delta, vals + k0, n,
                               bias ? bias[j] : (SP_T)0, st ? SP_CW_STREAM_OUT : SP_CW_OVERWRITE,
                               out + j * ops, ors, R, NC);
    }
    return streamed;
}

/* ---- one function per tile shape, in tables indexed [R-1][NC-1] ---------- */
typedef void (*SP_CWN(sp_cw_fwd_tile_t))(const SP_T*, int64_t, const int64_t*, int64_t,
                                         const SP_T*, int64_t, SP_T, int, SP_CW_OT*, int64_t);
typedef int (*SP_CWN(sp_cw_fwd_run_t))(const SP_T*, int64_t, const int64_t*, int64_t,
                                       const SP_T*, const int64_t*, const SP_T*, int64_t,
                                       SP_CW_OT*, int64_t, int64_t, int);
typedef void (*SP_CWN(sp_cw_bwd_tile_t))(const SP_CW_OT*, int64_t, SP_CW_OT*, int64_t, int64_t,
                                         int64_t, const SP_T*, int64_t, const int64_t*, int64_t,
                                         const SP_T*, SP_T*, const int64_t*, int64_t, int64_t,
                                         int);

/* kind: bwdx (with dX) or bwdw (dW only, with_dx 0) */
#define SP_CW_DEF_BWD(kind, R, NC, with_dx)                                                     \
    static void SP_CWN(sp_cw_##kind##_##R##x##NC)(                                              \
        const SP_CW_OT* xb, int64_t sxc, SP_CW_OT* dxb, int64_t sdc, int64_t xrs, int64_t dxrs, \
        const SP_T* dyb, int64_t dyrs, const int64_t* off, int64_t delta, const SP_T* vals,     \
        SP_T* dwv, const int64_t* lp, int64_t ls, int64_t nch, int pf)                          \
    {                                                                                           \
        SP_CWN(sp_cw_bwd_run)(xb, sxc, dxb, sdc, xrs, dxrs, dyb, dyrs, off, delta, vals, dwv,   \
                              lp, ls, nch, pf, R, NC, with_dx);                                 \
    }
#define SP_CW_DEF(R, NC)                                                                        \
    static void SP_CWN(sp_cw_fwd_##R##x##NC)(const SP_T* xb, int64_t xrs, const int64_t* off,   \
                                             int64_t delta, const SP_T* vals, int64_t n,        \
                                             SP_T init, int acc, SP_CW_OT* out, int64_t ors)    \
    {                                                                                           \
        SP_CWN(sp_cw_fwd_body)(xb, xrs, off, delta, vals, n, init, acc, out, ors, R, NC);       \
    }                                                                                           \
    static int SP_CWN(sp_cw_fwdrun_##R##x##NC)(const SP_T* xb, int64_t xrs, const int64_t* off, \
                                               int64_t delta, const SP_T* vals,                \
                                               const int64_t* och, const SP_T* bias,           \
                                               int64_t nout, SP_CW_OT* out, int64_t ops,       \
                                               int64_t ors, int stream)                        \
    {                                                                                           \
        return SP_CWN(sp_cw_fwd_run)(xb, xrs, off, delta, vals, och, bias, nout, out, ops, ors, \
                                     stream, R, NC);                                            \
    }                                                                                           \
    SP_CW_DEF_BWD(bwdx, R, NC, 1) SP_CW_DEF_BWD(bwdw, R, NC, 0)
#define SP_CW_DEF_ROW(R)                                                                        \
    SP_CW_DEF(R, 1) SP_CW_DEF(R, 2) SP_CW_DEF(R, 3) SP_CW_DEF(R, 4) SP_CW_DEF(R, 5)            \
    SP_CW_DEF(R, 6) SP_CW_DEF(R, 7)
SP_CW_DEF_ROW(1)
SP_CW_DEF_ROW(2)
SP_CW_DEF_ROW(3)
SP_CW_DEF_ROW(4)
SP_CW_DEF_ROW(5)
SP_CW_DEF_ROW(6)
SP_CW_DEF_ROW(7)

/* Shapes over the register budget are never picked (sp_conv_pick_tile):
 * leave them out so the compiler drops their (spilling) bodies. */
#define SP_CW_PICK(kind, R, NC, acc) (((R) * (NC) <= (acc)) ? SP_CWN(sp_cw_##kind##_##R##x##NC) : 0)
#define SP_CW_ROW(kind, R, acc)                                                                 \
    {SP_CW_PICK(kind, R, 1, acc), SP_CW_PICK(kind, R, 2, acc), SP_CW_PICK(kind, R, 3, acc),     \
     SP_CW_PICK(kind, R, 4, acc), SP_CW_PICK(kind, R, 5, acc), SP_CW_PICK(kind, R, 6, acc),     \
     SP_CW_PICK(kind, R, 7, acc)}
#define SP_CW_TABLE(kind, acc)                                                                  \
    {SP_CW_ROW(kind, 1, acc), SP_CW_ROW(kind, 2, acc), SP_CW_ROW(kind, 3, acc),                 \
     SP_CW_ROW(kind, 4, acc), SP_CW_ROW(kind, 5, acc), SP_CW_ROW(kind, 6, acc),                 \
     SP_CW_ROW(kind, 7, acc)}

static const SP_CWN(sp_cw_fwd_tile_t) SP_CWN(sp_cw_fwd_tiles)[SP_CONV_MAX_R][SP_CONV_MAX_NC] =
    SP_CW_TABLE(fwd, SP_CW_FWD_ACC);
static const SP_CWN(sp_cw_fwd_run_t) SP_CWN(sp_cw_fwdrun_tiles)[SP_CONV_MAX_R][SP_CONV_MAX_NC] =
    SP_CW_TABLE(fwdrun, SP_CW_FWD_ACC);
static const SP_CWN(sp_cw_bwd_tile_t) SP_CWN(sp_cw_bwdx_tiles)[SP_CONV_MAX_R][SP_CONV_MAX_NC] =
    SP_CW_TABLE(bwdx, SP_CW_BWD_ACC_FEW);
static const SP_CWN(sp_cw_bwd_tile_t) SP_CWN(sp_cw_bwdw_tiles)[SP_CONV_MAX_R][SP_CONV_MAX_NC] =
    SP_CW_TABLE(bwdw, SP_CW_BWD_ACC_FEW);

#undef SP_CW_DEF
#undef SP_CW_DEF_BWD
#undef SP_CW_DEF_ROW
#undef SP_CW_PICK
#undef SP_CW_ROW
#undef SP_CW_TABLE
