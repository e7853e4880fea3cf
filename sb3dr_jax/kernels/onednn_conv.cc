// 2-D convolutions for XLA:CPU through oneDNN, as XLA FFI custom calls.
//
// Why: XLA:CPU runs convolutions on Eigen kernels that take 2.5-3x oneDNN's time on the small
// channel counts of the view encoders (benchmarks/README.md). These handlers run the forward,
// input-gradient and weight-gradient convolutions with oneDNN's JIT kernels on the caller's
// buffers; `sb3dr_jax/kernels/onednn.py` builds this file and wraps the three in a custom_vjp.
//
// Layouts are XLA's (and Flax's): activations NHWC, kernels HWIO, f32. Padding is explicit
// (lo, hi) per spatial dimension, so XLA's asymmetric 'SAME' padding maps one to one.
// Primitives are built once per (op, shapes, strides, padding) and cached: building one costs
// more than running it on these sizes. Calls run asynchronously on XLA's intra-op thread pool
// (see Async()).

#include <omp.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && std::atoi(v) > 0 ? std::atoi(v) : fallback;
}

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// Geometry of one convolution: x [N, H, W, C], w [KH, KW, C, O], y [N, OH, OW, O].
struct Geom {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, ph0, ph1, pw0, pw1;
  auto key() const {
    return std::make_tuple(n, h, w, c, kh, kw, o, oh, ow, sh, sw, ph0, ph1, pw0, pw1);
  }
  memory::desc src(tag t = tag::nhwc) const { return {{n, c, h, w}, dt::f32, t}; }
  memory::desc dst(tag t = tag::nhwc) const { return {{n, o, oh, ow}, dt::f32, t}; }
  memory::desc wei(tag t = tag::hwio) const { return {{o, c, kh, kw}, dt::f32, t}; }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_l() const { return {ph0, pw0}; }
  memory::dims pad_r() const { return {ph1, pw1}; }
  // From the 15 numbers above in order (the layout `onednn.py` passes through ctypes).
  static Geom FromArray(const int64_t* v) {
    return {v[0], v[1], v[2],  v[3],  v[4],  v[5],  v[6], v[7],
            v[8], v[9], v[10], v[11], v[12], v[13], v[14]};
  }
};

// XLA runs independent thunks concurrently; the pip build of oneDNN shares one library
// scratchpad between primitives (no DNNL_ENABLE_CONCURRENT_EXEC), so each call brings its own.
dnnl::primitive_attr Attr() {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return a;
}

enum Op { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

// The primitive descriptor of one op. Activations stay NHWC (no reorders of the big tensors);
// oneDNN picks the kernel layout (`tag::any`). The gradients take the forward's as a hint.
dnnl::primitive_desc MakePd(Op op, const Geom& g) {
  auto algo = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc fwd(
      Engine(), dnnl::prop_kind::forward_training, algo, g.src(), g.wei(tag::any), g.dst(),
      g.strides(), g.pad_l(), g.pad_r(), Attr());
  if (op == kFwd) return fwd;
  if (op == kBwdData)
    return dnnl::convolution_backward_data::primitive_desc(Engine(), algo, g.src(),
                                                           g.wei(tag::any), g.dst(), g.strides(),
                                                           g.pad_l(), g.pad_r(), fwd, Attr());
  return dnnl::convolution_backward_weights::primitive_desc(Engine(), algo, g.src(),
                                                            g.wei(tag::any), g.dst(), g.strides(),
                                                            g.pad_l(), g.pad_r(), fwd, Attr());
}

// One cached primitive plus the reorder between XLA's HWIO kernel and the primitive's layout
// (absent when the primitive takes HWIO as is).
struct Entry {
  dnnl::primitive prim;
  memory::desc wei_md;  // the primitive's kernel layout
  memory::desc scratch_md;
  bool reorder = false;
  dnnl::reorder wei_reorder;
};

Entry Build(Op op, const Geom& g) {
  Entry e;
  auto pd = MakePd(op, g);
  e.prim = dnnl::primitive(pd);
  e.wei_md = op == kBwdWeights ? pd.diff_weights_desc() : pd.weights_desc();
  e.scratch_md = pd.scratchpad_desc();
  e.reorder = e.wei_md != g.wei();
  if (e.reorder) {
    // Forward/data gradient: HWIO -> primitive layout. Weight gradient: the other way.
    auto user = memory(g.wei(), Engine(), DNNL_MEMORY_NONE);
    auto prim = memory(e.wei_md, Engine(), DNNL_MEMORY_NONE);
    e.wei_reorder = op == kBwdWeights ? dnnl::reorder(prim, user) : dnnl::reorder(user, prim);
  }
  return e;
}

// OpenMP threads for one call. XLA already runs independent convolutions (view chunks, the
// online and target branches) on its own threads at once, so a small call gets one thread: a
// second OpenMP team per call oversubscribed 2 cores (resnet_tiny step 0.15 s -> 0.25-0.35 s).
// A big call (>= SB3DR_ONEDNN_PARALLEL_MACS multiply-adds, default 1e8) gets every core: the
// backward of an unchunked ResNet-18 is one chain, and one thread per call left a core idle
// (step 2.0 s -> 1.6 s). SB3DR_ONEDNN_THREADS fixes the count for every call. The one exception:
// oneDNN 3.2's weight gradient of a strided 1x1 convolution (jit_1x1 with its input compacted
// first) overruns its buffers with 2 threads on some small shapes (odd batch, 8 channels: heap
// corruption, see tests/test_onednn.py), so it always runs on one.
int ThreadsFor(Op op, const Geom& g) {
  if (op == kBwdWeights && g.kh == 1 && g.kw == 1 && (g.sh > 1 || g.sw > 1)) return 1;
  static const int fixed = EnvInt("SB3DR_ONEDNN_THREADS", 0);
  static const int all = EnvInt("OMP_NUM_THREADS", omp_get_num_procs());
  static const double big = [] {
    const char* v = std::getenv("SB3DR_ONEDNN_PARALLEL_MACS");
    return v ? std::atof(v) : 1e8;
  }();
  if (fixed) return fixed;
  double macs = double(g.n) * g.oh * g.ow * g.o * g.kh * g.kw * g.c;
  return macs >= big ? all : 1;
}

// The cached primitive for (op, geometry, threads): oneDNN fixes a kernel's thread split when
// it builds the primitive.
const Entry& Get(Op op, const Geom& g) {
  const int threads = ThreadsFor(op, g);
  omp_set_num_threads(threads);  // this (XLA) thread's teams, at build and run time
  static std::mutex mu;
  static std::map<std::tuple<int, int, decltype(g.key())>, std::unique_ptr<Entry>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[std::make_tuple(static_cast<int>(op), threads, g.key())];
  if (!slot) slot = std::make_unique<Entry>(Build(op, g));
  return *slot;
}

ffi::Error Check(bool ok, const char* what) {
  return ok ? ffi::Error::Success() : ffi::Error(ffi::ErrorCode::kInvalidArgument, what);
}

// Fills a Geom from the NHWC input, HWIO kernel and NHWC output dimensions.
ffi::Error MakeGeom(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                    ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t ph0, int64_t ph1,
                    int64_t pw0, int64_t pw1, Geom* g) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4)
    return Check(false, "onednn conv: expected rank-4 NHWC input/output and HWIO kernel");
  *g = {x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], sh, sw, ph0, ph1, pw0, pw1};
  bool ok = w[2] == x[3] && y[0] == x[0] && y[3] == w[3] &&
            y[1] == (x[1] + ph0 + ph1 - w[0]) / sh + 1 && y[2] == (x[2] + pw0 + pw1 - w[1]) / sw + 1;
  return Check(ok, "onednn conv: inconsistent input, kernel and output shapes");
}

// Runs `op` on one geometry. Pointers use the forward's names: x [N, H, W, C] (the input, or
// dx for kBwdData), w [KH, KW, C, O] (the kernel, or dw for kBwdWeights), y [N, OH, OW, O] (the
// output, or dy for both gradients). The kernel is reordered to the primitive's layout first
// (into it for kBwdWeights, afterwards).
void Run(Op op, const Geom& g, void* x, void* w, void* y) {
  const Entry& e = Get(op, g);
  static const int kSrc[] = {DNNL_ARG_SRC, DNNL_ARG_DIFF_SRC, DNNL_ARG_SRC};
  static const int kWei[] = {DNNL_ARG_WEIGHTS, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_WEIGHTS};
  static const int kDst[] = {DNNL_ARG_DST, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_DST};
  bool weights_out = op == kBwdWeights;
  dnnl::stream s(Engine());
  memory user_w(g.wei(), Engine(), w);
  memory scratch(e.scratch_md, Engine());  // per call: see Attr()
  memory pw = e.reorder ? memory(e.wei_md, Engine()) : user_w;
  if (e.reorder && !weights_out) e.wei_reorder.execute(s, user_w, pw);
  e.prim.execute(s, {{kSrc[op], memory(g.src(), Engine(), x)},
                     {kWei[op], pw},
                     {kDst[op], memory(g.dst(), Engine(), y)},
                     {DNNL_ARG_SCRATCHPAD, scratch}});
  if (e.reorder && weights_out) e.wei_reorder.execute(s, pw, user_w);
  s.wait();
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

// Calls run on XLA's intra-op pool and return a future at once (SB3DR_ONEDNN_ASYNC=0: inline).
// Why: XLA:CPU's thunk executor hands ready ops to another thread only when more than 8 are
// waiting (ExecuteSession::kSplitThreshold), so with fewer it ran independent convolutions one
// after another on one thread while the other core idled. An asynchronous call frees the
// executor to start the next ready op at once (benchmarks/README.md).
std::atomic<int> g_async{-1};  // -1: not read from the environment yet

bool Async() {
  int v = g_async.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* e = std::getenv("SB3DR_ONEDNN_ASYNC");
    g_async.store(v = e && std::atoi(e) == 0 ? 0 : 1);
  }
  return v > 0;
}

// The FFI entry shared by the three handlers: checks shapes, runs `op` (on the pool when
// asynchronous), maps oneDNN errors onto the future.
ffi::Future Launch(ffi::ThreadPool pool, Op op, ffi::Span<const int64_t> xd,
                   ffi::Span<const int64_t> wd, ffi::Span<const int64_t> yd, void* x, void* w,
                   void* y, int64_t sh, int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0,
                   int64_t pw1) {
  ffi::Promise promise;
  ffi::Future future(promise);
  Geom g;
  auto err = MakeGeom(xd, wd, yd, sh, sw, ph0, ph1, pw0, pw1, &g);
  if (err.failure()) {
    promise.SetError(err);
    return future;
  }
  auto work = [op, g, x, w, y, promise]() mutable {
    try {
      Run(op, g, x, w, y);
      promise.SetAvailable();
    } catch (const std::exception& e) {  // dnnl::error, bad_alloc: never past a pool thread
      promise.SetError(ffi::Error(ffi::ErrorCode::kInternal, e.what()));
    }
  };
  if (Async()) {
    pool.Schedule(std::move(work));
  } else {
    work();
  }
  return future;
}

ffi::Future ConvFwdImpl(ffi::ThreadPool pool, F32 x, F32 w, F32Out y, int64_t sh, int64_t sw,
                        int64_t ph0, int64_t ph1, int64_t pw0, int64_t pw1) {
  return Launch(pool, kFwd, x.dimensions(), w.dimensions(), y->dimensions(), x.typed_data(),
                w.typed_data(), y->typed_data(), sh, sw, ph0, ph1, pw0, pw1);
}

// dx (x's shape) from dy [N, OH, OW, O] and w.
ffi::Future ConvBwdDataImpl(ffi::ThreadPool pool, F32 dy, F32 w, F32Out dx, int64_t sh,
                            int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0, int64_t pw1) {
  return Launch(pool, kBwdData, dx->dimensions(), w.dimensions(), dy.dimensions(),
                dx->typed_data(), w.typed_data(), dy.typed_data(), sh, sw, ph0, ph1, pw0, pw1);
}

// dw [KH, KW, C, O] from x and dy.
ffi::Future ConvBwdWeightsImpl(ffi::ThreadPool pool, F32 x, F32 dy, F32Out dw, int64_t sh,
                               int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0, int64_t pw1) {
  return Launch(pool, kBwdWeights, x.dimensions(), dw->dimensions(), dy.dimensions(),
                x.typed_data(), dw->typed_data(), dy.typed_data(), sh, sw, ph0, ph1, pw0, pw1);
}

}  // namespace

// Two f32 operands, one f32 result, strides and (lo, hi) padding per spatial dimension.
#define SB3DR_CONV_HANDLER(name, impl)                                                    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, impl,                                              \
                                ffi::Ffi::Bind()                                         \
                                    .Ctx<ffi::ThreadPool>()                              \
                                    .Arg<F32>()                                          \
                                    .Arg<F32>()                                          \
                                    .Ret<F32>()                                          \
                                    .Attr<int64_t>("sh")                                 \
                                    .Attr<int64_t>("sw")                                 \
                                    .Attr<int64_t>("ph0")                                \
                                    .Attr<int64_t>("ph1")                                \
                                    .Attr<int64_t>("pw0")                                \
                                    .Attr<int64_t>("pw1"));

SB3DR_CONV_HANDLER(Sb3drConvFwd, ConvFwdImpl)
SB3DR_CONV_HANDLER(Sb3drConvBwdData, ConvBwdDataImpl)
SB3DR_CONV_HANDLER(Sb3drConvBwdWeights, ConvBwdWeightsImpl)

// Which oneDNN kernel each op uses for a geometry (for benchmarks and checks that no
// reference kernel is picked); returns the length written to `out`.
extern "C" int sb3dr_conv_impl_info(int op, const int64_t* geom, char* out, int cap) {
  const Geom g = Geom::FromArray(geom);
  std::string s;
  try {
    s = MakePd(static_cast<Op>(op), g).impl_info_str();
  } catch (const dnnl::error& e) {
    s = std::string("error: ") + e.what();
  }
  int n = static_cast<int>(s.size()) < cap - 1 ? static_cast<int>(s.size()) : cap - 1;
  s.copy(out, n);
  out[n] = 0;
  return n;
}

// OpenMP threads a call of this geometry runs on (ThreadsFor), for tests and benchmarks.
extern "C" int sb3dr_conv_threads(int op, const int64_t* geom) {
  const Geom g = Geom::FromArray(geom);
  return ThreadsFor(static_cast<Op>(op), g);
}

// Whether calls run asynchronously on XLA's pool (1) or inline (0); returns the old setting.
extern "C" int sb3dr_conv_set_async(int on) {
  int old = Async() ? 1 : 0;
  g_async.store(on ? 1 : 0);
  return old;
}
