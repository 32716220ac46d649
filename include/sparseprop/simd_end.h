/* simd_end.h - close the region opened by simd_begin.h (no include guard). */
#if SP_CUR_ISA == SP_ISA_AVX2 || SP_CUR_ISA == SP_ISA_AVX512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#undef SP_X86_TARGET
#endif

#undef SP_T
#undef SP_DT
#undef SP_ISA_NAME
#undef SP_VBITS
#undef SP_V
#undef SP_VL
#undef SP_VZERO
#undef SP_VSET1
#undef SP_VLOAD
#undef SP_VSTORE
#undef SP_VADD
#undef SP_VMUL
#undef SP_VFMA
#undef SP_VSTREAM
#undef SP_VSTREAM_ALIGN
#undef SP_VSTREAM_FENCE
#undef SP_VPIN
#undef SP_FN
#undef SP_CUR_ISA
#undef SP_CUR_F64
#undef SP_CUR_V256
#undef SP_CUR_BF16
#undef SP_CUR_BF16X
#undef SP_IOT
#undef SP_FROMIO
#undef SP_TOIO
#undef SP_VLOADIO
#undef SP_VSTOREIO
