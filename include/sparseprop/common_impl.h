/* common_impl.h - helpers shared by the kernel families, instantiated once
 * per code region by common.h.  They extend simd_begin.h's vocabulary with
 * the operations that need more than one intrinsic; each has exactly one
 * implementation per (ISA, width, dtype):
 *
 *   SP_FN(sp_vtr)(r)            in-register transpose of SP_VL x SP_VL:
 *                               r[i] lane j -> r[j] lane i
 *   SP_FN(sp_vhsum)(v)          sum of v's lanes
 *   SP_FN(sp_reduce8_add)(p, d) d[g] += sum of the lanes of p[g], g < 8
 *   SP_FN(sp_reduce4_add)(p, d) the same for g < 4
 *   SP_FN(sp_vmask)(m)          a mask of the first m lanes (0 < m <= SP_VL)
 *   SP_FN(sp_vmload)(p, mask)   those lanes of p, zeros elsewhere (never
 *                               reads past them)
 *   SP_FN(sp_vmstore)(p, mask, v)  stores only those lanes
 *   SP_FN(sp_transpose)         dst[c*ldd + r] = src[r*lds + c] (scalar, tiled)
 *   SP_FN(sp_vgather)(b, idx)   lanes b[idx[0]], ..., b[idx[SP_VL - 1]] (int32
 *                               indices; a hardware gather on x86)
 *   SP_FN(sp_vmgather)(b, idx, m)  the first m lanes of that (0 < m <= SP_VL),
 *                               zeros elsewhere; reads only idx[0..m) and the
 *                               elements they name
 */

/* ---- in-register transpose ---------------------------------------------- */
#if SP_VBITS == 0
SP_ALWAYS_INLINE void SP_FN(sp_vtr)(SP_V* r) { (void)r; }

#elif SP_VBITS == 256 && SP_CUR_F64
/* 4 x 4 doubles. */
SP_ALWAYS_INLINE void SP_FN(sp_vtr)(__m256d* r)
{
    const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

#elif SP_VBITS == 256
/* 8 x 8 floats. */
SP_ALWAYS_INLINE void SP_FN(sp_vtr)(__m256* r)
{
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int k = 0; k < 4; k++) {
        r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
        r[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
}

#elif SP_VBITS == 512 && SP_CUR_F64
/* 8 x 8 doubles. */
SP_ALWAYS_INLINE void SP_FN(sp_vtr)(__m512d* r)
{
    __m512d t[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm512_unpacklo_pd(r[2 * i], r[2 * i + 1]);     /* even columns */
        t[2 * i + 1] = _mm512_unpackhi_pd(r[2 * i], r[2 * i + 1]); /* odd columns  */
    }
    for (int o = 0; o < 2; o++) {
        const __m512d A = _mm512_shuffle_f64x2(t[o], t[2 + o], 0x88);
        const __m512d B = _mm512_shuffle_f64x2(t[o], t[2 + o], 0xDD);
        const __m512d C = _mm512_shuffle_f64x2(t[4 + o], t[6 + o], 0x88);
        const __m512d D = _mm512_shuffle_f64x2(t[4 + o], t[6 + o], 0xDD);
        r[o] = _mm512_shuffle_f64x2(A, C, 0x88);
        r[4 + o] = _mm512_shuffle_f64x2(A, C, 0xDD);
        r[2 + o] = _mm512_shuffle_f64x2(B, D, 0x88);
        r[6 + o] = _mm512_shuffle_f64x2(B, D, 0xDD);
    }
}

#elif SP_VBITS == 512
/* 16 x 16 floats. */
SP_ALWAYS_INLINE void SP_FN(sp_vtr)(__m512* r)
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    /* r[4i+k], 128-bit lane l, holds column 4l+k of rows 4i..4i+3 */
    for (int k = 0; k < 4; k++) {
        const __m512 A = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);
        const __m512 B = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xDD);
        const __m512 C = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
        const __m512 D = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xDD);
        t[k] = _mm512_shuffle_f32x4(A, C, 0x88);      /* column k      */
        t[4 + k] = _mm512_shuffle_f32x4(B, D, 0x88);  /* column 4 + k  */
        t[8 + k] = _mm512_shuffle_f32x4(A, C, 0xDD);  /* column 8 + k  */
        t[12 + k] = _mm512_shuffle_f32x4(B, D, 0xDD); /* column 12 + k */
    }
    for (int i = 0; i < 16; i++)
        r[i] = t[i];
}

#elif SP_VBITS == 128 && SP_CUR_F64
/* 2 x 2 doubles (NEON). */
SP_ALWAYS_INLINE void SP_FN(sp_vtr)(float64x2_t* r)
{
    const float64x2_t a = r[0], b = r[1];
    r[0] = vtrn1q_f64(a, b);
    r[1] = vtrn2q_f64(a, b);
}

#elif SP_VBITS == 128
/* 4 x 4 floats (NEON): 2x2 blocks of pairs, then pairs as doubles. */
SP_ALWAYS_INLINE void SP_FN(sp_vtr)(float32x4_t* r)
{
    const float32x4_t t0 = vtrn1q_f32(r[0], r[1]), t1 = vtrn2q_f32(r[0], r[1]);
    const float32x4_t t2 = vtrn1q_f32(r[2], r[3]), t3 = vtrn2q_f32(r[2], r[3]);
    r[0] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    r[1] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
    r[2] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    r[3] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}
#endif

/* ---- horizontal sums ------------------------------------------------------ */

/* Sum of v's lanes. */
SP_ALWAYS_INLINE SP_T SP_FN(sp_vhsum)(SP_V v)
{
#if SP_VBITS == 0
    return v;
#elif SP_VBITS == 128 && SP_CUR_F64
    return vaddvq_f64(v);
#elif SP_VBITS == 128
    return vaddvq_f32(v);
#elif SP_CUR_F64
#if SP_VBITS == 512
    const __m256d y = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
#else
    const __m256d y = v;
#endif
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(y), _mm256_extractf128_pd(y, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
#else
#if SP_VBITS == 512
    const __m256 y = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
#else
    const __m256 y = v;
#endif
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
#endif
}

/* dst[g] += horizontal sum of p[g], for the 8 vectors p[0..7].  Used to turn
 * 8 per-nonzero partial dot products (one lane per batch element) into 8
 * gradient entries at once, sharing the shuffles. */
SP_ALWAYS_INLINE void SP_FN(sp_reduce8_add)(const SP_V* SP_RESTRICT p, SP_T* SP_RESTRICT dst)
{
#if SP_VBITS == 0
    for (int g = 0; g < 8; g++)
        dst[g] += p[g];
#elif SP_VBITS == 128 && SP_CUR_F64
    for (int h = 0; h < 4; h++) /* pairwise adds: [sum p[2h], sum p[2h+1]] */
        vst1q_f64(dst + 2 * h, vaddq_f64(vld1q_f64(dst + 2 * h), vpaddq_f64(p[2 * h], p[2 * h + 1])));
#elif SP_VBITS == 128
    for (int h = 0; h < 2; h++) {
        const float32x4_t* q = p + 4 * h;
        const float32x4_t s = vpaddq_f32(vpaddq_f32(q[0], q[1]), vpaddq_f32(q[2], q[3]));
        vst1q_f32(dst + 4 * h, vaddq_f32(vld1q_f32(dst + 4 * h), s));
    }
#elif SP_CUR_F64
    /* Fold each vector to 4 doubles, then two 4-way transposed sums. */
    __m256d y[8];
    for (int g = 0; g < 8; g++) {
#if SP_VBITS == 512
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
#if SP_VBITS == 512
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

/* dst[g] += horizontal sum of p[g], for the 4 vectors p[0..3]: the same for
 * groups of 4 (fewer live vectors than 8, for 16-register ISAs). */
SP_ALWAYS_INLINE void SP_FN(sp_reduce4_add)(const SP_V* SP_RESTRICT p, SP_T* SP_RESTRICT dst)
{
#if SP_VBITS == 0
    for (int g = 0; g < 4; g++)
        dst[g] += p[g];
#elif SP_VBITS == 128 && SP_CUR_F64
    for (int h = 0; h < 2; h++)
        vst1q_f64(dst + 2 * h, vaddq_f64(vld1q_f64(dst + 2 * h), vpaddq_f64(p[2 * h], p[2 * h + 1])));
#elif SP_VBITS == 128
    const float32x4_t s = vpaddq_f32(vpaddq_f32(p[0], p[1]), vpaddq_f32(p[2], p[3]));
    vst1q_f32(dst, vaddq_f32(vld1q_f32(dst), s));
#elif SP_CUR_F64
    __m256d y[4];
    for (int g = 0; g < 4; g++) {
#if SP_VBITS == 512
        y[g] = _mm256_add_pd(_mm512_castpd512_pd256(p[g]), _mm512_extractf64x4_pd(p[g], 1));
#else
        y[g] = p[g];
#endif
    }
    const __m256d t0 = _mm256_hadd_pd(y[0], y[1]); /* a01 b01 a23 b23 */
    const __m256d t1 = _mm256_hadd_pd(y[2], y[3]); /* c01 d01 c23 d23 */
    const __m256d s = _mm256_add_pd(_mm256_permute2f128_pd(t0, t1, 0x20),
                                    _mm256_permute2f128_pd(t0, t1, 0x31));
    _mm256_storeu_pd(dst, _mm256_add_pd(_mm256_loadu_pd(dst), s));
#else
    __m256 y[4];
    for (int g = 0; g < 4; g++) {
#if SP_VBITS == 512
        y[g] = _mm256_add_ps(_mm512_castps512_ps256(p[g]), _mm512_extractf32x8_ps(p[g], 1));
#else
        y[g] = p[g];
#endif
    }
    const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(y[0], y[1]), _mm256_hadd_ps(y[2], y[3]));
    /* u: sums of p0..p3 over the low 128-bit half | over the high half */
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
    _mm_storeu_ps(dst, _mm_add_ps(_mm_loadu_ps(dst), s));
#endif
}

/* ---- masked tails: the first m lanes (0 < m <= SP_VL) --------------------- */
#if SP_CUR_ISA == SP_ISA_AVX512
/* k-masks: fast masked moves */
#if SP_VBITS == 512 && !SP_CUR_F64
typedef __mmask16 SP_FN(sp_vmask_t);
#else
typedef __mmask8 SP_FN(sp_vmask_t);
#endif
SP_ALWAYS_INLINE SP_FN(sp_vmask_t) SP_FN(sp_vmask)(int64_t m)
{
    return (SP_FN(sp_vmask_t))((1u << m) - 1u);
}
#if SP_VBITS == 512 && SP_CUR_F64
#define SP_VMLOAD_(p, m) _mm512_maskz_loadu_pd((m), (p))
#define SP_VMSTORE_(p, m, v) _mm512_mask_storeu_pd((p), (m), (v))
#elif SP_VBITS == 512
#define SP_VMLOAD_(p, m) _mm512_maskz_loadu_ps((m), (p))
#define SP_VMSTORE_(p, m, v) _mm512_mask_storeu_ps((p), (m), (v))
#elif SP_CUR_F64
#define SP_VMLOAD_(p, m) _mm256_maskz_loadu_pd((m), (p))
#define SP_VMSTORE_(p, m, v) _mm256_mask_storeu_pd((p), (m), (v))
#else
#define SP_VMLOAD_(p, m) _mm256_maskz_loadu_ps((m), (p))
#define SP_VMSTORE_(p, m, v) _mm256_mask_storeu_ps((p), (m), (v))
#endif
#elif SP_CUR_ISA == SP_ISA_AVX2
/* vector masks for vmaskmov (slow stores on AMD, but tails only) */
typedef __m256i SP_FN(sp_vmask_t);
SP_ALWAYS_INLINE __m256i SP_FN(sp_vmask)(int64_t m)
{
#if SP_CUR_F64
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(m), _mm256_setr_epi64x(0, 1, 2, 3));
#else
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#endif
}
#if SP_CUR_F64
#define SP_VMLOAD_(p, m) _mm256_maskload_pd((p), (m))
#define SP_VMSTORE_(p, m, v) _mm256_maskstore_pd((p), (m), (v))
#else
#define SP_VMLOAD_(p, m) _mm256_maskload_ps((p), (m))
#define SP_VMSTORE_(p, m, v) _mm256_maskstore_ps((p), (m), (v))
#endif
#else
/* no masked moves (scalar, NEON): the lane count, through a small buffer */
typedef int64_t SP_FN(sp_vmask_t);
SP_ALWAYS_INLINE int64_t SP_FN(sp_vmask)(int64_t m) { return m; }
SP_ALWAYS_INLINE SP_V SP_FN(sp_vmload_buf)(const SP_T* p, int64_t m)
{
    SP_T b[SP_VL];
    for (int i = 0; i < SP_VL; i++)
        b[i] = i < m ? p[i] : (SP_T)0;
    return SP_VLOAD(b);
}
SP_ALWAYS_INLINE void SP_FN(sp_vmstore_buf)(SP_T* p, int64_t m, SP_V v)
{
    SP_T b[SP_VL];
    SP_VSTORE(b, v);
    for (int i = 0; i < m; i++)
        p[i] = b[i];
}
#define SP_VMLOAD_(p, m) SP_FN(sp_vmload_buf)((p), (m))
#define SP_VMSTORE_(p, m, v) SP_FN(sp_vmstore_buf)((p), (m), (v))
#endif
SP_ALWAYS_INLINE SP_V SP_FN(sp_vmload)(const SP_T* p, SP_FN(sp_vmask_t) mask)
{
    return SP_VMLOAD_(p, mask);
}
SP_ALWAYS_INLINE void SP_FN(sp_vmstore)(SP_T* p, SP_FN(sp_vmask_t) mask, SP_V v)
{
    SP_VMSTORE_(p, mask, v);
}
#undef SP_VMLOAD_
#undef SP_VMSTORE_

/* ---- gathers: b[idx[i]] for int32 indices ---------------------------------- */
#if SP_CUR_ISA == SP_ISA_AVX512 && SP_VBITS == 512 && !SP_CUR_F64
SP_ALWAYS_INLINE SP_V SP_FN(sp_vgather)(const SP_T* b, const int32_t* idx)
{
    return _mm512_i32gather_ps(_mm512_loadu_si512((const void*)idx), b, 4);
}
SP_ALWAYS_INLINE SP_V SP_FN(sp_vmgather)(const SP_T* b, const int32_t* idx, int64_t m)
{
    const __mmask16 k = (__mmask16)((1u << m) - 1u);
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, _mm512_maskz_loadu_epi32(k, idx), b, 4);
}
#elif SP_CUR_ISA == SP_ISA_AVX512 && SP_VBITS == 512
SP_ALWAYS_INLINE SP_V SP_FN(sp_vgather)(const SP_T* b, const int32_t* idx)
{
    return _mm512_i32gather_pd(_mm256_loadu_si256((const __m256i*)idx), b, 8);
}
SP_ALWAYS_INLINE SP_V SP_FN(sp_vmgather)(const SP_T* b, const int32_t* idx, int64_t m)
{
    const __mmask8 k = (__mmask8)((1u << m) - 1u);
    return _mm512_mask_i32gather_pd(_mm512_setzero_pd(), k, _mm256_maskz_loadu_epi32(k, idx), b, 8);
}
#elif (SP_CUR_ISA == SP_ISA_AVX512 || SP_CUR_ISA == SP_ISA_AVX2) && !SP_CUR_F64
/* 256-bit vectors (avx2, avx512y): the AVX2 gathers with vector masks */
SP_ALWAYS_INLINE SP_V SP_FN(sp_vgather)(const SP_T* b, const int32_t* idx)
{
    return _mm256_i32gather_ps(b, _mm256_loadu_si256((const __m256i*)idx), 4);
}
SP_ALWAYS_INLINE SP_V SP_FN(sp_vmgather)(const SP_T* b, const int32_t* idx, int64_t m)
{
    const __m256i k = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)m),
                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), b, _mm256_maskload_epi32(idx, k),
                                    _mm256_castsi256_ps(k), 4);
}
#elif SP_CUR_ISA == SP_ISA_AVX512 || SP_CUR_ISA == SP_ISA_AVX2
SP_ALWAYS_INLINE SP_V SP_FN(sp_vgather)(const SP_T* b, const int32_t* idx)
{
    return _mm256_i32gather_pd(b, _mm_loadu_si128((const __m128i*)idx), 8);
}
SP_ALWAYS_INLINE SP_V SP_FN(sp_vmgather)(const SP_T* b, const int32_t* idx, int64_t m)
{
    const __m128i k = _mm_cmpgt_epi32(_mm_set1_epi32((int)m), _mm_setr_epi32(0, 1, 2, 3));
    return _mm256_mask_i32gather_pd(_mm256_setzero_pd(), b, _mm_maskload_epi32(idx, k),
                                    _mm256_castsi256_pd(_mm256_cvtepi32_epi64(k)), 8);
}
#else
/* scalar, NEON: element by element through a small buffer */
SP_ALWAYS_INLINE SP_V SP_FN(sp_vmgather)(const SP_T* b, const int32_t* idx, int64_t m)
{
    SP_T t[SP_VL];
    for (int i = 0; i < SP_VL; i++)
        t[i] = i < m ? b[idx[i]] : (SP_T)0;
    return SP_VLOAD(t);
}
SP_ALWAYS_INLINE SP_V SP_FN(sp_vgather)(const SP_T* b, const int32_t* idx)
{
#if SP_VL == 1
    return b[idx[0]];
#else
    return SP_FN(sp_vmgather)(b, idx, SP_VL);
#endif
}
#endif

/* ---- out-of-register transpose (the scalar paths') ------------------------ */
#if !SP_CUR_BF16 /* the bfloat16 regions convert as they transpose (linear_impl.h) */

/* dst[c*ldd + r] = src[r*lds + c] for r < rows, c < cols.  Strides are in
 * elements and may be anything (the row stride of a NumPy view, say); 8x8
 * tiles keep both sides cache friendly. */
static void SP_FN(sp_transpose)(const SP_T* SP_RESTRICT src, int64_t lds,
                                SP_T* SP_RESTRICT dst, int64_t ldd,
                                int64_t rows, int64_t cols)
{
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {
        const int64_t r1 = SP_MIN(rows, r0 + 8);
        for (int64_t c0 = 0; c0 < cols; c0 += 8) {
            const int64_t c1 = SP_MIN(cols, c0 + 8);
            for (int64_t c = c0; c < c1; c++)
                for (int64_t r = r0; r < r1; r++)
                    dst[c * ldd + r] = src[r * lds + c];
        }
    }
}
#endif

/* ---- bfloat16 activations: widen on load, round on store ------------------
 * SP_VLOADIO / SP_VSTOREIO of a bfloat16 region (simd_begin.h).  Widening is
 * a 16-bit shift into the top of each float32 lane.  Narrowing rounds to
 * nearest, ties to even, and turns a NaN into a quiet NaN (never into an
 * infinity), bit for bit what sp_bf16_round does - except in the AVX512_BF16
 * region, whose vcvtneps2bf16 also flushes subnormal inputs and results to
 * zero (values below 1.2e-38, far under the precision bfloat16 carries). */
#if SP_CUR_BF16 && SP_VBITS == 256 /* avx2, avx512y, avx512ybf16 */
SP_ALWAYS_INLINE __m256 SP_FN(sp_vload_bf16)(const uint16_t* p)
{
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
/* v rounded: 8 bfloat16 in a 128-bit register (sp_vstore_bf16 without the
 * store, for stores that interleave or mask them) */
SP_ALWAYS_INLINE __m128i SP_FN(sp_vround_bf16)(__m256 v)
{
#if SP_CUR_BF16X
    return (__m128i)_mm256_cvtneps_pbh(v);
#else
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)));
#if SP_CUR_ISA == SP_ISA_AVX512
    const __mmask8 nan = _mm256_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm256_mask_mov_epi32(r, nan, _mm256_or_si256(u, _mm256_set1_epi32(0x00400000)));
    return _mm256_cvtepi32_epi16(_mm256_srli_epi32(r, 16));
#else
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    const __m256i q = _mm256_or_si256(u, _mm256_set1_epi32(0x00400000));
    r = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(q), nan));
    r = _mm256_srli_epi32(r, 16);
    /* 8 x u32 < 2^16 -> 8 x u16: packus works per 128-bit lane, then gather
     * the two lanes' low halves */
    const __m256i pk = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    return _mm256_castsi256_si128(pk);
#endif
#endif
}
SP_ALWAYS_INLINE void SP_FN(sp_vstore_bf16)(uint16_t* p, __m256 v)
{
    _mm_storeu_si128((__m128i*)p, SP_FN(sp_vround_bf16)(v));
}
#if SP_CUR_ISA == SP_ISA_AVX512 /* avx512y, avx512ybf16: 16-bit masked moves */
/* The first m lanes (0 < m <= 8) of p widened, zeros elsewhere (reads only
 * those); and the first m lanes of v, rounded, stored to p (writes only
 * those). */
SP_ALWAYS_INLINE __m256 SP_FN(sp_vmload_bf16)(const uint16_t* p, int64_t m)
{
    const __m128i h = _mm_maskz_loadu_epi16((__mmask8)((1u << m) - 1u), p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
SP_ALWAYS_INLINE void SP_FN(sp_vmstore_bf16)(uint16_t* p, int64_t m, __m256 v)
{
    _mm_mask_storeu_epi16(p, (__mmask8)((1u << m) - 1u), SP_FN(sp_vround_bf16)(v));
}
#endif
#elif SP_CUR_BF16 && SP_VBITS == 512
SP_ALWAYS_INLINE __m512 SP_FN(sp_vload_bf16)(const uint16_t* p)
{
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
SP_ALWAYS_INLINE void SP_FN(sp_vstore_bf16)(uint16_t* p, __m512 v)
{
#if SP_CUR_BF16X
    _mm256_storeu_si256((__m256i*)p, (__m256i)_mm512_cvtneps_pbh(v));
#else
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)));
    _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
#endif
}
#elif SP_CUR_BF16 && SP_VBITS == 128 /* NEON */
SP_ALWAYS_INLINE float32x4_t SP_FN(sp_vload_bf16)(const uint16_t* p)
{
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
}
SP_ALWAYS_INLINE uint16x4_t SP_FN(sp_vround_bf16)(float32x4_t v)
{
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t odd = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t r = vaddq_u32(u, vaddq_u32(odd, vdupq_n_u32(0x7fff)));
    const uint32x4_t num = vceqq_f32(v, v); /* all ones where v is not NaN */
    const uint32x4_t q = vorrq_u32(u, vdupq_n_u32(0x00400000));
    return vshrn_n_u32(vbslq_u32(num, r, q), 16);
}
SP_ALWAYS_INLINE void SP_FN(sp_vstore_bf16)(uint16_t* p, float32x4_t v)
{
    vst1_u16(p, SP_FN(sp_vround_bf16)(v));
}
#elif SP_CUR_BF16 && SP_VBITS != 0
#error "no bfloat16 loads and stores for this region"
#endif
