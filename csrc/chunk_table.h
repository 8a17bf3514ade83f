// The chunk table of the CUDA multi-tensor norm kernels (cuda/multi_tensor_norm.cu;
// triton_kernels/norms.py builds the same table in Python): plain host code; norm_plan.cpp uploads
// and caches it, the emulation test (test/test_cuda_kernels.cpp) checks it.
//
// Every tensor of a list is cut into `chunk`-element chunks. Chunks are
// grouped by a key (the dtype): one launch per group; a group's table is four rows of
// n_chunks int64 each: the tensor's address, the chunk's first element, its
// length, and the partial slot its sum goes to. Slots are numbered in list
// order, so tensor i owns the slots [first[i], first[i] + count[i]) and any
// leading sub-list of tensors owns one leading range of slots.
#pragma once

#include <cstdint>
#include <vector>

#include "numeric.h"

namespace kasmina {

struct ChunkSource {
  int64_t address;
  int64_t numel;
  int dtype;  // the group key: chunks of equal keys share a launch
};

struct ChunkGroup {
  int dtype;
  int64_t n_chunks;
  std::vector<int64_t> table;  // [4, n_chunks], row-major
};

struct ChunkTable {
  std::vector<ChunkGroup> groups;
  std::vector<int64_t> first, count;  // per tensor
  int64_t n_partials = 0;
};

inline ChunkTable build_chunk_table(const std::vector<ChunkSource>& sources, int64_t chunk) {
  ChunkTable out;
  std::vector<std::vector<std::vector<int64_t>>> rows;  // per group: 4 columns
  for (const ChunkSource& src : sources) {
    const int64_t chunks = ceil_div(src.numel, chunk);
    out.first.push_back(out.n_partials);
    out.count.push_back(chunks);
    if (chunks > 0) {
      size_t g = 0;
      while (g < out.groups.size() && out.groups[g].dtype != src.dtype) ++g;
      if (g == out.groups.size()) {
        out.groups.push_back({src.dtype, 0, {}});
        rows.emplace_back(4);
      }
      for (int64_t c = 0; c < chunks; ++c) {
        rows[g][0].push_back(src.address);
        rows[g][1].push_back(c * chunk);
        rows[g][2].push_back(src.numel - c * chunk < chunk ? src.numel - c * chunk : chunk);
        rows[g][3].push_back(out.n_partials + c);
      }
    }
    out.n_partials += chunks;
  }
  for (size_t g = 0; g < out.groups.size(); ++g) {
    out.groups[g].n_chunks = static_cast<int64_t>(rows[g][0].size());
    for (const auto& col : rows[g]) out.groups[g].table.insert(out.groups[g].table.end(), col.begin(), col.end());
  }
  return out;
}

}  // namespace kasmina
