#pragma once
// The model: weights on the device and one layer sequence for every supported architecture.
// Architectural differences are ModelConfig flags (biases, q/k norm, rope scaling, windows,
// tied embeddings), never a second forward.
#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "headinfer/all_reduce.h"
#include "headinfer/backend.h"
#include "headinfer/checkpoint.h"
#include "headinfer/kv_cache.h"

namespace headinfer {

// transformers' inverse RoPE frequencies [rotary_dim / 2] for the configured scaling, computed in
// fp32 the way transformers computes them (longrope: the short or the long factors).
std::vector<float> rope_inv_freq(const RopeConfig& rope, int64_t rotary_dim, bool long_factors = false);

// Norm weights of norm_plus_one models are held as their fp32 (1 + w), as transformers computes
// them before the multiply. Fused checkpoints (phi3) give wq/wk/wv and w_gate/w_up as row ranges
// of one uploaded qkv_proj / gate_up_proj.
struct LayerWeights {
  VecView input_norm;                    // [hidden]
  WeightView wq, wk, wv, wo;             // [q_dim, hidden], [kv_dim, hidden] x2, [hidden, q_dim]
  VecView bq, bk, bv, bo;                // biases when the config has them (data == nullptr otherwise)
  VecView q_norm, k_norm;                // [head_dim] (qwen3, gemma3)
  VecView attn_out_norm;                 // [hidden] sandwich_norms: gemma's post_attention_layernorm
  VecView post_attention_norm;           // [hidden] the MLP's input norm (gemma: pre_feedforward_layernorm)
  VecView mlp_out_norm;                  // [hidden] sandwich_norms: post_feedforward_layernorm
  WeightView w_gate, w_up, w_down;       // [ffn, hidden] x2, [hidden, ffn]
  VecView b_gate, b_up, b_down;          // mlp_bias
};

struct ModelWeights {
  WeightView embed;    // [vocab, hidden]
  std::vector<LayerWeights> layers;
  VecView final_norm;  // [hidden]
  WeightView lm_head;  // [vocab, hidden]; the embedding table when tied
};

// Activation buffers, sized once for the largest chunk (nothing allocates per token).
struct ForwardWorkspaceSizes {
  int64_t max_chunk = 512;      // tokens per forward call
  int64_t max_mlp_chunk = 512;  // rows of the MLP intermediate at once
};

// The largest op calls Model makes for these sizes (what it passes to Ops::reserve_workspace).
OpsWorkspaceSizes ops_workspace_sizes(const ModelConfig& config, const ForwardWorkspaceSizes& sizes,
                                      DType weight_dtype);

// Tensor parallelism by kv head (issue 16). Shard `rank` of `n_shards` holds kv heads
// [rank * H / N, (rank + 1) * H / N) of every layer with their query heads (those rows of
// wq/wk/wv and their biases, those input columns of wo) and rows [rank * I / N, (rank + 1) * I / N)
// of the MLP intermediate (gate/up rows, down_proj's input columns); norms and the embedding are
// replicated. Each shard's o_proj and down_proj give a partial sum, which `all_reduce` adds up
// before the norm and residual add that follow, so every shard keeps the same residual stream;
// the o_proj / down_proj biases are added by rank 0 only, and only rank 0 computes logits.
struct ModelShard {
  int rank = 0;
  int n_shards = 1;
  AllReduce* all_reduce = nullptr;  // required when n_shards > 1 (n_ranks() == n_shards)
};

// shard_slice / shard_config: headinfer/config.h.

class Model {
 public:
  // Checks every tensor the config needs (names and shapes) and copies the weights to `device`
  // (those already there, TensorView::on_device, are used in place).
  // With a shard of n_shards > 1, only its slice is copied (checkpoint tensors must then be in
  // host memory).
  // defer_weight_copies: the constructor allocates every weight and the workspace but leaves the
  // host-to-device copies to copy_weights() (Engine plans the first prefill meanwhile); the
  // checkpoint's tensors must stay alive until then.
  Model(const Checkpoint& checkpoint, Device& device, const ForwardWorkspaceSizes& sizes,
        const ModelShard& shard = {}, bool defer_weight_copies = false);
  ~Model();  // releases the ops' workspace the constructor reserved (Ops::release_workspace)
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }  // the shard's (shard_config): heads and ffn its own
  const ModelShard& shard() const { return shard_; }
  Device& device() const { return device_; }
  size_t weight_bytes() const { return weight_bytes_; }  // every weight, copied or used in place
  size_t weights_in_place_bytes() const { return weights_in_place_bytes_; }  // not allocated through device()
  int64_t max_chunk() const { return sizes_.max_chunk; }
  // The copies a constructor with defer_weight_copies left (none otherwise); forward() needs them done.
  // Returns once the work prepare_first_chunk queued is done too.
  void copy_weights();
  // Plans the GEMMs of a first forward of n_tokens (Ops::prepare_linear), before copy_weights():
  // on the CUDA backend their cuBLASLt algorithms are picked and their kernels loaded while the
  // weights copy. Writes garbage over the activations; changes no later result.
  void prepare_first_chunk(int64_t n_tokens);

  // Runs ids (at positions pos0 ..) through the model, storing their K/V in `kv`, and writes the
  // logits of the last token to `logits` (host, [vocab]).
  // call_end: the position after the last token of the caller's whole call (a prefill cut into
  // chunks passes the prompt's end), which picks longrope's short or long factors as transformers
  // picks them for one call; 0: pos0 + ids.size().
  void forward(std::span<const int32_t> ids, int64_t pos0, KvCache& kv, std::span<float> logits,
               int64_t call_end = 0);
  // The same without reading anything back: the last token's logits stay in device memory, for
  // read_logits() or a pick (queue_argmax, queue_sample). Queues device work only (a step graph can
  // record it).
  void forward(std::span<const int32_t> ids, int64_t pos0, KvCache& kv, int64_t call_end = 0);
  // forward() of one token at pos0 whose id is the pick queue_argmax() or queue_sample() left in
  // device memory: queued behind the step that picks it, with no host in between (a pick is always
  // a row of the [vocab, hidden] table).
  void forward_picked_token(int64_t pos0, KvCache& kv);
  // The logits of the last forward, to the host ([vocab]).
  void read_logits(std::span<float> logits);
  // A token picked from the last forward's logits on the device, read back as 4 bytes in two
  // halves (Device::queue_read): the pick is queued with its read into `slot`, and later work may
  // be queued (forward_picked_token takes the pick as its token) before wait_pick(slot) hands it
  // over. The pick: their argmax, or a draw (Ops::sample_token; only where
  // device().ops().samples_on_device()).
  void queue_argmax(int slot);
  void queue_sample(int slot, float temperature, int64_t top_k, float top_p, double uniform);
  int32_t wait_pick(int slot);

 private:
  // One layer's halves. xn holds the normed input (in the ops' linear_input_dtype, in xn_'s
  // memory); each half ends with its residual add, fused with the norm that follows it: the
  // attention half writes post_attention_norm(x) to xn, the MLP half `next_norm`(x) (the next
  // layer's input norm; nullptr after the last layer).
  void attention_block(const LayerWeights& w, int64_t layer, int64_t n, int64_t pos0, const RopeTable& rope,
                       KvCache& kv, const MatView& xn);
  void mlp_block(const LayerWeights& w, int64_t n, const MatView& xn, const VecView* next_norm);
  // forward() of n tokens whose embedding rows `embed` writes into the residual stream.
  void run_forward(int64_t n, int64_t pos0, KvCache& kv, int64_t call_end,
                   const std::function<void(const MatView&)>& embed);
  // The linears' outputs over n rows (the MLP's: m rows from row r0), as forward() passes them
  // and prepare_first_chunk() plans them.
  std::array<LinearOut, 3> qkv_outs(const LayerWeights& w, int64_t n) const;
  // o_proj and down_proj add into the residual stream x_ in the GEMM (LinearOut::accumulate) where
  // the backend does that (Ops::linear_accumulates) and nothing comes between the product and the
  // add (no bias, no all-reduce over shards, no sandwich norm); else they write proj_.
  bool folds_residual(const WeightView& w, const VecView& bias, int64_t rows) const;
  // The attention's output as o_proj reads it: 16-bit in the ops' input scratch where the backend
  // writes it so (Ops::attention_out16, LayerAttention::out16), else attn_ (F32).
  MatView o_proj_in(const LayerWeights& w, int64_t n) const;
  LinearOut o_proj_out(const LayerWeights& w, int64_t n) const;
  // gate/up of m rows from x in x_dtype, whose activation goes to down_proj in h_dtype: F32; with
  // HEADINFER_GATE_UP_16=1 (an A/B knob), 16-bit where both are the weights' 16-bit dtype and there
  // is no bias (the GEMM rounds its sums as torch's bf16 linear does, and the activation reads half
  // the bytes).
  std::array<LinearOut, 2> gate_up_outs(const LayerWeights& w, int64_t m, DType x_dtype, DType h_dtype) const;
  LinearOut down_out(const LayerWeights& w, int64_t r0, int64_t m) const;
  // x += partial, then out = norm(x) (nullptr: no norm), as add_rms_norm where it can.
  void residual(const MatView& x, const MatView& partial, const VecView* norm, const MatView& out);
  // Sums a partial o_proj / down_proj output over the shards in place (nothing with one shard).
  void all_reduce(const MatView& partial);

  ModelShard shard_;
  ModelConfig config_;
  Device& device_;
  ForwardWorkspaceSizes sizes_;
  std::vector<DeviceBuffer> weight_buffers_;
  struct PendingCopy {
    void* dst;
    const void* src;          // the checkpoint's bytes, or owned's
    size_t bytes;
    std::vector<char> owned;  // bytes the constructor made (converted norms, shard parts, rope tables)
  };
  std::vector<PendingCopy> pending_copies_;
  bool defer_copies_ = false;
  size_t weight_bytes_ = 0;
  size_t weights_in_place_bytes_ = 0;
  ModelWeights weights_;
  // Rope tables, F32 [rotary_dim / 2] each: the model's (global) one, longrope's long-factor one,
  // the sliding layers' own (gemma3).
  DeviceBuffer inv_freq_, inv_freq_long_, inv_freq_local_;
  RopeTable rope_, rope_long_, rope_local_;

  // Workspace, F32, row-major with rows = tokens of the chunk:
  DeviceBuffer x_;       // [C, hidden] residual stream
  DeviceBuffer xn_;      // [C, hidden] normed input of a block
  DeviceBuffer q_;       // [C, q_dim]
  DeviceBuffer k_;       // [C, kv_dim]
  DeviceBuffer v_;       // [C, kv_dim]
  DeviceBuffer attn_;    // [C, q_dim] attention output
  DeviceBuffer lse_;     // [C, n_heads]
  DeviceBuffer proj_;    // [C, hidden] o_proj / down_proj output before the residual add
  DeviceBuffer gate_;    // [M, ffn] MLP sub-chunk
  DeviceBuffer up_;      // [M, ffn]
  DeviceBuffer logits_;  // [1, vocab]
  DeviceBuffer argmax_;  // I32 [1]: the last pick (argmax or draw), forward_picked_token's id
};

}  // namespace headinfer
