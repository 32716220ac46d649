/* simd_begin.h - open a code region for one (ISA, dtype) pair.
 *
 * Deliberately no include guard: a kernel family header includes it once per
 * instantiation, like this
 *
 *     #define SP_CUR_ISA SP_ISA_AVX2     (SP_ISA_SCALAR / _AVX2 / _AVX512)
 *     #define SP_CUR_F64 0               (0: float32, 1: float64)
 *     #include "sparseprop/simd_begin.h"
 *     #include "sparseprop/<family>_impl.h"
 *     #include "sparseprop/simd_end.h"
 *
 * Inside the region every function is compiled for the ISA (GCC target
 * pragma), so the build needs no -mavx2/-mavx512f and never -march=native:
 * the dispatcher only calls a region's functions on a CPU that has the ISA.
 *
 * The region defines a small vector vocabulary the _impl headers are written
 * in, so one kernel body serves all six instantiations:
 *   SP_T   scalar type          SP_V   vector type       SP_VL  lanes
 *   SP_VZERO() SP_VSET1(x) SP_VLOAD(p) SP_VSTORE(p, v)    (unaligned)
 *   SP_VADD(a, b) SP_VMUL(a, b) SP_VFMA(a, b, c) = a*b + c
 *   SP_FN(name)  -> name_f32_avx2 etc.
 *   SP_TB        square block edge of the SIMD transpose (1 = scalar)
 */

#if !defined(SP_CUR_ISA) || !defined(SP_CUR_F64)
#error "define SP_CUR_ISA and SP_CUR_F64 before including simd_begin.h"
#endif

#define SP_CAT3_(a, b, c) a##_##b##_##c
#define SP_CAT3(a, b, c) SP_CAT3_(a, b, c)

#if SP_CUR_F64
#define SP_T double
#define SP_DT f64
#else
#define SP_T float
#define SP_DT f32
#endif

/* ---------------------------------------------------------------- scalar */
#if SP_CUR_ISA == SP_ISA_SCALAR
#define SP_ISA_NAME scalar
#define SP_V SP_T
#define SP_VL 1
#define SP_VZERO() ((SP_T)0)
#define SP_VSET1(x) ((SP_T)(x))
#define SP_VLOAD(p) (*(p))
#define SP_VSTORE(p, v) (*(p) = (v))
#define SP_VADD(a, b) ((a) + (b))
#define SP_VMUL(a, b) ((a) * (b))
#define SP_VFMA(a, b, c) ((a) * (b) + (c))
#define SP_TB 1

/* ------------------------------------------------------------ AVX2 + FMA */
#elif SP_CUR_ISA == SP_ISA_AVX2
#if !SP_X86
#error "AVX2 region on a non-x86 build"
#endif
#define SP_ISA_NAME avx2
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#if SP_CUR_F64
#define SP_V __m256d
#define SP_VL 4
#define SP_VZERO() _mm256_setzero_pd()
#define SP_VSET1(x) _mm256_set1_pd(x)
#define SP_VLOAD(p) _mm256_loadu_pd(p)
#define SP_VSTORE(p, v) _mm256_storeu_pd((p), (v))
#define SP_VADD(a, b) _mm256_add_pd((a), (b))
#define SP_VMUL(a, b) _mm256_mul_pd((a), (b))
#define SP_VFMA(a, b, c) _mm256_fmadd_pd((a), (b), (c))
#define SP_TB 4
#else
#define SP_V __m256
#define SP_VL 8
#define SP_VZERO() _mm256_setzero_ps()
#define SP_VSET1(x) _mm256_set1_ps(x)
#define SP_VLOAD(p) _mm256_loadu_ps(p)
#define SP_VSTORE(p, v) _mm256_storeu_ps((p), (v))
#define SP_VADD(a, b) _mm256_add_ps((a), (b))
#define SP_VMUL(a, b) _mm256_mul_ps((a), (b))
#define SP_VFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define SP_TB 8
#endif

/* --------------------------------------------------------------- AVX-512 */
#elif SP_CUR_ISA == SP_ISA_AVX512
#if !SP_X86
#error "AVX-512 region on a non-x86 build"
#endif
#define SP_ISA_NAME avx512
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#endif
#if SP_CUR_F64
#define SP_V __m512d
#define SP_VL 8
#define SP_VZERO() _mm512_setzero_pd()
#define SP_VSET1(x) _mm512_set1_pd(x)
#define SP_VLOAD(p) _mm512_loadu_pd(p)
#define SP_VSTORE(p, v) _mm512_storeu_pd((p), (v))
#define SP_VADD(a, b) _mm512_add_pd((a), (b))
#define SP_VMUL(a, b) _mm512_mul_pd((a), (b))
#define SP_VFMA(a, b, c) _mm512_fmadd_pd((a), (b), (c))
#define SP_TB 4
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
#define SP_TB 8
#endif

#else
#error "unknown SP_CUR_ISA"
#endif

#define SP_FN(name) SP_CAT3(name, SP_DT, SP_ISA_NAME)
