// Runs the device code of csrc/cuda/*_kernels.cuh on the CPU, for tests only.
//
// The threads of a block are fibers (ucontext) on the calling OS thread,
// blocks run one after the other in a chosen order (so "which block finishes
// last" can be varied). __shared__ variables become function statics (one
// block lives at a time); __syncthreads waits until every live thread of the
// block arrives, a warp shuffle until every live lane of the warp does; a
// barrier that can never be released (divergent __syncthreads) is an error.
// This checks indexing, vector widths, tails, reductions and the last-block
// protocol of the kernels; built with AddressSanitizer and UBSan (as ctest
// does), also out-of-bounds accesses and misaligned vector loads and stores
// (the 16-byte Vec types are alignas(16): a GPU would fault on them too). It
// says nothing about speed or about a real GPU's memory model.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMULATION_ASAN 1
#endif

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

inline dim3 threadIdx;  // set by the scheduler whenever it resumes a thread
inline dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

namespace cuda_emulation {

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  State state = State::Runnable;
};

constexpr size_t kStackBytes = 256 * 1024;

// Fiber stacks, allocated once (uninitialised) and reused by every block.
inline char* fiber_stack(unsigned t) {
  static std::vector<std::unique_ptr<char[]>> stacks(1024);
  if (!stacks[t]) stacks[t].reset(new char[kStackBytes]);
  return stacks[t].get();
}

struct Block {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  unsigned current = 0;
  std::function<void()> body;
  std::exception_ptr error;
  uint64_t warp_slots[1024];
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
};

inline Block* block = nullptr;

inline void switch_to_scheduler(State why) {
  Fiber& f = block->fibers[block->current];
  f.state = why;
#ifdef CUDA_EMULATION_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(why == State::Done ? nullptr : &fake, block->scheduler_stack_bottom,
                                 block->scheduler_stack_size);
  swapcontext(&f.ctx, &block->scheduler);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  swapcontext(&f.ctx, &block->scheduler);
#endif
}

inline void fiber_entry() {
#ifdef CUDA_EMULATION_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &block->scheduler_stack_bottom, &block->scheduler_stack_size);
#endif
  try {
    block->body();
  } catch (...) {
    if (!block->error) block->error = std::current_exception();
  }
  switch_to_scheduler(State::Done);
}

inline void resume(unsigned t) {
  block->current = t;
  threadIdx = dim3(t);
  Fiber& f = block->fibers[t];
  f.state = State::Runnable;
#ifdef CUDA_EMULATION_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
  swapcontext(&block->scheduler, &f.ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  swapcontext(&block->scheduler, &f.ctx);
#endif
}

inline void start_fiber(Fiber& f, unsigned t) {
  f.stack = fiber_stack(t);
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_entry, 0);
}

// Runs one block to completion: every runnable thread until it waits or ends,
// then releases whichever barrier every live thread concerned has reached.
inline void run_block(unsigned n_threads, std::function<void()> body) {
  Block b;
  b.body = std::move(body);
  b.fibers.resize(n_threads);
  block = &b;
  for (unsigned t = 0; t < n_threads; ++t) start_fiber(b.fibers[t], t);
  for (;;) {
    for (unsigned t = 0; t < n_threads; ++t) {
      if (b.fibers[t].state == State::Runnable) resume(t);
    }
    unsigned live = 0, at_block = 0;
    for (const Fiber& f : b.fibers) {
      live += f.state != State::Done;
      at_block += f.state == State::AtBlockBarrier;
    }
    if (live == 0) break;
    bool released = false;
    if (at_block == live) {
      for (Fiber& f : b.fibers) f.state = State::Runnable;
      released = true;
    } else {
      for (unsigned w = 0; w * 32 < n_threads; ++w) {
        unsigned lanes_live = 0, lanes_waiting = 0;
        for (unsigned t = w * 32; t < std::min(n_threads, w * 32 + 32); ++t) {
          lanes_live += b.fibers[t].state != State::Done;
          lanes_waiting += b.fibers[t].state == State::AtWarpBarrier;
        }
        if (lanes_live > 0 && lanes_waiting == lanes_live) {
          for (unsigned t = w * 32; t < std::min(n_threads, w * 32 + 32); ++t) b.fibers[t].state = State::Runnable;
          released = true;
        }
      }
    }
    if (!released) {
      block = nullptr;
      throw std::logic_error("cuda_emulation: a barrier that not every live thread reaches (divergent sync)");
    }
  }
  block = nullptr;
  if (b.error) std::rethrow_exception(b.error);
}

}  // namespace cuda_emulation

inline void __syncthreads() { cuda_emulation::switch_to_scheduler(cuda_emulation::State::AtBlockBarrier); }

template <typename T>
T __shfl_down_sync(unsigned /*mask*/, T v, unsigned delta) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a value wider than 8 bytes");
  uint64_t* slots = cuda_emulation::block->warp_slots;
  const unsigned me = threadIdx.x, lane = me % 32;
  std::memcpy(&slots[me], &v, sizeof(T));
  cuda_emulation::switch_to_scheduler(cuda_emulation::State::AtWarpBarrier);
  T r = v;
  if (lane + delta < 32 && me + delta < blockDim.x) std::memcpy(&r, &slots[me + delta], sizeof(T));
  cuda_emulation::switch_to_scheduler(cuda_emulation::State::AtWarpBarrier);
  return r;
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }

template <typename T>
T __ldcg(const T* p) {
  T r;
  __atomic_load(p, &r, __ATOMIC_SEQ_CST);
  return r;
}

namespace cuda_emulation {

// Runs kernel<<<grid, block>>>(args...) (1-D blocks of at most 1024 threads,
// 2-D grids). order: the blocks' linear indices (x fastest, then y) in the
// order to run them; empty means 0, 1, 2, ...
template <typename... Params, typename... Args>
void launch(dim3 grid, dim3 threads, void (*kernel)(Params...), std::vector<int64_t> order, Args... args) {
  if (threads.y != 1 || threads.z != 1 || threads.x == 0 || threads.x > 1024 || grid.z != 1) {
    throw std::invalid_argument("cuda_emulation::launch: 1-D blocks of 1..1024 threads, 2-D grids only");
  }
  gridDim = grid;
  blockDim = threads;
  const int64_t n_blocks = static_cast<int64_t>(grid.x) * grid.y;
  if (order.empty()) {
    order.resize(static_cast<size_t>(n_blocks));
    std::iota(order.begin(), order.end(), 0);
  }
  for (const int64_t linear : order) {
    blockIdx = dim3(static_cast<unsigned>(linear % grid.x), static_cast<unsigned>(linear / grid.x));
    run_block(threads.x, [&] { kernel(args...); });
  }
}

}  // namespace cuda_emulation
