// Scratch memory for kernels that count finished blocks with integer
// counters: the CUDA blend backward's per-sample d_alpha (cuda/blend.cu) and
// the CUDA gradient_stats, whose last block finalizes (cuda/multi_tensor_norm.cu;
// foreach_norm there takes only its partials from it).
//
// Such a kernel needs its counters at zero when it starts. A fresh buffer
// needs a memset first: on the host, one more allocation and one more driver
// call per backward, which for small slots (tensors of a few hundred KB, where
// the host's time per op dominates) is a sizeable share of the op. Instead, the kernel leaves its counters at zero when it
// ends (the block that counts last resets them), and the buffer is kept, one
// per (device, stream):
// - kernels on one stream run one after the other, so they can share it;
//   each stream has its own, so kernels on two streams never share counters;
// - it only grows: a larger request replaces it with a new buffer whose
//   counters are zeroed once, on the stream (no host sync). The caller holds
//   the returned tensor while it launches, so a replacement by another thread
//   cannot free the buffer under it; the caching allocator reuses the old
//   memory only for later work on the same stream;
// - while the stream is capturing a CUDA graph, the call returns a fresh
//   buffer with its counters zeroed in the graph: a graph may be replayed on
//   any stream, alongside eager work, so it must not share a stream's buffer.
// Streams are told apart by their id; a stream handle that CUDA reuses after
// the stream was destroyed (external streams) is assumed idle, as the caching
// allocator assumes.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Stream.h>

#include <cstdint>

namespace kasmina {

struct CounterScratch {
  at::Tensor buffer;  // hold it until the kernel is launched
  unsigned* counters = nullptr;  // n_counters zeros
  void* partials = nullptr;      // partial_bytes, 16-byte aligned, contents undefined
};

// Scratch for `n_counters` counters and `partial_bytes` of partials on
// `device`, for the current stream. Call it under a device guard for `device`.
CounterScratch counter_scratch(const at::Device& device, int64_t n_counters, int64_t partial_bytes);

// The same, with the capture state given (by a caller that already asked,
// or by tests) instead of asked of CUDA.
CounterScratch counter_scratch(const at::Device& device, int64_t n_counters, int64_t partial_bytes, bool capturing);

// Whether the current stream of `device` is capturing a CUDA graph (false
// off CUDA, and in a build without CUDA).
bool stream_is_capturing(const at::Device& device);

// The current stream of `device`, whatever its type.
c10::Stream current_stream(const at::Device& device);

// Buffers kept (tests).
size_t counter_scratch_count();

}  // namespace kasmina
