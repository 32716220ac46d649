/* conv_impl.h - one instantiation of the sparse conv2d kernels; included by
 * conv.h inside a simd_begin.h region.  See conv.h for the algorithms, the
 * buffer layouts and the argument structs. */

/* ---- vector vocabulary of the conv kernels (256-bit in both x86 regions) */
#if SP_CUR_ISA == SP_ISA_SCALAR
#define SP_CW_V SP_T
#define SP_CW_L 1
#define SP_CW_SET1(x) ((SP_T)(x))
#define SP_CW_LOAD(p) (*(p))
#define SP_CW_STORE(p, v) (*(p) = (v))
#define SP_CW_STREAM(p, v) (*(p) = (v))
#define SP_CW_STREAM_ALIGN 1
#define SP_CW_ADD(a, b) ((a) + (b))
#define SP_CW_FMA(a, b, c) ((a) * (b) + (c))
#define SP_CW_FWD_ACC 8
#define SP_CW_BWD_ACC 4
#define SP_CW_BWD_ACC_FEW 4
#define SP_CW_PIN(v) ((void)0)
#else
/* Keep a loaded vector in a register (an empty asm that "changes" it). */
#define SP_CW_PIN(v) __asm__("" : "+x"(v))
#if SP_CUR_F64
#define SP_CW_V __m256d
#define SP_CW_L 4
#define SP_CW_SET1(x) _mm256_set1_pd(x)
#define SP_CW_LOAD(p) _mm256_loadu_pd(p)
#define SP_CW_STORE(p, v) _mm256_storeu_pd((p), (v))
#define SP_CW_STREAM(p, v) _mm256_stream_pd((p), (v))
#define SP_CW_STREAM_ALIGN 32
#define SP_CW_ADD(a, b) _mm256_add_pd((a), (b))
#define SP_CW_FMA(a, b, c) _mm256_fmadd_pd((a), (b), (c))
#else
#define SP_CW_V __m256
#define SP_CW_L 8
#define SP_CW_SET1(x) _mm256_set1_ps(x)
#define SP_CW_LOAD(p) _mm256_loadu_ps(p)
#define SP_CW_STORE(p, v) _mm256_storeu_ps((p), (v))
#define SP_CW_STREAM(p, v) _mm256_stream_ps((p), (v))
#define SP_CW_STREAM_ALIGN 32
#define SP_CW_ADD(a, b) _mm256_add_ps((a), (b))
#define SP_CW_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#endif
#if SP_CUR_ISA == SP_ISA_AVX512
#define SP_CW_FWD_ACC 28 /* of 32 registers: + broadcast + load */
#define SP_CW_BWD_ACC 12 /* X and dX tiles: 24, + 2 dW chains + dY + w */
/* With few weights per tile the per-tile costs (loading X, storing dX, the
 * loop) weigh more than the two X vectors gcc then keeps on the stack: 56x56
 * layer, one core, budget 12 vs 14 (three alternating rounds, medians): 0.99
 * sparsity (~6 weights per list) 7.5 -> 6.7 ms, but 0.9 (~58) 24.0 -> 24.9 ms. */
#define SP_CW_BWD_ACC_FEW 14
#else
#define SP_CW_FWD_ACC 12 /* of 16 registers */
#define SP_CW_BWD_ACC 5
#define SP_CW_BWD_ACC_FEW 5
#endif
#endif

SP_INLINE int64_t SP_FN(sp_conv_lanes)(void) { return SP_CW_L; }

/* ---- forward register tile ------------------------------------------------
 * out[r*ors + c*L + lane] = start + sum_k vals[k] * xb[off[k] + delta + r*xrs + c*L + lane]
 * for r < R, c < NC, where start is `init` or, if mode is SP_CW_ACCUMULATE,
 * out's old value.  SP_CW_STREAM_OUT writes like SP_CW_OVERWRITE, with
 * non-temporal stores where a vector is aligned for them (the caller fences). */
#define SP_CW_OVERWRITE 0
#define SP_CW_ACCUMULATE 1
#define SP_CW_STREAM_OUT 2

/* A non-temporal store where q is aligned for one, else a plain store. */
SP_ALWAYS_INLINE void SP_FN(sp_cw_stream)(SP_T* q, SP_CW_V v)
{
    if ((uintptr_t)q % SP_CW_STREAM_ALIGN == 0)
        SP_CW_STREAM(q, v);
    else
        SP_CW_STORE(q, v);
}
SP_ALWAYS_INLINE void SP_FN(sp_cw_fwd_body)(const SP_T* SP_RESTRICT xb, int64_t xrs,
                                            const int64_t* SP_RESTRICT off, int64_t delta,
                                            const SP_T* SP_RESTRICT vals, int64_t n, SP_T init,
                                            int mode, SP_T* SP_RESTRICT out, int64_t ors,
                                            const int R, const int NC)
{
    SP_CW_V acc[SP_CONV_MAX_R][SP_CONV_MAX_NC];
    if (n <= 0) { /* separate exit: keeps the tile in registers (no stack copy) */
        if (mode == SP_CW_OVERWRITE)
            for (int r = 0; r < R; r++)
                for (int c = 0; c < NC; c++)
                    SP_CW_STORE(out + r * ors + c * SP_CW_L, SP_CW_SET1(init));
        else if (mode == SP_CW_STREAM_OUT)
            for (int r = 0; r < R; r++)
                for (int c = 0; c < NC; c++)
                    SP_FN(sp_cw_stream)(out + r * ors + c * SP_CW_L, SP_CW_SET1(init));
        return;
    }
    if (mode == SP_CW_ACCUMULATE) {
        for (int r = 0; r < R; r++)
            for (int c = 0; c < NC; c++)
                acc[r][c] = SP_CW_LOAD(out + r * ors + c * SP_CW_L);
    } else {
        const SP_CW_V vi = SP_CW_SET1(init);
        for (int r = 0; r < R; r++)
            for (int c = 0; c < NC; c++)
                acc[r][c] = vi;
    }
    const SP_T* base = xb + delta;
    for (int64_t k = 0; k < n; k++) {
        /* row pointers, so every load is pointer + immediate offset */
        const SP_T* p = base + off[k];
        const SP_CW_V v = SP_CW_SET1(vals[k]);
        for (int r = 0; r < R; r++) {
            for (int c = 0; c < NC; c++)
                acc[r][c] = SP_CW_FMA(v, SP_CW_LOAD(p + c * SP_CW_L), acc[r][c]);
            p += xrs;
        }
    }
    if (mode == SP_CW_STREAM_OUT) {
        for (int r = 0; r < R; r++)
            for (int c = 0; c < NC; c++)
                SP_FN(sp_cw_stream)(out + r * ors + c * SP_CW_L, acc[r][c]);
        return;
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NC; c++)
            SP_CW_STORE(out + r * ors + c * SP_CW_L, acc[r][c]);
}

/* ---- backward register tile (input-stationary, fused) ----------------------
 * X tile xb[r*xrs + c*L] and, if with_dx, the dX tile stay in registers; for
 * each weight k: d = dyb[off[k] + delta + r*dyrs + c*L],
 *     dX tile += vals[k] * d,     dwv[k*L .. +L] += sum over the tile of d * X.
 * The dX tile is stored to dxb[r*dxrs + c*L]. */
SP_ALWAYS_INLINE void SP_FN(sp_cw_bwd_body)(const SP_T* SP_RESTRICT xb, SP_T* SP_RESTRICT dxb,
                                            int64_t xrs, int64_t dxrs,
                                            const SP_T* SP_RESTRICT dyb,
                                            int64_t dyrs, const int64_t* SP_RESTRICT off,
                                            int64_t delta, const SP_T* SP_RESTRICT vals,
                                            int64_t n, SP_T* SP_RESTRICT dwv, const int R,
                                            const int NC, const int with_dx)
{
    SP_CW_V xr[SP_CONV_MAX_R][SP_CONV_MAX_NC], dx[SP_CONV_MAX_R][SP_CONV_MAX_NC];
    if (n <= 0) { /* separate exit: keeps the tiles in registers (no stack copy) */
        if (with_dx)
            for (int r = 0; r < R; r++)
                for (int c = 0; c < NC; c++)
                    SP_CW_STORE(dxb + r * dxrs + c * SP_CW_L, SP_CW_SET1(0));
        return;
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NC; c++) {
            xr[r][c] = SP_CW_LOAD(xb + r * xrs + c * SP_CW_L);
            SP_CW_PIN(xr[r][c]); /* else gcc copies the tile through the stack */
            dx[r][c] = SP_CW_SET1(0);
        }
    const SP_T* base = dyb + delta;
    for (int64_t k = 0; k < n; k++) {
        const SP_T* p = base + off[k];
        const SP_CW_V v = SP_CW_SET1(vals[k]);
        SP_CW_V w0 = SP_CW_SET1(0), w1 = SP_CW_SET1(0);
        for (int r = 0; r < R; r++, p += dyrs)
            for (int c = 0; c < NC; c++) {
                SP_CW_V d = SP_CW_LOAD(p + c * SP_CW_L);
                SP_CW_PIN(d); /* one load feeding both FMAs (gcc would load twice) */
                if (with_dx)
                    dx[r][c] = SP_CW_FMA(v, d, dx[r][c]);
                if ((r * NC + c) & 1)
                    w1 = SP_CW_FMA(d, xr[r][c], w1);
                else
                    w0 = SP_CW_FMA(d, xr[r][c], w0);
            }
        SP_T* q = dwv + k * SP_CW_L;
        SP_CW_STORE(q, SP_CW_ADD(SP_CW_LOAD(q), SP_CW_ADD(w0, w1)));
    }
    if (with_dx)
        for (int r = 0; r < R; r++)
            for (int c = 0; c < NC; c++) {
                SP_CW_PIN(dx[r][c]);
                SP_CW_STORE(dxb + r * dxrs + c * SP_CW_L, dx[r][c]);
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
SP_ALWAYS_INLINE void SP_FN(sp_cw_bwd_run)(const SP_T* SP_RESTRICT xb, int64_t sxc,
                                           SP_T* SP_RESTRICT dxb, int64_t sdc, int64_t xrs,
                                           int64_t dxrs, const SP_T* SP_RESTRICT dyb,
                                           int64_t dyrs, const int64_t* SP_RESTRICT off,
                                           int64_t delta, const SP_T* SP_RESTRICT vals,
                                           SP_T* SP_RESTRICT dwv,
                                           const int64_t* SP_RESTRICT lp, int64_t ls,
                                           int64_t nch, int pf, const int R, const int NC,
                                           const int with_dx)
{
    const int64_t nb = (int64_t)NC * SP_CW_L * (int64_t)sizeof(SP_T);
    for (int64_t i = 0; i < nch; i++) {
        if (pf && i + SP_CW_BWD_PFD < nch) {
            const char* px = (const char*)(xb + (i + SP_CW_BWD_PFD) * sxc);
            const char* pd = with_dx ? (const char*)(dxb + (i + SP_CW_BWD_PFD) * sdc) : NULL;
            for (int r = 0; r < R; r++)
                for (int64_t o = 0; o < nb + 63; o += 64) { /* the last line too */
                    __builtin_prefetch(px + r * xrs * (int64_t)sizeof(SP_T) + SP_MIN(o, nb - 1),
                                       0, 3);
                    if (with_dx)
                        __builtin_prefetch(
                            pd + r * dxrs * (int64_t)sizeof(SP_T) + SP_MIN(o, nb - 1), 1, 3);
                }
        }
        const int64_t k0 = lp[i * ls], n = lp[i * ls + 1] - k0;
        if (n == 0 && !with_dx)
            continue;
        SP_FN(sp_cw_bwd_body)(xb + i * sxc, with_dx ? dxb + i * sdc : NULL, xrs, dxrs, dyb, dyrs,
                              off + k0, delta, vals + k0, n, dwv + k0 * SP_CW_L, R, NC, with_dx);
    }
}

/* Over-width forward: the same tile position of nout output channels, one
 * after the other (the call and its setup cost as much as a tile of ~6
 * weights at 0.99 sparsity).  Channel j: weights [och[j], och[j+1]), start
 * bias[j] (or 0 without bias), output at out + j*ops with rows ors apart,
 * written whole (every vector inside the row); streamed when `stream` and the
 * channel has at most SP_CONV_STREAM_MAX_NNZ weights.  Returns whether any
 * tile was streamed (the caller fences). */
SP_ALWAYS_INLINE int SP_FN(sp_cw_fwd_run)(const SP_T* SP_RESTRICT xb, int64_t xrs,
                                          const int64_t* SP_RESTRICT off, int64_t delta,
                                          const SP_T* SP_RESTRICT vals,
                                          const int64_t* SP_RESTRICT och,
                                          const SP_T* SP_RESTRICT bias, int64_t nout,
                                          SP_T* SP_RESTRICT out, int64_t ops, int64_t ors,
                                          int stream, const int R, const int NC)
{
    int streamed = 0;
    for (int64_t j = 0; j < nout; j++) {
        const int64_t k0 = och[j], n = och[j + 1] - k0;
        const int st = stream && n <= SP_CONV_STREAM_MAX_NNZ;
        streamed |= st;
        SP_FN(sp_cw_fwd_body)(xb, xrs, off + k0, delta, vals + k0, n, bias ? bias[j] : (SP_T)0,
                              st ? SP_CW_STREAM_OUT : SP_CW_OVERWRITE, out + j * ops, ors, R,
                              NC);
    }
    return streamed;
}

/* ---- one function per tile shape, in tables indexed [R-1][NC-1] ---------- */
typedef void (*SP_FN(sp_cw_fwd_tile_t))(const SP_T*, int64_t, const int64_t*, int64_t,
                                        const SP_T*, int64_t, SP_T, int, SP_T*, int64_t);
typedef int (*SP_FN(sp_cw_fwd_run_t))(const SP_T*, int64_t, const int64_t*, int64_t,
                                      const SP_T*, const int64_t*, const SP_T*, int64_t, SP_T*,
                                      int64_t, int64_t, int);
typedef void (*SP_FN(sp_cw_bwd_tile_t))(const SP_T*, int64_t, SP_T*, int64_t, int64_t, int64_t,
                                        const SP_T*, int64_t, const int64_t*, int64_t,
                                        const SP_T*, SP_T*, const int64_t*, int64_t, int64_t,
                                        int);

/* kind: bwdx (with dX) or bwdw (dW only, with_dx 0) */
#define SP_CW_DEF_BWD(kind, R, NC, with_dx)                                                     \
    static void SP_FN(sp_cw_##kind##_##R##x##NC)(                                               \
        const SP_T* xb, int64_t sxc, SP_T* dxb, int64_t sdc, int64_t xrs, int64_t dxrs,         \
        const SP_T* dyb, int64_t dyrs, const int64_t* off, int64_t delta, const SP_T* vals,     \
        SP_T* dwv, const int64_t* lp, int64_t ls, int64_t nch, int pf)                          \
    {                                                                                           \
        SP_FN(sp_cw_bwd_run)(xb, sxc, dxb, sdc, xrs, dxrs, dyb, dyrs, off, delta, vals, dwv, lp, \
                             ls, nch, pf, R, NC, with_dx);                                      \
    }
#define SP_CW_DEF(R, NC)                                                                        \
    static void SP_FN(sp_cw_fwd_##R##x##NC)(const SP_T* xb, int64_t xrs, const int64_t* off,    \
                                            int64_t delta, const SP_T* vals, int64_t n,         \
                                            SP_T init, int acc, SP_T* out, int64_t ors)         \
    {                                                                                           \
        SP_FN(sp_cw_fwd_body)(xb, xrs, off, delta, vals, n, init, acc, out, ors, R, NC);        \
    }                                                                                           \
    static int SP_FN(sp_cw_fwdrun_##R##x##NC)(const SP_T* xb, int64_t xrs, const int64_t* off,  \
                                              int64_t delta, const SP_T* vals,                 \
                                              const int64_t* och, const SP_T* bias,            \
                                              int64_t nout, SP_T* out, int64_t ops,            \
                                              int64_t ors, int stream)                         \
    {                                                                                           \
        return SP_FN(sp_cw_fwd_run)(xb, xrs, off, delta, vals, och, bias, nout, out, ops, ors,  \
                                    stream, R, NC);                                             \
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
#define SP_CW_PICK(kind, R, NC, acc) (((R) * (NC) <= (acc)) ? SP_FN(sp_cw_##kind##_##R##x##NC) : 0)
#define SP_CW_ROW(kind, R, acc)                                                                 \
    {SP_CW_PICK(kind, R, 1, acc), SP_CW_PICK(kind, R, 2, acc), SP_CW_PICK(kind, R, 3, acc),     \
     SP_CW_PICK(kind, R, 4, acc), SP_CW_PICK(kind, R, 5, acc), SP_CW_PICK(kind, R, 6, acc),     \
     SP_CW_PICK(kind, R, 7, acc)}
#define SP_CW_TABLE(kind, acc)                                                                  \
    {SP_CW_ROW(kind, 1, acc), SP_CW_ROW(kind, 2, acc), SP_CW_ROW(kind, 3, acc),                 \
     SP_CW_ROW(kind, 4, acc), SP_CW_ROW(kind, 5, acc), SP_CW_ROW(kind, 6, acc),                 \
     SP_CW_ROW(kind, 7, acc)}

static const SP_FN(sp_cw_fwd_tile_t) SP_FN(sp_cw_fwd_tiles)[SP_CONV_MAX_R][SP_CONV_MAX_NC] =
    SP_CW_TABLE(fwd, SP_CW_FWD_ACC);
static const SP_FN(sp_cw_fwd_run_t) SP_FN(sp_cw_fwdrun_tiles)[SP_CONV_MAX_R][SP_CONV_MAX_NC] =
    SP_CW_TABLE(fwdrun, SP_CW_FWD_ACC);
static const SP_FN(sp_cw_bwd_tile_t) SP_FN(sp_cw_bwdx_tiles)[SP_CONV_MAX_R][SP_CONV_MAX_NC] =
    SP_CW_TABLE(bwdx, SP_CW_BWD_ACC_FEW);
static const SP_FN(sp_cw_bwd_tile_t) SP_FN(sp_cw_bwdw_tiles)[SP_CONV_MAX_R][SP_CONV_MAX_NC] =
    SP_CW_TABLE(bwdw, SP_CW_BWD_ACC_FEW);

/* ---- packing ------------------------------------------------------------ */

/* ---- batch-last transposes (a position holds SP_CW_L lanes, one per image) */
#if SP_CUR_ISA != SP_ISA_SCALAR
/* In-register transpose of SP_CW_L x SP_CW_L (8x8 float, 4x4 double). */
SP_ALWAYS_INLINE void SP_FN(sp_cw_tr)(SP_CW_V* r)
{
#if SP_CUR_F64
    const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
#else
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
#endif
}

/* Mask of the first m lanes (0 < m <= SP_CW_L): an AVX-512 k-mask (fast
 * masked moves), or a vector mask for AVX2's vmaskmov (slow stores on AMD,
 * but only the scalar-free fallback). */
#if SP_CUR_ISA == SP_ISA_AVX512
typedef __mmask8 SP_FN(sp_cw_mask_t);
SP_ALWAYS_INLINE __mmask8 SP_FN(sp_cw_mask)(int64_t m) { return (__mmask8)((1u << m) - 1u); }
#if SP_CUR_F64
#define SP_CW_MLOAD(p, m) _mm256_maskz_loadu_pd((m), (p))
#define SP_CW_MSTORE(p, m, v) _mm256_mask_storeu_pd((p), (m), (v))
#else
#define SP_CW_MLOAD(p, m) _mm256_maskz_loadu_ps((m), (p))
#define SP_CW_MSTORE(p, m, v) _mm256_mask_storeu_ps((p), (m), (v))
#endif
#else
typedef __m256i SP_FN(sp_cw_mask_t);
SP_ALWAYS_INLINE __m256i SP_FN(sp_cw_mask)(int64_t m)
{
#if SP_CUR_F64
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(m), _mm256_setr_epi64x(0, 1, 2, 3));
#else
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#endif
}
#if SP_CUR_F64
#define SP_CW_MLOAD(p, m) _mm256_maskload_pd((p), (m))
#define SP_CW_MSTORE(p, m, v) _mm256_maskstore_pd((p), (m), (v))
#else
#define SP_CW_MLOAD(p, m) _mm256_maskload_ps((p), (m))
#define SP_CW_MSTORE(p, m, v) _mm256_maskstore_ps((p), (m), (v))
#endif
#endif
#endif

/* dst[w*L + l] = src[l*lds + w] for w < n, l < rows; lanes rows..L-1 of dst
 * are set to zero.  (Images -> batch-last positions.) */
static void SP_FN(sp_cw_to_lanes)(const SP_T* SP_RESTRICT src, int64_t lds, int64_t rows,
                                  int64_t n, SP_T* SP_RESTRICT dst)
{
#if SP_CUR_ISA == SP_ISA_SCALAR
    for (int64_t w = 0; w < n; w++)
        dst[w] = rows > 0 ? src[w] : (SP_T)0;
#else
    for (int64_t w0 = 0; w0 < n; w0 += SP_CW_L) {
        const int64_t m = SP_MIN((int64_t)SP_CW_L, n - w0);
        const SP_FN(sp_cw_mask_t) mask = SP_FN(sp_cw_mask)(m);
        SP_CW_V r[SP_CW_L];
        for (int l = 0; l < SP_CW_L; l++) {
            if (l >= rows)
                r[l] = SP_CW_SET1(0);
            else if (m == SP_CW_L)
                r[l] = SP_CW_LOAD(src + l * lds + w0);
            else /* masked: never reads past the row */
                r[l] = SP_CW_MLOAD(src + l * lds + w0, mask);
        }
        SP_FN(sp_cw_tr)(r);
        for (int64_t j = 0; j < m; j++)
            SP_CW_STORE(dst + (w0 + j) * SP_CW_L, r[j]);
    }
#endif
}

/* dst[l*ldd + w] = src[w*L + l] for w < n, l < rows.  (Batch-last positions
 * -> images.) */
static void SP_FN(sp_cw_from_lanes)(const SP_T* SP_RESTRICT src, int64_t n, int64_t rows,
                                    SP_T* SP_RESTRICT dst, int64_t ldd)
{
#if SP_CUR_ISA == SP_ISA_SCALAR
    if (rows > 0)
        for (int64_t w = 0; w < n; w++)
            dst[w] = src[w];
#else
    for (int64_t w0 = 0; w0 < n; w0 += SP_CW_L) {
        const int64_t m = SP_MIN((int64_t)SP_CW_L, n - w0);
        const SP_FN(sp_cw_mask_t) mask = SP_FN(sp_cw_mask)(m);
        SP_CW_V r[SP_CW_L];
        for (int j = 0; j < SP_CW_L; j++)
            r[j] = j < m ? SP_CW_LOAD(src + (w0 + j) * SP_CW_L) : SP_CW_SET1(0);
        SP_FN(sp_cw_tr)(r);
        for (int64_t l = 0; l < rows; l++) {
            if (m == SP_CW_L)
                SP_CW_STORE(dst + l * ldd + w0, r[l]);
            else /* masked: never writes past the row */
                SP_CW_MSTORE(dst + l * ldd + w0, mask, r[l]);
        }
    }
#endif
}

/* dst[0..n) = src[0..n) (short rows: no library call) */
SP_ALWAYS_INLINE void SP_FN(sp_cw_copy)(const SP_T* SP_RESTRICT src, int64_t n,
                                        SP_T* SP_RESTRICT dst)
{
    int64_t i = 0;
    for (; i + SP_CW_L <= n; i += SP_CW_L)
        SP_CW_STORE(dst + i, SP_CW_LOAD(src + i));
    for (; i < n; i++)
        dst[i] = src[i];
}

/* ev[i] = src[2i], od[i] = src[2i+1] for 2i (+1) < n: the two column phases
 * of a stride-2 row. */
static void SP_FN(sp_cw_split2)(const SP_T* SP_RESTRICT src, int64_t n, SP_T* SP_RESTRICT ev,
                                SP_T* SP_RESTRICT od)
{
    int64_t i = 0;
#if SP_CUR_ISA != SP_ISA_SCALAR
#if SP_CUR_F64
    for (; i + 8 <= n; i += 8) {
        const __m256d a = _mm256_loadu_pd(src + i), b = _mm256_loadu_pd(src + i + 4);
        const __m256d lo = _mm256_unpacklo_pd(a, b), hi = _mm256_unpackhi_pd(a, b);
        _mm256_storeu_pd(ev + i / 2, _mm256_permute4x64_pd(lo, _MM_SHUFFLE(3, 1, 2, 0)));
        _mm256_storeu_pd(od + i / 2, _mm256_permute4x64_pd(hi, _MM_SHUFFLE(3, 1, 2, 0)));
    }
#else
    for (; i + 16 <= n; i += 16) {
        const __m256 a = _mm256_loadu_ps(src + i), b = _mm256_loadu_ps(src + i + 8);
        const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
        const __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
        _mm256_storeu_ps(ev + i / 2, _mm256_castpd_ps(_mm256_permute4x64_pd(
                                         _mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0))));
        _mm256_storeu_ps(od + i / 2, _mm256_castpd_ps(_mm256_permute4x64_pd(
                                         _mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0))));
    }
#endif
#endif
    for (; i + 1 < n; i += 2) {
        ev[i / 2] = src[i];
        od[i / 2] = src[i + 1];
    }
    if (i < n)
        ev[i / 2] = src[i];
}

/* dst[2i] = ev[i], dst[2i+1] = od[i] for 2i (+1) < n (inverse of split2). */
static void SP_FN(sp_cw_merge2)(const SP_T* SP_RESTRICT ev, const SP_T* SP_RESTRICT od,
                                int64_t n, SP_T* SP_RESTRICT dst)
{
    int64_t i = 0;
#if SP_CUR_ISA != SP_ISA_SCALAR
#if SP_CUR_F64
    for (; i + 8 <= n; i += 8) {
        const __m256d e = _mm256_loadu_pd(ev + i / 2), o = _mm256_loadu_pd(od + i / 2);
        const __m256d lo = _mm256_unpacklo_pd(e, o), hi = _mm256_unpackhi_pd(e, o);
        _mm256_storeu_pd(dst + i, _mm256_permute2f128_pd(lo, hi, 0x20));
        _mm256_storeu_pd(dst + i + 4, _mm256_permute2f128_pd(lo, hi, 0x31));
    }
#else
    for (; i + 16 <= n; i += 16) {
        const __m256 e = _mm256_loadu_ps(ev + i / 2), o = _mm256_loadu_ps(od + i / 2);
        const __m256 lo = _mm256_unpacklo_ps(e, o), hi = _mm256_unpackhi_ps(e, o);
        _mm256_storeu_ps(dst + i, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_storeu_ps(dst + i + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
#endif
#endif
    for (; i + 1 < n; i += 2) {
        dst[i] = ev[i / 2];
        dst[i + 1] = od[i / 2];
    }
    if (i < n)
        dst[i] = ev[i / 2];
}

/* Zero every position of the packed input (n channels) that packing never
 * writes: padding, the ghost columns of each phase and rows past the image.
 * Packing rewrites the rest for each unit (all lanes: to_lanes zeroes the
 * lanes of missing images), so this is done once per call. */
static void SP_FN(sp_cw_zero_x_border)(const sp_conv_geom* g, SP_T* buf, int64_t n)
{
    const int64_t U = g->U, Wq = g->Wq, sw = g->sw, rl = g->rowlen_x;
    const int64_t top = g->pt, bottom = g->Hb - g->pt - g->H;
    for (int64_t c = 0; c < n; c++) {
        SP_T* plane = buf + c * g->plane_x;
        memset(plane, 0, (size_t)(top * rl) * sizeof(SP_T));
        memset(plane + (top + g->H) * rl, 0, (size_t)(bottom * rl) * sizeof(SP_T));
        for (int64_t h = top; h < top + g->H; h++) {
            for (int64_t wph = 0; wph < sw; wph++) {
                SP_T* seg = plane + h * rl + wph * Wq * U;
                /* data units of this phase: b*sw + wph in [pl, pl + W) */
                const int64_t b_lo = SP_MIN(Wq, SP_MAX(0, (g->pl - wph + sw - 1) / sw));
                int64_t b_end = (g->pl + g->W - 1 - wph) >= 0 ? (g->pl + g->W - 1 - wph) / sw + 1 : 0;
                b_end = SP_MAX(b_lo, SP_MIN(Wq, b_end));
                memset(seg, 0, (size_t)(b_lo * U) * sizeof(SP_T));
                memset(seg + b_end * U, 0, (size_t)((Wq - b_end) * U) * sizeof(SP_T));
            }
        }
    }
}

/* The same for the packed dY (n output channels). */
static void SP_FN(sp_cw_zero_dy_border)(const sp_conv_geom* g, SP_T* buf, int64_t n)
{
    const int64_t U = g->U, rl = g->rowlen_dy;
    const int64_t top = g->TP, bottom = g->Hdy - g->TP - g->OH;
    for (int64_t o = 0; o < n; o++) {
        SP_T* plane = buf + o * g->plane_dy;
        memset(plane, 0, (size_t)(top * rl) * sizeof(SP_T));
        memset(plane + (top + g->OH) * rl, 0, (size_t)(bottom * rl) * sizeof(SP_T));
        for (int64_t p = top; p < top + g->OH; p++) {
            SP_T* row = plane + p * rl;
            memset(row, 0, (size_t)(g->LP * U) * sizeof(SP_T));
            memset(row + (g->LP + g->OW) * U, 0,
                   (size_t)((g->Wdy - g->LP - g->OW) * U) * sizeof(SP_T));
        }
    }
}

/* X[unit] channels [c0, c1) -> buf ([c - c0][Hb][sw][Wq][U], zero elsewhere).
 * tmp: W*U elements.  Only the data positions are written. */
static void SP_FN(sp_cw_pack_x)(const sp_conv_geom* g, const SP_T* X, int64_t sxb, int64_t sxc,
                                int64_t sxh, int64_t u, int64_t c0, int64_t c1,
                                SP_T* SP_RESTRICT buf, SP_T* SP_RESTRICT tmp)
{
    const int64_t U = g->U, W = g->W, sw = g->sw, pl = g->pl, Wq = g->Wq;
    for (int64_t c = c0; c < c1; c++) {
        for (int64_t h = 0; h < g->H; h++) {
            SP_T* row = buf + (c - c0) * g->plane_x + (h + g->pt) * g->rowlen_x;
            if (g->batch_last) {
                const int64_t b0 = u * g->L, rows = SP_MIN(g->L, g->B - b0);
                const SP_T* src = X + b0 * sxb + c * sxc + h * sxh;
                if (sw == 1) {
                    SP_FN(sp_cw_to_lanes)(src, sxb, rows, W, row + pl * U);
                } else {
                    SP_FN(sp_cw_to_lanes)(src, sxb, rows, W, tmp);
                    for (int64_t w = 0; w < W; w++) {
                        const int64_t wp = w + pl;
                        memcpy(row + ((wp % sw) * Wq + wp / sw) * U, tmp + w * U,
                               (size_t)U * sizeof(SP_T));
                    }
                }
            } else {
                const SP_T* src = X + u * sxb + c * sxc + h * sxh;
                if (sw == 1) {
                    memcpy(row + pl, src, (size_t)W * sizeof(SP_T));
                } else if (sw == 2) { /* even columns -> phase pl%2, odd -> the other */
                    SP_FN(sp_cw_split2)(src, W, row + (pl % 2) * Wq + pl / 2,
                                        row + ((pl + 1) % 2) * Wq + (pl + 1) / 2);
                } else {
                    for (int64_t w = 0; w < W; w++) {
                        const int64_t wp = w + pl;
                        row[(wp % sw) * Wq + wp / sw] = src[w];
                    }
                }
            }
        }
    }
}

/* dY[unit] channels [o0, o1) -> buf ([o - o0][Hdy][Wdy][U], zero borders). */
static void SP_FN(sp_cw_pack_dy)(const sp_conv_geom* g, const SP_T* dY, int64_t syb, int64_t syc,
                                 int64_t syh, int64_t u, int64_t o0, int64_t o1,
                                 SP_T* SP_RESTRICT buf)
{
    const int64_t U = g->U;
    for (int64_t o = o0; o < o1; o++) {
        for (int64_t p = 0; p < g->OH; p++) {
            SP_T* dst = buf + (o - o0) * g->plane_dy + (p + g->TP) * g->rowlen_dy + g->LP * U;
            if (g->batch_last) {
                const int64_t b0 = u * g->L, rows = SP_MIN(g->L, g->B - b0);
                SP_FN(sp_cw_to_lanes)(dY + b0 * syb + o * syc + p * syh, syb, rows, g->OW, dst);
            } else {
                memcpy(dst, dY + u * syb + o * syc + p * syh, (size_t)g->OW * sizeof(SP_T));
            }
        }
    }
}

/* dX buffer (layout of the X buffer) -> dX[unit] channels [c0, c1), C-contiguous. */
static void SP_FN(sp_cw_unpack_dx)(const sp_conv_geom* g, SP_T* dX, int64_t u, int64_t c0,
                                   int64_t c1, const SP_T* SP_RESTRICT buf,
                                   SP_T* SP_RESTRICT tmp)
{
    const int64_t U = g->U, W = g->W, H = g->H, sw = g->sw, pl = g->pl, Wq = g->Wq;
    const int64_t sdc = H * W, sdb = g->C * sdc;
    for (int64_t c = c0; c < c1; c++) {
        for (int64_t h = 0; h < H; h++) {
            const SP_T* row = buf + (c - c0) * g->plane_x + (h + g->pt) * g->rowlen_x;
            if (g->batch_last) {
                const int64_t b0 = u * g->L, rows = SP_MIN(g->L, g->B - b0);
                SP_T* dst = dX + b0 * sdb + c * sdc + h * W;
                if (sw == 1) {
                    SP_FN(sp_cw_from_lanes)(row + pl * U, W, rows, dst, sdb);
                } else {
                    for (int64_t w = 0; w < W; w++) {
                        const int64_t wp = w + pl;
                        memcpy(tmp + w * U, row + ((wp % sw) * Wq + wp / sw) * U,
                               (size_t)U * sizeof(SP_T));
                    }
                    SP_FN(sp_cw_from_lanes)(tmp, W, rows, dst, sdb);
                }
            } else {
                SP_T* dst = dX + u * sdb + c * sdc + h * W;
                if (sw == 1) {
                    memcpy(dst, row + pl, (size_t)W * sizeof(SP_T));
                } else if (sw == 2) {
                    SP_FN(sp_cw_merge2)(row + (pl % 2) * Wq + pl / 2,
                                        row + ((pl + 1) % 2) * Wq + (pl + 1) / 2, W, dst);
                } else {
                    for (int64_t w = 0; w < W; w++) {
                        const int64_t wp = w + pl;
                        dst[w] = row[(wp % sw) * Wq + wp / sw];
                    }
                }
            }
        }
    }
}

/* ---- forward: units [u0, u1), output channels [o0, o1) -------------------- */
static void SP_FN(sp_conv_fwd)(const sp_conv_fwd_args* a, int64_t u0, int64_t u1, int64_t o0,
                               int64_t o1, void* scratch)
{
    const sp_conv_geom* g = a->g;
    if (o0 >= o1 || u0 >= u1)
        return;
    const int64_t U = g->U, L = g->L, cv = g->cv, OH = g->OH, OW = g->OW, OC = g->OC;
    const int64_t ICg = g->ICg;
    const int64_t c0 = (o0 / g->OCg) * ICg, c1 = ((o1 - 1) / g->OCg + 1) * ICg;
    const int64_t xsize = (c1 - c0) * g->plane_x;
    int R, NC;
    sp_conv_pick_tile(OW, cv, SP_CW_FWD_ACC, &R, &NC);
    /* band buffer: R output rows of every output channel of the task */
    const int64_t brow = (OW + cv - 1) / cv * cv * U; /* elements per band row   */
    const int64_t bplane = R * brow;
    SP_T* xbuf = (SP_T*)scratch;
    SP_T* tmp = xbuf + xsize; /* W*U: one packed row */
    SP_T* band = tmp + g->W * U;
    const SP_T* X = (const SP_T*)a->X;
    SP_T* Y = (SP_T*)a->Y;
    const SP_T* bias = (const SP_T*)a->bias;
    const SP_T* vals = (const SP_T*)a->vals;
    const int64_t* och = a->och;
    const int32_t* ich = a->ich;
    const int64_t* xoff = a->xoff;
    const int64_t xrs = g->sh * g->rowlen_x, shift = c0 * g->plane_x;
    /* input channels per block: a block's rows of one band fit in L1, so each
     * output channel re-reads them from there; but keep ~16 weights per
     * (output channel, block) so loading/storing the partial tile pays off */
    int64_t icb = ICg;
    {
        const int64_t band_rows = (R - 1) * g->sh + g->Hb - (OH - 1) * g->sh;
        const int64_t fit = SP_CONV_L1_BYTES /
                            SP_MAX((int64_t)1, band_rows * g->rowlen_x * (int64_t)sizeof(SP_T));
        const int64_t nnz = och[OC], slots = OC * ICg;
        const int64_t need = nnz > 0 ? (16 * slots + nnz - 1) / nnz : ICg;
        icb = SP_MIN(ICg, SP_MAX((int64_t)1, SP_MAX(fit, need)));
    }
    /* measured at 0.8: +14-18% (64x64 on 56x56 over-width, 256x128 on 7x7
     * batch-last); the budget (12-28 KiB) and the 4-32 weights per block
     * made no difference beyond noise */
    const int blocked = icb < ICg;
    /* streaming stores of sparse tiles straight into a large Y (see conv.h) */
    const int stream_y = !g->batch_last &&
                         g->B * OC * OH * OW * (int64_t)sizeof(SP_T) >= SP_CONV_STREAM_MIN_BYTES;
    int streamed = 0;

    SP_FN(sp_cw_zero_x_border)(g, xbuf, c1 - c0);
    for (int64_t u = u0; u < u1; u++) {
        const int64_t b0 = g->batch_last ? u * L : u;
        const int64_t rows = g->batch_last ? SP_MIN(L, g->B - b0) : 1;
        SP_FN(sp_cw_pack_x)(g, X, a->sxb, a->sxc, a->sxh, u, c0, c1, xbuf, tmp);
        /* row bands outermost: a band's input rows (all channels) stay in
         * cache while every output channel of the task reads them */
        for (int64_t p0 = 0; p0 < OH; p0 += R) {
            const int r = (int)SP_MIN((int64_t)R, OH - p0);
            if (blocked) {
                for (int64_t i0 = 0; i0 < ICg; i0 += icb) {
                    const int64_t i1 = SP_MIN(ICg, i0 + icb);
                    for (int64_t o = o0; o < o1; o++) {
                        const int32_t* ip = ich + o * (ICg + 1);
                        const int64_t k0 = och[o] + ip[i0], n = ip[i1] - ip[i0];
                        if (n == 0 && i0 > 0)
                            continue;
                        const SP_T init = bias ? bias[o] : (SP_T)0;
                        SP_T* bo = band + (o - o0) * bplane;
                        for (int64_t q0 = 0; q0 < OW; q0 += NC * cv) {
                            const int nc = (int)SP_MIN((int64_t)NC, (OW - q0 + cv - 1) / cv);
                            SP_FN(sp_cw_fwd_tiles)[r - 1][nc - 1](
                                xbuf, xrs, xoff + k0, p0 * xrs + q0 * U - shift, vals + k0, n,
                                init, i0 > 0 ? SP_CW_ACCUMULATE : SP_CW_OVERWRITE,
                                bo + q0 * U, brow);
                        }
                    }
                }
                for (int64_t o = o0; o < o1; o++) { /* band -> Y */
                    const SP_T* bo = band + (o - o0) * bplane;
                    SP_T* yrow = Y + ((b0 * OC + o) * OH + p0) * OW;
                    if (g->batch_last) {
                        SP_FN(sp_cw_from_lanes)(bo, r * OW, rows, yrow, OC * OH * OW);
                        continue;
                    }
                    for (int rr = 0; rr < r; rr++, yrow += OW, bo += brow)
                        SP_FN(sp_cw_copy)(bo, OW, yrow);
                }
                continue;
            }
            if (!g->batch_last && OW % L == 0) {
                /* rows of whole vectors: each tile call walks all of the
                 * task's output channels */
                for (int64_t q0 = 0; q0 < OW; q0 += NC * cv) {
                    const int nc = (int)SP_MIN((int64_t)NC, (OW - q0) / cv);
                    SP_T* out = Y + ((b0 * OC + o0) * OH + p0) * OW + q0;
                    streamed |= SP_FN(sp_cw_fwdrun_tiles)[r - 1][nc - 1](
                        xbuf, xrs, xoff, p0 * xrs + q0 * U - shift, vals, och + o0,
                        bias ? bias + o0 : NULL, o1 - o0, out, OH * OW, OW, stream_y);
                }
                continue;
            }
            for (int64_t o = o0; o < o1; o++) {
                const SP_T init = bias ? bias[o] : (SP_T)0;
                const int64_t k0 = och[o], n = och[o + 1] - k0;
                SP_T* yplane = Y + (b0 * OC + o) * OH * OW;
                /* column tiles right to left: in over-width, a last vector past
                 * the row's end spills into the next row, which a later tile
                 * (the q0 = 0 one, or the next band) overwrites */
                for (int64_t q0 = (OW - 1) / (NC * cv) * (NC * cv); q0 >= 0; q0 -= NC * cv) {
                    const int nc = (int)SP_MIN((int64_t)NC, (OW - q0 + cv - 1) / cv);
                    const SP_FN(sp_cw_fwd_tile_t) fn = SP_FN(sp_cw_fwd_tiles)[r - 1][nc - 1];
                    const int64_t delta = p0 * xrs + q0 * U - shift;
                    if (g->batch_last) {
                        fn(xbuf, xrs, xoff + k0, delta, vals + k0, n, init, SP_CW_OVERWRITE,
                           band + q0 * U, OW * U);
                    } else if (q0 + nc * L <= OW) { /* whole vectors: no spill */
                        const int st = stream_y && n <= SP_CONV_STREAM_MAX_NNZ;
                        streamed |= st;
                        fn(xbuf, xrs, xoff + k0, delta, vals + k0, n, init,
                           st ? SP_CW_STREAM_OUT : SP_CW_OVERWRITE, yplane + p0 * OW + q0, OW);
                    } else if ((p0 + r - 1) * OW + q0 + nc * L <= OH * OW) {
                        /* the spill stays inside this plane: later tiles and
                         * bands overwrite it (it may cover more than one row
                         * when OW < L: never let it reach the next plane).
                         * Plain stores: the overwrite must land after them. */
                        fn(xbuf, xrs, xoff + k0, delta, vals + k0, n, init, SP_CW_OVERWRITE,
                           yplane + p0 * OW + q0, OW);
                    } else { /* the spill would leave the plane: go through `band` */
                        fn(xbuf, xrs, xoff + k0, delta, vals + k0, n, init, SP_CW_OVERWRITE,
                           band, nc * L);
                        for (int rr = 0; rr < r; rr++)
                            SP_FN(sp_cw_copy)(band + rr * nc * L, OW - q0,
                                              yplane + (p0 + rr) * OW + q0);
                    }
                }
                if (g->batch_last) /* (r*OW, lanes) -> rows p0.. of Y[b0 + lane, o] */
                    SP_FN(sp_cw_from_lanes)(band, r * OW, rows, yplane + p0 * OW, OC * OH * OW);
            }
        }
    }
#if SP_CUR_ISA != SP_ISA_SCALAR
    if (streamed) /* streaming stores are weakly ordered: publish them before returning */
        _mm_sfence();
#else
    (void)streamed;
#endif
}

SP_INLINE int64_t SP_FN(sp_cw_floordiv)(int64_t a, int64_t b)
{
    const int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* ---- backward: units [u0, u1), input channels [c0, c1) -------------------- */
static void SP_FN(sp_conv_bwd)(const sp_conv_bwd_args* a, int64_t u0, int64_t u1, int64_t c0,
                               int64_t c1, void* scratch, void* dwv_)
{
    const sp_conv_geom* g = a->g;
    if (c0 >= c1)
        return;
    const int64_t U = g->U, L = g->L, cv = g->cv, sh = g->sh, sw = g->sw;
    const int64_t o0 = (c0 / g->ICg) * g->OCg, o1 = ((c1 - 1) / g->ICg + 1) * g->OCg;
    const int with_dx = a->dX != NULL;
    const int64_t xsize = (c1 - c0) * g->plane_x, dysize = (o1 - o0) * g->plane_dy;
    SP_T* xbuf = (SP_T*)scratch;
    SP_T* dxbuf = with_dx ? xbuf + xsize : NULL;
    SP_T* dybuf = xbuf + (with_dx ? 2 : 1) * xsize;
    SP_T* tmp = dybuf + dysize;
    const SP_T* vals = (const SP_T*)a->vals;
    const int64_t* lptr = a->lptr;
    const int64_t* dyoff = a->dyoff;
    SP_T* dwv = (SP_T*)dwv_;
    const int64_t ncls = sh * sw;
    const int64_t xrs = sh * g->rowlen_x, dyrs = g->rowlen_dy, shift = o0 * g->plane_dy;
    const SP_FN(sp_cw_bwd_tile_t)(*tiles)[SP_CONV_MAX_NC] =
        with_dx ? SP_FN(sp_cw_bwdx_tiles) : SP_FN(sp_cw_bwdw_tiles);

    /* register budget of a tile: the larger one when the task's lists hold
     * fewer than 16 weights on average (see SP_CW_BWD_ACC_FEW) */
    int acc = SP_CW_BWD_ACC;
    { /* this task's dW partials: the lists of its input channels */
        const int64_t kb = lptr[c0 * ncls], ke = lptr[c1 * ncls];
        memset(dwv + kb * L, 0, (size_t)((ke - kb) * L) * sizeof(SP_T));
        if (ke - kb < 16 * (c1 - c0) * ncls)
            acc = SP_CW_BWD_ACC_FEW;
    }
    if (u0 >= u1)
        return;
    /* Over-width with unit column stride and whole vectors per row: the X
     * and dX tiles cover exactly the image's columns, so the tiles read X and
     * write dX in place (only dY needs its zero border).  Otherwise both go
     * through the packed buffers. */
    const int direct = !g->batch_last && sw == 1 && g->W % SP_CW_L == 0;
    const int64_t sdc = g->H * g->W, sdb = g->C * sdc;
    if (!direct)
        SP_FN(sp_cw_zero_x_border)(g, xbuf, c1 - c0);
    SP_FN(sp_cw_zero_dy_border)(g, dybuf, o1 - o0);
    for (int64_t u = u0; u < u1; u++) {
        if (!direct)
            SP_FN(sp_cw_pack_x)(g, (const SP_T*)a->X, a->sxb, a->sxc, a->sxh, u, c0, c1, xbuf,
                                tmp);
        SP_FN(sp_cw_pack_dy)(g, (const SP_T*)a->dY, a->syb, a->syc, a->syh, u, o0, o1, dybuf);
        /* row bands outermost: a band's dY rows (all output channels) stay in
         * cache while every input channel of the task reads them */
        for (int64_t rph = 0; rph < sh; rph++) {
            /* padded rows h = a*sh + rph inside the image: pt <= h < pt + H */
            const int64_t a_lo = SP_MAX(0, -SP_FN(sp_cw_floordiv)(rph - g->pt, sh));
            const int64_t a_hi = SP_FN(sp_cw_floordiv)(g->pt + g->H - 1 - rph, sh);
            if (a_lo > a_hi)
                continue;
            int R = SP_CONV_MAX_R;
            for (int64_t wph = 0; wph < sw; wph++) {
                const int64_t b_lo = SP_MAX(0, -SP_FN(sp_cw_floordiv)(wph - g->pl, sw));
                const int64_t b_hi = SP_FN(sp_cw_floordiv)(g->pl + g->W - 1 - wph, sw);
                int Rw, NCw;
                sp_conv_pick_tile(b_hi - b_lo + 1, cv, acc, &Rw, &NCw);
                R = SP_MIN(R, Rw);
            }
            for (int64_t a0 = a_lo; a0 <= a_hi; a0 += R) {
                const int r = (int)SP_MIN((int64_t)R, a_hi - a0 + 1);
                for (int64_t wph = 0; wph < sw; wph++) {
                    /* this phase's columns of the image and its tile width
                     * (the same for every channel) */
                    const int64_t b_lo = SP_MAX(0, -SP_FN(sp_cw_floordiv)(wph - g->pl, sw));
                    const int64_t b_hi = SP_FN(sp_cw_floordiv)(g->pl + g->W - 1 - wph, sw);
                    if (b_lo > b_hi)
                        continue;
                    int Rw, NC;
                    sp_conv_pick_tile(b_hi - b_lo + 1, cv, acc, &Rw, &NC);
                    const int64_t* lp = lptr + (c0 * sh + rph) * sw + wph; /* channel c0's list */
                    for (int64_t q0 = b_lo; q0 <= b_hi; q0 += NC * cv) {
                        const int nc = (int)SP_MIN((int64_t)NC, (b_hi - q0 + cv) / cv);
                        const int64_t delta = a0 * dyrs + q0 * U - shift;
                        if (direct) {
                            /* image row a0*sh + rph - pt, column q0 - pl */
                            const int64_t h = a0 * sh + rph - g->pt, w = q0 - g->pl;
                            tiles[r - 1][nc - 1](
                                (const SP_T*)a->X + u * a->sxb + c0 * a->sxc + h * a->sxh + w,
                                a->sxc,
                                with_dx ? (SP_T*)a->dX + u * sdb + c0 * sdc + h * g->W + w : NULL,
                                sdc, sh * a->sxh, sh * g->W, dybuf, dyrs, dyoff, delta, vals, dwv,
                                lp, ncls, c1 - c0, 1);
                        } else {
                            const int64_t xo =
                                (a0 * sh + rph) * g->rowlen_x + (wph * g->Wq + q0) * U;
                            tiles[r - 1][nc - 1](xbuf + xo, g->plane_x,
                                                 with_dx ? dxbuf + xo : NULL, g->plane_x, xrs, xrs,
                                                 dybuf, dyrs, dyoff, delta, vals, dwv, lp, ncls,
                                                 c1 - c0, 0);
                        }
                    }
                }
            }
        }
        if (with_dx && !direct)
            SP_FN(sp_cw_unpack_dx)(g, (SP_T*)a->dX, u, c0, c1, dxbuf, tmp);
    }
}

/* dW[perm[k]] = sum over the nparts partial buffers (stride apart) and the
 * L lanes of dwv[p*stride + k*L + lane], for k0 <= k < k1 (fixed order). */
static void SP_FN(sp_conv_reduce)(const void* dwv_, int64_t stride, int64_t nparts, int64_t L,
                                  const int64_t* perm, void* dW_, int64_t k0, int64_t k1)
{
    const SP_T* dwv = (const SP_T*)dwv_;
    SP_T* dW = (SP_T*)dW_;
    (void)L; /* == SP_CW_L */
    for (int64_t k = k0; k < k1; k++) {
        SP_CW_V v = SP_CW_LOAD(dwv + k * SP_CW_L);
        for (int64_t p = 1; p < nparts; p++)
            v = SP_CW_ADD(v, SP_CW_LOAD(dwv + p * stride + k * SP_CW_L));
#if SP_CUR_ISA == SP_ISA_SCALAR
        dW[perm[k]] = v;
#elif SP_CUR_F64
        const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
        dW[perm[k]] = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
#else
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        dW[perm[k]] = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
#endif
    }
}

/* out[k] = data[perm[k]] for k0 <= k < k1: the values in list order. */
static void SP_FN(sp_conv_gather)(const void* data_, const int64_t* perm, void* out_, int64_t k0,
                                  int64_t k1)
{
    const SP_T* data = (const SP_T*)data_;
    SP_T* out = (SP_T*)out_;
    for (int64_t k = k0; k < k1; k++)
        out[k] = data[perm[k]];
}

#undef SP_CW_V
#undef SP_CW_L
#undef SP_CW_SET1
#undef SP_CW_LOAD
#undef SP_CW_STORE
#undef SP_CW_STREAM
#undef SP_CW_STREAM_ALIGN
#undef SP_CW_ADD
#undef SP_CW_FMA
#undef SP_CW_PIN
#undef SP_CW_MLOAD
#undef SP_CW_MSTORE
#undef SP_CW_FWD_ACC
#undef SP_CW_BWD_ACC
#undef SP_CW_BWD_ACC_FEW
#undef SP_CW_DEF
#undef SP_CW_DEF_BWD
#undef SP_CW_DEF_ROW
#undef SP_CW_PICK
#undef SP_CW_ROW
#undef SP_CW_TABLE
