// See norm_plan.h.
#include "norm_plan.h"

#include <list>
#include <mutex>
#include <utility>

#include "chunk_table.h"

namespace kasmina {
namespace {

constexpr size_t kCachedPlans = 16;

// address, numel, dtype of every tensor; the device, the chunk and the grouping
struct PlanKey {
  struct Entry {
    int64_t address, numel;
    int dtype;
  };
  std::vector<Entry> tensors;
  int device_type, device_index;
  int64_t chunk;
  bool split_alignment;
};

int64_t address(const at::Tensor& t) { return reinterpret_cast<int64_t>(t.const_data_ptr()); }

bool matches(const PlanKey& key, at::TensorList ts, const at::Device& device, int64_t chunk, bool split_alignment) {
  if (key.tensors.size() != ts.size() || key.device_type != static_cast<int>(device.type()) ||
      key.device_index != device.index() || key.chunk != chunk || key.split_alignment != split_alignment) {
    return false;
  }
  for (size_t i = 0; i < ts.size(); ++i) {
    const PlanKey::Entry& e = key.tensors[i];
    const at::Tensor& t = ts[i];
    if (e.address != address(t) || e.numel != t.numel() || e.dtype != static_cast<int>(t.scalar_type())) return false;
  }
  return true;
}

NormPlan build_plan(at::TensorList ts, const at::Device& device, int64_t chunk,
                    bool split_alignment) {
  std::vector<ChunkSource> sources;
  sources.reserve(ts.size());
  for (const at::Tensor& t : ts) {
    const int dtype = static_cast<int>(t.scalar_type());
    const int aligned = split_alignment && address(t) % 16 == 0 ? 1 : 0;
    sources.push_back({address(t), t.numel(), dtype * 2 + aligned});
  }
  const ChunkTable table = build_chunk_table(sources, chunk);
  auto upload = [&](const std::vector<int64_t>& v) {
    return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(device);
  };
  NormPlan plan;
  for (const ChunkGroup& g : table.groups) {
    plan.groups.push_back({static_cast<at::ScalarType>(g.dtype / 2), g.dtype % 2 == 1, g.n_chunks, upload(g.table)});
  }
  plan.first = upload(table.first);
  plan.count = upload(table.count);
  plan.host_first = table.first;
  plan.host_first.push_back(table.n_partials);
  plan.n_partials = table.n_partials;
  return plan;
}

}  // namespace

NormPlan cached_norm_plan(const TensorRefs& refs, const at::Device& device, int64_t chunk, bool split_alignment) {
  const at::TensorList ts = refs.list();
  if (refs.owns_any()) return build_plan(ts, device, chunk, split_alignment);
  static std::mutex mutex;
  static std::list<std::pair<PlanKey, NormPlan>> cache;  // most recent first
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto it = cache.begin(); it != cache.end(); ++it) {
      if (matches(it->first, ts, device, chunk, split_alignment)) {
        cache.splice(cache.begin(), cache, it);
        return cache.front().second;
      }
    }
  }
  PlanKey key{{}, static_cast<int>(device.type()), device.index(), chunk, split_alignment};
  key.tensors.reserve(ts.size());
  for (const at::Tensor& t : ts) key.tensors.push_back({address(t), t.numel(), static_cast<int>(t.scalar_type())});
  NormPlan plan = build_plan(ts, device, chunk, split_alignment);
  std::lock_guard<std::mutex> lock(mutex);
  cache.emplace_front(std::move(key), plan);
  if (cache.size() > kCachedPlans) cache.pop_back();
  return plan;
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
