// What the prefill's GEMMs could gain (issue 11), measured on the card: for each linear of an
// llama3-8b prefill (y = x W^T, W [out, in] bf16, x [T, in] bf16, F32 accumulate), the time of
// cuBLASLt's first heuristic pick (what the engine runs) against the fastest of its top candidates,
// with F32 output (the engine's today) and bf16 output, and q/k/v and gate/up as one GEMM each.
// Also the o_proj with beta = 1 into an F32 C (a residual add in the epilogue). Each candidate's
// F32 output is compared bit for bit with the first pick's.
//
// Build and run on the GPU machine (bench/gemm_probe.sh does both):
//   nvcc -O2 -std=c++17 -arch=sm_90 bench/gemm_probe.cu -lcublasLt -o gemm_probe && ./gemm_probe
// Prints one JSON object per line.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "error: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "error: %s: cuBLAS status %d\n", what, static_cast<int>(s));
    std::exit(1);
  }
}

__global__ void fill_bf16(__nv_bfloat16* p, size_t n, unsigned seed, float scale) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16((static_cast<float>(h & 0xffffff) / 16777216.0f - 0.5f) * scale);
  }
}

struct Shape {
  const char* name;
  long long tokens, out, in;
};

constexpr size_t kWorkspace = 32u << 20;

struct Result {
  float ms;
  int algo_id, tile, splitk, stages;
  bool same_bits;
};

int cfg(const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoConfigAttributes_t attr) {
  int v = -1;
  size_t written = 0;
  uint32_t u = 0;
  if (attr == CUBLASLT_ALGO_CONFIG_TILE_ID || attr == CUBLASLT_ALGO_CONFIG_STAGES_ID) {
    if (cublasLtMatmulAlgoConfigGetAttribute(&a, attr, &u, sizeof(u), &written) == CUBLAS_STATUS_SUCCESS) v = int(u);
  } else {
    int32_t s = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(&a, attr, &s, sizeof(s), &written) == CUBLAS_STATUS_SUCCESS) v = s;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int candidates = argc > 1 ? std::atoi(argv[1]) : 12;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 10;
  std::vector<Shape> shapes = {
      {"q", 8192, 4096, 4096},      {"k", 8192, 1024, 4096},       {"qkv_fused", 8192, 6144, 4096},
      {"o", 8192, 4096, 4096},      {"gate", 4096, 14336, 4096},   {"gate_up_fused", 4096, 28672, 4096},
      {"down", 4096, 4096, 14336},  {"gate_8k", 8192, 14336, 4096}, {"down_8k", 8192, 4096, 14336},
      {"square", 8192, 8192, 8192},
  };
  cublasLtHandle_t lt;
  check(cublasLtCreate(&lt), "create");
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "stream");
  size_t max_w = 0, max_x = 0, max_y = 0;
  for (const Shape& s : shapes) {
    max_w = std::max(max_w, size_t(s.out * s.in));
    max_x = std::max(max_x, size_t(s.tokens * s.in));
    max_y = std::max(max_y, size_t(s.tokens * s.out));
  }
  __nv_bfloat16 *w, *x;
  void *y, *y_ref, *c_in, *ws;
  check(cudaMalloc(&w, max_w * 2), "w");
  check(cudaMalloc(&x, max_x * 2), "x");
  check(cudaMalloc(&y, max_y * 4), "y");
  check(cudaMalloc(&y_ref, max_y * 4), "y_ref");
  check(cudaMalloc(&c_in, max_y * 4), "c");
  check(cudaMalloc(&ws, kWorkspace), "ws");
  fill_bf16<<<1024, 256, 0, stream>>>(w, max_w, 1u, 0.05f);
  fill_bf16<<<1024, 256, 0, stream>>>(x, max_x, 2u, 2.0f);
  check(cudaMemsetAsync(c_in, 0, max_y * 4, stream), "memset");
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);

  for (const Shape& s : shapes) {
    for (int variant = 0; variant < 3; ++variant) {  // 0: F32 out, 1: bf16 out, 2: F32 out + beta 1
      if (variant == 2 && std::strcmp(s.name, "o") != 0) continue;
      const cudaDataType_t out_t = variant == 1 ? CUDA_R_16BF : CUDA_R_32F;
      const float alpha = 1.0f, beta = variant == 2 ? 1.0f : 0.0f;
      cublasLtMatmulDesc_t op;
      check(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
      cublasLtMatrixLayout_t la, lb, lc;
      check(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.in, s.out, s.in), "A");
      check(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.in, s.tokens, s.in), "B");
      check(cublasLtMatrixLayoutCreate(&lc, out_t, s.out, s.tokens, s.out), "C");
      cublasLtMatmulPreference_t pref;
      cublasLtMatmulPreferenceCreate(&pref);
      const uint64_t wsb = kWorkspace;
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb));
      std::vector<cublasLtMatmulHeuristicResult_t> heur(candidates);
      int found = 0;
      check(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, candidates, heur.data(), &found), "heur");
      std::vector<Result> results;
      std::vector<float> host_ref, host_y;
      for (int i = 0; i < found; ++i) {
        if (heur[i].state != CUBLAS_STATUS_SUCCESS) continue;
        const cublasLtMatmulAlgo_t& a = heur[i].algo;
        void* out = i == 0 ? y_ref : y;
        if (variant == 2) check(cudaMemcpyAsync(out, c_in, size_t(s.out * s.tokens) * 4, cudaMemcpyDeviceToDevice, stream), "c");
        if (cublasLtMatmul(lt, op, &alpha, w, la, x, lb, &beta, out, lc, out, lc, &a, ws, kWorkspace, stream) !=
            CUBLAS_STATUS_SUCCESS)
          continue;
        check(cudaStreamSynchronize(stream), "sync");
        bool same = true;
        if (variant == 0) {
          const size_t n = size_t(s.out * s.tokens);
          if (i == 0) {
            host_ref.resize(n);
            check(cudaMemcpy(host_ref.data(), y_ref, n * 4, cudaMemcpyDeviceToHost), "ref");
          } else {
            host_y.resize(n);
            check(cudaMemcpy(host_y.data(), y, n * 4, cudaMemcpyDeviceToHost), "y");
            same = std::memcmp(host_y.data(), host_ref.data(), n * 4) == 0;
          }
        }
        for (int k = 0; k < 2; ++k)
          cublasLtMatmul(lt, op, &alpha, w, la, x, lb, &beta, out, lc, out, lc, &a, ws, kWorkspace, stream);
        cudaEventRecord(e0, stream);
        for (int k = 0; k < reps; ++k)
          cublasLtMatmul(lt, op, &alpha, w, la, x, lb, &beta, out, lc, out, lc, &a, ws, kWorkspace, stream);
        cudaEventRecord(e1, stream);
        check(cudaEventSynchronize(e1), "time");
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        int algo_id = -1;
        size_t written = 0;
        cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_ID, &algo_id, sizeof(algo_id), &written);
        results.push_back({ms / reps, algo_id, cfg(a, CUBLASLT_ALGO_CONFIG_TILE_ID),
                           cfg(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM), cfg(a, CUBLASLT_ALGO_CONFIG_STAGES_ID), same});
      }
      const double flop = 2.0 * s.tokens * s.out * s.in;
      std::string cand = "[";
      size_t best = 0;
      for (size_t i = 0; i < results.size(); ++i) {
        const Result& r = results[i];
        if (r.ms < results[best].ms) best = i;
        char buf[160];
        std::snprintf(buf, sizeof(buf), "%s{\"ms\":%.4f,\"id\":%d,\"tile\":%d,\"splitk\":%d,\"stages\":%d,\"same_bits\":%s}",
                      i ? "," : "", r.ms, r.algo_id, r.tile, r.splitk, r.stages, r.same_bits ? "true" : "false");
        cand += buf;
      }
      cand += "]";
      if (!results.empty())
        std::printf(
            "{\"shape\":\"%s\",\"tokens\":%lld,\"out\":%lld,\"in\":%lld,\"out_dtype\":\"%s\",\"beta\":%.0f,"
            "\"first_ms\":%.4f,\"first_tflops\":%.1f,\"best_ms\":%.4f,\"best_tflops\":%.1f,\"best_index\":%zu,"
            "\"candidates\":%s}\n",
            s.name, s.tokens, s.out, s.in, variant == 1 ? "bf16" : "f32", beta, results[0].ms,
            flop / results[0].ms / 1e9, results[best].ms, flop / results[best].ms / 1e9, best, cand.c_str());
      std::fflush(stdout);
      cublasLtMatmulPreferenceDestroy(pref);
      cublasLtMatrixLayoutDestroy(la);
      cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(lc);
      cublasLtMatmulDescDestroy(op);
    }
  }
  return 0;
}
