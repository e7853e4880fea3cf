// Peak float32 FLOP/s of this CPU, measured: every core runs independent fused multiply-adds
// on the widest vectors the compiler targets (-march=native: 16 floats with AVX-512, split into
// narrower registers elsewhere). Twelve accumulators per thread cover the FMA latency of two
// pipes (4 cycles x 2). A datasheet figure does not exist for a shared VM's CPU: its clock and
// vector units depend on the exact part and what the host allows.
#include <omp.h>

#include <chrono>

typedef float V16 __attribute__((vector_size(64)));
constexpr int kAcc = 12;

// Runs `iters` rounds of kAcc vector FMAs on `threads` threads; returns the wall seconds.
// FLOPs done: 2 * 16 * kAcc * iters * threads (sb3dr_fma_flops).
extern "C" double sb3dr_fma_seconds(long iters, int threads, float seed) {
  volatile float sink = 0;  // keeps the results alive, so the loop is not optimised away
  auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
  {
    V16 acc[kAcc], m, b;
    for (int j = 0; j < 16; j++) m[j] = 0.999999f, b[j] = seed * 1e-7f;
    for (int i = 0; i < kAcc; i++)
      for (int j = 0; j < 16; j++) acc[i][j] = seed + i + j;
    for (long k = 0; k < iters; k++) {
#pragma GCC unroll 12
      for (int i = 0; i < kAcc; i++) acc[i] = acc[i] * m + b;
    }
    float s = 0;
    for (int i = 0; i < kAcc; i++)
      for (int j = 0; j < 16; j++) s += acc[i][j];
#pragma omp critical
    sink = sink + s;
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

extern "C" double sb3dr_fma_flops(long iters, int threads) {
  return 2.0 * 16 * kAcc * static_cast<double>(iters) * threads;
}
