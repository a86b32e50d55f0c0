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

static inline vec load(const float *x) { vec v; memcpy(&v, x, sizeof v); return v; }

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

/* softmax over s[0 .. n), entries of -inf taking no weight */
static inline void softmax(float *s, int n)
{
    float top = -INFINITY, total = 0.f;
    for (int l = 0; l < n; l++) top = s[l] > top ? s[l] : top;
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

/* RMSNorm of each row: out = x / sqrt(mean(x^2) + eps) * weight, x (rows, dim) contiguous */
void rms_norm(const float *restrict x, const float *restrict weight, float eps, float *restrict out, int rows, int dim)
{
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float total = 0.f;
#pragma omp simd reduction(+ : total)
        for (int c = 0; c < dim; c++) total += xr[c] * xr[c];
        const float scale = 1.f / sqrtf(total / dim + eps);
        for (int c = 0; c < dim; c++) out[r * dim + c] = xr[c] * scale * weight[c];
    }
}
