/* simd_end.h - close the region opened by simd_begin.h (no include guard). */
#if SP_CUR_ISA != SP_ISA_SCALAR
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

#undef SP_T
#undef SP_DT
#undef SP_ISA_NAME
#undef SP_V
#undef SP_VL
#undef SP_VZERO
#undef SP_VSET1
#undef SP_VLOAD
#undef SP_VSTORE
#undef SP_VADD
#undef SP_VMUL
#undef SP_VFMA
#undef SP_TB
#undef SP_FN
#undef SP_CUR_ISA
#undef SP_CUR_F64
