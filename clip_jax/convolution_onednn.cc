// oneDNN's convolutions as XLA:CPU custom calls (clip_jax/convolution.py builds and loads this).
// NHWC activations and HWIO kernels, float32, as clip_jax.layers.Conv holds them. oneDNN keeps
// the kernel in its own blocked layout: each call reorders the (small) kernel into it, so no
// layout leaks out. Primitives are cached per shape, as torch's oneDNN path caches them.
#include <unistd.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;

namespace {

// Runs every oneDNN call on one thread of its own, one call at a time. XLA calls a custom call
// from whichever of its worker threads is free, and runs independent ones at once; each such
// thread would become the master of an OpenMP team of its own, and oneDNN's barrier-synchronised
// kernels were seen to hang for good in a whole RN50 step so (never with one master).
class Executor {
 public:
  static Executor& Get() {  // one per process (a forked child starts its own thread)
    static std::mutex mu;
    static Executor* executor = nullptr;
    std::lock_guard<std::mutex> lock(mu);
    if (executor == nullptr || executor->pid_ != getpid()) executor = new Executor();
    return *executor;  // never deleted: the thread lives as long as the process
  }

  // Runs `f` on the executor's thread and returns its error message ("" for none).
  std::string Run(const std::function<void()>& f) {
    std::lock_guard<std::mutex> one_at_a_time(callers_);
    std::unique_lock<std::mutex> lock(mu_);
    task_ = &f;
    done_ = false;
    cv_.notify_all();
    cv_.wait(lock, [this] { return done_; });
    return error_;
  }

 private:
  Executor() : pid_(getpid()) { std::thread([this] { Loop(); }).detach(); }

  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return task_ != nullptr; });
      const std::function<void()>* f = task_;
      lock.unlock();
      std::string error;
      try {
        (*f)();
      } catch (const std::exception& e) {
        error = e.what();
      }
      lock.lock();
      error_ = error;
      task_ = nullptr;
      done_ = true;
      cv_.notify_all();
    }
  }

  pid_t pid_;
  std::mutex callers_, mu_;
  std::condition_variable cv_;
  const std::function<void()>* task_ = nullptr;
  bool done_ = false;
  std::string error_;
};

ffi::Error RunOnExecutor(const std::function<void()>& f) {
  std::string error = Executor::Get().Run(f);
  return error.empty() ? ffi::Error::Success() : ffi::Error::Internal(error);
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Shape {  // x (b, h, w, c), kernel (k, k, c / g, o), output (b, oh, ow, o); g groups
  int64_t b, h, w, c, o, k, stride, pad, g, oh, ow;
  auto key() const { return std::make_tuple(b, h, w, c, o, k, stride, pad, g); }
};

struct Prims {
  dnnl::convolution_forward::primitive_desc fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights;
  dnnl::convolution_forward fwd_p;
  dnnl::convolution_backward_data bwd_data_p;
  dnnl::convolution_backward_weights bwd_weights_p;
};

memory::desc Act(int64_t b, int64_t c, int64_t h, int64_t w) {
  return memory::desc({b, c, h, w}, memory::data_type::f32, tag::nhwc);
}

// The kernel's logical dims, in oneDNN's order ((groups,) out, in, kh, kw).
memory::dims KernelDims(const Shape& s) {
  if (s.g == 1) return {s.o, s.c, s.k, s.k};
  return {s.g, s.o / s.g, s.c / s.g, s.k, s.k};
}

memory::desc Hwio(const Shape& s) {  // (k, k, c / g, o), o = (g, o / g): hwio or hwigo
  return memory::desc(KernelDims(s), memory::data_type::f32, s.g == 1 ? tag::hwio : tag::hwigo);
}

const Prims& Get(const Shape& s) {
  static std::mutex mu;
  static std::map<decltype(s.key()), Prims> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(s.key());
  if (it != cache.end()) return it->second;
  auto src = Act(s.b, s.c, s.h, s.w), dst = Act(s.b, s.o, s.oh, s.ow);
  auto any = memory::desc(KernelDims(s), memory::data_type::f32, tag::any);
  memory::dims strides{s.stride, s.stride}, pad{s.pad, s.pad};
  // the right padding that makes oneDNN's output size the one XLA computed
  memory::dims pad_r{(s.oh - 1) * s.stride + s.k - s.h - s.pad,
                     (s.ow - 1) * s.stride + s.k - s.w - s.pad};
  auto algo = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc fwd(
      Engine(), dnnl::prop_kind::forward_training, algo, src, any, dst, strides, pad, pad_r);
  dnnl::convolution_backward_data::primitive_desc bwd_data(
      Engine(), algo, src, any, dst, strides, pad, pad_r, fwd);
  dnnl::convolution_backward_weights::primitive_desc bwd_weights(
      Engine(), algo, src, any, dst, strides, pad, pad_r, fwd);
  Prims p{fwd, bwd_data, bwd_weights, dnnl::convolution_forward(fwd),
          dnnl::convolution_backward_data(bwd_data),
          dnnl::convolution_backward_weights(bwd_weights)};
  return cache.emplace(s.key(), std::move(p)).first->second;
}

// The kernel in the layout a primitive wants: the user's buffer, or a reordered copy in `tmp`.
memory Kernel(dnnl::stream& stream, const memory::desc& want, const Shape& s, float* hwio,
              std::vector<float>& tmp) {
  memory user(Hwio(s), Engine(), hwio);
  if (want == user.get_desc()) return user;
  tmp.resize(want.get_size() / sizeof(float));
  memory blocked(want, Engine(), tmp.data());
  dnnl::reorder(user, blocked).execute(stream, user, blocked);
  return blocked;
}

Shape ShapeOf(ffi::Span<const int64_t> x, ffi::Span<const int64_t> kernel,
              ffi::Span<const int64_t> y, int64_t stride, int64_t pad) {
  return Shape{x[0], x[1], x[2], x[3], kernel[3], kernel[0], stride, pad, x[3] / kernel[2],
               y[1], y[2]};
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t pad) {
  return RunOnExecutor([&] {
    Shape s = ShapeOf(x.dimensions(), kernel.dimensions(), y->dimensions(), stride, pad);
    const Prims& p = Get(s);
    dnnl::stream stream(Engine());
    std::vector<float> tmp;
    memory w = Kernel(stream, p.fwd.weights_desc(), s, kernel.typed_data(), tmp);
    memory src(Act(s.b, s.c, s.h, s.w), Engine(), x.typed_data());
    memory dst(Act(s.b, s.o, s.oh, s.ow), Engine(), y->typed_data());
    p.fwd_p.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, dst}});
    stream.wait();
  });
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
                        ffi::ResultBuffer<ffi::F32> dx, int64_t stride, int64_t pad) {
  return RunOnExecutor([&] {
    Shape s = ShapeOf(dx->dimensions(), kernel.dimensions(), dy.dimensions(), stride, pad);
    const Prims& p = Get(s);
    dnnl::stream stream(Engine());
    std::vector<float> tmp;
    memory w = Kernel(stream, p.bwd_data.weights_desc(), s, kernel.typed_data(), tmp);
    memory diff_dst(Act(s.b, s.o, s.oh, s.ow), Engine(), dy.typed_data());
    memory diff_src(Act(s.b, s.c, s.h, s.w), Engine(), dx->typed_data());
    p.bwd_data_p.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, w},
                                  {DNNL_ARG_DIFF_SRC, diff_src}});
    stream.wait();
  });
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                           ffi::ResultBuffer<ffi::F32> dkernel, int64_t stride, int64_t pad) {
  return RunOnExecutor([&] {
    Shape s = ShapeOf(x.dimensions(), dkernel->dimensions(), dy.dimensions(), stride, pad);
    const Prims& p = Get(s);
    dnnl::stream stream(Engine());
    memory src(Act(s.b, s.c, s.h, s.w), Engine(), x.typed_data());
    memory diff_dst(Act(s.b, s.o, s.oh, s.ow), Engine(), dy.typed_data());
    memory user(Hwio(s), Engine(), dkernel->typed_data());
    std::vector<float> tmp;
    memory diff_w = user;
    if (!(p.bwd_weights.diff_weights_desc() == user.get_desc())) {
      tmp.resize(p.bwd_weights.diff_weights_desc().get_size() / sizeof(float));
      diff_w = memory(p.bwd_weights.diff_weights_desc(), Engine(), tmp.data());
    }
    p.bwd_weights_p.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                                     {DNNL_ARG_DIFF_WEIGHTS, diff_w}});
    if (diff_w != user) dnnl::reorder(diff_w, user).execute(stream, diff_w, user);
    stream.wait();
  });
}

// All three take two float32 arrays and return one, with the stride and padding as attributes.
auto Binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride")
      .Attr<int64_t>("pad");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ClipJaxConvForward, Forward, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(ClipJaxConvBackwardData, BackwardData, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(ClipJaxConvBackwardWeights, BackwardWeights, Binding());
