// See norm_plan.h.
#include "norm_plan.h"

#include <algorithm>
#include <iterator>
#include <list>
#include <mutex>
#include <utility>

#include "chunk_table.h"
#include "stream_scratch.h"

namespace kasmina {
namespace {

constexpr size_t kCachedPlans = 16;  // not counting the pinned ones

// address, numel, dtype of every tensor; the device, the chunk and the grouping
struct PlanKey {
  struct Entry {
    int64_t address, numel;
    int dtype;
  };
  std::vector<Entry> tensors;
  int device_type, device_index;
  int64_t chunk;
};

// What t.const_data_ptr() returns (null for an empty tensor), without its
// checks: a tensor that reached a CPU or CUDA kernel is a plain strided tensor
// with storage. The checks cost an out-of-line has_storage() call a tensor.
int64_t address(const at::Tensor& t) {
  const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  TORCH_INTERNAL_ASSERT_DEBUG_ONLY(impl->has_storage());
  if (impl->numel() == 0) return 0;
  const auto* base = static_cast<const char*>(impl->unsafe_storage().data());
  return reinterpret_cast<int64_t>(base + impl->storage_offset() * impl->itemsize());
}

bool matches(const PlanKey& key, at::TensorList ts, const at::Device& device, int64_t chunk) {
  if (key.tensors.size() != ts.size() || key.device_type != static_cast<int>(device.type()) ||
      key.device_index != device.index() || key.chunk != chunk) {
    return false;
  }
  for (size_t i = 0; i < ts.size(); ++i) {
    const PlanKey::Entry& e = key.tensors[i];
    const at::Tensor& t = ts[i];
    if (e.address != address(t) || e.numel != t.numel() || e.dtype != static_cast<int>(t.scalar_type())) return false;
  }
  return true;
}

NormPlan build_plan(at::TensorList ts, const at::Device& device, int64_t chunk) {
  std::vector<ChunkSource> sources;
  sources.reserve(ts.size());
  for (const at::Tensor& t : ts) sources.push_back({address(t), t.numel(), static_cast<int>(t.scalar_type())});
  const ChunkTable table = build_chunk_table(sources, chunk);
  // Every row in one int64 buffer, uploaded in one copy. On CUDA it goes through
  // pinned memory without blocking: no host sync, even for a list never seen
  // (torch's host allocator does not reuse the pinned block before the copy,
  // queued on the current stream, is done).
  std::vector<const std::vector<int64_t>*> parts;
  for (const ChunkGroup& g : table.groups) parts.push_back(&g.table);
  parts.push_back(&table.first);
  parts.push_back(&table.count);
  int64_t total = 0;
  for (const auto* v : parts) total += static_cast<int64_t>(v->size());
  at::Tensor rows = at::empty({total}, at::TensorOptions().dtype(at::kLong).pinned_memory(device.is_cuda()));
  int64_t* dst = rows.mutable_data_ptr<int64_t>();
  for (const auto* v : parts) dst = std::copy(v->begin(), v->end(), dst);
  if (!device.is_cpu()) rows = rows.to(device, /*non_blocking=*/true);
  int64_t offset = 0;
  auto take = [&](size_t n) {
    at::Tensor view = rows.narrow(0, offset, static_cast<int64_t>(n));
    offset += static_cast<int64_t>(n);
    return view;
  };
  NormPlan plan;
  for (const ChunkGroup& g : table.groups) {
    plan.groups.push_back({static_cast<at::ScalarType>(g.dtype), g.n_chunks, take(g.table.size())});
  }
  plan.first = take(table.first.size());
  plan.count = take(table.count.size());
  plan.host_first = table.first;
  plan.host_first.push_back(table.n_partials);
  plan.n_partials = table.n_partials;
  plan.stream = current_stream(device);
  return plan;
}

// A use on another stream than the upload's: `stream` waits for the upload,
// and the caching allocator does not reuse the tables before the work queued
// on `stream` is done.
void record_on(const NormPlan& plan, const c10::Stream& stream) {
  if (stream == plan.stream || !stream.device().is_cuda()) return;
  if (plan.uploaded) plan.uploaded->block(stream);
  for (const NormPlan::Group& g : plan.groups) g.table.record_stream(stream);
  plan.first.record_stream(stream);
  plan.count.record_stream(stream);
}

struct CachedPlan {
  PlanKey key;
  NormPlan plan;
  bool pinned;  // used in a CUDA-graph capture: never evicted
};

struct PlanCache {
  std::mutex mutex;
  std::list<CachedPlan> plans;  // most recent first
  size_t pinned = 0;
};

// Leaked on purpose: its device tensors must not be freed after the CUDA
// caching allocator at process exit, and captured graphs may still use them.
PlanCache& plan_cache() {
  static PlanCache* cache = new PlanCache();
  return *cache;
}

}  // namespace

NormPlan cached_norm_plan(const TensorRefs& refs, const at::Device& device, int64_t chunk, const char* op) {
  return cached_norm_plan(refs, device, chunk, op, stream_is_capturing(device));
}

NormPlan cached_norm_plan(const TensorRefs& refs, const at::Device& device, int64_t chunk, const char* op,
                          bool capturing) {
  const at::TensorList ts = refs.list();
  TORCH_CHECK(!capturing || !refs.owns_any(), op,
              ": a list that holds a non-dense (strided) view cannot be captured in a CUDA graph: its contiguous "
              "copy is new memory on every call, so its chunk table is uploaded on every call, a copy that a graph "
              "cannot hold; "
              "pass dense tensors (contiguous, channels_last or any dense permutation)");
  if (refs.owns_any()) return build_plan(ts, device, chunk);
  PlanCache& cache = plan_cache();
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    for (auto it = cache.plans.begin(); it != cache.plans.end(); ++it) {
      if (matches(it->key, ts, device, chunk)) {
        cache.plans.splice(cache.plans.begin(), cache.plans, it);
        CachedPlan& hit = cache.plans.front();
        if (capturing && !hit.pinned) {
          hit.pinned = true;
          ++cache.pinned;
        }
        if (!capturing) record_on(hit.plan, current_stream(device));
        return hit.plan;
      }
    }
  }
  TORCH_CHECK(!capturing, op,
              ": this list has no chunk table yet, and its upload (a copy from host memory) cannot be captured in a "
              "CUDA graph; call ",
              op, " once with the same tensors before capturing (a warm-up call)");
  PlanKey key{{}, static_cast<int>(device.type()), device.index(), chunk};
  key.tensors.reserve(ts.size());
  for (const at::Tensor& t : ts) key.tensors.push_back({address(t), t.numel(), static_cast<int>(t.scalar_type())});
  NormPlan plan = build_plan(ts, device, chunk);
  if (device.is_cuda()) {  // (only a cached plan can be used on another stream later)
    plan.uploaded = std::make_shared<c10::Event>(device.type());
    plan.uploaded->record(plan.stream);
  }
  std::lock_guard<std::mutex> lock(cache.mutex);
  cache.plans.push_front({std::move(key), plan, false});
  if (cache.plans.size() - cache.pinned > kCachedPlans) {
    // the least recently used plan that no graph holds
    for (auto it = std::prev(cache.plans.end());; --it) {
      if (!it->pinned) {
        cache.plans.erase(it);
        break;
      }
    }
  }
  return plan;
}

std::pair<size_t, size_t> norm_plan_cache_size() {
  PlanCache& cache = plan_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  return {cache.plans.size(), cache.pinned};
}

TensorRefs dense_list(at::TensorList a, at::TensorList b) {
  TensorRefs ts;
  ts.reserve(a.size() + b.size());
  for (at::TensorList list : {a, b}) {
    for (const at::Tensor& t : list) {
      if (t.is_non_overlapping_and_dense()) {
        ts.borrow(t);
      } else {
        ts.own(t.contiguous());
      }
    }
  }
  return ts;
}

}  // namespace kasmina
