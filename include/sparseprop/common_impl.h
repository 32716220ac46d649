/* common_impl.h - helpers shared by the kernel families, instantiated once
 * per (ISA, dtype) region by common.h.  See simd_begin.h for the vocabulary.
 *
 *   SP_FN(sp_transpose)  dst[c*ldd + r] = src[r*lds + c], r < rows, c < cols
 *   SP_FN(sp_reduce8_add) dst[g] += sum of the lanes of p[g], g < 8
 */

#if SP_TB > 1
/* In-register transpose of one SP_TB x SP_TB block (AVX2 shuffles; the
 * AVX-512 regions reuse them, AVX-512 includes AVX2). */
SP_ALWAYS_INLINE void SP_FN(sp_tr_block)(const SP_T* SP_RESTRICT s, int64_t lds,
                                         SP_T* SP_RESTRICT d, int64_t ldd)
{
#if SP_CUR_F64
    __m256d r0 = _mm256_loadu_pd(s), r1 = _mm256_loadu_pd(s + lds);
    __m256d r2 = _mm256_loadu_pd(s + 2 * lds), r3 = _mm256_loadu_pd(s + 3 * lds);
    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(d, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(d + ldd, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(d + 2 * ldd, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(d + 3 * ldd, _mm256_permute2f128_pd(t1, t3, 0x31));
#else
    __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + lds);
    __m256 r2 = _mm256_loadu_ps(s + 2 * lds), r3 = _mm256_loadu_ps(s + 3 * lds);
    __m256 r4 = _mm256_loadu_ps(s + 4 * lds), r5 = _mm256_loadu_ps(s + 5 * lds);
    __m256 r6 = _mm256_loadu_ps(s + 6 * lds), r7 = _mm256_loadu_ps(s + 7 * lds);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
#endif
}
#endif /* SP_TB > 1 */

/* dst[c*ldd + r] = src[r*lds + c] for r < rows, c < cols.  Strides are in
 * elements and may be anything (the row stride of a NumPy view, say). */
static void SP_FN(sp_transpose)(const SP_T* SP_RESTRICT src, int64_t lds,
                                SP_T* SP_RESTRICT dst, int64_t ldd,
                                int64_t rows, int64_t cols)
{
#if SP_TB > 1
    int64_t r0 = 0;
    for (; r0 + SP_TB <= rows; r0 += SP_TB) {
        int64_t c0 = 0;
        for (; c0 + SP_TB <= cols; c0 += SP_TB)
            SP_FN(sp_tr_block)(src + r0 * lds + c0, lds, dst + c0 * ldd + r0, ldd);
        for (; c0 < cols; c0++)
            for (int64_t r = r0; r < r0 + SP_TB; r++)
                dst[c0 * ldd + r] = src[r * lds + c0];
    }
    for (; r0 < rows; r0++)
        for (int64_t c = 0; c < cols; c++)
            dst[c * ldd + r0] = src[r0 * lds + c];
#else
    /* 8x8 tiles keep both sides cache friendly without SIMD. */
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {
        const int64_t r1 = SP_MIN(rows, r0 + 8);
        for (int64_t c0 = 0; c0 < cols; c0 += 8) {
            const int64_t c1 = SP_MIN(cols, c0 + 8);
            for (int64_t c = c0; c < c1; c++)
                for (int64_t r = r0; r < r1; r++)
                    dst[c * ldd + r] = src[r * lds + c];
        }
    }
#endif
}

/* dst[g] += horizontal sum of p[g], for the 8 vectors p[0..7].  Used to turn
 * 8 per-nonzero partial dot products (one lane per batch element) into 8
 * gradient entries at once, sharing the shuffles. */
SP_ALWAYS_INLINE void SP_FN(sp_reduce8_add)(const SP_V* SP_RESTRICT p, SP_T* SP_RESTRICT dst)
{
#if SP_CUR_ISA == SP_ISA_SCALAR
    for (int g = 0; g < 8; g++)
        dst[g] += p[g];
#elif SP_CUR_F64
    /* Fold each vector to 4 doubles, then two 4-way transposed sums. */
    __m256d y[8];
    for (int g = 0; g < 8; g++) {
#if SP_CUR_ISA == SP_ISA_AVX512
        y[g] = _mm256_add_pd(_mm512_castpd512_pd256(p[g]), _mm512_extractf64x4_pd(p[g], 1));
#else
        y[g] = p[g];
#endif
    }
    for (int h = 0; h < 2; h++) {
        const __m256d* q = y + 4 * h;
        __m256d t0 = _mm256_hadd_pd(q[0], q[1]); /* a01 b01 a23 b23 */
        __m256d t1 = _mm256_hadd_pd(q[2], q[3]); /* c01 d01 c23 d23 */
        __m256d s = _mm256_add_pd(_mm256_permute2f128_pd(t0, t1, 0x20),
                                  _mm256_permute2f128_pd(t0, t1, 0x31));
        _mm256_storeu_pd(dst + 4 * h, _mm256_add_pd(_mm256_loadu_pd(dst + 4 * h), s));
    }
#else
    __m256 y[8];
    for (int g = 0; g < 8; g++) {
#if SP_CUR_ISA == SP_ISA_AVX512
        y[g] = _mm256_add_ps(_mm512_castps512_ps256(p[g]), _mm512_extractf32x8_ps(p[g], 1));
#else
        y[g] = p[g];
#endif
    }
    __m256 t0 = _mm256_hadd_ps(y[0], y[1]);
    __m256 t1 = _mm256_hadd_ps(y[2], y[3]);
    __m256 t2 = _mm256_hadd_ps(y[4], y[5]);
    __m256 t3 = _mm256_hadd_ps(y[6], y[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1); /* p0..p3 low-half sums | high-half sums */
    __m256 u1 = _mm256_hadd_ps(t2, t3);
    __m256 s = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                             _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), s));
#endif
}
