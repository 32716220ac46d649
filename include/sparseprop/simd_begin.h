/* simd_begin.h - open a code region for one (ISA, dtype, width) triple.
 *
 * Deliberately no include guard: instantiate.h includes it once per region,
 * like this
 *
 *     #define SP_CUR_ISA SP_ISA_AVX2     (SP_ISA_SCALAR / _AVX2 / _AVX512 / _NEON)
 *     #define SP_CUR_F64 0               (0: float32, 1: float64)
 *     #define SP_CUR_V256 0              (optional; 1: 256-bit vectors in the
 *                                          AVX-512 region, named avx512y)
 *     #include "sparseprop/simd_begin.h"
 *     #include "sparseprop/<family>_impl.h"
 *     #include "sparseprop/simd_end.h"
 *
 * Inside an x86 region every function is compiled for the ISA (GCC/clang
 * target pragma), so the build needs no -mavx2/-mavx512f and never
 * -march=native: the dispatcher only calls a region's functions on a CPU that
 * has the ISA.  NEON is the AArch64 baseline and needs no pragma.
 *
 * This is the one vector vocabulary every kernel is written in, so one kernel
 * body serves every region and a new ISA is one new block below (plus its
 * helpers in common_impl.h):
 *   SP_T   scalar type      SP_V   vector type      SP_VL  lanes
 *   SP_VBITS  vector width in bits (0: scalar)
 *   SP_VZERO() SP_VSET1(x) SP_VLOAD(p) SP_VSTORE(p, v)       (unaligned)
 *   SP_VADD(a, b) SP_VMUL(a, b) SP_VFMA(a, b, c) = a*b + c
 *   SP_VSTREAM(p, v)   non-temporal store of a vector at an address aligned
 *                      to SP_VSTREAM_ALIGN (a plain store where the ISA has
 *                      none); SP_VSTREAM_FENCE() orders them before returning
 *   SP_VPIN(v)         keep v in a register: an empty asm that "changes" it,
 *                      so the compiler neither reloads nor spills it
 *   SP_FN(name)        -> name_f32_avx2 etc.
 *
 * bfloat16 regions (SP_CUR_BF16 1, with SP_CUR_F64 0; only the families that
 * ask for them, see instantiate.h) compute in float32 - SP_T is float and
 * every vector macro above is the float32 one - but the activations they
 * read and write are bfloat16, kept as uint16_t bits.  Their suffix is bf16,
 * and SP_CUR_BF16X 1 (AVX-512 only) adds the AVX512_BF16 instructions to the
 * target, suffix avx512bf16 (avx512ybf16 with SP_CUR_V256: the conv family).  Every region defines the I/O vocabulary:
 *   SP_IOT              element type of activations (SP_T, or uint16_t)
 *   SP_FROMIO(x) SP_TOIO(x)       one element to / from SP_T
 *   SP_VLOADIO(p)       SP_VL activations widened to an SP_V
 *   SP_VSTOREIO(p, v)   an SP_V narrowed (round to nearest even) and stored
 * (plain loads and stores outside bfloat16 regions).
 * Helpers built on these (transpose, reductions, masked tails) are in
 * common_impl.h.
 */

#if !defined(SP_CUR_ISA) || !defined(SP_CUR_F64)
#error "define SP_CUR_ISA and SP_CUR_F64 before including simd_begin.h"
#endif
#ifndef SP_CUR_V256
#define SP_CUR_V256 0
#endif
#ifndef SP_CUR_BF16
#define SP_CUR_BF16 0
#endif
#ifndef SP_CUR_BF16X
#define SP_CUR_BF16X 0
#endif
#if SP_CUR_BF16 && SP_CUR_F64
#error "a bfloat16 region computes in float32"
#endif
#if SP_CUR_BF16X && (!SP_CUR_BF16 || SP_CUR_ISA != SP_ISA_AVX512 || !SP_X86_BF16X)
#error "SP_CUR_BF16X: only in a bfloat16 AVX-512 region, with a compiler that knows the target"
#endif

#define SP_CAT3_(a, b, c) a##_##b##_##c
#define SP_CAT3(a, b, c) SP_CAT3_(a, b, c)

#if SP_CUR_F64
#define SP_T double
#define SP_DT f64
#elif SP_CUR_BF16
#define SP_T float
#define SP_DT bf16
#else
#define SP_T float
#define SP_DT f32
#endif

/* ---------------------------------------------------------------- scalar */
#if SP_CUR_ISA == SP_ISA_SCALAR
#define SP_ISA_NAME scalar
#define SP_VBITS 0
#define SP_V SP_T
#define SP_VL 1
#define SP_VZERO() ((SP_T)0)
#define SP_VSET1(x) ((SP_T)(x))
#define SP_VLOAD(p) (*(p))
#define SP_VSTORE(p, v) (*(p) = (v))
#define SP_VADD(a, b) ((a) + (b))
#define SP_VMUL(a, b) ((a) * (b))
#define SP_VFMA(a, b, c) ((a) * (b) + (c))
#define SP_VSTREAM(p, v) (*(p) = (v))
#define SP_VSTREAM_ALIGN 1
#define SP_VSTREAM_FENCE() ((void)0)
#define SP_VPIN(v) ((void)0)

/* ------------------------------------------- x86: AVX2 + FMA and AVX-512 */
#elif SP_CUR_ISA == SP_ISA_AVX2 || SP_CUR_ISA == SP_ISA_AVX512
#if !SP_X86
#error "x86 region on a non-x86 build"
#endif
#if SP_CUR_ISA == SP_ISA_AVX2
#define SP_X86_TARGET "avx2,fma"
#define SP_ISA_NAME avx2
#define SP_VBITS 256
#elif SP_CUR_V256 && SP_CUR_BF16X
#define SP_X86_TARGET "avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma"
#define SP_ISA_NAME avx512ybf16
#define SP_VBITS 256
#elif SP_CUR_V256
#define SP_X86_TARGET "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"
#define SP_ISA_NAME avx512y
#define SP_VBITS 256
#elif SP_CUR_BF16X
#define SP_X86_TARGET "avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma"
#define SP_ISA_NAME avx512bf16
#define SP_VBITS 512
#else
#define SP_X86_TARGET "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"
#define SP_ISA_NAME avx512
#define SP_VBITS 512
#endif
#if defined(__clang__)
SP_PRAGMA(clang attribute push(__attribute__((target(SP_X86_TARGET))), apply_to = function))
#else
#pragma GCC push_options
SP_PRAGMA(GCC target(SP_X86_TARGET))
#endif
#define SP_VSTREAM_FENCE() _mm_sfence()
/* "x": an SSE/AVX register (xmm/ymm 0-15) */
#define SP_VPIN(v) __asm__("" : "+x"(v))
#if SP_VBITS == 256 && SP_CUR_F64
#define SP_V __m256d
#define SP_VL 4
#define SP_VZERO() _mm256_setzero_pd()
#define SP_VSET1(x) _mm256_set1_pd(x)
#define SP_VLOAD(p) _mm256_loadu_pd(p)
#define SP_VSTORE(p, v) _mm256_storeu_pd((p), (v))
#define SP_VADD(a, b) _mm256_add_pd((a), (b))
#define SP_VMUL(a, b) _mm256_mul_pd((a), (b))
#define SP_VFMA(a, b, c) _mm256_fmadd_pd((a), (b), (c))
#define SP_VSTREAM(p, v) _mm256_stream_pd((p), (v))
#define SP_VSTREAM_ALIGN 32
#elif SP_VBITS == 256
#define SP_V __m256
#define SP_VL 8
#define SP_VZERO() _mm256_setzero_ps()
#define SP_VSET1(x) _mm256_set1_ps(x)
#define SP_VLOAD(p) _mm256_loadu_ps(p)
#define SP_VSTORE(p, v) _mm256_storeu_ps((p), (v))
#define SP_VADD(a, b) _mm256_add_ps((a), (b))
#define SP_VMUL(a, b) _mm256_mul_ps((a), (b))
#define SP_VFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define SP_VSTREAM(p, v) _mm256_stream_ps((p), (v))
#define SP_VSTREAM_ALIGN 32
#elif SP_CUR_F64
#define SP_V __m512d
#define SP_VL 8
#define SP_VZERO() _mm512_setzero_pd()
#define SP_VSET1(x) _mm512_set1_pd(x)
#define SP_VLOAD(p) _mm512_loadu_pd(p)
#define SP_VSTORE(p, v) _mm512_storeu_pd((p), (v))
#define SP_VADD(a, b) _mm512_add_pd((a), (b))
#define SP_VMUL(a, b) _mm512_mul_pd((a), (b))
#define SP_VFMA(a, b, c) _mm512_fmadd_pd((a), (b), (c))
#define SP_VSTREAM(p, v) _mm512_stream_pd((p), (v))
#define SP_VSTREAM_ALIGN 64
#else
#define SP_V __m512
#define SP_VL 16
#define SP_VZERO() _mm512_setzero_ps()
#define SP_VSET1(x) _mm512_set1_ps(x)
#define SP_VLOAD(p) _mm512_loadu_ps(p)
#define SP_VSTORE(p, v) _mm512_storeu_ps((p), (v))
#define SP_VADD(a, b) _mm512_add_ps((a), (b))
#define SP_VMUL(a, b) _mm512_mul_ps((a), (b))
#define SP_VFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define SP_VSTREAM(p, v) _mm512_stream_ps((p), (v))
#define SP_VSTREAM_ALIGN 64
#endif

/* ------------------------------------------------------ AArch64 AdvSIMD */
#elif SP_CUR_ISA == SP_ISA_NEON
#if !SP_ARM64
#error "NEON region on a non-AArch64 build"
#endif
#define SP_ISA_NAME neon
#define SP_VBITS 128
/* AdvSIMD has no vector non-temporal store (STNP is a pair of scalars or
 * q registers without a compiler intrinsic): plain stores. */
#define SP_VSTREAM_ALIGN 1
#define SP_VSTREAM_FENCE() ((void)0)
/* "w": any of the 32 SIMD/FP registers */
#define SP_VPIN(v) __asm__("" : "+w"(v))
#if SP_CUR_F64
#define SP_V float64x2_t
#define SP_VL 2
#define SP_VZERO() vdupq_n_f64(0.0)
#define SP_VSET1(x) vdupq_n_f64(x)
#define SP_VLOAD(p) vld1q_f64(p)
#define SP_VSTORE(p, v) vst1q_f64((p), (v))
#define SP_VADD(a, b) vaddq_f64((a), (b))
#define SP_VMUL(a, b) vmulq_f64((a), (b))
#define SP_VFMA(a, b, c) vfmaq_f64((c), (a), (b))
#else
#define SP_V float32x4_t
#define SP_VL 4
#define SP_VZERO() vdupq_n_f32(0.0f)
#define SP_VSET1(x) vdupq_n_f32(x)
#define SP_VLOAD(p) vld1q_f32(p)
#define SP_VSTORE(p, v) vst1q_f32((p), (v))
#define SP_VADD(a, b) vaddq_f32((a), (b))
#define SP_VMUL(a, b) vmulq_f32((a), (b))
#define SP_VFMA(a, b, c) vfmaq_f32((c), (a), (b))
#endif
#define SP_VSTREAM(p, v) SP_VSTORE((p), (v))

#else
#error "unknown SP_CUR_ISA"
#endif

#define SP_FN(name) SP_CAT3(name, SP_DT, SP_ISA_NAME)

/* ------------------------------------------------ activations' I/O type */
#if SP_CUR_BF16
#define SP_IOT uint16_t
#define SP_FROMIO(x) sp_bf16_widen(x)
#define SP_TOIO(x) sp_bf16_round(x)
#if SP_VBITS == 0
#define SP_VLOADIO(p) sp_bf16_widen(*(p))
#define SP_VSTOREIO(p, v) (*(p) = sp_bf16_round(v))
#else /* common_impl.h */
#define SP_VLOADIO(p) SP_FN(sp_vload_bf16)(p)
#define SP_VSTOREIO(p, v) SP_FN(sp_vstore_bf16)((p), (v))
#endif
#else
#define SP_IOT SP_T
#define SP_FROMIO(x) (x)
#define SP_TOIO(x) (x)
#define SP_VLOADIO(p) SP_VLOAD(p)
#define SP_VSTOREIO(p, v) SP_VSTORE((p), (v))
#endif
