// stats CUDA kernels (compiled with nvcc, or on the host by the emulated core). Device pointers
// in, the stream as an integer, all workspace allocated by Python; nothing here synchronises.
//
// moments: kernel 1 gives each block a tile of 32 channels x rows_per_chunk rows; its
// 32x8 threads each take every 8th row of one channel (coalesced 128-byte row segments),
// make two passes (count/sum/min/max, then float64 powers of the deviations from their own
// mean, the second pass served from L1/L2), and the 8 row lanes are Chan-merged in shared
// memory into one partial state per (chunk, channel). Kernel 2 merges the partials of each
// channel in a fixed pairwise tree, then into the state: the same formulas as the CPU path
// (stats.h). At most MAX_CHUNKS chunks: the workspace does not grow with N.
//
// latent: the caller groups the firing slots by latent (a CSR built with a stable sort,
// ops/stats.py), then one warp per latent folds its slots 32 at a time: coalesced loads of
// the CSR entries, histogram bins by integer atomics, the float64 sum/sumsq added in slot
// order (every lane adds the batch's values in lane order, the CPU kernel's order: bitwise
// equal to it) and the top-T list kept in shared memory in float64 as the CPU kernel keeps
// it, candidates filtered by the list's last entry with a ballot and inserted in slot order
// by the whole warp. The same bits on every run, and as on CPU.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/cuda.cuh"
#include "stats/stats.h"

namespace actspace {
namespace cuda {
namespace {

constexpr int TX = 32, TY = 8;      // moments block: channels x row lanes
constexpr int64_t MIN_ROWS = 256;   // rows per chunk at least
// Chunks per update at most: bounds the workspace (10 * d * 8 bytes per chunk, 2.6 MB at
// d = 4096) whatever N is, while 128 chunks x d/32 channel tiles still fill a GPU.
constexpr int64_t MAX_CHUNKS = 128;

int64_t rows_per_chunk(int64_t N) {
  const int64_t need = (N + MAX_CHUNKS - 1) / MAX_CHUNKS;
  return need > MIN_ROWS ? need : MIN_ROWS;
}

// part_f [chunks][8][d]: n, mean, m2, m3, m4, min, max, (unused); part_i [chunks][2][d].
template <typename T>
__global__ void moments_partial(const typename CT<T>::raw* __restrict__ x, int64_t N, int64_t d,
                                int64_t ld, int64_t rc, double* __restrict__ part_f,
                                int64_t* __restrict__ part_i) {
  __shared__ double sf[7][TY][TX];
  __shared__ long long si[2][TY][TX];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * TX + tx, chunk = blockIdx.y;
  const int64_t r0 = chunk * rc, r1 = min(N, r0 + rc);
  double cnt = 0, sum = 0, mn = INFINITY, mx = -INFINITY;
  long long zer = 0, nf = 0;
  if (c < d) {
    for (int64_t r = r0 + ty; r < r1; r += TY) {
      const double v = static_cast<double>(ldg<T>(x + r * ld + c));
      const bool fin = isfinite(v);
      cnt += fin;
      sum += fin ? v : 0.0;
      if (fin) { mn = fmin(mn, v); mx = fmax(mx, v); }
      zer += (v == 0);
      nf += !fin;
    }
  }
  // a float64 sum may overflow: the midrange is then a finite shift as good as any (as on CPU)
  const double m0 = cnt > 0 ? sum / cnt : 0.0;
  const double sh = isfinite(m0) ? m0 : 0.5 * mn + 0.5 * mx;
  double s1 = 0, s2 = 0, s3 = 0, s4 = 0;
  if (c < d) {
    for (int64_t r = r0 + ty; r < r1; r += TY) {
      const double v = static_cast<double>(ldg<T>(x + r * ld + c));
      const double dv = isfinite(v) ? v - sh : 0.0, d2 = dv * dv;
      s1 += dv; s2 += d2; s3 += d2 * dv; s4 += d2 * d2;
    }
  }
  double mean, m2, m3, m4;
  shifted_to_central(cnt, sh, s1, s2, s3, s4, mean, m2, m3, m4);
  sf[0][ty][tx] = cnt; sf[1][ty][tx] = mean; sf[2][ty][tx] = m2; sf[3][ty][tx] = m3;
  sf[4][ty][tx] = m4; sf[5][ty][tx] = mn; sf[6][ty][tx] = mx;
  si[0][ty][tx] = zer; si[1][ty][tx] = nf;
  __syncthreads();
  if (ty != 0 || c >= d) return;
  for (int y = 1; y < TY; ++y) {
    chan_merge(cnt, mean, m2, m3, m4, sf[0][y][tx], sf[1][y][tx], sf[2][y][tx], sf[3][y][tx],
               sf[4][y][tx]);
    mn = fmin(mn, sf[5][y][tx]);
    mx = fmax(mx, sf[6][y][tx]);
    zer += si[0][y][tx];
    nf += si[1][y][tx];
  }
  double* pf = part_f + chunk * 8 * d + c;
  pf[0] = cnt; pf[d] = mean; pf[2 * d] = m2; pf[3 * d] = m3; pf[4 * d] = m4;
  pf[5 * d] = mn; pf[6 * d] = mx;
  int64_t* pi = part_i + chunk * 2 * d + c;
  pi[0] = zer; pi[d] = nf;
}

// One thread per channel: the chunk partials of the channel are merged pairwise in a fixed
// tree (chunk a absorbs chunk a + s for s = 1, 2, 4, ...: log2(chunks) levels, rounding
// errors grow with the depth, not the count), in place in the workspace (each thread owns
// its channel's column), then the root is merged into the running state.
__global__ void moments_finish(int64_t d, int64_t chunks, double* __restrict__ part_f,
                               int64_t* __restrict__ part_i, MomentState st) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= d) return;
  for (int64_t step = 1; step < chunks; step *= 2) {
    for (int64_t a = 0; a + step < chunks; a += 2 * step) {
      double* pa = part_f + a * 8 * d + c;
      const double* pb = part_f + (a + step) * 8 * d + c;
      chan_merge(pa[0], pa[d], pa[2 * d], pa[3 * d], pa[4 * d], pb[0], pb[d], pb[2 * d],
                 pb[3 * d], pb[4 * d]);
      pa[5 * d] = fmin(pa[5 * d], pb[5 * d]);
      pa[6 * d] = fmax(pa[6 * d], pb[6 * d]);
      part_i[a * 2 * d + c] += part_i[(a + step) * 2 * d + c];
      part_i[a * 2 * d + d + c] += part_i[(a + step) * 2 * d + d + c];
    }
  }
  double n = st.count[c], mean = st.mean[c], m2 = st.m2[c], m3 = st.m3[c], m4 = st.m4[c];
  const double* pf = part_f + c;
  chan_merge(n, mean, m2, m3, m4, pf[0], pf[d], pf[2 * d], pf[3 * d], pf[4 * d]);
  const double mn = fmin(st.min[c], pf[5 * d]), mx = fmax(st.max[c], pf[6 * d]);
  st.count[c] = n; st.mean[c] = mean; st.m2[c] = m2; st.m3[c] = m3; st.m4[c] = m4;
  st.min[c] = mn; st.max[c] = mx;
  st.zeros[c] += part_i[c];
  st.nonfinite[c] += part_i[d + c];
  if (n > 0) st.absmax[c] = fmax(st.absmax[c], fmax(-mn, mx));
}

// ------------------------------------------------------------------ latent statistics
constexpr unsigned kFull = 0xffffffffu;
constexpr int kFoldWarps = 4;  // latents per block of the fold (one warp each)
constexpr size_t kFoldSmemMax = 48 << 10;

// Shared memory of one warp: the latent's top-T list as the CPU kernel keeps it while it
// folds (float64 values, tokens: a float64 value is rounded to float32 only when the list is
// stored back), then one batch of 32 entries (values, tokens).
__host__ __device__ inline size_t fold_smem_per_warp(int64_t T) {
  return static_cast<size_t>(T + 32) * 16;
}

// Inserts (v, tok) into the warp's sorted list lv/lt [T] exactly where the CPU kernel's
// serial insertion puts it (csrc/stats/cpu.cpp); called by all 32 lanes with the same
// arguments. The position search and the shift run 32 entries at a time.
__device__ void top_insert(double* lv, int64_t* lt, int64_t T, double v, int64_t tok, int lane) {
  const bool enters = top_before(v, tok, lv[T - 1], lt[T - 1]);
  // every lane's read of the last entry before lane 0 may overwrite it below (p == T - 1
  // takes no __syncwarp on the way; a ballot orders execution, not memory): racecheck on
  // the H200 reported this read against the write of the new entry
  __syncwarp();
  if (!enters) return;  // beaten by an earlier insertion
  // the serial insertion moves down past every entry the new one beats and stops after the
  // last entry (below T - 1) it does not beat: p = that entry + 1, or 0
  int64_t p = 0;
  for (int64_t r0 = (T - 2) / 32 * 32; T >= 2 && r0 >= 0; r0 -= 32) {
    const int64_t i = r0 + lane;
    const unsigned stays = __ballot_sync(kFull, i < T - 1 && !top_before(v, tok, lv[i], lt[i]));
    if (stays) {
      p = r0 + (31 - __clz(static_cast<int>(stays))) + 1;
      break;
    }
  }
  // entries p .. T-2 move up one place, the highest 32 first (a round reads what the round
  // before it has already moved away)
  for (int64_t r1 = T - 1; r1 > p; r1 -= 32) {
    const int64_t i = r1 - 1 - lane;
    const bool moves = i >= p;
    double mv = 0;
    int64_t mt = 0;
    if (moves) { mv = lv[i]; mt = lt[i]; }
    __syncwarp();  // every read of this round before any write (lane l writes what l-1 reads)
    if (moves) { lv[i + 1] = mv; lt[i + 1] = mt; }
    __syncwarp();  // the next round overwrites what this one read
  }
  if (lane == 0) { lv[p] = v; lt[p] = tok; }
  __syncwarp();
}

// Whether the warp's list lv/lt [T] is in ranking order. Only then does its last entry never
// fall as entries are inserted, so that it filters a whole batch's candidates at once. The
// kernels keep lists sorted, but a stored float64 list rounded to float32 can show ties out
// of token order (and a state can be edited by hand): such a list is folded unfiltered.
__device__ bool list_sorted(const double* lv, const int64_t* lt, int64_t T, int lane) {
  for (int64_t r0 = 0; r0 + 1 < T; r0 += 32) {
    const int64_t i = r0 + lane;
    if (__ballot_sync(kFull, i + 1 < T && top_before(lv[i + 1], lt[i + 1], lv[i], lt[i])))
      return false;
  }
  return true;
}

// One warp per latent folds the latent's CSR entries 32 at a time: coalesced loads of the
// entries, a gather of their values, histogram bins by integer atomics (order-free), the
// float64 sum and sum of squares added in slot order by every lane (so the same bits as the
// CPU kernel's serial loop), and the top-T candidates (those beating the list's last entry
// when the batch starts, if the list is sorted) inserted one by one in slot order, each
// checked again against the list's last entry as the CPU kernel does.
template <typename V>
__global__ void latent_fold(const typename CT<V>::raw* __restrict__ values, int64_t vld, int64_t k,
                            int64_t M, int64_t T, int64_t nbins, double lo, double hi,
                            int64_t tok0, const int64_t* __restrict__ off,
                            const int64_t* __restrict__ ent, int64_t* count, double* sum,
                            double* sumsq, int64_t* hist, float* top_values,
                            int64_t* top_tokens) {
  ACTSPACE_DYNAMIC_SMEM(unsigned char, smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + warp;
  if (m >= M) return;  // whole warps exit together (m is warp-uniform)
  const int64_t e0 = off[m], e1 = off[m + 1];
  if (e0 == e1) return;
  double* lv = reinterpret_cast<double*>(smem + warp * fold_smem_per_warp(T));
  int64_t* lt = reinterpret_cast<int64_t*>(lv + T);
  double* bv = reinterpret_cast<double*>(lt + T);
  int64_t* bt = reinterpret_cast<int64_t*>(bv + 32);
  float* tv = top_values + m * T;
  int64_t* tt = top_tokens + m * T;
  for (int64_t i = lane; i < T; i += 32) { lv[i] = tv[i]; lt[i] = tt[i]; }
  __syncwarp();
  const bool filter = list_sorted(lv, lt, T, lane);
  auto* h = reinterpret_cast<unsigned long long*>(hist + m * nbins);
  double s = 0, ss = 0;
  for (int64_t base = e0; base < e1; base += 32) {
    const int n_here = static_cast<int>(min(static_cast<int64_t>(32), e1 - base));
    const bool live = lane < n_here;
    double v = 0;
    int64_t tok = 0;
    if (live) {
      const int64_t id = ent[base + lane], n = id / k, j = id % k;
      v = static_cast<double>(ldg<V>(values + n * vld + j));
      tok = tok0 + n;
      atomicAdd(h + latent_bin(log10(v), lo, hi, nbins), 1ull);
      bv[lane] = v;
      bt[lane] = tok;
    }
    const unsigned cands = __ballot_sync(
        kFull, live && T > 0 && (!filter || top_before(v, tok, lv[T - 1], lt[T - 1])));
    __syncwarp();  // the batch is in bv/bt for every lane
    for (int i = 0; i < n_here; ++i) {
      s += bv[i];
      ss += square_rn(bv[i]);
    }
    for (unsigned rest = cands; rest != 0; rest &= rest - 1) {
      const int i = __ffs(rest) - 1;
      top_insert(lv, lt, T, bv[i], bt[i], lane);
    }
    __syncwarp();  // every lane has read the batch before the next one overwrites it
  }
  if (lane == 0) {
    count[m] += e1 - e0;
    sum[m] += s;
    sumsq[m] += ss;
  }
  for (int64_t i = lane; i < T; i += 32) {
    tv[i] = static_cast<float>(lv[i]);
    tt[i] = lt[i];
  }
}

inline unsigned grid_for(int64_t n, int block) { return static_cast<unsigned>((n + block - 1) / block); }

}  // namespace

int64_t moments_cuda_chunks(int64_t N) {
  const int64_t rc = rows_per_chunk(N);
  return (N + rc - 1) / rc;
}

void moments_update_cuda(const void* x, int dtype, int64_t N, int64_t d, int64_t ld,
                         const MomentState& st, double* part_f, int64_t* part_i,
                         Stream stream) {
  if (N <= 0 || d <= 0) return;
  cudaStream_t s = as_stream(stream);
  const int64_t rc = rows_per_chunk(N), chunks = (N + rc - 1) / rc;
  dispatch_float(dtype, "moments_update (CUDA): x", [&](auto tag) {
    using T = decltype(tag);
    dim3 grid(grid_for(d, TX), static_cast<unsigned>(chunks)), block(TX, TY);
    ACTSPACE_LAUNCH(grid, block, 0, s, moments_partial<T>)(
        static_cast<const typename CT<T>::raw*>(x), N, d, ld, rc, part_f, part_i);
  });
  check_launch("moments_partial");
  ACTSPACE_LAUNCH(dim3(grid_for(d, 256)), dim3(256), 0, s, moments_finish)(d, chunks, part_f,
                                                                          part_i, st);
  check_launch("moments_finish");
}

void latent_update_cuda(const void* values, int vdtype, int64_t vld, int64_t N, int64_t k,
                        int64_t M, int64_t T, int64_t nbins, double lo, double hi,
                        int64_t token_offset, int64_t* count, double* sum, double* sumsq,
                        int64_t* hist, float* top_values, int64_t* top_tokens,
                        const int64_t* ws, Stream stream) {
  if (N <= 0 || k <= 0 || M <= 0) return;
  cudaStream_t s = as_stream(stream);
  // ws: the caller's CSR of the firing slots by latent (ops/stats.py, csr_by_latent):
  // offsets [M + 1], then entries n * k + j in slot order within each latent
  const int64_t* off = ws;
  const int64_t* ent = ws + M + 1;
  // as many warps (latents) per block as the shared-memory lists allow, at most kFoldWarps
  const size_t per_warp = fold_smem_per_warp(T);
  if (per_warp > kFoldSmemMax)
    throw std::invalid_argument("latent_update (CUDA): top_t = " + std::to_string(T) +
                                " exceeds " + std::to_string(kFoldSmemMax / 16 - 32) +
                                ", the longest top list the fold keeps in shared memory");
  const int warps = static_cast<int>(std::min<size_t>(kFoldWarps, kFoldSmemMax / per_warp));
  dispatch_float(vdtype, "latent_update (CUDA): values", [&](auto tag) {
    using V = decltype(tag);
    ACTSPACE_LAUNCH(dim3(grid_for(M, warps)), dim3(32 * warps), warps * per_warp, s,
                    latent_fold<V>)(
        static_cast<const typename CT<V>::raw*>(values), vld, k, M, T, nbins, lo, hi,
        token_offset, off, ent, count, sum, sumsq, hist, top_values, top_tokens);
  });
  check_launch("latent_update");
}

}  // namespace cuda
}  // namespace actspace
