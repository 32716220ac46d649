/* conv_pack_impl.h - packing of the conv kernels' buffers: batch-last
 * transposes, column phases of strided rows, zero borders, and the packed
 * input / dY / dX of one unit.  Part of conv_impl.h (one code region); see
 * conv.h for the layouts.  The user's arrays are SP_IOT (bfloat16 in a
 * bfloat16 region: widened as they are packed, rounded as they are
 * unpacked), the buffers SP_T. */

/* The first m lanes (0 < m <= SP_VL) of activations at p as SP_T, zeros
 * elsewhere, never reading past them; and the first m lanes of v stored to
 * p (rounded), never writing past them.  Masked moves of SP_T; for bfloat16,
 * AVX-512's 16-bit masked moves, else element by element through a small
 * buffer (tails only). */
SP_ALWAYS_INLINE SP_V SP_FN(sp_cw_mloadio)(const SP_IOT* p, int64_t m, SP_FN(sp_vmask_t) mask)
{
#if SP_CUR_BF16 && SP_CUR_ISA == SP_ISA_AVX512 && SP_VBITS == 256
    (void)mask;
    return SP_FN(sp_vmload_bf16)(p, m);
#elif SP_CUR_BF16
    SP_T b[SP_VL];
    (void)mask;
    for (int i = 0; i < SP_VL; i++)
        b[i] = i < m ? SP_FROMIO(p[i]) : (SP_T)0;
    return SP_VLOAD(b);
#else
    (void)m;
    return SP_FN(sp_vmload)(p, mask);
#endif
}
SP_ALWAYS_INLINE void SP_FN(sp_cw_mstoreio)(SP_IOT* p, int64_t m, SP_FN(sp_vmask_t) mask,
                                            SP_V v)
{
#if SP_CUR_BF16 && SP_CUR_ISA == SP_ISA_AVX512 && SP_VBITS == 256
    (void)mask;
    SP_FN(sp_vmstore_bf16)(p, m, v);
#elif SP_CUR_BF16
    SP_T b[SP_VL];
    (void)mask;
    SP_VSTORE(b, v);
    for (int i = 0; i < m; i++)
        p[i] = SP_TOIO(b[i]);
#else
    (void)m;
    SP_FN(sp_vmstore)(p, mask, v);
#endif
}

/* dst[w*L + l] = src[l*lds + w] for w < n, l < rows; lanes rows..L-1 of dst
 * are set to zero.  (Images -> batch-last positions.) */
static void SP_FN(sp_cw_to_lanes)(const SP_IOT* SP_RESTRICT src, int64_t lds, int64_t rows,
                                  int64_t n, SP_T* SP_RESTRICT dst)
{
#if SP_VL == 1
    for (int64_t w = 0; w < n; w++)
        dst[w] = rows > 0 ? SP_FROMIO(src[w]) : (SP_T)0;
#else
    for (int64_t w0 = 0; w0 < n; w0 += SP_VL) {
        const int64_t m = SP_MIN((int64_t)SP_VL, n - w0);
        const SP_FN(sp_vmask_t) mask = SP_FN(sp_vmask)(m);
        SP_V r[SP_VL];
        for (int l = 0; l < SP_VL; l++) {
            if (l >= rows)
                r[l] = SP_VZERO();
            else if (m == SP_VL)
                r[l] = SP_VLOADIO(src + l * lds + w0);
            else /* masked: never reads past the row */
                r[l] = SP_FN(sp_cw_mloadio)(src + l * lds + w0, m, mask);
        }
        SP_FN(sp_vtr)(r);
        for (int64_t j = 0; j < m; j++)
            SP_VSTORE(dst + (w0 + j) * SP_VL, r[j]);
    }
#endif
}

/* dst[l*ldd + w] = src[w*L + l] for w < n, l < rows.  (Batch-last positions
 * -> images.) */
static void SP_FN(sp_cw_from_lanes)(const SP_T* SP_RESTRICT src, int64_t n, int64_t rows,
                                    SP_IOT* SP_RESTRICT dst, int64_t ldd)
{
#if SP_VL == 1
    if (rows > 0)
        for (int64_t w = 0; w < n; w++)
            dst[w] = SP_TOIO(src[w]);
#else
    for (int64_t w0 = 0; w0 < n; w0 += SP_VL) {
        const int64_t m = SP_MIN((int64_t)SP_VL, n - w0);
        const SP_FN(sp_vmask_t) mask = SP_FN(sp_vmask)(m);
        SP_V r[SP_VL];
        for (int j = 0; j < SP_VL; j++)
            r[j] = j < m ? SP_VLOAD(src + (w0 + j) * SP_VL) : SP_VZERO();
        SP_FN(sp_vtr)(r);
        for (int64_t l = 0; l < rows; l++) {
            if (m == SP_VL)
                SP_VSTOREIO(dst + l * ldd + w0, r[l]);
            else /* masked: never writes past the row */
                SP_FN(sp_cw_mstoreio)(dst + l * ldd + w0, m, mask, r[l]);
        }
    }
#endif
}

/* dst[0..n) = src[0..n), rounded to the activations' type (short rows: no
 * library call) */
SP_ALWAYS_INLINE void SP_FN(sp_cw_copy)(const SP_T* SP_RESTRICT src, int64_t n,
                                        SP_IOT* SP_RESTRICT dst)
{
    int64_t i = 0;
    for (; i + SP_VL <= n; i += SP_VL)
        SP_VSTOREIO(dst + i, SP_VLOAD(src + i));
    for (; i < n; i++)
        dst[i] = SP_TOIO(src[i]);
}

/* A row of activations into a buffer (widened) and back (rounded): memcpy
 * where the types are the same. */
SP_ALWAYS_INLINE void SP_FN(sp_cw_copy_in)(const SP_IOT* SP_RESTRICT src, int64_t n,
                                           SP_T* SP_RESTRICT dst)
{
#if SP_CUR_BF16
    int64_t i = 0;
    for (; i + SP_VL <= n; i += SP_VL)
        SP_VSTORE(dst + i, SP_VLOADIO(src + i));
    for (; i < n; i++)
        dst[i] = SP_FROMIO(src[i]);
#else
    memcpy(dst, src, (size_t)n * sizeof(SP_T));
#endif
}
SP_ALWAYS_INLINE void SP_FN(sp_cw_copy_out)(const SP_T* SP_RESTRICT src, int64_t n,
                                            SP_IOT* SP_RESTRICT dst)
{
#if SP_CUR_BF16
    SP_FN(sp_cw_copy)(src, n, dst);
#else
    memcpy(dst, src, (size_t)n * sizeof(SP_T));
#endif
}

/* ev[i] = src[2i], od[i] = src[2i+1] for 2i (+1) < n: the two column phases
 * of a stride-2 row. */
static void SP_FN(sp_cw_split2)(const SP_IOT* SP_RESTRICT src, int64_t n,
                                SP_T* SP_RESTRICT ev, SP_T* SP_RESTRICT od)
{
    int64_t i = 0;
#if SP_CUR_BF16 && SP_VBITS == 256
    /* 16 bfloat16 as 8 32-bit words (little endian): the even element is the
     * low half, the odd one the high half, so widening them is a shift and a
     * mask */
    for (; i + 16 <= n; i += 16) {
        const __m256i a = _mm256_loadu_si256((const __m256i*)(src + i));
        _mm256_storeu_ps(ev + i / 2, _mm256_castsi256_ps(_mm256_slli_epi32(a, 16)));
        _mm256_storeu_ps(od + i / 2, _mm256_castsi256_ps(
                                         _mm256_and_si256(a, _mm256_set1_epi32(-65536))));
    }
#elif SP_CUR_BF16 && SP_VBITS == 128
    for (; i + 8 <= n; i += 8) {
        const uint32x4_t a = vreinterpretq_u32_u16(vld1q_u16(src + i));
        vst1q_f32(ev + i / 2, vreinterpretq_f32_u32(vshlq_n_u32(a, 16)));
        vst1q_f32(od + i / 2, vreinterpretq_f32_u32(vandq_u32(a, vdupq_n_u32(0xFFFF0000u))));
    }
#elif SP_CUR_BF16 && SP_VBITS != 0
#error "no bfloat16 split2 for this region"
#elif SP_VBITS == 256
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
#elif SP_VBITS == 128
#if SP_CUR_F64
    for (; i + 4 <= n; i += 4) {
        const float64x2_t a = vld1q_f64(src + i), b = vld1q_f64(src + i + 2);
        vst1q_f64(ev + i / 2, vuzp1q_f64(a, b));
        vst1q_f64(od + i / 2, vuzp2q_f64(a, b));
    }
#else
    for (; i + 8 <= n; i += 8) {
        const float32x4_t a = vld1q_f32(src + i), b = vld1q_f32(src + i + 4);
        vst1q_f32(ev + i / 2, vuzp1q_f32(a, b));
        vst1q_f32(od + i / 2, vuzp2q_f32(a, b));
    }
#endif
#endif
    for (; i + 1 < n; i += 2) {
        ev[i / 2] = SP_FROMIO(src[i]);
        od[i / 2] = SP_FROMIO(src[i + 1]);
    }
    if (i < n)
        ev[i / 2] = SP_FROMIO(src[i]);
}

/* dst[2i] = ev[i], dst[2i+1] = od[i] for 2i (+1) < n (inverse of split2). */
static void SP_FN(sp_cw_merge2)(const SP_T* SP_RESTRICT ev, const SP_T* SP_RESTRICT od,
                                int64_t n, SP_IOT* SP_RESTRICT dst)
{
    int64_t i = 0;
#if SP_CUR_BF16 && SP_VBITS == 256
    /* round a vector of each phase, then interleave the 16-bit results */
    for (; i + 16 <= n; i += 16) {
        const __m128i e = SP_FN(sp_vround_bf16)(_mm256_loadu_ps(ev + i / 2));
        const __m128i o = SP_FN(sp_vround_bf16)(_mm256_loadu_ps(od + i / 2));
        _mm_storeu_si128((__m128i*)(dst + i), _mm_unpacklo_epi16(e, o));
        _mm_storeu_si128((__m128i*)(dst + i + 8), _mm_unpackhi_epi16(e, o));
    }
#elif SP_CUR_BF16 && SP_VBITS == 128
    for (; i + 8 <= n; i += 8) {
        const uint16x4x2_t z = vzip_u16(SP_FN(sp_vround_bf16)(vld1q_f32(ev + i / 2)),
                                        SP_FN(sp_vround_bf16)(vld1q_f32(od + i / 2)));
        vst1_u16(dst + i, z.val[0]);
        vst1_u16(dst + i + 4, z.val[1]);
    }
#elif SP_CUR_BF16 && SP_VBITS != 0
#error "no bfloat16 merge2 for this region"
#elif SP_VBITS == 256
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
#elif SP_VBITS == 128
#if SP_CUR_F64
    for (; i + 4 <= n; i += 4) {
        const float64x2_t e = vld1q_f64(ev + i / 2), o = vld1q_f64(od + i / 2);
        vst1q_f64(dst + i, vzip1q_f64(e, o));
        vst1q_f64(dst + i + 2, vzip2q_f64(e, o));
    }
#else
    for (; i + 8 <= n; i += 8) {
        const float32x4_t e = vld1q_f32(ev + i / 2), o = vld1q_f32(od + i / 2);
        vst1q_f32(dst + i, vzip1q_f32(e, o));
        vst1q_f32(dst + i + 4, vzip2q_f32(e, o));
    }
#endif
#endif
    for (; i + 1 < n; i += 2) {
        dst[i] = SP_TOIO(ev[i / 2]);
        dst[i + 1] = SP_TOIO(od[i / 2]);
    }
    if (i < n)
        dst[i] = SP_TOIO(ev[i / 2]);
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

/* The same for the packed dY (n output channels).  Inlined into its one
 * caller whatever else the file holds (gcc would otherwise fold the float32
 * and bfloat16 copies, which are the same code, into one called function). */
SP_ALWAYS_INLINE void SP_FN(sp_cw_zero_dy_border)(const sp_conv_geom* g, SP_T* buf, int64_t n)
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
static void SP_FN(sp_cw_pack_x)(const sp_conv_geom* g, const SP_IOT* X, int64_t sxb,
                                int64_t sxc, int64_t sxh, int64_t u, int64_t c0, int64_t c1,
                                SP_T* SP_RESTRICT buf, SP_T* SP_RESTRICT tmp)
{
    const int64_t U = g->U, W = g->W, sw = g->sw, pl = g->pl, Wq = g->Wq;
    for (int64_t c = c0; c < c1; c++) {
        for (int64_t h = 0; h < g->H; h++) {
            SP_T* row = buf + (c - c0) * g->plane_x + (h + g->pt) * g->rowlen_x;
            if (g->batch_last) {
                const int64_t b0 = u * g->L, rows = SP_MIN(g->L, g->B - b0);
                const SP_IOT* src = X + b0 * sxb + c * sxc + h * sxh;
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
                const SP_IOT* src = X + u * sxb + c * sxc + h * sxh;
                if (sw == 1) {
                    SP_FN(sp_cw_copy_in)(src, W, row + pl);
                } else if (sw == 2) { /* even columns -> phase pl%2, odd -> the other */
                    SP_FN(sp_cw_split2)(src, W, row + (pl % 2) * Wq + pl / 2,
                                        row + ((pl + 1) % 2) * Wq + (pl + 1) / 2);
                } else {
                    for (int64_t w = 0; w < W; w++) {
                        const int64_t wp = w + pl;
                        row[(wp % sw) * Wq + wp / sw] = SP_FROMIO(src[w]);
                    }
                }
            }
        }
    }
}

/* dY[unit] channels [o0, o1) -> buf ([o - o0][Hdy][Wdy][U], zero borders). */
static void SP_FN(sp_cw_pack_dy)(const sp_conv_geom* g, const SP_IOT* dY, int64_t syb,
                                 int64_t syc, int64_t syh, int64_t u, int64_t o0, int64_t o1,
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
                SP_FN(sp_cw_copy_in)(dY + u * syb + o * syc + p * syh, g->OW, dst);
            }
        }
    }
}

/* dX buffer (layout of the X buffer) -> dX[unit] channels [c0, c1), C-contiguous. */
static void SP_FN(sp_cw_unpack_dx)(const sp_conv_geom* g, SP_IOT* dX, int64_t u, int64_t c0,
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
                SP_IOT* dst = dX + b0 * sdb + c * sdc + h * W;
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
                SP_IOT* dst = dX + u * sdb + c * sdc + h * W;
                if (sw == 1) {
                    SP_FN(sp_cw_copy_out)(row + pl, W, dst);
                } else if (sw == 2) {
                    SP_FN(sp_cw_merge2)(row + (pl % 2) * Wq + pl / 2,
                                        row + ((pl + 1) % 2) * Wq + (pl + 1) / 2, W, dst);
                } else {
                    for (int64_t w = 0; w < W; w++) {
                        const int64_t wp = w + pl;
                        dst[w] = SP_TOIO(row[(wp % sw) * Wq + wp / sw]);
                    }
                }
            }
        }
    }
}

