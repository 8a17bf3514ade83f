// TensorRefs: a list of at::Tensor handles, for an at::TensorList argument,
// that does not touch the tensors' reference counts.
//
// Copying an at::Tensor is an atomic increment, and its destruction an atomic
// decrement; for a tensor that has a Python object, the first extra C++
// reference also takes a reference on the Python object through the
// interpreter (and the last one gives it back). On a 1000-tensor gradient
// list that was about a fifth of the host time of a norm call. A borrowed
// handle is the same TensorImpl pointer with no count taken: the caller keeps
// the tensors alive (the op's TensorList argument, or a tuple of the Python
// objects) for as long as the TensorRefs lives. Tensors made here (contiguous
// copies) are owned.
#pragma once

#include <ATen/ATen.h>

#include <utility>
#include <vector>

namespace kasmina {

class TensorRefs {
 public:
  TensorRefs() = default;
  TensorRefs(const TensorRefs&) = delete;
  TensorRefs& operator=(const TensorRefs&) = delete;
  TensorRefs(TensorRefs&&) = default;
  TensorRefs& operator=(TensorRefs&&) = delete;
  ~TensorRefs() { clear(); }

  void reserve(size_t n) { refs_.reserve(n); }

  // `t` must outlive this object (or the next clear()).
  void borrow(const at::Tensor& t) { refs_.push_back(c10::MaybeOwnedTraits<at::Tensor>::createBorrow(t)); }

  // A tensor made by the caller: kept alive here.
  void own(at::Tensor t) {
    owned_.push_back(std::move(t));
    borrow(owned_.back());
  }

  void clear() {
    for (at::Tensor& t : refs_) c10::MaybeOwnedTraits<at::Tensor>::destroyBorrow(t);
    refs_.clear();
    owned_.clear();
  }

  size_t size() const { return refs_.size(); }
  bool owns_any() const { return !owned_.empty(); }
  at::TensorList list() const { return refs_; }
  operator at::TensorList() const { return refs_; }  // NOLINT(google-explicit-constructor)

 private:
  std::vector<at::Tensor> refs_;   // borrowed, every one
  std::vector<at::Tensor> owned_;  // the tensors made here, which refs_ also borrows
};

}  // namespace kasmina
