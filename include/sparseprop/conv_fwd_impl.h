/* conv_fwd_impl.h - the conv forward driver of one task (bands, input
 * channel blocks, tile calls).  Part of conv_impl.h (one code region). */

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
    const SP_IOT* X = (const SP_IOT*)a->X;
    SP_IOT* Y = (SP_IOT*)a->Y;
    const SP_T* bias = (const SP_T*)a->bias;
    const SP_T* vals = (const SP_T*)a->vals;
    const int64_t* och = a->och;
    const int32_t* ich = a->ich;
    const int64_t* xoff = a->xoff;
    const int64_t xrs = g->sh * g->rowlen_x, shift = c0 * g->plane_x;
    /* input channels per block: a block's rows of one band fit in L1, so each
     * output channel re-reads them from there; but keep SP_CW_BLOCK_WEIGHTS
     * weights per (output channel, block) so loading/storing the partial
     * tile pays off */
    int64_t icb = ICg;
    if (SP_CW_BLOCK_WEIGHTS > 0) {
        const int64_t band_rows = (R - 1) * g->sh + g->Hb - (OH - 1) * g->sh;
        const int64_t fit = SP_CONV_L1_BYTES /
                            SP_MAX((int64_t)1, band_rows * g->rowlen_x * (int64_t)sizeof(SP_T));
        const int64_t nnz = och[OC], slots = OC * ICg;
        const int64_t need = nnz > 0 ? (SP_CW_BLOCK_WEIGHTS * slots + nnz - 1) / nnz : ICg;
        icb = SP_MIN(ICg, SP_MAX((int64_t)1, SP_MAX(fit, need)));
    }
    /* blocking pays from 0.8 sparsity down, with 32 registers (docs/tuning.md,
     * "Conv input channel blocks") */
    const int blocked = icb < ICg;
    /* streaming stores of sparse tiles straight into a large Y (see conv.h;
     * bfloat16 Y: where float32 Y would be streamed, conv_impl.h) */
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
                    SP_IOT* yrow = Y + ((b0 * OC + o) * OH + p0) * OW;
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
                    SP_IOT* out = Y + ((b0 * OC + o0) * OH + p0) * OW + q0;
                    streamed |= SP_CW_IOTAB(sp_cw_fwdrun_tiles)[r - 1][nc - 1](
                        xbuf, xrs, xoff, p0 * xrs + q0 * U - shift, vals, och + o0,
                        bias ? bias + o0 : NULL, o1 - o0, out, OH * OW, OW, stream_y);
                }
                continue;
            }
            for (int64_t o = o0; o < o1; o++) {
                const SP_T init = bias ? bias[o] : (SP_T)0;
                const int64_t k0 = och[o], n = och[o + 1] - k0;
                SP_IOT* yplane = Y + (b0 * OC + o) * OH * OW;
                /* column tiles right to left: in over-width, a last vector past
                 * the row's end spills into the next row, which a later tile
                 * (the q0 = 0 one, or the next band) overwrites */
                for (int64_t q0 = (OW - 1) / (NC * cv) * (NC * cv); q0 >= 0; q0 -= NC * cv) {
                    const int nc = (int)SP_MIN((int64_t)NC, (OW - q0 + cv - 1) / cv);
                    /* fn: into the band buffer; fy: into Y (the same function
                     * but in a bfloat16 region, where it rounds) */
                    const SP_FN(sp_cw_fwd_tile_t) fn = SP_FN(sp_cw_fwd_tiles)[r - 1][nc - 1];
#if SP_CUR_BF16
                    const SP_FN(sp_cw_fwd_tile_t_io) fy =
                        SP_FN(sp_cw_fwd_tiles_io)[r - 1][nc - 1];
#else
#define fy fn
#endif
                    const int64_t delta = p0 * xrs + q0 * U - shift;
                    if (g->batch_last) {
                        fn(xbuf, xrs, xoff + k0, delta, vals + k0, n, init, SP_CW_OVERWRITE,
                           band + q0 * U, OW * U);
                    } else if (q0 + nc * L <= OW) { /* whole vectors: no spill */
                        const int st = stream_y && n <= SP_CONV_STREAM_MAX_NNZ;
                        streamed |= st;
                        fy(xbuf, xrs, xoff + k0, delta, vals + k0, n, init,
                           st ? SP_CW_STREAM_OUT : SP_CW_OVERWRITE, yplane + p0 * OW + q0, OW);
                    } else if ((p0 + r - 1) * OW + q0 + nc * L <= OH * OW) {
                        /* the spill stays inside this plane: later tiles and
                         * bands overwrite it (it may cover more than one row
                         * when OW < L: never let it reach the next plane).
                         * Plain stores: the overwrite must land after them. */
                        fy(xbuf, xrs, xoff + k0, delta, vals + k0, n, init, SP_CW_OVERWRITE,
                           yplane + p0 * OW + q0, OW);
                    } else { /* the spill would leave the plane: go through `band` */
                        fn(xbuf, xrs, xoff + k0, delta, vals + k0, n, init, SP_CW_OVERWRITE,
                           band, nc * L);
                        for (int rr = 0; rr < r; rr++)
                            SP_FN(sp_cw_copy)(band + rr * nc * L, OW - q0,
                                              yplane + (p0 + rr) * OW + q0);
                    }
#undef fy
                }
                if (g->batch_last) /* (r*OW, lanes) -> rows p0.. of Y[b0 + lane, o] */
                    SP_FN(sp_cw_from_lanes)(band, r * OW, rows, yplane + p0 * OW, OC * OH * OW);
            }
        }
    }
    if (streamed) /* streaming stores are weakly ordered: publish them before returning */
        SP_VSTREAM_FENCE();
}

