/* The bfloat16 conv2d kernels of ISA level 1 (AArch64: neon; x86-64: avx2)
 * against the same level's float32 kernels on the widened inputs: Y and dX
 * must be the float32 results rounded, bit for bit, and dW the float32 dW.
 * tests/test_neon_bf16.py writes the cases (geometry, weights, offsets and
 * lists from sparseprop's planner for the level's lanes, bfloat16 X and dY)
 * into one file per case, cross-compiles this check for AArch64 and runs it
 * under qemu-aarch64-static: the NEON bfloat16 conv region has no other test
 * on an x86-64 machine.
 *
 *     bf16_conv_check CASE_FILE...      prints "N mismatches"; exit 0 if N == 0
 *
 * Case file (native endianness): int64 geometry[27] (sp_conv_geom's fields
 * from batch_last to plane_dy, in order), int64 nnz, has_bias; int64
 * och[OC+1]; int32 ich[OC*(ICg+1)]; int64 xoff[nnz]; float vals[nnz]; int64
 * lptr[C*sh*sw+1], dyoff[nnz], perm[nnz]; float bias[OC] if has_bias; uint16
 * X[B*C*H*W], dY[B*OC*OH*OW] (C-contiguous). */
#include "sparseprop/conv.h"
#include <stdio.h>
#include <stdlib.h>

static FILE* fin;
static int failed_read;
static void* rd(size_t n, size_t size)
{
    void* p = calloc(n ? n : 1, size);
    if (n && fread(p, size, n, fin) != n)
        failed_read = 1;
    return p;
}
static void* zalloc(int64_t bytes)
{
    void* p = aligned_alloc(64, (size_t)((bytes + 64 + 63) / 64 * 64));
    memset(p, 0, (size_t)((bytes + 64 + 63) / 64 * 64));
    return p;
}

static int64_t check_case(const char* path)
{
    fin = fopen(path, "rb");
    if (!fin) {
        printf("%s: cannot open\n", path);
        return 1;
    }
    failed_read = 0;
    int64_t* gv = rd(29, 8);
    sp_conv_geom g;
    int64_t* f[] = {&g.L, &g.U, &g.cv, &g.B, &g.C, &g.H, &g.W, &g.OC, &g.OH, &g.OW,
                    &g.ICg, &g.OCg, &g.sh, &g.sw, &g.pt, &g.pl, &g.Hb, &g.Wq, &g.rowlen_x,
                    &g.plane_x, &g.Hdy, &g.Wdy, &g.TP, &g.LP, &g.rowlen_dy, &g.plane_dy};
    g.batch_last = (int)gv[0];
    for (int i = 0; i < 26; i++)
        *f[i] = gv[i + 1];
    const int64_t nnz = gv[27], has_bias = gv[28];
    int64_t* och = rd((size_t)g.OC + 1, 8);
    int32_t* ich = rd((size_t)(g.OC * (g.ICg + 1)), 4);
    int64_t* xoff = rd((size_t)nnz, 8);
    float* vals = rd((size_t)nnz, 4);
    int64_t* lptr = rd((size_t)(g.C * g.sh * g.sw + 1), 8);
    int64_t* dyoff = rd((size_t)nnz, 8);
    int64_t* perm = rd((size_t)nnz, 8);
    float* bias = has_bias ? rd((size_t)g.OC, 4) : NULL;
    const int64_t nx = g.B * g.C * g.H * g.W, ny = g.B * g.OC * g.OH * g.OW;
    uint16_t* X = rd((size_t)nx, 2);
    uint16_t* dY = rd((size_t)ny, 2);
    fclose(fin);
    if (failed_read) {
        printf("%s: short file\n", path);
        return 1;
    }
    float* Xf = zalloc(nx * 4);
    float* dYf = zalloc(ny * 4);
    for (int64_t i = 0; i < nx; i++)
        Xf[i] = sp_bf16_widen(X[i]);
    for (int64_t i = 0; i < ny; i++)
        dYf[i] = sp_bf16_widen(dY[i]);

    const sp_conv_kernels kb = sp_conv_select_bf16(1, 0), kf = sp_conv_select(1, 0);
    if (kb.lanes != g.L || kf.lanes != g.L) {
        printf("%s: planned for %lld lanes, the kernels have %lld\n", path, (long long)g.L,
               (long long)kb.lanes);
        return 1;
    }
    const int64_t units = g.batch_last ? (g.B + g.L - 1) / g.L : g.B;
    int64_t bad = 0;

    /* forward */
    const int64_t fs = sp_conv_fwd_scratch(&g, g.C, g.OC) * 4;
    sp_conv_fwd_args fa = {&g, X, g.C * g.H * g.W, g.H * g.W, g.W, NULL, bias, och, ich, xoff,
                           vals};
    uint16_t* Yb = zalloc(ny * 2);
    float* Yf = zalloc(ny * 4);
    void* scratch = zalloc(fs);
    fa.Y = Yb;
    kb.fwd(&fa, 0, units, 0, g.OC, scratch);
    fa.X = Xf;
    fa.Y = Yf;
    kf.fwd(&fa, 0, units, 0, g.OC, scratch);
    for (int64_t i = 0; i < ny; i++)
        bad += Yb[i] != sp_bf16_round(Yf[i]);

    /* backward, with and without dX */
    float* lv = zalloc(nnz * 4);
    kf.gather(vals, perm, lv, 0, nnz);
    for (int with_dx = 1; with_dx >= 0; with_dx--) {
        const int64_t bs = sp_conv_bwd_scratch(&g, g.C, g.OC, with_dx) * 4;
        void* sb = zalloc(bs);
        float* parts = zalloc(nnz * g.L * 4);
        uint16_t* dXb = zalloc(nx * 2);
        float* dXf = zalloc(nx * 4);
        float* dWb = zalloc(nnz * 4);
        float* dWf = zalloc(nnz * 4);
        sp_conv_bwd_args ba = {&g, X, g.C * g.H * g.W, g.H * g.W, g.W,
                               dY, g.OC * g.OH * g.OW, g.OH * g.OW, g.OW,
                               with_dx ? (void*)dXb : NULL, lptr, dyoff, lv};
        kb.bwd(&ba, 0, units, 0, g.C, sb, parts);
        kb.reduce(parts, nnz * g.L, 1, g.L, perm, dWb, 0, nnz);
        ba.X = Xf;
        ba.dY = dYf;
        ba.dX = with_dx ? (void*)dXf : NULL;
        kf.bwd(&ba, 0, units, 0, g.C, sb, parts);
        kf.reduce(parts, nnz * g.L, 1, g.L, perm, dWf, 0, nnz);
        for (int64_t i = 0; with_dx && i < nx; i++)
            bad += dXb[i] != sp_bf16_round(dXf[i]);
        bad += memcmp(dWb, dWf, (size_t)nnz * 4) != 0;
        free(sb), free(parts), free(dXb), free(dXf), free(dWb), free(dWf);
    }
    printf("%s: batch_last %d, B %lld, C %lld, %lldx%lld, OC %lld, stride %lldx%lld, nnz %lld: "
           "%lld mismatches\n", path, g.batch_last, (long long)g.B, (long long)g.C,
           (long long)g.H, (long long)g.W, (long long)g.OC, (long long)g.sh, (long long)g.sw,
           (long long)nnz, (long long)bad);
    free(gv), free(och), free(ich), free(xoff), free(vals), free(lptr), free(dyoff);
    free(perm), free(bias), free(X), free(dY), free(Xf), free(dYf), free(Yb), free(Yf);
    free(scratch), free(lv);
    return bad;
}

int main(int argc, char** argv)
{
    int64_t bad = 0;
    if (argc < 2) {
        printf("usage: %s CASE_FILE...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++)
        bad += check_case(argv[i]);
    printf("%lld mismatches\n", (long long)bad);
    return bad != 0;
}
