/* One layer's attention for a decoding step on the CPU, the prompt's cache shared by its rows.
 *
 * The same arithmetic as course_lib.decoding.Decoder._attention, in one pass per (prompt, key head):
 *
 *     out_q = softmax([q K_prompt^T, q K_own^T]) [V_prompt; V_own]      (q already scaled by 1/sqrt(D))
 *
 * PyTorch runs this as B x H products of one query against a few dozen keys, each paid for in
 * dispatch. Here each task takes one prompt and one key head: it writes this step's key and value
 * of the prompt's rows into their own caches, then takes the queries of those rows (their G
 * completions times the query heads that share the key head) QB at a time: their scores against
 * the prompt's keys (read once for all of them), against each row's own keys, one softmax over
 * both, and the weighted sum of values. Vectors of VW floats (GCC/Clang vector extensions: AVX-512,
 * AVX2 or NEON, whatever the compiler targets); every sum over d or over keys runs in a fixed order,
 * so the result does not depend on the number of threads.
 *
 * Layouts (float32, contiguous unless a stride is given; L, T and D multiples of VW):
 *   qk          (B, q_row_stride): per row H query vectors then H_kv key vectors of D, rotated
 *   new_v       (B, new_v_row_stride): per row H_kv value vectors of D
 *   prompt_kt   (P, H_kv, L / VW, D, VW): prompt keys, VW positions per block    prompt_v  (P, H_kv, L, D)
 *   prompt_pad  (P, L) bytes: 1 where the prompt is padding (left padding, and columns up to L)
 *   own_kt      (B, H_kv, T / VW, D, VW): each row's own keys, VW positions per block
 *   own_v       (B, H_kv, T, D)
 *   prompt_rows (P + 1,): the rows of prompt p are prompt_rows[p] .. prompt_rows[p + 1] - 1
 *   out         (B, H, D)
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef COURSE_LIBMVEC
/* glibc's vector expf (libmvec); math.h declares it only under -ffast-math, which we do not use */
#pragma omp declare simd notinbranch
float expf(float);
#endif

enum { QB = 8, VW = 16 };  /* queries per block, floats per vector */
typedef float vec __attribute__((vector_size(VW * sizeof(float)), aligned(sizeof(float))));
typedef int32_t mask __attribute__((vector_size(VW * sizeof(int32_t))));  /* a lane comparison: -1 or 0 */

static inline vec load(const float *x) { vec v; memcpy(&v, x, sizeof v); return v; }

static inline vec max2(vec a, vec b)
{
    const mask a_bigger = a > b;
    return (vec)((a_bigger & (mask)a) | (~a_bigger & (mask)b));
}

/* max of s[0 .. n), n >= VW, VW lanes at a time (the last load may overlap the one before) */
static inline float max_of(const float *s, int n)
{
    vec top = load(s + n - VW);
    for (int l = 0; l + VW <= n; l += VW) top = max2(top, load(s + l));
    float best = top[0];
    for (int c = 1; c < VW; c++) best = top[c] > best ? top[c] : best;
    return best;
}

/* s[i][at .. at + VW) = q_i . the VW keys of a block: key c of query i is keys[i][d * stride + c], d < D */
static inline void score_block(const float *const *q, const float *const *keys, long stride, int head_dim,
                               float *const *s, long at)
{
    vec acc[QB] = {0};
    for (int d = 0; d < head_dim; d++)
        for (int i = 0; i < QB; i++) acc[i] += q[i][d] * load(keys[i] + d * stride);
    for (int i = 0; i < QB; i++) memcpy(s[i] + at, &acc[i], sizeof(vec));
}

/* The same with one block of keys for all QB queries (the prompt's): each key vector loaded once */
static inline void shared_score_block(const float *const *q, const float *keys, long stride, int head_dim,
                                      float *const *s, long at)
{
    vec acc[QB] = {0};
    for (int d = 0; d < head_dim; d++) {
        const vec k = load(keys + d * stride);
        for (int i = 0; i < QB; i++) acc[i] += q[i][d] * k;
    }
    for (int i = 0; i < QB; i++) memcpy(s[i] + at, &acc[i], sizeof(vec));
}

/* softmax over s[0 .. n), n >= VW, entries of -inf taking no weight */
static inline void softmax(float *s, int n)
{
    const float top = max_of(s, n);
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int l = 0; l < n; l++) {
        s[l] = expf(s[l] - top);
        total += s[l];
    }
    const float scale = 1.f / total;
    for (int l = 0; l < n; l++) s[l] *= scale;
}

void attend(const float *restrict qk, int64_t q_row_stride, const float *restrict new_v, int64_t new_v_row_stride,
            const float *restrict prompt_kt, const float *restrict prompt_v, const unsigned char *restrict prompt_pad,
            float *restrict own_kt, float *restrict own_v, const int64_t *restrict prompt_rows, int prompts, int heads,
            int kv_heads, int head_dim, int prompt_len, int own_cap, int own_len, float *restrict out, int threads)
{
    const int rep = heads / kv_heads, n = prompt_len + own_len, own_cols = (own_len + VW - 1) / VW * VW;
    const long new_at = own_len - 1;  /* where this step's key and value go */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long task = 0; task < (long)prompts * kv_heads; task++) {
        const long p = task / kv_heads, h = task % kv_heads, first = prompt_rows[p], last = prompt_rows[p + 1];
        const float *kt = prompt_kt + (p * kv_heads + h) * head_dim * prompt_len;
        const float *v = prompt_v + (p * kv_heads + h) * prompt_len * head_dim;
        const unsigned char *pad = prompt_pad + p * prompt_len;
        /* Memory, not arithmetic, bounds this loop: ask early for the prompt's values, and for the next task's keys */
        for (long x = 0; x < (long)prompt_len * head_dim; x += VW) __builtin_prefetch(v + x);
        if (task + 1 < (long)prompts * kv_heads) {
            const float *next = prompt_kt + (task + 1) * head_dim * prompt_len;
            for (long x = 0; x < (long)prompt_len * head_dim; x += VW) __builtin_prefetch(next + x, 0, 2);
        }

        /* This step's key and value join each row's own cache */
        for (long b = first; b < last; b++) {
            const float *k_new = qk + b * q_row_stride + (heads + h) * head_dim;
            float *block = own_kt + ((b * kv_heads + h) * own_cap + new_at / VW * VW) * head_dim + new_at % VW;
            for (int d = 0; d < head_dim; d++) block[d * VW] = k_new[d];
            memcpy(own_v + ((b * kv_heads + h) * own_cap + new_at) * head_dim,
                   new_v + b * new_v_row_stride + h * head_dim, head_dim * sizeof(float));
        }

        /* The rows' queries, QB at a time: query k is head h * rep + k % rep of row first + k / rep */
        float scores[QB][n + own_cols - own_len], spare[head_dim];
        float *score_rows[QB], *own_rows[QB];
        for (long q0 = 0; q0 < (last - first) * rep; q0 += QB) {
            const float *q[QB], *own_keys[QB], *own_values[QB];
            float *o[QB];
            for (int i = 0; i < QB; i++) {
                const int real = q0 + i < (last - first) * rep;  /* past the last query: redo query q0, drop it */
                const long k = real ? q0 + i : q0, b = first + k / rep, j = k % rep;
                q[i] = qk + b * q_row_stride + (h * rep + j) * head_dim;
                own_keys[i] = own_kt + (b * kv_heads + h) * own_cap * head_dim;
                own_values[i] = own_v + (b * kv_heads + h) * own_cap * head_dim;
                o[i] = real ? out + (b * heads + h * rep + j) * head_dim : spare;
                score_rows[i] = scores[i];
                own_rows[i] = scores[i] + prompt_len;
            }
            /* Ask for the rows' own keys and values now: they arrive while the prompt's scores are computed */
            for (int i = 0; i < QB; i++) {
                for (long x = 0; x < (long)own_cols * head_dim; x += VW) __builtin_prefetch(own_keys[i] + x);
                for (long x = 0; x < (long)own_len * head_dim; x += VW) __builtin_prefetch(own_values[i] + x);
            }
            /* Scores against the prompt (its keys read once for the QB queries), then the own tokens */
            for (int l = 0; l < prompt_len; l += VW)  /* block l / VW: (D, VW) */
                shared_score_block(q, kt + (long)l * head_dim, VW, head_dim, score_rows, l);
            for (int u = 0; u < own_len; u += VW) {
                const float *block[QB];
                for (int i = 0; i < QB; i++) block[i] = own_keys[i] + (long)u * head_dim;  /* block u / VW: (D, VW) */
                score_block(q, block, VW, head_dim, own_rows, u);
            }
            /* One softmax over both blocks; padding takes no weight */
            for (int i = 0; i < QB; i++) {
                for (int l = 0; l < prompt_len; l++) scores[i][l] = pad[l] ? -INFINITY : scores[i][l];
                softmax(scores[i], n);
            }
            /* Weighted values, VW dimensions at a time */
            for (int d0 = 0; d0 < head_dim; d0 += VW) {
                vec acc[QB] = {0};
                for (int l = 0; l < prompt_len; l++) {
                    const vec x = load(v + l * head_dim + d0);
                    for (int i = 0; i < QB; i++) acc[i] += scores[i][l] * x;
                }
                for (int u = 0; u < own_len; u++)
                    for (int i = 0; i < QB; i++) acc[i] += own_rows[i][u] * load(own_values[i] + u * head_dim + d0);
                for (int i = 0; i < QB; i++) memcpy(o[i] + d0, &acc[i], sizeof(vec));
            }
        }
    }
}

/* Elementwise passes over at least this many floats are split between the threads (fewer: one thread,
 * as waking the others costs more than they save) */
enum { PARALLEL_FROM = 32768 };

/* RMSNorm of each row: out = x / sqrt(mean(x^2) + eps) * weight, x (rows, dim) contiguous */
void rms_norm(const float *restrict x, const float *restrict weight, float eps, float *restrict out, int rows, int dim,
              int threads)
{
#pragma omp parallel for schedule(static) num_threads(threads) if ((long)rows * dim >= PARALLEL_FROM)
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float total = 0.f;
#pragma omp simd reduction(+ : total)
        for (int c = 0; c < dim; c++) total += xr[c] * xr[c];
        const float scale = 1.f / sqrtf(total / dim + eps);
        for (int c = 0; c < dim; c++) out[r * dim + c] = xr[c] * scale * weight[c];
    }
}

/* The gated MLP's middle: out = silu(gate) * up, gate_up (rows, 2 * inner) holding gate then up in each row */
void silu_mul(const float *restrict gate_up, float *restrict out, int rows, int inner, int threads)
{
#pragma omp parallel for schedule(static) num_threads(threads) if ((long)rows * inner >= PARALLEL_FROM)
    for (long r = 0; r < rows; r++) {
        const float *gate = gate_up + r * 2 * inner, *up = gate + inner;
        float *o = out + r * inner;
#pragma omp simd
        for (int c = 0; c < inner; c++) o[c] = gate[c] / (1.f + expf(-gate[c])) * up[c];
    }
}

/* ------------------------------------------------------------------------------------------------
 * A whole decoding step in one call: the same operations as course_lib.decoding.Decoder.step with
 * its fused weights, the matrix products through the BLAS sgemm that PyTorch itself calls (its
 * address handed in by the caller), the rest through the functions above. In Python the step is
 * about 60 calls, each paid for in dispatch; here it is one.
 */

/* Fortran BLAS sgemm: C = alpha op(A) op(B) + beta C, column-major */
typedef void gemm_fn(const char *transa, const char *transb, const int *m, const int *n, const int *k,
                     const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
                     const float *beta, float *c, const int *ldc);

struct linear {  /* y = x W^T + b: weight (out, in) contiguous, bias (out,) or NULL */
    const float *weight, *bias;
    int out, in;
};

struct layer {
    const float *attn_norm, *mlp_norm;  /* (d,) RMSNorm weights */
    struct linear qkv, o, gate_up, down;  /* qkv: q's and k's head dimensions in pair order */
    const float *prompt_kt, *prompt_v;  /* the prompts' keys and values, as attend reads them */
    float *own_kt, *own_v;  /* the rows' own keys and values, as attend reads and writes them */
};

struct model {
    gemm_fn *gemm;
    int layers, dim, heads, kv_heads, head_dim, vocab, positions;
    float eps, q_scale;  /* every RMSNorm's epsilon; q's factor 1/sqrt(D) */
    const float *embed;  /* (V, d) */
    const float *rotation;  /* (positions, D / 2, 2): cos and sin of each position and pair */
    const float *final_norm;  /* (d,) */
    struct linear lm_head;
    const struct layer *layer;
};

struct batch {
    int rows, prompts, prompt_len, own_cap, own_len;
    const int64_t *tokens, *positions, *prompt_rows;  /* (B,), (B,), (P + 1,) */
    const unsigned char *prompt_pad;  /* (P, L) */
    /* scratch: (B, d), (B, d), (B, (H + 2 H_kv) D), (B, H D), (B, 2 I), (B, I) */
    float *hidden, *x, *qkv, *attn, *gate_up, *inner;
    float *logits;  /* (B, V) */
};

/* y = x W^T + b, or y += x W^T + b where accumulate, x (rows, in), y (rows, out); the bias goes into y
 * first and the product is added onto it, as PyTorch's addmm does for a linear layer */
static void linear(gemm_fn *gemm, const struct linear *l, const float *x, int rows, float *y, int accumulate)
{
    const float one = 1.f;
    float beta = accumulate ? 1.f : 0.f;
    if (l->bias) {
        for (long r = 0; r < rows; r++)
            for (int c = 0; c < l->out; c++) y[r * l->out + c] = (accumulate ? y[r * l->out + c] : 0.f) + l->bias[c];
        beta = 1.f;
    }
    /* column-major: y^T (out, rows) = W (in, out)^T x^T (in, rows) */
    gemm("T", "N", &l->out, &rows, &l->in, &one, l->weight, &l->in, x, &l->in, &beta, y, &l->out);
}

/* Each row's q heads (scaled by q_scale) and k heads turned to the row's position: pair j of a head is
 * the complex number (x[2j], x[2j + 1]), multiplied by (cos, sin) of the position's entry j */
static void rotate(float *qkv, long row_stride, const float *rotation, const int64_t *positions, int rows,
                   int heads, int kv_heads, int head_dim, float q_scale, int threads)
{
#pragma omp parallel for schedule(static) num_threads(threads) \
    if ((long)rows * (heads + kv_heads) * head_dim >= PARALLEL_FROM)
    for (long b = 0; b < rows; b++) {
        const float *turn = rotation + positions[b] * head_dim;
        for (int h = 0; h < heads + kv_heads; h++) {
            const float scale = h < heads ? q_scale : 1.f;
            float *x = qkv + b * row_stride + (long)h * head_dim;
            for (int j = 0; j < head_dim; j += 2) {
                const float c = turn[j] * scale, s = turn[j + 1] * scale, re = x[j], im = x[j + 1];
                x[j] = re * c - im * s;
                x[j + 1] = re * s + im * c;
            }
        }
    }
}

/* One step: returns 0, or -1 where a token is outside the vocabulary, -2 where a position is past the rotation table */
int decode_step(const struct model *m, const struct batch *b, int threads)
{
    const int rows = b->rows, d = m->dim, qkv_width = (m->heads + 2 * m->kv_heads) * m->head_dim;
    for (int r = 0; r < rows; r++) {
        if (b->tokens[r] < 0 || b->tokens[r] >= m->vocab) return -1;
        if (b->positions[r] < 0 || b->positions[r] >= m->positions) return -2;
    }
    for (long r = 0; r < rows; r++) memcpy(b->hidden + r * d, m->embed + b->tokens[r] * d, d * sizeof(float));
    for (int i = 0; i < m->layers; i++) {
        const struct layer *l = m->layer + i;
        /* Attention: norm, q/k/v in one product, rotary, the two-part attention, output product onto the residual */
        rms_norm(b->hidden, l->attn_norm, m->eps, b->x, rows, d, threads);
        linear(m->gemm, &l->qkv, b->x, rows, b->qkv, 0);
        rotate(b->qkv, qkv_width, m->rotation, b->positions, rows, m->heads, m->kv_heads, m->head_dim, m->q_scale,
               threads);
        attend(b->qkv, qkv_width, b->qkv + (m->heads + m->kv_heads) * m->head_dim, qkv_width, l->prompt_kt,
               l->prompt_v, b->prompt_pad, l->own_kt, l->own_v, b->prompt_rows, b->prompts, m->heads, m->kv_heads,
               m->head_dim, b->prompt_len, b->own_cap, b->own_len, b->attn, threads);
        linear(m->gemm, &l->o, b->attn, rows, b->hidden, 1);
        /* MLP: norm, gate and up in one product, silu(gate) * up, down product onto the residual */
        rms_norm(b->hidden, l->mlp_norm, m->eps, b->x, rows, d, threads);
        linear(m->gemm, &l->gate_up, b->x, rows, b->gate_up, 0);
        silu_mul(b->gate_up, b->inner, rows, l->gate_up.out / 2, threads);
        linear(m->gemm, &l->down, b->inner, rows, b->hidden, 1);
    }
    rms_norm(b->hidden, m->final_norm, m->eps, b->x, rows, d, threads);
    linear(m->gemm, &m->lm_head, b->x, rows, b->logits, 0);
    return 0;
}

/* The products of one step alone, as separate calls (the floor a step is measured against): y_i = x_i W_i^T */
void gemm_floor(gemm_fn *gemm, const struct linear *weights, int count, const float *const *x, float *const *y,
                int rows)
{
    for (int i = 0; i < count; i++) linear(gemm, weights + i, x[i], rows, y[i], 0);
}
