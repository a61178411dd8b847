// The host emulation of CUDA launches and intra-block synchronisation (see cuda_emulate.h).
// Built only into the emulated core (ACTSPACE_CUDA_EMULATE=ON).
#include "common/cuda_emulate.h"

#include <algorithm>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace actspace {
namespace emu {

thread_local ThreadCoords tl_coords;

namespace {

constexpr unsigned kMaxThreads = 1024, kMaxGridYZ = 65535;
constexpr size_t kMaxDynamicSmem = 48 << 10;  // without cudaFuncSetAttribute opt-in

// A reusable barrier whose party shrinks as threads exit (CUDA counts exited threads as
// arrived). State = (expected << 32 | arrived) in one atomic word, a generation counter that
// waiters sleep on (futex through std::atomic::wait, no mutex to fight over on wake-up).
// Arrivals are acq_rel read-modify-writes and the release bumps the generation with release
// order, so ThreadSanitizer sees exactly the edges a real barrier makes and no others.
class Barrier {
 public:
  void reset(unsigned n) { state_.store(uint64_t(n) << 32, std::memory_order_relaxed); }
  // Returns how many threads arrived at this opening of the barrier (exited ones excluded).
  unsigned arrive_and_wait() {
    const uint32_t gen = gen_.load(std::memory_order_acquire);
    uint64_t s = state_.load(std::memory_order_relaxed), next;
    do {
      const uint32_t expected = uint32_t(s >> 32), arrived = uint32_t(s) + 1;
      next = arrived >= expected ? uint64_t(expected) << 32 : (s & ~0xffffffffull) | arrived;
    } while (!state_.compare_exchange_weak(s, next, std::memory_order_acq_rel));
    if (uint32_t(next) == 0) {  // the last one in: open the barrier
      open(gen, uint32_t(s) + 1);
      return uint32_t(s) + 1;
    }
    for (uint32_t g = gen; g == gen; g = gen_.load(std::memory_order_acquire)) gen_.wait(gen);
    // opened[] of this generation is overwritten two openings later, which needs this
    // thread to arrive again first
    return opened_[gen & 1];
  }
  void drop() {
    uint64_t s = state_.load(std::memory_order_relaxed), next;
    bool opens;
    do {
      const uint32_t expected = uint32_t(s >> 32) - 1, arrived = uint32_t(s);
      opens = arrived > 0 && arrived >= expected;
      next = opens ? uint64_t(expected) << 32 : (uint64_t(expected) << 32) | arrived;
    } while (!state_.compare_exchange_weak(s, next, std::memory_order_acq_rel));
    if (opens) open(gen_.load(std::memory_order_relaxed), uint32_t(s));
  }

 private:
  void open(uint32_t gen, unsigned arrived) {
    opened_[gen & 1] = arrived;
    gen_.fetch_add(1, std::memory_order_release);
    gen_.notify_all();
  }
  unsigned opened_[2] = {0, 0};
  std::atomic<uint64_t> state_{0};
  std::atomic<uint32_t> gen_{0};
};

struct Warp {
  Barrier bar;
  unsigned lanes = 0;             // lanes that exist (the last warp of a block may be short)
  // Exchange slots, double-buffered: a lane writes slot[phase][lane], the barrier, then reads
  // slot[phase][src]. The next exchange uses the other buffer, and the one after that can
  // only start once every lane has passed the next barrier, i.e. finished reading this one:
  // one barrier per shuffle or ballot instead of two.
  uint64_t slot[2][32];
  unsigned phase[32];  // per lane (each lane touches only its own)
};

struct Block {
  Barrier bar;
  std::vector<std::unique_ptr<Warp>> warps;
  std::unique_ptr<unsigned char[]> smem;
  std::mutex err_m;
  std::string error;  // first misuse seen in this launch
};

Block* g_block = nullptr;  // the block being run (one at a time, under g_launch)
std::mutex g_launch;

void report(const std::string& msg) {
  std::lock_guard<std::mutex> lock(g_block->err_m);
  if (g_block->error.empty()) g_block->error = msg;
}

unsigned linear_tid() {
  const auto& c = tl_coords;
  return c.thread.x + c.block_dim.x * (c.thread.y + c.block_dim.y * c.thread.z);
}

std::string where() {
  const auto& c = tl_coords;
  return " (block (" + std::to_string(c.block.x) + "," + std::to_string(c.block.y) + "," +
         std::to_string(c.block.z) + "), thread " + std::to_string(linear_tid()) + ")";
}

Warp& my_warp() { return *g_block->warps[linear_tid() / 32]; }

// The mask must name every lane of the warp (all we support), and every lane it names must
// have taken part: `arrived` (from the barrier) fewer than the lanes named means a named lane
// had exited, undefined behaviour on a GPU.
void check_mask(const Warp& w, unsigned mask, unsigned arrived, const char* what) {
  const unsigned all = w.lanes == 32 ? 0xffffffffu : ((1u << w.lanes) - 1u);
  if (mask != 0xffffffffu) {
    report(std::string(what) + ": the emulator supports full warp masks only, got mask " +
           std::to_string(mask) + where());
  } else if (all != 0xffffffffu) {
    report(std::string(what) + ": full mask in a warp of " + std::to_string(w.lanes) +
           " threads names lanes that do not exist" + where());
  } else if (arrived != w.lanes) {
    report(std::string(what) + ": mask 0xffffffff names lanes that have exited (" +
           std::to_string(w.lanes - arrived) + " of 32)" + where());
  }
}

// A pool of OS threads reused across blocks and launches (creating threads per block would
// dominate the run time, under the sanitizers most of all).
class Pool {
 public:
  void run(unsigned n, const std::function<void(unsigned)>& job) {
    std::unique_lock<std::mutex> lock(m_);
    while (workers_ < n) {
      std::thread(&Pool::loop, this, workers_++).detach();
    }
    job_ = &job;
    active_ = n;
    remaining_ = n;
    ++gen_;
    start_.notify_all();
    done_.wait(lock, [&] { return remaining_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(unsigned id) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      start_.wait(lock, [&] { return gen_ != seen; });
      seen = gen_;
      if (id >= active_) continue;
      const auto* job = job_;
      lock.unlock();
      (*job)(id);
      lock.lock();
      if (--remaining_ == 0) done_.notify_one();
    }
  }
  std::mutex m_;
  std::condition_variable start_, done_;
  unsigned workers_ = 0, active_ = 0, remaining_ = 0;
  uint64_t gen_ = 0;
  const std::function<void(unsigned)>* job_ = nullptr;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: its detached threads outlive main
  return *p;
}

void fill_garbage(unsigned char* p, size_t n, uint64_t seed) {
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
  for (size_t i = 0; i < n; ++i) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    p[i] = static_cast<unsigned char>(s);
  }
}

std::string dims(dim3 v) {
  return "(" + std::to_string(v.x) + ", " + std::to_string(v.y) + ", " + std::to_string(v.z) + ")";
}

}  // namespace

unsigned char* dynamic_smem() { return g_block->smem.get(); }

int lane_id() { return static_cast<int>(linear_tid() % 32); }

void syncthreads() { g_block->bar.arrive_and_wait(); }

void syncwarp(unsigned mask, const char* what) {
  Warp& w = my_warp();
  check_mask(w, mask, w.bar.arrive_and_wait(), what);
}

// Publishes `mine` for the lanes of the warp; returns the slots of this exchange.
const uint64_t* publish(Warp& w, unsigned mask, uint64_t mine, const char* what) {
  const unsigned lane = linear_tid() % 32;
  uint64_t* slots = w.slot[w.phase[lane]];
  w.phase[lane] ^= 1u;
  slots[lane] = mine;
  check_mask(w, mask, w.bar.arrive_and_wait(), what);  // every live lane has written its slot
  return slots;
}

uint64_t exchange(unsigned mask, uint64_t mine, int src, const char* what) {
  Warp& w = my_warp();
  const uint64_t* slots = publish(w, mask, mine, what);
  return static_cast<unsigned>(src) < w.lanes ? slots[src] : mine;
}

unsigned ballot(unsigned mask, bool pred, const char* what) {
  Warp& w = my_warp();
  const uint64_t* slots = publish(w, mask, pred ? 1 : 0, what);
  unsigned out = 0;
  for (unsigned l = 0; l < w.lanes; ++l)
    if (slots[l] == 1) out |= 1u << l;  // an exited lane's slot is stale: reported above
  return out & mask;
}

void run_grid(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 0x7fffffffu || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ)
    throw std::runtime_error("emulated CUDA launch: invalid configuration grid " + dims(grid) +
                             " block " + dims(block) + " (a GPU refuses it)");
  if (smem_bytes > kMaxDynamicSmem)
    throw std::runtime_error("emulated CUDA launch: " + std::to_string(smem_bytes) +
                             " bytes of dynamic shared memory exceed the 48 KiB default");
  std::lock_guard<std::mutex> launch_lock(g_launch);
  Block blk;
  const unsigned n = static_cast<unsigned>(threads), nwarps = (n + 31) / 32;
  for (unsigned w = 0; w < nwarps; ++w) blk.warps.emplace_back(new Warp());
  g_block = &blk;
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  for (uint64_t block_no = 0; block_no < blocks && blk.error.empty(); ++block_no) {
    const uint3 bidx{static_cast<unsigned>(block_no % grid.x),
                     static_cast<unsigned>(block_no / grid.x % grid.y),
                     static_cast<unsigned>(block_no / (uint64_t(grid.x) * grid.y))};
    blk.bar.reset(n);
    for (unsigned w = 0; w < nwarps; ++w) {
      Warp& wp = *blk.warps[w];
      wp.lanes = std::min(32u, n - 32 * w);
      wp.bar.reset(wp.lanes);
      for (unsigned& ph : wp.phase) ph = 0;
    }
    // exactly the requested bytes (ASan flags a read past them), new garbage per block
    blk.smem.reset(smem_bytes ? new unsigned char[smem_bytes] : nullptr);
    if (smem_bytes) fill_garbage(blk.smem.get(), smem_bytes, block_no);
    pool().run(n, [&](unsigned tid) {
      tl_coords.block = bidx;
      tl_coords.block_dim = block;
      tl_coords.grid_dim = grid;
      tl_coords.thread = uint3{tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
      body();
      // the thread has exited: barriers stop waiting for it, collectives naming it report
      blk.warps[tid / 32]->bar.drop();
      blk.bar.drop();
    });
  }
  g_block = nullptr;
  if (!blk.error.empty()) throw std::runtime_error("emulated CUDA kernel: " + blk.error);
}

}  // namespace emu
}  // namespace actspace
