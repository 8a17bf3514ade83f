// See stream_scratch.h.
#include "stream_scratch.h"

#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#ifdef KASMINA_WITH_CUDA
#include <c10/cuda/CUDAGraphsC10Utils.h>
#endif

namespace kasmina {
namespace {

constexpr int64_t kAlign = 16;

int64_t round_up(int64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

struct Kept {
  at::Tensor buffer;  // [counters, padded to 16 bytes][partials]
  int64_t counters = 0, partial_bytes = 0;
};

CounterScratch view(const Kept& k) {
  uint8_t* base = k.buffer.mutable_data_ptr<uint8_t>();
  const int64_t counter_bytes = round_up(k.counters * static_cast<int64_t>(sizeof(unsigned)));
  return {k.buffer, reinterpret_cast<unsigned*>(base), base + counter_bytes};
}

// A new buffer whose counters are zeroed on the current stream.
Kept make(const at::Device& device, int64_t counters, int64_t partial_bytes) {
  Kept k;
  k.counters = counters;
  k.partial_bytes = partial_bytes;
  const int64_t counter_bytes = round_up(counters * static_cast<int64_t>(sizeof(unsigned)));
  k.buffer = at::empty({std::max<int64_t>(counter_bytes + partial_bytes, 1)},
                       at::TensorOptions().dtype(at::kByte).device(device));
  if (counter_bytes > 0) k.buffer.narrow(0, 0, counter_bytes).zero_();
  return k;
}

using Key = std::tuple<int, int, int64_t>;  // device type, device index, stream id

struct Store {
  std::mutex mutex;
  std::map<Key, Kept> kept;
};

// Leaked on purpose, like the norm plan cache: its device tensors must not be
// freed after the CUDA caching allocator at process exit.
Store& store() {
  static Store* s = new Store();
  return *s;
}

}  // namespace

bool stream_is_capturing(const at::Device& device) {
#ifdef KASMINA_WITH_CUDA
  if (device.is_cuda()) return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
#endif
  return false;
}

c10::Stream current_stream(const at::Device& device) {
  return c10::impl::VirtualGuardImpl(device.type()).getStream(device);
}

CounterScratch counter_scratch(const at::Device& device, int64_t n_counters, int64_t partial_bytes) {
  return counter_scratch(device, n_counters, partial_bytes, stream_is_capturing(device));
}

CounterScratch counter_scratch(const at::Device& device, int64_t n_counters, int64_t partial_bytes, bool capturing) {
  TORCH_CHECK(n_counters >= 0 && partial_bytes >= 0, "counter_scratch: negative size");
  if (capturing) return view(make(device, n_counters, partial_bytes));
  const c10::Stream stream = current_stream(device);
  const Key key{static_cast<int>(device.type()), static_cast<int>(device.index()), stream.id()};
  Store& s = store();
  const std::lock_guard<std::mutex> lock(s.mutex);
  Kept& k = s.kept[key];
  if (!k.buffer.defined() || k.counters < n_counters || k.partial_bytes < partial_bytes) {
    // grow geometrically, so that a batch size creeping up costs few replacements
    k = make(device, std::max(n_counters, 2 * k.counters), std::max(partial_bytes, 2 * k.partial_bytes));
  }
  return view(k);
}

size_t counter_scratch_count() {
  Store& s = store();
  const std::lock_guard<std::mutex> lock(s.mutex);
  return s.kept.size();
}

}  // namespace kasmina
