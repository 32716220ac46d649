/* The bfloat16 linear forward kernels of ISA level 1 (AArch64: neon; x86-64:
 * avx2) against the scalar bfloat16 ones (AArch64 only: see below) and
 * against the same level's float32 kernels on the widened input, rounded: bit for bit, over SIMD tails, row
 * strides, 0% / 100% density and a NaN payload that would carry into the sign
 * if rounded like a number.  tests/test_neon_bf16.py cross-compiles it for
 * AArch64 and runs it under qemu-aarch64-static: the NEON bfloat16 region has
 * no other test on an x86-64 machine.  (The backward uses the same widening
 * and rounding helpers, in sp_lin_to_lanes / sp_lin_from_lanes.)
 * Exit status 0: no mismatch. */
#include "sparseprop/linear.h"
#include <stdio.h>
#include <stdlib.h>
static uint32_t rs = 12345;
static float rnd(void) { rs = rs * 1664525u + 1013904223u; return ((rs >> 8) / 16777216.0f) * 2 - 1; }
static int run(int B, int M, int N, double dens, int ld_extra) {
    int64_t ldx = M + ld_extra, ldy = N + ld_extra;
    /* CSR */
    int64_t* ptr = calloc(N + 1, 8); int32_t* ind = malloc(4 * (size_t)N * M + 4); float* val = malloc(4 * (size_t)N * M + 4);
    int64_t nnz = 0;
    for (int n = 0; n < N; n++) { for (int m = 0; m < M; m++) if ((rnd() + 1) / 2 < dens) { ind[nnz] = m; val[nnz] = rnd(); nnz++; } ptr[n + 1] = nnz; }
    uint16_t* X = malloc(2 * (size_t)(B * ldx + 1)); float* Xf = malloc(4 * (size_t)(B * ldx + 1));
    for (int64_t i = 0; i < B * ldx; i++) { X[i] = sp_bf16_round(rnd() * 3); Xf[i] = sp_bf16_widen(X[i]); }
    if (B * ldx > 5) { X[3] = 0x7fff; Xf[3] = sp_bf16_widen(0x7fff); }
    int bad = 0;
    for (int which = 0; which < 3; which++) {
        /* the scalar kernels are bit-comparable only where they fuse a*b + c
         * as the vector ones do: AArch64 (FMA is baseline; GCC contracts),
         * not x86-64 without the fma target */
        if (which == 1 && !SP_ARM64)
            continue;
        sp_linear_kernels k = which == 0 ? sp_linear_select_bf16(1, 0) : which == 1 ? sp_linear_select_bf16(0, 0) : sp_linear_select(1, 0);
        int64_t chunk = k.fwd_chunk;
        size_t sc = (size_t)sp_linear_fwd_scratch(chunk, M, N, 1);
        float* scratch = aligned_alloc(64, (sc * 4 + 63) / 64 * 64);
        void* Y = calloc((size_t)B * ldy + 1, 4);
        for (int64_t b0 = 0; b0 < B; b0 += chunk) {
            sp_linear_fwd_args a; memset(&a, 0, sizeof a);
            a.X = which == 2 ? (void*)(Xf + b0 * ldx) : (void*)(X + b0 * ldx); a.ldx = ldx;
            a.Y = which == 2 ? (void*)((float*)Y + b0 * ldy) : (void*)((uint16_t*)Y + b0 * ldy); a.ldy = ldy;
            a.rows = B - b0 < chunk ? B - b0 : chunk; a.M = M; a.N = N; a.row_begin = 0; a.row_end = N;
            a.ptr = ptr; a.indices = ind; a.vals = val; a.nblk = 1; a.scratch = scratch;
            k.fwd(&a);
        }
        static uint16_t* ref = NULL;
        if (which == 0) { free(ref); ref = malloc(2 * (size_t)B * ldy + 2); memcpy(ref, Y, 2 * (size_t)B * ldy); }
        else for (int b = 0; b < B; b++) for (int n = 0; n < N; n++) {
            uint16_t got = which == 1 ? ((uint16_t*)Y)[b * ldy + n] : sp_bf16_round(((float*)Y)[b * ldy + n]);
            if (got != ref[b * ldy + n]) { if (bad < 5) printf("B%d M%d N%d which%d (%d,%d): %04x vs neon %04x\n", B, M, N, which, b, n, got, ref[b * ldy + n]); bad++; }
        }
        free(scratch); free(Y);
    }
    free(ptr); free(ind); free(val); free(X); free(Xf);
    return bad;
}
int main(void) {
    int sizes[] = {0, 1, 3, 4, 5, 7, 8, 15, 16, 17, 37}, bad = 0, cases = 0;
    for (int i = 0; i < 11; i++) for (int j = 1; j < 11; j++) for (int l = 1; l < 11; l += 3) for (int e = 0; e < 2; e++) {
        bad += run(sizes[i] * 3, sizes[j], sizes[l], 0.5, e * 3); cases++; }
    bad += run(40, 50, 33, 1.0, 0); bad += run(40, 50, 33, 0.0, 1); cases += 2;
    printf("%d cases, %d mismatches (forward)\n", cases, bad);
    return bad != 0;
}
