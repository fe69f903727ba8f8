// The compiled CPU augmentation path's hand-written loops (landslide/augment/native.py builds and
// loads this file; compiled.py calls it): the bilinear gather, then blur, noise and holes per sample.
// Plain C ABI, no torch headers: it builds in a fraction of a second with the C++ compiler Inductor
// already needs.
//
// Why by hand: a warped sample reads its 196 KB (12 x 64 x 64 float32) source along rotated lines,
// which the hardware prefetchers do not follow, so a generated loop waits on memory for most of its
// time (a 20-degree rotation ran 4-5x slower than a pure shift). Here each thread prefetches the next
// sample of its share into L2 while it interpolates the current one: one cache line per output pixel.
// The second loop makes the noise where it adds it, so the noise fields never go through memory.
//
// Gather layout: x (N, H, W, C) float32 (a channels-last fold), index (B,) int64 rows of x, p00
// (B, H, W) int32 flat index y * W + x of the top-left tap, frac (2, B, H, W) float32 fractions fx, fy
// towards the other three taps; out (B, H, W, C) float32. Taps past the last pixel are clamped in
// (their weight is 0 there: the position sits on the border), as compiled.py's _taps documents.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>
#if defined(__AVX512F__) && !defined(LS_NO_AVX512)
#include <immintrin.h>
#define LS_AVX512 1
#else
#define LS_AVX512 0
#endif

namespace {

typedef float v4 __attribute__((vector_size(16)));  // SSE/NEON width: every target has it
inline v4 load4(const float *p) { v4 v; memcpy(&v, p, sizeof v); return v; }
inline void store4(float *p, v4 v) { memcpy(p, &v, sizeof v); }

struct Job {
  const float *x; const int64_t *index; const int32_t *p00; const float *frac; float *out;
  int64_t b, h, w, c, begin, end;
};

struct FinishArgs {
  int64_t b, h, w, c;
  const uint8_t *blur; const float *kern; int64_t kw;  // (B,) flags, (B, kw) 1-D kernels
  const float *z; const int32_t *zrow; const float *std;  // noise rows (R, H, W, C) or null; row per sample or -1; (B,)
  uint64_t seed;                                       // with z null: the rows are made here, from this seed
  const int64_t *holes; int64_t k;                     // (B, K, 4)
};

constexpr int64_t LINE = 16;  // floats per 64-byte cache line

// One output pixel: four taps of CC channels (CC == 0: the run-time c) weighted and summed.
template <int64_t CC>
inline void pixel(const float *__restrict__ t0, const float *__restrict__ t1, const float *__restrict__ t2,
                  const float *__restrict__ t3, float w0, float w1, float w2, float w3, float *__restrict__ dst,
                  int64_t c) {
#if LS_AVX512
  if (CC > 0 && CC <= 16) {  // one masked vector per tap (12 channels: the Zindi layout)
    const __mmask16 m = (__mmask16)((1u << CC) - 1);
    const __m512 a = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, t0), _mm512_set1_ps(w0)),
                                   _mm512_mul_ps(_mm512_maskz_loadu_ps(m, t1), _mm512_set1_ps(w1)));
    const __m512 b = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, t2), _mm512_set1_ps(w2)),
                                   _mm512_mul_ps(_mm512_maskz_loadu_ps(m, t3), _mm512_set1_ps(w3)));
    _mm512_mask_storeu_ps(dst, m, _mm512_add_ps(a, b));
    return;
  }
#endif
  if (CC > 0 && CC % 4 == 0) {
    for (int64_t k = 0; k < CC; k += 4)
      store4(dst + k, (load4(t0 + k) * w0 + load4(t1 + k) * w1) + (load4(t2 + k) * w2 + load4(t3 + k) * w3));
    return;
  }
  for (int64_t k = 0; k < c; k++) dst[k] = (t0[k] * w0 + t1[k] * w1) + (t2[k] * w2 + t3[k] * w3);
}

template <int64_t CC>
void run(const Job &j) {
  const int64_t c = CC > 0 ? CC : j.c, hw = j.h * j.w, last = hw - 1, plane = hw * c;
  const int64_t lines = (plane + LINE - 1) / LINE, per_pixel = (lines + hw - 1) / hw;
  auto source = [&](int64_t s) { return j.x + j.index[s] * plane; };
  if (j.begin < j.end)  // the first sample of this share: fetched up front, the rest while the previous one runs
    for (int64_t l = 0; l < lines; l++) __builtin_prefetch(source(j.begin) + l * LINE, 0, 2);
  for (int64_t s = j.begin; s < j.end; s++) {
    const float *__restrict__ xs = source(s);
    const float *next = s + 1 < j.end ? source(s + 1) : nullptr;
    const int32_t *p = j.p00 + s * hw;
    const float *fx = j.frac + s * hw, *fy = j.frac + (j.b + s) * hw;
    float *out = j.out + s * plane;
    for (int64_t i = 0; i < hw; i++) {
      if (next)
        for (int64_t l = i * per_pixel; l < (i + 1) * per_pixel && l < lines; l++)
          __builtin_prefetch(next + l * LINE, 0, 2);
      int64_t q = p[i];
      q = q < 0 ? 0 : (q > last ? last : q);  // p00 is clamped by its maker; clamped again, reads stay in bounds
      const int64_t q1 = q + 1 < last ? q + 1 : last, q2 = q + j.w < last ? q + j.w : last;
      const int64_t q3 = q + j.w + 1 < last ? q + j.w + 1 : last;
      const float ax = fx[i], ay = fy[i], gx = 1.0f - ax, gy = 1.0f - ay;
      pixel<CC>(xs + q * c, xs + q1 * c, xs + q2 * c, xs + q3 * c, gx * gy, ax * gy, gx * ay, ax * ay, out + i * c, c);
    }
  }
}

// Calls f(std::integral_constant<int64_t, CC>) with CC = c for the band layouts this project ships
// (12 Zindi, 4 optical, 3 RGB), whose loops the compiler unrolls, and CC = 0 (c read at run time) else.
template <class F>
void with_channels(int64_t c, F &&f) {
  switch (c) {
    case 12: f(std::integral_constant<int64_t, 12>{}); break;
    case 4: f(std::integral_constant<int64_t, 4>{}); break;
    case 3: f(std::integral_constant<int64_t, 3>{}); break;
    default: f(std::integral_constant<int64_t, 0>{});
  }
}

// Counter-based standard normals: pair i is SplitMix64's i-th output after `seed` (Steele et al. 2014),
// its top and middle 24 bits two uniforms that Box-Muller turns into two normals (24-bit uniforms cap
// |z| at 5.8: a Gaussian past that is one draw in 10^8). The same numbers as the formula in float64
// torch ops (tests/test_native.py, to 2e-6); log and sin/cos are short polynomials (errors below
// float32's) that the compiler vectorises, which libm's calls are not.
inline float log_unit(float u) {  // ln u for u in (0, 1]
  int32_t bits;
  memcpy(&bits, &u, sizeof bits);
  int32_t e = ((bits >> 23) & 0xFF) - 127;
  const int32_t mb = (bits & 0x7FFFFF) | 0x3F800000;
  float m;
  memcpy(&m, &mb, sizeof m);  // u = m * 2^e, m in [1, 2)
  const bool big = m > 1.41421356f;  // centre m on 1: m in [0.707, 1.414]
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float f = m - 1.0f, t = f / (2.0f + f), t2 = t * t;  // ln m = 2 atanh(t), |t| < 0.172
  const float ln_m = 2.0f * t * (1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9)))));
  return (float)e * 0.693147180559945f + ln_m;
}

inline void sincos_turns(float u, float &s, float &c) {  // sin, cos of 2 pi u for u in [0, 1)
  const int32_t q = (int32_t)(u * 4.0f + 0.5f);  // nearest quarter turn, 0..4
  const float x = (u - (float)q * 0.25f) * 6.28318530717959f, x2 = x * x;  // |x| <= pi/4 (u - q/4 is exact)
  const float sx = x * (1.0f - x2 / 6 * (1.0f - x2 / 20 * (1.0f - x2 / 42 * (1.0f - x2 / 72))));
  const float cx = 1.0f - x2 / 2 * (1.0f - x2 / 12 * (1.0f - x2 / 30 * (1.0f - x2 / 56 * (1.0f - x2 / 90))));
  const int32_t k = q & 3;
  s = k == 0 ? sx : (k == 1 ? cx : (k == 2 ? -sx : -cx));
  c = k == 0 ? cx : (k == 1 ? -sx : (k == 2 ? -cx : sx));
}

inline void normal_pair(uint64_t seed, uint64_t i, float &n1, float &n2) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  const float u1 = (float)((z >> 40) + 1) * 5.9604644775390625e-8f;   // (0, 1], 2^-24 steps
  const float u2 = (float)((z >> 16) & 0xFFFFFF) * 5.9604644775390625e-8f;  // [0, 1)
  const float r = sqrtf(-2.0f * log_unit(u1));
  float s, c;
  sincos_turns(u2, s, c);
  n1 = r * c;
  n2 = r * s;
}

// Adds sd times noise row `row` to img (H*W pixels of c channels): pair (pixel, j) of the row's
// hw * pairs counters fills channel j (cos) and channel pairs + j (sin, when there is one).
template <int64_t CC>
void add_noise(float *__restrict__ img, uint64_t seed, int64_t row, int64_t hw, int64_t c_rt, float sd) {
  const int64_t c = CC > 0 ? CC : c_rt, pairs = (c + 1) / 2;
  constexpr int64_t CHUNK = 1024;  // pairs made at a time, into two stack buffers
  const int64_t step = CHUNK / pairs > 0 ? CHUNK / pairs : 1;  // pixels a chunk
  float n1[CHUNK], n2[CHUNK];
  for (int64_t p0 = 0; p0 < hw; p0 += step) {
    const int64_t np = hw - p0 < step ? hw - p0 : step, m = np * pairs;
    const uint64_t base = (uint64_t)((row * hw + p0) * pairs);
    if (m <= CHUNK) {
#pragma GCC ivdep
      for (int64_t t = 0; t < m; t++) normal_pair(seed, base + t, n1[t], n2[t]);
      for (int64_t p = 0; p < np; p++) {
        float *px = img + (p0 + p) * c;
        for (int64_t j = 0; j < pairs; j++) px[j] += n1[p * pairs + j] * sd;
        for (int64_t j = 0; j < c - pairs; j++) px[pairs + j] += n2[p * pairs + j] * sd;
      }
    } else {  // more than 2 * CHUNK channels: one pair at a time
      for (int64_t t = 0; t < m; t++) {
        float a, b;
        normal_pair(seed, base + t, a, b);
        const int64_t p = t / pairs, j = t - p * pairs;
        img[(p0 + p) * c + j] += a * sd;
        if (pairs + j < c) img[(p0 + p) * c + pairs + j] += b * sd;
      }
    }
  }
}

// One pass of the separable blur, src -> dst (H, W, C), along rows (x) or columns (y), with the 1-D
// kernel `kern` of kw taps centred on the pixel; reflect-101 borders, as cv2 and torch's "reflect".
template <int64_t CC>
void blur_pass(const float *__restrict__ src, float *__restrict__ dst, const float *kern, int64_t kw, int64_t h,
               int64_t w, int64_t c_rt, bool along_x) {
  const int64_t c = CC > 0 ? CC : c_rt, r = kw / 2;
  auto reflect = [](int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i); };
  for (int64_t y = 0; y < h; y++)
    for (int64_t x = 0; x < w; x++) {
      float *out = dst + (y * w + x) * c;
      for (int64_t ch = 0; ch < c; ch++) out[ch] = 0.0f;
      for (int64_t i = 0; i < kw; i++) {
        const float *in = src + (along_x ? y * w + reflect(x + i - r, w) : reflect(y + i - r, h) * w + x) * c;
        for (int64_t ch = 0; ch < c; ch++) out[ch] += kern[i] * in[ch];
      }
    }
}

// Blur, then noise, then holes: the order of the eager paths, on one sample of out (H, W, C) in
// place. `scratch` holds H * W * C floats.
template <int64_t CC>
void finish_one(float *__restrict__ img, float *__restrict__ scratch, const FinishArgs &a, int64_t s) {
  const int64_t h = a.h, w = a.w, c = CC > 0 ? CC : a.c;
  if (a.blur[s]) {
    blur_pass<CC>(img, scratch, a.kern + s * a.kw, a.kw, h, w, c, true);  // rows: img -> scratch
    blur_pass<CC>(scratch, img, a.kern + s * a.kw, a.kw, h, w, c, false);  // columns: scratch -> img
  }
  if (a.zrow[s] >= 0 && a.z) {
    const float *z = a.z + a.zrow[s] * h * w * c;
    const float sd = a.std[s];
    for (int64_t e = 0; e < h * w * c; e++) img[e] += z[e] * sd;
  } else if (a.zrow[s] >= 0) {
    add_noise<CC>(img, a.seed, a.zrow[s], h * w, c, a.std[s]);
  }
  for (int64_t k = 0; k < a.k; k++) {  // half-open boxes y0, x0, y1, x1; an empty one has y1 <= y0
    const int64_t *box = a.holes + (s * a.k + k) * 4;
    const int64_t y0 = box[0] < 0 ? 0 : box[0], x0 = box[1] < 0 ? 0 : box[1];
    const int64_t y1 = box[2] > h ? h : box[2], x1 = box[3] > w ? w : box[3];
    for (int64_t y = y0; y < y1; y++)
      if (x1 > x0) memset(img + (y * w + x0) * c, 0, sizeof(float) * (x1 - x0) * c);
  }
}

}  // namespace

// Splits the batch into `threads` contiguous shares, one per OpenMP thread. Built with -fopenmp, this
// library binds to the libgomp torch has already loaded (the same soname), so it runs on torch's own
// thread pool: a second runtime's threads would contend with Inductor's spinning ones. Returns 0.
extern "C" int ls_interpolate(const float *x, const int64_t *index, const int32_t *p00, const float *frac,
                              float *out, int64_t b, int64_t h, int64_t w, int64_t c, int threads) {
  threads = threads < 1 ? 1 : threads;
  if (threads > b) threads = b > 0 ? (int)b : 1;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int t = 0; t < threads; t++)
    with_channels(c, [&](auto cc) {
      run<decltype(cc)::value>(Job{x, index, p00, frac, out, b, h, w, c, b * t / threads, b * (t + 1) / threads});
    });
  return 0;
}

// Blur, noise and holes on every sample of out (B, H, W, C) in place (see finish_one). Samples with no
// blur cost a pass over their noise and holes only. Returns 0, or 1 when the scratch could not be had.
extern "C" int ls_finish(float *out, int64_t b, int64_t h, int64_t w, int64_t c, const uint8_t *blur,
                         const float *kern, int64_t kw, const float *z, const int32_t *zrow, const float *std,
                         int64_t seed, const int64_t *holes, int64_t k, int threads) {
  const FinishArgs a{b, h, w, c, blur, kern, kw, z, zrow, std, (uint64_t)seed, holes, k};
  threads = threads < 1 ? 1 : threads;
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    float *scratch = static_cast<float *>(malloc(sizeof(float) * h * w * c));
    if (!scratch) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t s = 0; s < b; s++)
      if (scratch)
        with_channels(c, [&](auto cc) { finish_one<decltype(cc)::value>(out + s * h * w * c, scratch, a, s); });
    free(scratch);
  }
  return failed;
}
