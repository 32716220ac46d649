/* conv_bwd_impl.h - the conv backward driver of one task (row and column
 * phases, tile calls), the dW reduction and the values' gather.  Part of
 * conv_impl.h (one code region). */

SP_INLINE int64_t SP_FN(sp_cw_floordiv)(int64_t a, int64_t b)
{
    const int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* ---- backward: units [u0, u1), input channels [c0, c1) -------------------- */
static void SP_FN(sp_conv_bwd)(const sp_conv_bwd_args* a, int64_t u0, int64_t u1, int64_t c0,
                               int64_t c1, void* scratch, void* dwv_)
{
    const sp_conv_geom* g = a->g;
    if (c0 >= c1)
        return;
    const int64_t U = g->U, L = g->L, cv = g->cv, sh = g->sh, sw = g->sw;
    const int64_t o0 = (c0 / g->ICg) * g->OCg, o1 = ((c1 - 1) / g->ICg + 1) * g->OCg;
    const int with_dx = a->dX != NULL;
    const int64_t xsize = (c1 - c0) * g->plane_x, dysize = (o1 - o0) * g->plane_dy;
    SP_T* xbuf = (SP_T*)scratch;
    SP_T* dxbuf = with_dx ? xbuf + xsize : NULL;
    SP_T* dybuf = xbuf + (with_dx ? 2 : 1) * xsize;
    SP_T* tmp = dybuf + dysize;
    const SP_T* vals = (const SP_T*)a->vals;
    const int64_t* lptr = a->lptr;
    const int64_t* dyoff = a->dyoff;
    SP_T* dwv = (SP_T*)dwv_;
    const int64_t ncls = sh * sw;
    const int64_t xrs = sh * g->rowlen_x, dyrs = g->rowlen_dy, shift = o0 * g->plane_dy;
    const SP_FN(sp_cw_bwd_tile_t)(*tiles)[SP_CONV_MAX_NC] =
        with_dx ? SP_FN(sp_cw_bwdx_tiles) : SP_FN(sp_cw_bwdw_tiles);
    /* the direct mode's tiles read X and write dX in place: in a bfloat16
     * region those widen and round (conv_impl.h) */
#if SP_CUR_BF16
    const SP_FN(sp_cw_bwd_tile_t_io)(*dtiles)[SP_CONV_MAX_NC] =
        with_dx ? SP_FN(sp_cw_bwdx_tiles_io) : SP_FN(sp_cw_bwdw_tiles_io);
#else
#define dtiles tiles
#endif

    /* register budget of a tile: the larger one when the task's lists hold
     * fewer than 16 weights on average (see SP_CW_BWD_ACC_FEW) */
    int acc = SP_CW_BWD_ACC;
    { /* this task's dW partials: the lists of its input channels */
        const int64_t kb = lptr[c0 * ncls], ke = lptr[c1 * ncls];
        memset(dwv + kb * L, 0, (size_t)((ke - kb) * L) * sizeof(SP_T));
        if (ke - kb < 16 * (c1 - c0) * ncls)
            acc = SP_CW_BWD_ACC_FEW;
    }
    if (u0 >= u1)
        return;
    /* Over-width with unit column stride and whole vectors per row: the X
     * and dX tiles cover exactly the image's columns, so the tiles read X and
     * write dX in place (only dY needs its zero border).  Otherwise both go
     * through the packed buffers. */
    const int direct = !g->batch_last && sw == 1 && g->W % SP_VL == 0;
    const int64_t sdc = g->H * g->W, sdb = g->C * sdc;
    if (!direct)
        SP_FN(sp_cw_zero_x_border)(g, xbuf, c1 - c0);
    SP_FN(sp_cw_zero_dy_border)(g, dybuf, o1 - o0);
    for (int64_t u = u0; u < u1; u++) {
        if (!direct)
            SP_FN(sp_cw_pack_x)(g, (const SP_IOT*)a->X, a->sxb, a->sxc, a->sxh, u, c0, c1, xbuf,
                                tmp);
        SP_FN(sp_cw_pack_dy)(g, (const SP_IOT*)a->dY, a->syb, a->syc, a->syh, u, o0, o1, dybuf);
        /* row bands outermost: a band's dY rows (all output channels) stay in
         * cache while every input channel of the task reads them */
        for (int64_t rph = 0; rph < sh; rph++) {
            /* padded rows h = a*sh + rph inside the image: pt <= h < pt + H */
            const int64_t a_lo = SP_MAX(0, -SP_FN(sp_cw_floordiv)(rph - g->pt, sh));
            const int64_t a_hi = SP_FN(sp_cw_floordiv)(g->pt + g->H - 1 - rph, sh);
            if (a_lo > a_hi)
                continue;
            int R = SP_CONV_MAX_R;
            for (int64_t wph = 0; wph < sw; wph++) {
                const int64_t b_lo = SP_MAX(0, -SP_FN(sp_cw_floordiv)(wph - g->pl, sw));
                const int64_t b_hi = SP_FN(sp_cw_floordiv)(g->pl + g->W - 1 - wph, sw);
                int Rw, NCw;
                sp_conv_pick_tile(b_hi - b_lo + 1, cv, acc, &Rw, &NCw);
                R = SP_MIN(R, Rw);
            }
            for (int64_t a0 = a_lo; a0 <= a_hi; a0 += R) {
                const int r = (int)SP_MIN((int64_t)R, a_hi - a0 + 1);
                for (int64_t wph = 0; wph < sw; wph++) {
                    /* this phase's columns of the image and its tile width
                     * (the same for every channel) */
                    const int64_t b_lo = SP_MAX(0, -SP_FN(sp_cw_floordiv)(wph - g->pl, sw));
                    const int64_t b_hi = SP_FN(sp_cw_floordiv)(g->pl + g->W - 1 - wph, sw);
                    if (b_lo > b_hi)
                        continue;
                    int Rw, NC;
                    sp_conv_pick_tile(b_hi - b_lo + 1, cv, acc, &Rw, &NC);
                    const int64_t* lp = lptr + (c0 * sh + rph) * sw + wph; /* channel c0's list */
                    for (int64_t q0 = b_lo; q0 <= b_hi; q0 += NC * cv) {
                        const int nc = (int)SP_MIN((int64_t)NC, (b_hi - q0 + cv) / cv);
                        const int64_t delta = a0 * dyrs + q0 * U - shift;
                        if (direct) {
                            /* image row a0*sh + rph - pt, column q0 - pl */
                            const int64_t h = a0 * sh + rph - g->pt, w = q0 - g->pl;
                            dtiles[r - 1][nc - 1](
                                (const SP_IOT*)a->X + u * a->sxb + c0 * a->sxc + h * a->sxh + w,
                                a->sxc,
                                with_dx ? (SP_IOT*)a->dX + u * sdb + c0 * sdc + h * g->W + w
                                        : NULL,
                                sdc, sh * a->sxh, sh * g->W, dybuf, dyrs, dyoff, delta, vals, dwv,
                                lp, ncls, c1 - c0, 1);
                        } else {
                            const int64_t xo =
                                (a0 * sh + rph) * g->rowlen_x + (wph * g->Wq + q0) * U;
                            tiles[r - 1][nc - 1](xbuf + xo, g->plane_x,
                                                 with_dx ? dxbuf + xo : NULL, g->plane_x, xrs, xrs,
                                                 dybuf, dyrs, dyoff, delta, vals, dwv, lp, ncls,
                                                 c1 - c0, 0);
                        }
                    }
                }
            }
        }
        if (with_dx && !direct)
            SP_FN(sp_cw_unpack_dx)(g, (SP_IOT*)a->dX, u, c0, c1, dxbuf, tmp);
    }
#undef dtiles
}

/* dW[perm[k]] = sum over the nparts partial buffers (stride apart) and the
 * L lanes of dwv[p*stride + k*L + lane], for k0 <= k < k1 (fixed order). */
static void SP_FN(sp_conv_reduce)(const void* dwv_, int64_t stride, int64_t nparts, int64_t L,
                                  const int64_t* perm, void* dW_, int64_t k0, int64_t k1)
{
    const SP_T* dwv = (const SP_T*)dwv_;
    SP_T* dW = (SP_T*)dW_;
    (void)L; /* == SP_VL */
    for (int64_t k = k0; k < k1; k++) {
        SP_V v = SP_VLOAD(dwv + k * SP_VL);
        for (int64_t p = 1; p < nparts; p++)
            v = SP_VADD(v, SP_VLOAD(dwv + p * stride + k * SP_VL));
        dW[perm[k]] = SP_FN(sp_vhsum)(v);
    }
}

/* out[k] = data[perm[k]] for k0 <= k < k1: the values in list order. */
static void SP_FN(sp_conv_gather)(const void* data_, const int64_t* perm, void* out_, int64_t k0,
                                  int64_t k1)
{
    const SP_T* data = (const SP_T*)data_;
    SP_T* out = (SP_T*)out_;
    for (int64_t k = k0; k < k1; k++)
        out[k] = data[perm[k]];
}

