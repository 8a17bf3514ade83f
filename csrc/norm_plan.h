// The plan of one tensor list for the multi-tensor norm kernels: its chunk
// table (chunk_table.h) on the list's device, cached by the list's signature.
//
// Used by the CUDA launchers (cuda/multi_tensor_norm.cu; triton_kernels/norms.py
// keeps the same rules for the Triton host path). A training loop hands the
// same .grad tensors every call, so the table is built and uploaded once and
// a call costs a lookup (about 10 ns a tensor): nothing is copied host to
// device after the first call, which also lets a CUDA graph capture it.
//
// Lifetime of the device tables. The kernels read a table while they run,
// and a captured CUDA graph reads the one it captured at every replay, long
// after the call. So:
// - a plan used while the current stream is capturing a CUDA graph is pinned:
//   never evicted, its table lives as long as the process;
// - a cached plan used on another stream than the one it was uploaded on makes
//   that stream wait for the upload (an event), and has its tables recorded on
//   it (Tensor::record_stream), so an eviction cannot hand their memory to a
//   new allocation before the kernels reading them are done;
// - a list with no cached plan cannot be planned during a capture (its upload,
//   a copy from pinned host memory, cannot be captured): that call raises,
//   naming the op.
// Uploads go through pinned memory without blocking: planning never
// synchronises with the host.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#include "tensor_refs.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace kasmina {

struct NormPlan {
  struct Group {
    at::ScalarType dtype;
    int64_t n_chunks;
    at::Tensor table;  // int64 [4, n_chunks] on the device: address, first element, length, slot
  };
  std::vector<Group> groups;
  at::Tensor first, count;         // per tensor, int64, on the device
  std::vector<int64_t> host_first; // per tensor, then n_partials
  int64_t n_partials = 0;
  c10::Stream stream{c10::Stream::DEFAULT, c10::Device(c10::kCPU)};  // the tables were uploaded on it
  // a cached plan's (CUDA): recorded after the upload, another stream waits for it
  std::shared_ptr<c10::Event> uploaded;
};

// The plan of `ts` (from dense_list) for `chunk`-element chunks, grouped by
// dtype. Returned by value: the tensors are
// reference counted, so no other thread's eviction can pull them away while
// the caller uses them. The cache keeps the most recent plans; a hit
// compares the list with the cached signature in place (nothing is
// allocated). A list that holds contiguous copies of strided views is planned
// afresh on every call and never cached: the copies are new memory each time,
// so its plan could never be found again, and caching it would only evict the
// plans of lists that can (on CUDA such a call uploads its table every time,
// and cannot be captured in a CUDA graph). The cache holds 16 plans besides
// the pinned ones (see above). `op` names the caller in errors. Call it under
// a device guard for `device` (the current stream is `device`'s).
NormPlan cached_norm_plan(const TensorRefs& ts, const at::Device& device, int64_t chunk, const char* op);

// The same, with the capture state given (by a caller that already asked,
// or by tests) instead of asked of CUDA.
NormPlan cached_norm_plan(const TensorRefs& ts, const at::Device& device, int64_t chunk, const char* op,
                          bool capturing);

// Plans in the cache: all of them, and the pinned ones (tests).
std::pair<size_t, size_t> norm_plan_cache_size();

// The tensors of a and b in order; dense layouts (contiguous, channels_last,
// any non-overlapping dense permutation) as they are (borrowed: a and b must
// outlive the result), other strided views as a contiguous copy (owned).
TensorRefs dense_list(at::TensorList a, at::TensorList b = {});

}  // namespace kasmina
