// kasmina::ste: the straight-through estimator (CPU and CUDA).
//
// Math: value = host; d_host = g and d_seed = g (the autograd kernel in
// ops.cpp hands g on, no kernel runs in the backward).
// Memory traffic: one read of host, one write of out. A custom op may not
// return an alias of its input, so the copy is the floor for an op; seed is
// validated but never read. Large dense copies use streaming stores.
#include <ATen/Parallel.h>

#include "checks.h"
#include "cpu/dense.h"
#include "cpu/stream.h"

namespace kasmina {

// Registered for CPU and CUDA: on CUDA (and for small CPU tensors) the copy
// is ATen's copy_ (a device-to-device copy on the current stream).
at::Tensor ste_kernel(const at::Tensor& host, const at::Tensor& seed) {
  check_pair(host, seed, "kasmina::ste");
  at::Tensor out = at::empty_like(host);
  if (!host.is_cpu()) {
    out.copy_(host);
    return out;
  }
  const bool dense = host.is_non_overlapping_and_dense() && out.strides() == host.strides();
  const auto* src = static_cast<const char*>(host.const_data_ptr());
  auto* dst = static_cast<char*>(out.mutable_data_ptr());
  if (!dense || !cpu::use_stream(out.nbytes(), {dst, src})) {
    out.copy_(host);
    return out;
  }
  // both line-aligned: copy whole lines with streaming stores, in parallel
  const int64_t lines = static_cast<int64_t>(out.nbytes()) / cpu::kLine;
  const int64_t grain = 4096;  // 256 KB per task
  at::parallel_for(0, ceil_div(lines, grain), 1, [&](int64_t t0, int64_t t1) {
    for (int64_t l = t0 * grain; l < std::min(lines, t1 * grain); ++l) {
      cpu::stream_line(dst + l * cpu::kLine, src + l * cpu::kLine);
    }
    cpu::stream_fence();
  });
  const int64_t done = lines * cpu::kLine;
  std::memcpy(dst + done, src + done, out.nbytes() - done);
  return out;
}

}  // namespace kasmina
