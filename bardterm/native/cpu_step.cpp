// bardterm's native CPU decode step: one token of a GPT-2 or Llama model, batch 1, in one call.
//
// Why: at batch 1 a decode step is a chain of matrix-vector products, bound by how fast the weights are read.
// PyTorch's CPU kernels for them read at about half the rate the memory allows, and every op around them costs a
// dispatch. This file does the whole token in one parallel region (one team of threads, a barrier between
// steps, as llama.cpp's ggml does), with one matrix-vector kernel per weight type that reads each row once:
// float32, bfloat16, float16 (widened as read) and int8 (one scale per row, activations in float32).
// Measured on a 2-core AMD EPYC (Zen 5), distilgpt2's 25 products per token, one thread, a row at a time: fp32
// 11.0 ms (MKL through F.linear 22.4 ms), bf16 6.9 ms, fp16 6.3 ms, int8 3.8 ms; two rows far apart at once (see
// `rows`) take a quarter less again. Software prefetch, bf16 dot instructions and more accumulators did not help.
//
// Compiled on the user's machine by native_step.py (g++ -O3 -march=native -fopenmp), so the vector paths are
// those of this CPU: AVX-512, else AVX2 with F16C, else plain C++. Every path computes the same sums in the
// same float32 arithmetic, up to the order of additions.
//
// Layouts (prepared in native_step.py): a linear layer's weight is (out, in) row-major, or (in, out) for
// GPT-2's float32 Conv1D ("transposed"); norms, biases and scales are float32; the KV cache is the model's own
// buffers, (kv_heads, capacity, head_dim) per layer, in float32, bfloat16 or float16.

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

enum Kind : int32_t { F32 = 0, BF16 = 1, F16 = 2, I8 = 3 };
enum Arch : int32_t { GPT2 = 0, LLAMA = 1 };

extern "C" {
struct Linear {
    const void* weight;   // null: no such layer
    const float* scale;   // int8: one per output row, else null
    const float* bias;    // or null
    int32_t kind;         // Kind
    int32_t transposed;   // 1: (in, out), float32 only
    int32_t out, in;
};

struct Block {
    const float* norm1_w;
    const float* norm1_b;  // GPT-2's layer norm; null for Llama's RMS norm
    Linear q, k, v, o;     // GPT-2: q is the fused c_attn (3 * width rows), k and v unused
    const float* norm2_w;
    const float* norm2_b;
    Linear gate, up, down;  // GPT-2: up is c_fc, down is c_proj, gate unused
};

struct Model {
    int32_t arch, layers, width, heads, kv_heads, head_dim, inner, vocab;
    int32_t cache_kind, embed_kind;
    float eps, attn_scale;
    const void* embed;         // (vocab, width) rows of embed_kind
    const float* embed_scale;  // int8 embeddings: one per row
    const float* positions;    // GPT-2: (positions, width) learned position embeddings
    const float* inv_freq;     // Llama: head_dim / 2 rotary frequencies
    const float* final_w;
    const float* final_b;
    Linear head;
    const Block* blocks;
};
}

// ---- scalar conversions -----------------------------------------------------------------------------------

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) {  // round to nearest even, as PyTorch does
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    if (std::isnan(f)) return 0x7fc0;
    return uint16_t((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

static inline float f16_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = uint32_t(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000 | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {  // subnormal: normalise
        exponent = 113;
        while (!(mantissa & 0x400)) { mantissa <<= 1; exponent--; }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
#endif
}

static inline uint16_t float_to_f16(float f) {  // round to nearest even
#if defined(__F16C__)
    return _cvtss_sh(f, 0);
#else
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    uint32_t sign = (bits >> 16) & 0x8000;
    int32_t exponent = int32_t((bits >> 23) & 0xff) - 127 + 15;
    uint32_t mantissa = bits & 0x7fffff;
    if (((bits >> 23) & 0xff) == 0xff) return uint16_t(sign | 0x7c00 | (mantissa ? 0x200 : 0));
    if (exponent >= 31) return uint16_t(sign | 0x7c00);
    if (exponent <= 0) {
        if (exponent < -10) return uint16_t(sign);
        mantissa |= 0x800000;
        uint32_t shift = uint32_t(14 - exponent), half = mantissa >> shift, rest = mantissa & ((1u << shift) - 1);
        uint32_t midpoint = 1u << (shift - 1);
        if (rest > midpoint || (rest == midpoint && (half & 1))) half++;
        return uint16_t(sign | half);
    }
    uint32_t half = sign | (uint32_t(exponent) << 10) | (mantissa >> 13), rest = mantissa & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) half++;  // may carry into the exponent: still right
    return uint16_t(half);
#endif
}

struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

static inline float scalar(float v) { return v; }
static inline float scalar(bf16 v) { return bf16_to_float(v.bits); }
static inline float scalar(f16 v) { return f16_to_float(v.bits); }
static inline float scalar(int8_t v) { return float(v); }

// ---- vectors: 16 floats with AVX-512, 8 with AVX2, none in plain C++ --------------------------------------

#if defined(__AVX512F__)
constexpr int LANES = 16;
typedef __m512 vec;
static inline vec vzero() { return _mm512_setzero_ps(); }
static inline vec vset(float v) { return _mm512_set1_ps(v); }
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
static inline vec vsub(vec a, vec b) { return _mm512_sub_ps(a, b); }
static inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
static inline void vstore(float* p, vec v) { _mm512_storeu_ps(p, v); }
static inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
static inline vec vload(const bf16* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
static inline vec vload(const f16* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
static inline vec vload(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
static inline vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }
static inline vec vdiv(vec a, vec b) { return _mm512_div_ps(a, b); }
static inline vec vclamp(vec x, float low, float high) {
    return _mm512_max_ps(_mm512_set1_ps(low), _mm512_min_ps(x, _mm512_set1_ps(high)));
}
static inline vec vfloor(vec x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
static inline vec vpow2(vec n) {  // 2^n for whole n in the normal range
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
constexpr int LANES = 8;
typedef __m256 vec;
static inline vec vzero() { return _mm256_setzero_ps(); }
static inline vec vset(float v) { return _mm256_set1_ps(v); }
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
static inline vec vsub(vec a, vec b) { return _mm256_sub_ps(a, b); }
static inline float vsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
static inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
static inline vec vload(const bf16* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline vec vload(const f16* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
static inline vec vload(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
static inline vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
static inline vec vdiv(vec a, vec b) { return _mm256_div_ps(a, b); }
static inline vec vclamp(vec x, float low, float high) {
    return _mm256_max_ps(_mm256_set1_ps(low), _mm256_min_ps(x, _mm256_set1_ps(high)));
}
static inline vec vfloor(vec x) { return _mm256_floor_ps(x); }
static inline vec vpow2(vec n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
#else
constexpr int LANES = 0;
#endif

// ---- the kernels --------------------------------------------------------------------------------------------

// dot(w, x) over n: two accumulators of LANES, then the tail.
template <class T>
static inline float dot(const T* w, const float* x, int n) {
    int i = 0;
    float total = 0.0f;
#if defined(__AVX512F__) || defined(__AVX2__)
    vec a = vzero(), b = vzero();
    for (; i + 2 * LANES <= n; i += 2 * LANES) {
        a = vfma(vload(w + i), vload(x + i), a);
        b = vfma(vload(w + i + LANES), vload(x + i + LANES), b);
    }
    total = vsum(vadd(a, b));
#endif
    for (; i < n; i++) total += scalar(w[i]) * x[i];
    return total;
}

// dot(rows[s], x) for S rows at once, each summed exactly as `dot` sums it. Rows far apart are separate memory
// streams, which the CPU's prefetchers serve at once: distilgpt2's bf16 products, one thread, 7.55 ms a row at a
// time, 5.39 ms with two rows half a matrix apart. Adjacent rows together (2, 4 or 8 of them: one stream in
// strides) were 1.7-2x slower than one row at a time.
template <int S, class T>
static inline void dot_streams(const T* const* rows, const float* x, int n, float* sums) {
    int i = 0;
    for (int s = 0; s < S; s++) sums[s] = 0.0f;
#if defined(__AVX512F__) || defined(__AVX2__)
    vec even[S], odd[S];
    for (int s = 0; s < S; s++) even[s] = odd[s] = vzero();
    for (; i + 2 * LANES <= n; i += 2 * LANES) {
        const vec x0 = vload(x + i), x1 = vload(x + i + LANES);
        for (int s = 0; s < S; s++) {
            even[s] = vfma(vload(rows[s] + i), x0, even[s]);
            odd[s] = vfma(vload(rows[s] + i + LANES), x1, odd[s]);
        }
    }
    for (int s = 0; s < S; s++) sums[s] = vsum(vadd(even[s], odd[s]));
#endif
    for (; i < n; i++)
        for (int s = 0; s < S; s++) sums[s] += scalar(rows[s][i]) * x[i];
}

// out += a * v over n
template <class T>
static inline void axpy(const T* v, float a, float* out, int n) {
    int i = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
    vec va = vset(a);
    for (; i + LANES <= n; i += LANES) vstore(out + i, vfma(vload(v + i), va, vload(out + i)));
#endif
    for (; i < n; i++) out[i] = std::fma(scalar(v[i]), a, out[i]);
}

// This thread's share of `n` rows, in multiples of 16 (one cache line of float32 results).
static inline void share(int n, int* begin, int* end) {
    int thread = omp_get_thread_num(), threads = omp_get_num_threads();
    int per = ((n + threads - 1) / threads + 15) / 16 * 16;
    *begin = thread * per < n ? thread * per : n;
    *end = *begin + per < n ? *begin + per : n;
}

// Rows read side by side (see dot_streams). The whole step, distilgpt2-shaped, one thread, a row at a time against
// 2 and 4 streams: fp32 13.37, 12.13, 12.03 ms; bf16 7.46, 5.46, 5.41; fp16 7.53, 5.36, 5.35; int8 4.53, 3.42, 3.62.
constexpr int STREAMS = 2;

// y[rows] = (y if accumulate) + W x * scale + bias, for rows [n0, n1) of an (out, in) weight: STREAMS stretches of
// the rows side by side (see dot_streams), each row summed the same way whatever the split.
template <class T>
static void rows(const Linear& layer, const float* x, float* y, int n0, int n1, bool accumulate) {
    const T* w = (const T*)layer.weight;
    const size_t in = layer.in;
    auto finish = [&](int n, float s) {
        if (layer.scale) s *= layer.scale[n];
        if (layer.bias) s += layer.bias[n];
        y[n] = accumulate ? y[n] + s : s;
    };
    const int stretch = (n1 - n0) / STREAMS;
    for (int n = n0; n < n0 + stretch; n++) {
        const T* starts[STREAMS];
        float sums[STREAMS];
        for (int s = 0; s < STREAMS; s++) starts[s] = w + (n + s * stretch) * in;
        dot_streams<STREAMS>(starts, x, layer.in, sums);
        for (int s = 0; s < STREAMS; s++) finish(n + s * stretch, sums[s]);
    }
    for (int n = n0 + STREAMS * stretch; n < n1; n++) finish(n, dot(w + n * in, x, layer.in));
}

// The same for float32 (in, out) weights (GPT-2's Conv1D): four input rows at a time into this thread's outputs.
static void columns(const Linear& layer, const float* x, float* y, int n0, int n1, bool accumulate) {
    const float* w = (const float*)layer.weight;
    const int in = layer.in, out = layer.out;
    for (int n = n0; n < n1; n++) y[n] = (accumulate ? y[n] : 0.0f) + (layer.bias ? layer.bias[n] : 0.0f);
    int k = 0;
    for (; k + 4 <= in; k += 4) {
        const float *w0 = w + size_t(k) * out, *w1 = w0 + out, *w2 = w1 + out, *w3 = w2 + out;
        const float x0 = x[k], x1 = x[k + 1], x2 = x[k + 2], x3 = x[k + 3];
        int n = n0;
#if defined(__AVX512F__) || defined(__AVX2__)
        const vec v0 = vset(x0), v1 = vset(x1), v2 = vset(x2), v3 = vset(x3);
        for (; n + LANES <= n1; n += LANES) {
            vec acc = vfma(vload(w0 + n), v0, vload(y + n));
            acc = vfma(vload(w1 + n), v1, acc);
            acc = vfma(vload(w2 + n), v2, acc);
            vstore(y + n, vfma(vload(w3 + n), v3, acc));
        }
#endif
        for (; n < n1; n++)  // as the vector lanes do it, so that how rows are shared out changes nothing
            y[n] = std::fma(w3[n], x3, std::fma(w2[n], x2, std::fma(w1[n], x1, std::fma(w0[n], x0, y[n]))));
    }
    for (; k < in; k++) axpy(w + size_t(k) * out + n0, x[k], y + n0, n1 - n0);
}

// This thread's rows of y = layer(x). No barrier: the caller puts one after the products it runs together.
static void linear_share(const Linear& layer, const float* x, float* y, bool accumulate = false) {
    int n0, n1;
    share(layer.out, &n0, &n1);
    if (n0 >= n1) return;
    if (layer.transposed) return columns(layer, x, y, n0, n1, accumulate);
    switch (layer.kind) {
        case F32: return rows<float>(layer, x, y, n0, n1, accumulate);
        case BF16: return rows<bf16>(layer, x, y, n0, n1, accumulate);
        case F16: return rows<f16>(layer, x, y, n0, n1, accumulate);
        default: return rows<int8_t>(layer, x, y, n0, n1, accumulate);
    }
}

static void layer_norm(const float* x, const float* w, const float* b, float eps, float* out, int n) {
    float mean = 0.0f, var = 0.0f;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    const float inv = 1.0f / std::sqrt(var / n + eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] - mean) * inv * w[i] + b[i];
}

static void rms_norm(const float* x, const float* w, float eps, float* out, int n) {
    float squares = 0.0f;
    for (int i = 0; i < n; i++) squares += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(squares / n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

static void normalize(const Model& m, const float* w, const float* b, const float* x, float* out) {
    if (b) layer_norm(x, w, b, m.eps, out, m.width);
    else rms_norm(x, w, m.eps, out, m.width);
}

// exp(x) in float32 as Cephes' expf computes it (within 2 ulp), in vectors: the C library's expf is one value at
// a time, and the GELU of distilgpt2's 6 blocks took 0.25 ms a token through std::tanh (41 us per 3072 values), a
// sixth of what its int8 products take.
#define EXP_STEPS(MUL, ADD, FMA, SET, CLAMP, FLOOR, POW2)                                                  \
    x = CLAMP(x, -87.0f, 88.0f);                                                                           \
    const auto n = FLOOR(FMA(x, SET(1.44269504088896341f), SET(0.5f)));                                    \
    const auto r = FMA(n, SET(2.12194440e-4f), FMA(n, SET(-0.693359375f), x));                             \
    auto p = SET(1.9875691500e-4f);                                                                        \
    p = FMA(p, r, SET(1.3981999507e-3f));                                                                  \
    p = FMA(p, r, SET(8.3334519073e-3f));                                                                  \
    p = FMA(p, r, SET(4.1665795894e-2f));                                                                  \
    p = FMA(p, r, SET(1.6666665459e-1f));                                                                  \
    p = FMA(p, r, SET(5.0000001201e-1f));                                                                  \
    p = ADD(FMA(MUL(p, r), r, r), SET(1.0f));                                                              \
    return MUL(p, POW2(n));

static inline float s_mul(float a, float b) { return a * b; }
static inline float s_add(float a, float b) { return a + b; }
static inline float s_fma(float a, float b, float c) { return std::fma(a, b, c); }
static inline float s_set(float a) { return a; }
static inline float s_clamp(float x, float low, float high) { return x < low ? low : (x > high ? high : x); }
static inline float s_pow2(float n) { return __builtin_bit_cast(float, (int32_t(n) + 127) << 23); }

static inline float fast_exp(float x) { EXP_STEPS(s_mul, s_add, s_fma, s_set, s_clamp, std::floor, s_pow2) }
#if defined(__AVX512F__) || defined(__AVX2__)
static inline vec vexp(vec x) { EXP_STEPS(vmul, vadd, vfma, vset, vclamp, vfloor, vpow2) }
#endif

static inline float gelu_tanh(float x) {  // GPT-2's "gelu_new"; tanh(u) = 1 - 2 / (exp(2u) + 1)
    const float u = 2.0f * 0.7978845608028654f * std::fma(0.044715f * (x * x), x, x);
    return 0.5f * x * (2.0f - 2.0f / (fast_exp(u) + 1.0f));
}

static inline float silu(float x) { return x / (1.0f + fast_exp(-x)); }

// The loops over them: vectors, then the tail one at a time, each value the same either way.
static void gelu_in_place(float* v, int n) {
    int i = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
    for (; i + LANES <= n; i += LANES) {  // 0.5 x (2 - 2 / (exp(2u) + 1)), u = sqrt(2/pi) (x + 0.044715 x^3)
        const vec x = vload(v + i);
        const vec u = vmul(vset(2.0f * 0.7978845608028654f), vfma(vmul(vset(0.044715f), vmul(x, x)), x, x));
        const vec tanh_plus_1 = vsub(vset(2.0f), vdiv(vset(2.0f), vadd(vexp(u), vset(1.0f))));
        vstore(v + i, vmul(vmul(vset(0.5f), x), tanh_plus_1));
    }
#endif
    for (; i < n; i++) v[i] = gelu_tanh(v[i]);
}

static void times_silu(float* up, const float* gate, int n) {
    int i = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
    for (; i + LANES <= n; i += LANES) {
        const vec g = vload(gate + i);
        vstore(up + i, vmul(vload(up + i), vdiv(g, vadd(vset(1.0f), vexp(vsub(vzero(), g))))));
    }
#endif
    for (; i < n; i++) up[i] *= silu(gate[i]);
}

static void exp_minus(float* v, float shift, int n) {
    int i = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
    for (; i + LANES <= n; i += LANES) vstore(v + i, vexp(vsub(vload(v + i), vset(shift))));
#endif
    for (; i < n; i++) v[i] = fast_exp(v[i] - shift);
}

static void embed_row(const Model& m, int token, float* out) {
    const size_t at = size_t(token) * m.width;
    for (int i = 0; i < m.width; i++) {
        switch (m.embed_kind) {
            case F32: out[i] = ((const float*)m.embed)[at + i]; break;
            case BF16: out[i] = scalar(((const bf16*)m.embed)[at + i]); break;
            case F16: out[i] = scalar(((const f16*)m.embed)[at + i]); break;
            default: out[i] = float(((const int8_t*)m.embed)[at + i]) * m.embed_scale[token];
        }
    }
}

static void store(void* cache, int cache_kind, size_t at, const float* values, int n) {
    for (int i = 0; i < n; i++) {
        switch (cache_kind) {
            case F32: ((float*)cache)[at + i] = values[i]; break;
            case BF16: ((uint16_t*)cache)[at + i] = float_to_bf16(values[i]); break;
            default: ((uint16_t*)cache)[at + i] = float_to_f16(values[i]);
        }
    }
}

// Rotate-half rotary positions, as transformers' Llama: pairs (i, i + half).
static void rotate(float* x, const float* cos_, const float* sin_, int half) {
    for (int i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos_[i] - b * sin_[i];
        x[i + half] = b * cos_[i] + a * sin_[i];
    }
}

// One head's attention over positions 0..pos of its key-value head.
template <class T>
static void attend(const Model& m, const float* q, const T* keys, const T* values, int pos, float* scores, float* out) {
    float best = -INFINITY;
    for (int t = 0; t <= pos; t++) {
        scores[t] = dot(keys + size_t(t) * m.head_dim, q, m.head_dim) * m.attn_scale;
        best = scores[t] > best ? scores[t] : best;
    }
    float total = 0.0f;
    exp_minus(scores, best, pos + 1);
    for (int t = 0; t <= pos; t++) total += scores[t];
    for (int i = 0; i < m.head_dim; i++) out[i] = 0.0f;
    for (int t = 0; t <= pos; t++) axpy(values + size_t(t) * m.head_dim, scores[t] / total, out, m.head_dim);
}

extern "C" {

// The next-token logits (vocab float32) of `token` at position `pos`, whose keys and values are written into
// the cache: kv[2 * layer] and kv[2 * layer + 1] are (kv_heads, capacity, head_dim) buffers.
int bardterm_step(const Model* model, void* const* kv, int capacity, int token, int pos, float* logits, int threads) {
    const Model& m = *model;
    if (token < 0 || token >= m.vocab || pos < 0 || pos >= capacity) return 1;
    const int q_width = m.heads * m.head_dim, kv_width = m.kv_heads * m.head_dim, half = m.head_dim / 2;
    std::vector<float> x(m.width), h(m.width), qkv(q_width + 2 * kv_width), attended(q_width),
        gate(m.inner), up(m.inner), scores(size_t(m.heads) * (pos + 1)), cos_(half), sin_(half);
    float *q = qkv.data(), *k = q + q_width, *v = k + kv_width;
    embed_row(m, token, x.data());
    if (m.arch == GPT2) {
        for (int i = 0; i < m.width; i++) x[i] += m.positions[size_t(pos) * m.width + i];
    } else {
        for (int i = 0; i < half; i++) {  // float32, as transformers computes its tables
            const float angle = float(pos) * m.inv_freq[i];
            cos_[i] = std::cos(angle);
            sin_[i] = std::sin(angle);
        }
    }
    const size_t at = size_t(pos) * m.head_dim, per_head = size_t(capacity) * m.head_dim;

#pragma omp parallel num_threads(threads)
    {
        for (int l = 0; l < m.layers; l++) {
            const Block& b = m.blocks[l];
#pragma omp single
            normalize(m, b.norm1_w, b.norm1_b, x.data(), h.data());
            linear_share(b.q, h.data(), q);  // GPT-2: q, k and v at once (they lie one after the other)
            if (m.arch == LLAMA) {
                linear_share(b.k, h.data(), k);
                linear_share(b.v, h.data(), v);
            }
#pragma omp barrier
#pragma omp for schedule(static)
            for (int g = 0; g < m.kv_heads; g++) {  // rotate and store this key-value head
                if (m.arch == LLAMA) rotate(k + g * m.head_dim, cos_.data(), sin_.data(), half);
                store(kv[2 * l], m.cache_kind, g * per_head + at, k + g * m.head_dim, m.head_dim);
                store(kv[2 * l + 1], m.cache_kind, g * per_head + at, v + g * m.head_dim, m.head_dim);
            }
#pragma omp for schedule(static)
            for (int head = 0; head < m.heads; head++) {
                float* qh = q + head * m.head_dim;
                if (m.arch == LLAMA) rotate(qh, cos_.data(), sin_.data(), half);
                const size_t from = size_t(head / (m.heads / m.kv_heads)) * per_head;
                float *s = scores.data() + size_t(head) * (pos + 1), *out = attended.data() + head * m.head_dim;
                switch (m.cache_kind) {
                    case F32: attend(m, qh, (const float*)kv[2 * l] + from, (const float*)kv[2 * l + 1] + from, pos, s, out); break;
                    case BF16: attend(m, qh, (const bf16*)kv[2 * l] + from, (const bf16*)kv[2 * l + 1] + from, pos, s, out); break;
                    default: attend(m, qh, (const f16*)kv[2 * l] + from, (const f16*)kv[2 * l + 1] + from, pos, s, out);
                }
            }
            linear_share(b.o, attended.data(), x.data(), true);  // the residual, added in place
#pragma omp barrier
#pragma omp single
            normalize(m, b.norm2_w, b.norm2_b, x.data(), h.data());
            {
                int n0, n1;
                share(m.inner, &n0, &n1);
                if (m.arch == GPT2) {
                    linear_share(b.up, h.data(), up.data());
                    gelu_in_place(up.data() + n0, n1 - n0);
                } else {
                    linear_share(b.gate, h.data(), gate.data());
                    linear_share(b.up, h.data(), up.data());
                    times_silu(up.data() + n0, gate.data() + n0, n1 - n0);
                }
            }
#pragma omp barrier
            linear_share(b.down, up.data(), x.data(), true);
#pragma omp barrier
        }
#pragma omp single
        normalize(m, m.final_w, m.final_b, x.data(), h.data());
        linear_share(m.head, h.data(), logits);
    }
    return 0;
}

// What this build vectorises with, for the status line and the benchmarks.
const char* bardterm_vector_isa() {
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    return "avx2";
#else
    return "scalar";
#endif
}
}
