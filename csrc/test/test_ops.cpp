// C++ test of the kasmina ops through the dispatcher (run by ctest): values
// and gradients of blend, valve and ste against ATen, and a bad-input error; the
// reference counts of TensorRefs and dense_list, and the plan cache's rules
// for CUDA-graph captures (norm_plan.h), and the counter scratch kept per
// stream (stream_scratch.h), on CPU tensors.
#include <torch/torch.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>
#include <iostream>
#include <utility>

#include "../norm_plan.h"
#include "../stream_scratch.h"
#include "../tensor_refs.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

bool close(const at::Tensor& a, const at::Tensor& b) { return at::allclose(a, b, 1e-5, 1e-6); }

// Borrowed handles take no reference; owned ones keep their tensor alive;
// dense_list borrows dense tensors and owns the copies of strided views.
void test_tensor_refs() {
  using kasmina::TensorRefs;
  auto t = torch::randn({4});
  const auto count = t.use_count();
  {
    TensorRefs refs;
    refs.borrow(t);
    refs.own(torch::ones({3}));
    expect(t.use_count() == count, "TensorRefs::borrow takes no reference");
    expect(refs.list()[0].is_same(t), "TensorRefs::borrow is the same tensor");
    expect(refs.list()[1].use_count() == 1 && at::equal(refs.list()[1], torch::ones({3})),
           "TensorRefs::own holds the one reference");
    TensorRefs moved = std::move(refs);
    expect(moved.size() == 2 && refs.size() == 0 && t.use_count() == count, "TensorRefs moves without counting");
  }
  expect(t.use_count() == count && t.defined(), "TensorRefs gives back no reference it did not take");

  auto dense = torch::randn({3, 5}).t();  // a transposed view is dense
  auto strided = torch::randn({6, 2}).slice(0, 0, 6, 2);
  const auto dense_count = dense.use_count();
  {
    const TensorRefs ts = kasmina::dense_list({dense}, {strided});
    expect(ts.size() == 2 && ts.list()[0].is_same(dense) && dense.use_count() == dense_count,
           "dense_list borrows a dense tensor");
    expect(!ts.list()[1].is_same(strided) && ts.list()[1].is_contiguous() && at::equal(ts.list()[1], strided),
           "dense_list copies a strided view");
  }
  expect(dense.use_count() == dense_count, "dense_list gives back no reference it did not take");
}

bool raises(const std::function<void()>& f, const char* text) {
  try {
    f();
  } catch (const c10::Error& e) {
    return std::string(e.what()).find(text) != std::string::npos;
  }
  return false;
}

// A plan used during a capture is pinned: later lists never evict it (a graph
// replays with its table). A list not planned yet, or one holding a strided
// view, cannot be planned during a capture: the call raises, naming the op.
void test_plan_cache_and_captures() {
  using kasmina::cached_norm_plan;
  using kasmina::dense_list;
  const at::Device cpu(at::kCPU);
  const char* op = "kasmina::test_op";
  auto plan_of = [&](const std::vector<at::Tensor>& list, bool capturing) {
    const kasmina::TensorRefs ts = dense_list(list);
    return cached_norm_plan(ts, cpu, 8, op, capturing);
  };
  const std::vector<at::Tensor> graphed = {torch::randn({20}), torch::randn({3, 5})};
  const std::vector<at::Tensor> other = {torch::randn({9})};
  expect(raises([&] { plan_of(graphed, true); }, "kasmina::test_op: this list has no chunk table yet"),
         "a first call during a capture raises, naming the op");
  const auto before = kasmina::norm_plan_cache_size();
  const void* table = plan_of(graphed, false).groups.at(0).table.const_data_ptr();
  plan_of(other, false);
  expect(plan_of(graphed, true).groups.at(0).table.const_data_ptr() == table, "a capture reuses the cached table");
  expect(kasmina::norm_plan_cache_size().second == before.second + 1, "a plan used in a capture is pinned");
  std::vector<std::vector<at::Tensor>> lists;  // kept alive: distinct addresses
  for (int i = 0; i < 40; ++i) {
    lists.push_back({torch::randn({i + 1})});
    plan_of(lists.back(), false);
  }
  const auto after = kasmina::norm_plan_cache_size();
  expect(after.first == 16 + after.second, "the cache holds 16 plans besides the pinned ones");
  expect(plan_of(graphed, true).groups.at(0).table.const_data_ptr() == table, "a pinned plan is never evicted");
  expect(raises([&] { plan_of(other, true); }, "this list has no chunk table yet"),
         "an unpinned plan is evicted like any other");
  const std::vector<at::Tensor> strided = {torch::randn({6, 2}).slice(0, 0, 6, 2)};
  expect(raises([&] { plan_of(strided, true); }, "kasmina::test_op: a list that holds a non-dense"),
         "a list with a strided view cannot be captured");
  expect(plan_of(strided, false).n_partials == 1, "outside a capture a strided view is planned from its copy");
}


// One buffer per stream, reused while big enough, replaced (counters zeroed)
// when a request outgrows it; a capture always gets a fresh, zeroed buffer.
void test_counter_scratch() {
  using kasmina::counter_scratch;
  const at::Device cpu(at::kCPU);
  const size_t kept_before = kasmina::counter_scratch_count();
  auto zeros = [](const kasmina::CounterScratch& s, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      if (s.counters[i] != 0u) return false;
    }
    return true;
  };
  auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  kasmina::CounterScratch a = counter_scratch(cpu, 5, 40, false);
  expect(zeros(a, 5), "a new scratch has its counters at zero");
  expect(aligned(a.partials) && static_cast<uint8_t*>(a.partials) >= reinterpret_cast<uint8_t*>(a.counters + 5),
         "the partials follow the counters, 16-byte aligned");
  expect(a.buffer.nbytes() >= 16 + 40, "room for the counters and the partials");
  expect(kasmina::counter_scratch_count() == kept_before + 1, "one buffer kept for the stream");
  a.counters[2] = 0;  // as a kernel leaves them
  kasmina::CounterScratch b = counter_scratch(cpu, 3, 8, false);
  expect(b.buffer.is_same(a.buffer), "a smaller request reuses the stream's buffer");
  a.counters[1] = 7;  // a stale counter: only a new buffer is zeroed
  kasmina::CounterScratch c = counter_scratch(cpu, 6, 40, false);
  expect(!c.buffer.is_same(a.buffer) && zeros(c, 6), "a larger request gets a new buffer with zeroed counters");
  expect(a.buffer.defined() && a.counters[1] == 7u, "the caller's old buffer stays valid while it is held");
  expect(counter_scratch(cpu, 12, 10, false).buffer.nbytes() >= 48 + 80, "growth is geometric");
  kasmina::CounterScratch g1 = counter_scratch(cpu, 4, 16, true);
  kasmina::CounterScratch g2 = counter_scratch(cpu, 4, 16, true);
  expect(zeros(g1, 4) && zeros(g2, 4) && !g1.buffer.is_same(g2.buffer) &&
             !g1.buffer.is_same(counter_scratch(cpu, 1, 1, false).buffer),
         "each capture gets its own zeroed buffer, not the stream's");
  expect(kasmina::counter_scratch_count() == kept_before + 1, "captures keep no buffer");

  // threads that share the stream (user threads and the autograd engine's can),
  // growing the buffer under each other: each gets zeroed counters and
  // writable partials, whatever replaced its buffer since (without the store's
  // lock this fails or crashes in some runs: a smoke test, not a proof)
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&bad, t, cpu] {
      for (int i = 0; i < 300; ++i) {
        const int64_t n = 1 + (i * 7 + t * 13) % 97, bytes = 8 * (1 + (i * 5 + t) % 301);
        const kasmina::CounterScratch sc = counter_scratch(cpu, n, bytes, false);
        for (int64_t k = 0; k < n; ++k) bad += sc.counters[k] != 0u;
        std::memset(sc.partials, 0x5a, static_cast<size_t>(bytes));
      }
    });
  }
  for (auto& th : threads) th.join();
  expect(bad == 0, "concurrent callers get valid, zeroed buffers");
}

}  // namespace

int main() {
  test_tensor_refs();
  test_plan_cache_and_captures();
  test_counter_scratch();

  auto blend = c10::Dispatcher::singleton()
                   .findSchemaOrThrow("kasmina::blend", "")
                   .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  auto valve = c10::Dispatcher::singleton()
                   .findSchemaOrThrow("kasmina::valve", "")
                   .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  auto ste = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("kasmina::ste", "")
                 .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  auto norms = c10::Dispatcher::singleton()
                   .findSchemaOrThrow("kasmina::foreach_norm", "")
                   .typed<at::Tensor(at::TensorList)>();

  torch::manual_seed(0);
  auto cl = at::MemoryFormat::ChannelsLast;
  auto host = torch::randn({4, 3, 5, 5}).contiguous(cl).requires_grad_();
  auto seed = torch::randn({4, 3, 5, 5}).contiguous(cl).requires_grad_();
  auto alpha = (torch::rand({4, 1, 1, 1}) * 1.4 - 0.2).requires_grad_();
  auto g = torch::randn({4, 3, 5, 5});

  auto out = blend.call(host, seed, alpha);
  expect(out.is_contiguous(cl), "blend keeps channels_last");
  out.backward(g);
  auto h2 = host.detach().clone().requires_grad_();
  auto s2 = seed.detach().clone().requires_grad_();
  auto a2 = alpha.detach().clone().requires_grad_();
  auto ref = at::lerp(h2, s2, a2.clamp(0, 1));
  ref.backward(g);
  expect(close(out, ref), "blend value");
  expect(close(host.grad(), h2.grad()), "blend d_host");
  expect(close(seed.grad(), s2.grad()), "blend d_seed");
  expect(close(alpha.grad(), a2.grad()), "blend d_alpha");

  // valve, isolated or not: value and gradients against ATen (isolate = the
  // host detached inside tanh, as a seed fed the detached host sees it)
  for (bool isolate : {false, true}) {
    auto hv = host.detach().clone().requires_grad_();
    auto sv = seed.detach().clone().requires_grad_();
    auto av = alpha.detach().clone().requires_grad_();
    auto v = valve.call(hv, sv, av, isolate);
    expect(v.is_contiguous(cl), "valve keeps channels_last");
    v.backward(g);
    auto h4 = host.detach().clone().requires_grad_();
    auto s4 = seed.detach().clone().requires_grad_();
    auto a4 = alpha.detach().clone().requires_grad_();
    auto vref = h4 * (1 + a4.clamp(0, 1) * at::tanh(s4 - (isolate ? h4.detach() : h4)));
    vref.backward(g);
    expect(close(v, vref), "valve value");
    expect(close(hv.grad(), h4.grad()), "valve d_host");
    expect(close(sv.grad(), s4.grad()), "valve d_seed");
    expect(close(av.grad(), a4.grad()), "valve d_alpha");
  }

  auto h3 = host.detach().clone().requires_grad_();
  auto s3 = seed.detach().clone().requires_grad_();
  auto y = ste.call(h3, s3);
  y.backward(g);
  expect(at::equal(y, h3), "ste value");
  expect(at::equal(h3.grad(), g) && at::equal(s3.grad(), g), "ste gradients");

  auto n = norms.call({g, host.detach()});
  expect(close(n, at::stack({g.norm(), host.detach().norm()})), "foreach_norm");

  bool raised = false;
  try {
    blend.call(host, torch::randn({4, 3, 5, 6}), alpha);
  } catch (const c10::ValueError& e) {
    raised = std::string(e.what()).find("kasmina::blend: seed must have the shape of host") != std::string::npos;
  }
  expect(raised, "bad shape raises a ValueError naming the op");

  if (failures == 0) std::cout << "test_ops: all checks passed\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
