#include "headinfer/model.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "headinfer/env_switch.h"
#include "headinfer/error.h"

namespace headinfer {
namespace {

MatView mat(const DeviceBuffer& b, int64_t rows, int64_t cols) {
  return MatView{b.data(), DType::F32, rows, cols, cols};
}

// Row range [begin, begin + count) of a tensor.
struct Rows {
  int64_t begin = 0, count = 0;
};

}  // namespace

Model::Model(const Checkpoint& ckpt, Device& device, const ForwardWorkspaceSizes& sizes, const ModelShard& shard,
             bool defer_weight_copies)
    : shard_(shard),
      config_(shard_config(ckpt.config(), shard.rank, shard.n_shards)),
      device_(device),
      sizes_(sizes),
      defer_copies_(defer_weight_copies) {
  const ModelConfig& c = config_;
  const ModelConfig& full = ckpt.config();
  if (sizes_.max_chunk < 1 || sizes_.max_mlp_chunk < 1) throw Error("chunk sizes must be positive");
  const bool sharded = shard_.n_shards > 1;
  if (sharded && (shard_.all_reduce == nullptr || shard_.all_reduce->n_ranks() != shard_.n_shards))
    throw Error("a model split over " + std::to_string(shard_.n_shards) + " devices needs an all-reduce of as many ranks");
  const ShardSlice slice = shard_slice(full, shard_.rank, shard_.n_shards);
  // A host-to-device copy now, or (defer_weight_copies) in copy_weights(); `keep` holds the bytes
  // when they are the constructor's own (empty: src is the checkpoint's, alive until then).
  auto put = [&](void* dst, const void* src, size_t bytes, std::vector<char>&& keep) {
    if (!defer_copies_) {
      device_.write_from_host(dst, src, bytes);
      return;
    }
    PendingCopy c{dst, src, bytes, std::move(keep)};
    if (!c.owned.empty()) c.src = c.owned.data();
    pending_copies_.push_back(std::move(c));
  };
  auto owned_bytes = [&](const void* p, size_t bytes) {
    if (!defer_copies_) return std::vector<char>{};
    const char* b = static_cast<const char*>(p);
    return std::vector<char>(b, b + bytes);
  };

  // Copies one checkpoint tensor to the device after checking its shape; a tensor already on the
  // device (TensorView::on_device) is used in place.
  auto upload = [&](const std::string& name, std::initializer_list<int64_t> shape) -> const void* {
    const std::vector<int64_t> s(shape);
    const TensorView& t = ckpt.require(name, s);
    if (t.on_device) {
      weight_bytes_ += t.nbytes;
      weights_in_place_bytes_ += t.nbytes;
      return t.data;
    }
    weight_buffers_.emplace_back(device_, t.nbytes, "weights");
    put(weight_buffers_.back().data(), t.data, t.nbytes, {});
    weight_bytes_ += t.nbytes;
    return weight_buffers_.back().data();
  };
  auto dtype_of = [&](const std::string& name) { return ckpt.find(name)->dtype; };
  auto weight = [&](const std::string& name, int64_t out, int64_t in) {
    const void* p = upload(name, {out, in});
    return WeightView{p, dtype_of(name), out, in};
  };
  auto vec = [&](const std::string& name, int64_t n) {
    const void* p = upload(name, {n});
    return VecView{p, dtype_of(name), n};
  };
  // A norm weight; norm_plus_one models hold (1 + w) in fp32, as transformers' (1.0 + w.float()).
  auto norm = [&](const std::string& name, int64_t n) {
    if (!c.norm_plus_one) return vec(name, n);
    const std::vector<int64_t> shape{n};
    const TensorView& t = ckpt.require(name, shape);
    std::vector<float> w(static_cast<size_t>(n));
    convert_to_f32(t.dtype, t.data, w.data(), w.size());
    for (float& x : w) x = 1.0f + x;
    weight_buffers_.emplace_back(device_, w.size() * sizeof(float), "weights");
    put(weight_buffers_.back().data(), w.data(), w.size() * sizeof(float), owned_bytes(w.data(), w.size() * sizeof(float)));
    weight_bytes_ += w.size() * sizeof(float);
    return VecView{weight_buffers_.back().data(), DType::F32, n};
  };
  // A shard's part of a checkpoint tensor [out, in] ([n] for a vector: in = 1): the row ranges
  // `rows`, one after the other, of input columns [col0, col0 + cols), gathered on the host and
  // copied to the device as one contiguous [sum of rows, cols] tensor.
  auto upload_part = [&](const std::string& name, const std::vector<int64_t>& shape, std::span<const Rows> rows,
                         int64_t col0, int64_t cols) -> const void* {
    const TensorView& t = ckpt.require(name, shape);
    if (t.on_device)
      throw Error(name + ": splitting weights that are already in device memory over devices is not supported");
    const size_t e = dtype_size(t.dtype);
    const int64_t in = shape.size() == 2 ? shape[1] : 1;
    int64_t n_rows = 0;
    for (const Rows& r : rows) n_rows += r.count;
    // [n_rows, cols] of the tensor's dtype: the shard's rows, its columns only
    std::vector<char> part(static_cast<size_t>(n_rows * cols) * e);
    char* dst = part.data();
    for (const Rows& r : rows) {
      for (int64_t i = r.begin; i < r.begin + r.count; ++i) {
        std::memcpy(dst, static_cast<const char*>(t.data) + static_cast<size_t>(i * in + col0) * e,
                    static_cast<size_t>(cols) * e);
        dst += static_cast<size_t>(cols) * e;
      }
    }
    weight_buffers_.emplace_back(device_, part.size(), "weights");
    const size_t part_bytes = part.size();
    put(weight_buffers_.back().data(), part.data(), part_bytes, std::move(part));
    weight_bytes_ += part.size();
    return weight_buffers_.back().data();
  };
  // Row ranges of a weight [out, in] (q/k/v, gate/up): one shard takes the whole tensor as is.
  auto weight_rows = [&](const std::string& name, int64_t out, int64_t in, std::initializer_list<Rows> rows) {
    if (!sharded) return weight(name, out, in);
    int64_t n = 0;
    for (const Rows& r : rows) n += r.count;
    const std::span<const Rows> ranges(rows.begin(), rows.size());
    return WeightView{upload_part(name, {out, in}, ranges, 0, in), dtype_of(name), n, in};
  };
  // Input columns [col0, col0 + cols) of a weight [out, in] (o_proj, down_proj).
  auto weight_cols = [&](const std::string& name, int64_t out, int64_t in, int64_t col0, int64_t cols) {
    if (!sharded) return weight(name, out, in);
    const Rows all{0, out};
    return WeightView{upload_part(name, {out, in}, std::span(&all, 1), col0, cols), dtype_of(name), out, cols};
  };
  auto vec_rows = [&](const std::string& name, int64_t n, Rows rows) {
    if (!sharded) return vec(name, n);
    return VecView{upload_part(name, {n}, std::span(&rows, 1), 0, 1), dtype_of(name), rows.count};
  };
  const int64_t hd = c.head_dim;
  const Rows q_rows{slice.kv_head0 * full.group_size() * hd, c.q_dim()};
  const Rows kv_rows{slice.kv_head0 * hd, c.kv_dim()};
  const Rows ffn_rows{slice.ffn0, slice.n_ffn};
  // Rows [row0, row0 + rows) of a weight (the parts of a fused projection).
  auto rows_of = [](const WeightView& w, int64_t row0, int64_t rows) {
    const auto e = static_cast<int64_t>(dtype_size(w.dtype));
    return WeightView{static_cast<const char*>(w.data) + row0 * w.in_features * e, w.dtype, rows, w.in_features};
  };

  weights_.embed = weight("model.embed_tokens.weight", c.vocab_size, c.hidden_size);
  weights_.layers.resize(static_cast<size_t>(c.n_layers));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights& w = weights_.layers[static_cast<size_t>(l)];
    w.input_norm = norm(p + "input_layernorm.weight", c.hidden_size);
    if (c.fused_qkv) {  // phi3: q, k, v rows of one qkv_proj
      const WeightView qkv =
          weight_rows(p + "self_attn.qkv_proj.weight", full.q_dim() + 2 * full.kv_dim(), c.hidden_size,
                      {q_rows, {full.q_dim() + kv_rows.begin, kv_rows.count},
                       {full.q_dim() + full.kv_dim() + kv_rows.begin, kv_rows.count}});
      w.wq = rows_of(qkv, 0, c.q_dim());
      w.wk = rows_of(qkv, c.q_dim(), c.kv_dim());
      w.wv = rows_of(qkv, c.q_dim() + c.kv_dim(), c.kv_dim());
    } else {
      w.wq = weight_rows(p + "self_attn.q_proj.weight", full.q_dim(), c.hidden_size, {q_rows});
      w.wk = weight_rows(p + "self_attn.k_proj.weight", full.kv_dim(), c.hidden_size, {kv_rows});
      w.wv = weight_rows(p + "self_attn.v_proj.weight", full.kv_dim(), c.hidden_size, {kv_rows});
    }
    w.wo = weight_cols(p + "self_attn.o_proj.weight", c.hidden_size, full.q_dim(), q_rows.begin, q_rows.count);
    if (c.qkv_bias) {
      w.bq = vec_rows(p + "self_attn.q_proj.bias", full.q_dim(), q_rows);
      w.bk = vec_rows(p + "self_attn.k_proj.bias", full.kv_dim(), kv_rows);
      w.bv = vec_rows(p + "self_attn.v_proj.bias", full.kv_dim(), kv_rows);
    }
    // Added once, by rank 0, to the partial it contributes.
    if (c.o_bias && shard_.rank == 0) w.bo = vec(p + "self_attn.o_proj.bias", c.hidden_size);
    if (c.qk_norm) {
      w.q_norm = norm(p + "self_attn.q_norm.weight", c.head_dim);
      w.k_norm = norm(p + "self_attn.k_norm.weight", c.head_dim);
    }
    if (c.sandwich_norms) {
      w.attn_out_norm = norm(p + "post_attention_layernorm.weight", c.hidden_size);
      w.post_attention_norm = norm(p + "pre_feedforward_layernorm.weight", c.hidden_size);
      w.mlp_out_norm = norm(p + "post_feedforward_layernorm.weight", c.hidden_size);
    } else {
      w.post_attention_norm = norm(p + "post_attention_layernorm.weight", c.hidden_size);
    }
    if (c.fused_qkv) {  // phi3: gate rows first, then up (transformers' chunk(2))
      const WeightView gate_up = weight_rows(p + "mlp.gate_up_proj.weight", 2 * full.intermediate_size, c.hidden_size,
                                             {ffn_rows, {full.intermediate_size + ffn_rows.begin, ffn_rows.count}});
      w.w_gate = rows_of(gate_up, 0, c.intermediate_size);
      w.w_up = rows_of(gate_up, c.intermediate_size, c.intermediate_size);
    } else {
      w.w_gate = weight_rows(p + "mlp.gate_proj.weight", full.intermediate_size, c.hidden_size, {ffn_rows});
      w.w_up = weight_rows(p + "mlp.up_proj.weight", full.intermediate_size, c.hidden_size, {ffn_rows});
    }
    w.w_down = weight_cols(p + "mlp.down_proj.weight", c.hidden_size, full.intermediate_size, ffn_rows.begin,
                           ffn_rows.count);
    if (c.mlp_bias) {
      w.b_gate = vec_rows(p + "mlp.gate_proj.bias", full.intermediate_size, ffn_rows);
      w.b_up = vec_rows(p + "mlp.up_proj.bias", full.intermediate_size, ffn_rows);
      if (shard_.rank == 0) w.b_down = vec(p + "mlp.down_proj.bias", c.hidden_size);
    }
  }
  weights_.final_norm = norm("model.norm.weight", c.hidden_size);
  // Only rank 0 computes logits.
  if (c.tie_word_embeddings) {
    weights_.lm_head = weights_.embed;
  } else if (shard_.rank == 0) {
    weights_.lm_head = weight("lm_head.weight", c.vocab_size, c.hidden_size);
  }

  auto rope_table = [&](const RopeConfig& rc, bool long_factors, DeviceBuffer& buf) {
    const std::vector<float> inv = rope_inv_freq(rc, c.rotary_dim, long_factors);
    buf = DeviceBuffer(device_, inv.size() * sizeof(float), "rope table");
    put(buf.data(), inv.data(), inv.size() * sizeof(float), owned_bytes(inv.data(), inv.size() * sizeof(float)));
    return RopeTable{buf.as<float>(), c.head_dim, static_cast<float>(rc.attention_factor), c.rotary_dim};
  };
  rope_ = rope_table(c.rope, false, inv_freq_);
  if (c.rope.type == RopeType::Longrope) rope_long_ = rope_table(c.rope, true, inv_freq_long_);
  if (c.has_local_rope) rope_local_ = rope_table(c.rope_local, false, inv_freq_local_);

  const auto C = static_cast<size_t>(sizes_.max_chunk);
  const auto M = static_cast<size_t>(std::min(sizes_.max_mlp_chunk, sizes_.max_chunk));
  const size_t f = sizeof(float);
  x_ = DeviceBuffer(device_, C * c.hidden_size * f, "activations");
  xn_ = DeviceBuffer(device_, C * c.hidden_size * f, "activations");
  q_ = DeviceBuffer(device_, C * c.q_dim() * f, "activations");
  k_ = DeviceBuffer(device_, C * c.kv_dim() * f, "activations");
  v_ = DeviceBuffer(device_, C * c.kv_dim() * f, "activations");
  attn_ = DeviceBuffer(device_, C * c.q_dim() * f, "activations");
  lse_ = DeviceBuffer(device_, C * c.n_heads * f, "activations");
  proj_ = DeviceBuffer(device_, C * c.hidden_size * f, "activations");
  gate_ = DeviceBuffer(device_, M * c.intermediate_size * f, "activations");
  up_ = DeviceBuffer(device_, M * c.intermediate_size * f, "activations");
  logits_ = DeviceBuffer(device_, c.vocab_size * f, "logits");
  argmax_ = DeviceBuffer(device_, sizeof(int32_t), "logits");
  // The ops' scratch (GEMM casts, split-KV partials) is taken now, so device.bytes_in_use() holds
  // it when the KV cache is planned and the token loop never grows it.
  device_.ops().reserve_workspace(ops_workspace_sizes(c, sizes_, weights_.embed.dtype));
}

void Model::copy_weights() {
  for (const PendingCopy& c : pending_copies_) device_.write_from_host(c.dst, c.src, c.bytes);
  pending_copies_.clear();
  pending_copies_.shrink_to_fit();
  device_.ops().wait_prepared();
}

void Model::prepare_first_chunk(int64_t n) {
  const ModelConfig& c = config_;
  if (n < 1 || n > sizes_.max_chunk || c.n_layers == 0) return;
  Ops& ops = device_.ops();
  // The linears forward() runs, with its views: the same shapes, leading dimensions and memory.
  const DType act = ops.linear_input_dtype(n, weights_.layers[0].wq.dtype);
  const MatView xn{xn_.data(), act, n, c.hidden_size, c.hidden_size};
  const int64_t m_max = std::min(sizes_.max_mlp_chunk, sizes_.max_chunk);
  for (const LayerWeights& w : weights_.layers) {
    ops.prepare_linear(xn, qkv_outs(w, n));
    const LinearOut o = o_proj_out(w, n);
    ops.prepare_linear(o_proj_in(w, n), std::span<const LinearOut>(&o, 1));
    for (int64_t r0 = 0; r0 < n; r0 += m_max) {
      const int64_t m = std::min(m_max, n - r0);
      const DType act_down = ops.linear_input_dtype(m, w.w_down.dtype);
      const auto gate_up = gate_up_outs(w, m, act, act_down);
      ops.prepare_linear(xn.slice_rows(r0, m), gate_up);
      const MatView h =
          act_down == DType::F32 ? gate_up[0].y : ops.linear_input_scratch(m, c.intermediate_size, act_down);
      const LinearOut down = down_out(w, r0, m);
      ops.prepare_linear(h, std::span<const LinearOut>(&down, 1));
    }
  }
  if (shard_.rank != 0) return;  // only rank 0 makes logits
  const LinearOut head{&weights_.lm_head, nullptr, mat(logits_, 1, c.vocab_size)};
  ops.prepare_linear(mat(xn_, 1, c.hidden_size), std::span<const LinearOut>(&head, 1));
}

namespace {
const VecView* bias_or_null(const VecView& b) { return b.data != nullptr ? &b : nullptr; }

// HEADINFER_GATE_UP_16 (env_switch; off unless set to 1 until a card has measured it against the
// F32 outputs): the prefill's gate/up GEMMs write 16-bit outputs (gate_up_outs).
const bool kGateUp16 = env_switch("HEADINFER_GATE_UP_16", false);
}  // namespace

std::array<LinearOut, 3> Model::qkv_outs(const LayerWeights& w, int64_t n) const {
  const ModelConfig& c = config_;
  return {LinearOut{&w.wq, bias_or_null(w.bq), mat(q_, n, c.q_dim())},
          LinearOut{&w.wk, bias_or_null(w.bk), mat(k_, n, c.kv_dim())},
          LinearOut{&w.wv, bias_or_null(w.bv), mat(v_, n, c.kv_dim())}};
}

MatView Model::o_proj_in(const LayerWeights& w, int64_t n) const {
  Ops& ops = device_.ops();
  const DType in = ops.linear_input_dtype(n, w.wo.dtype);
  if (in != DType::F32 && ops.attention_out16(n)) return ops.linear_input_scratch(n, config_.q_dim(), in);
  return mat(attn_, n, config_.q_dim());
}

bool Model::folds_residual(const WeightView& w, const VecView& bias, int64_t rows) const {
  return !config_.sandwich_norms && shard_.all_reduce == nullptr && bias.data == nullptr &&
         device_.ops().linear_accumulates(rows, w.dtype);
}

LinearOut Model::o_proj_out(const LayerWeights& w, int64_t n) const {
  if (folds_residual(w.wo, w.bo, n)) return {&w.wo, nullptr, mat(x_, n, config_.hidden_size), true};
  return {&w.wo, bias_or_null(w.bo), mat(proj_, n, config_.hidden_size)};
}

std::array<LinearOut, 2> Model::gate_up_outs(const LayerWeights& w, int64_t m, DType x_dtype, DType h_dtype) const {
  const ModelConfig& c = config_;
  std::array<LinearOut, 2> outs{LinearOut{&w.w_gate, bias_or_null(w.b_gate), mat(gate_, m, c.intermediate_size)},
                                LinearOut{&w.w_up, bias_or_null(w.b_up), mat(up_, m, c.intermediate_size)}};
  const bool y16 = kGateUp16 && x_dtype != DType::F32 && x_dtype == h_dtype && w.w_gate.dtype == x_dtype &&
                   w.w_up.dtype == x_dtype && outs[0].bias == nullptr && outs[1].bias == nullptr;
  if (y16)
    for (LinearOut& o : outs) o.y.dtype = x_dtype;  // the F32 buffer's first half, the same row stride
  return outs;
}

LinearOut Model::down_out(const LayerWeights& w, int64_t r0, int64_t m) const {
  if (folds_residual(w.w_down, w.b_down, m))
    return {&w.w_down, nullptr, mat(x_, r0 + m, config_.hidden_size).slice_rows(r0, m), true};
  return {&w.w_down, bias_or_null(w.b_down), mat(proj_, r0 + m, config_.hidden_size).slice_rows(r0, m)};
}

Model::~Model() {
  try {
    device_.ops().release_workspace();
  } catch (const std::exception& e) {  // a destructor must not throw (a failed stream sync)
    std::fprintf(stderr, "warning: releasing the ops' workspace: %s\n", e.what());
  }
}

OpsWorkspaceSizes ops_workspace_sizes(const ModelConfig& c, const ForwardWorkspaceSizes& sizes, DType weight_dtype) {
  OpsWorkspaceSizes ws;
  ws.max_tokens = sizes.max_chunk;
  ws.max_in_features = std::max({c.hidden_size, c.q_dim(), c.intermediate_size});
  ws.weight_dtype = weight_dtype;
  ws.max_q_heads = c.group_size();
  ws.max_kv_heads = c.n_kv_heads;
  ws.head_dim = c.head_dim;
  ws.vocab = c.vocab_size;
  return ws;
}

void Model::forward(std::span<const int32_t> ids, int64_t pos0, KvCache& kv, std::span<float> logits,
                    int64_t call_end) {
  if (static_cast<int64_t>(logits.size()) != config_.vocab_size) throw Error("forward: logits span has the wrong size");
  forward(ids, pos0, kv, call_end);
  read_logits(logits);
}

void Model::read_logits(std::span<float> logits) {
  if (static_cast<int64_t>(logits.size()) != config_.vocab_size) throw Error("forward: logits span has the wrong size");
  device_.read_to_host(logits.data(), logits_.data(), logits.size() * sizeof(float));
}

void Model::queue_argmax(int slot) {
  device_.ops().argmax(mat(logits_, 1, config_.vocab_size), argmax_.as<int32_t>());
  device_.queue_read(slot, argmax_.data(), sizeof(int32_t));
}

void Model::queue_sample(int slot, float temperature, int64_t top_k, float top_p, double uniform) {
  device_.ops().sample_token(mat(logits_, 1, config_.vocab_size), temperature, top_k, top_p, uniform,
                             argmax_.as<int32_t>());
  device_.queue_read(slot, argmax_.data(), sizeof(int32_t));
}

int32_t Model::wait_pick(int slot) {
  int32_t id = 0;
  device_.wait_read(slot, &id, sizeof(id));
  return id;
}

void Model::forward(std::span<const int32_t> ids, int64_t pos0, KvCache& kv, int64_t call_end) {
  run_forward(static_cast<int64_t>(ids.size()), pos0, kv, call_end,
              [&](const MatView& x) { device_.ops().embedding(ids, weights_.embed, x); });
}

void Model::forward_picked_token(int64_t pos0, KvCache& kv) {
  run_forward(1, pos0, kv, 0,
              [&](const MatView& x) { device_.ops().embedding_device_id(argmax_.as<int32_t>(), weights_.embed, x); });
}

void Model::run_forward(int64_t n, int64_t pos0, KvCache& kv, int64_t call_end,
                        const std::function<void(const MatView&)>& embed) {
  const ModelConfig& c = config_;
  if (n < 1 || n > sizes_.max_chunk)
    throw Error("forward: chunk of " + std::to_string(n) + " tokens (1.." + std::to_string(sizes_.max_chunk) + ")");
  if (!pending_copies_.empty()) throw Error("forward: the model's weights are not copied yet (Model::copy_weights)");
  Ops& ops = device_.ops();
  const float eps = static_cast<float>(c.rms_norm_eps);
  // transformers' longrope: the long factors when the call's max position + 1 passes the original
  // context, for every token of that call (earlier KV keeps the rotation it was stored with).
  if (call_end < pos0 + n) call_end = pos0 + n;
  const bool use_long = c.rope.type == RopeType::Longrope && call_end > c.rope.original_max_position_embeddings;
  const RopeTable& global_rope = use_long ? rope_long_ : rope_;

  embed(mat(x_, n, c.hidden_size));
  if (c.embedding_scale != 0.0f) ops.scale(mat(x_, n, c.hidden_size), c.embedding_scale);
  // The normed input of every linear that reads it, in the dtype the ops' linear takes it (for
  // 16-bit weights on the CUDA tensor-core path: rounded by the norm itself, not by a pass of its own).
  const DType act = c.n_layers > 0 ? ops.linear_input_dtype(n, weights_.layers[0].wq.dtype) : DType::F32;
  const MatView xn{xn_.data(), act, n, c.hidden_size, c.hidden_size};
  if (c.n_layers > 0) ops.rms_norm(mat(x_, n, c.hidden_size), weights_.layers[0].input_norm, eps, xn);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = weights_.layers[static_cast<size_t>(l)];
    const bool local = c.has_local_rope && c.layer_window[static_cast<size_t>(l)] > 0;
    attention_block(w, l, n, pos0, local ? rope_local_ : global_rope, kv, xn);
    mlp_block(w, n, xn, l + 1 < c.n_layers ? &weights_.layers[static_cast<size_t>(l + 1)].input_norm : nullptr);
  }
  // Only the last token's logits leave the model (rank 0's).
  if (shard_.rank != 0) return;
  const MatView last = mat(x_, n, c.hidden_size).slice_rows(n - 1, 1);
  const MatView last_normed = mat(xn_, 1, c.hidden_size);
  ops.rms_norm(last, weights_.final_norm, eps, last_normed);
  ops.linear(last_normed, weights_.lm_head, nullptr, mat(logits_, 1, c.vocab_size));
  if (c.final_softcap > 0.0f) ops.softcap(mat(logits_, 1, c.vocab_size), c.final_softcap);
}

void Model::attention_block(const LayerWeights& w, int64_t layer, int64_t n, int64_t pos0, const RopeTable& rope,
                            KvCache& kv, const MatView& xn) {
  const ModelConfig& c = config_;
  Ops& ops = device_.ops();
  const auto qkv = qkv_outs(w, n);
  const MatView q = qkv[0].y, k = qkv[1].y, v = qkv[2].y;
  ops.linear_multi(xn, qkv);
  if (c.qk_norm) {  // per head: view [n * heads, head_dim]
    const float eps = static_cast<float>(c.rms_norm_eps);
    const MatView qh{q.data, DType::F32, n * c.n_heads, c.head_dim, c.head_dim};
    const MatView kh{k.data, DType::F32, n * c.n_kv_heads, c.head_dim, c.head_dim};
    ops.rms_norm(qh, w.q_norm, eps, qh);
    ops.rms_norm(kh, w.k_norm, eps, kh);
  }
  ops.rope_qk(q, c.n_heads, k, c.n_kv_heads, rope, pos0);

  const MatView o_in = o_proj_in(w, n);
  LayerAttention a{q, k, v, pos0, mat(attn_, n, c.q_dim()), mat(lse_, n, c.n_heads),
                   o_in.dtype != DType::F32 ? o_in : MatView{}};
  kv.attend(layer, a);

  const LinearOut o = o_proj_out(w, n);
  if (o.accumulate) {  // x += o_proj's product in the GEMM; then the norm alone
    ops.linear_multi(o_in, std::span<const LinearOut>(&o, 1));
    ops.rms_norm(o.y, w.post_attention_norm, static_cast<float>(c.rms_norm_eps), xn);
    return;
  }
  const MatView proj = o.y;
  ops.linear(o_in, *o.w, o.bias, proj);
  all_reduce(proj);
  if (c.sandwich_norms) ops.rms_norm(proj, w.attn_out_norm, static_cast<float>(c.rms_norm_eps), proj);
  residual(mat(x_, n, c.hidden_size), proj, &w.post_attention_norm, xn);
}

void Model::mlp_block(const LayerWeights& w, int64_t n, const MatView& xn, const VecView* next_norm) {
  const ModelConfig& c = config_;
  Ops& ops = device_.ops();
  const int64_t m_max = std::min(sizes_.max_mlp_chunk, sizes_.max_chunk);
  // Sub-chunks keep the [rows, ffn] intermediates small on long prefills. Each sub-chunk's rows of
  // xn are read by its gate/up before its residual writes the next layer's normed rows over them.
  for (int64_t r0 = 0; r0 < n; r0 += m_max) {
    const int64_t m = std::min(m_max, n - r0);
    const MatView xm = xn.slice_rows(r0, m);
    // The activation goes straight to the dtype down_proj reads: in place in F32, or into the ops'
    // 16-bit input scratch (xm is then 16-bit too, so the linears leave the scratch alone).
    const DType act = ops.linear_input_dtype(m, w.w_down.dtype);
    const auto gate_up = gate_up_outs(w, m, xm.dtype, act);
    const MatView h = act == DType::F32 ? gate_up[0].y : ops.linear_input_scratch(m, c.intermediate_size, act);
    ops.linear_gated(xm, gate_up, c.activation, h);
    const LinearOut d = down_out(w, r0, m);
    if (d.accumulate) {  // x's rows += down_proj's product in the GEMM; then the next norm alone
      ops.linear_multi(h, std::span<const LinearOut>(&d, 1));
      if (next_norm != nullptr) ops.rms_norm(d.y, *next_norm, static_cast<float>(c.rms_norm_eps), xm);
      continue;
    }
    const MatView down = d.y;
    ops.linear(h, *d.w, d.bias, down);
    all_reduce(down);
    if (c.sandwich_norms) ops.rms_norm(down, w.mlp_out_norm, static_cast<float>(c.rms_norm_eps), down);
    residual(mat(x_, n, c.hidden_size).slice_rows(r0, m), down, next_norm, xm);
  }
}

void Model::residual(const MatView& x, const MatView& partial, const VecView* norm, const MatView& out) {
  Ops& ops = device_.ops();
  if (norm == nullptr) {
    ops.add(x, partial);
  } else {
    ops.add_rms_norm(x, partial, *norm, static_cast<float>(config_.rms_norm_eps), out);
  }
}

void Model::all_reduce(const MatView& partial) {
  if (shard_.all_reduce != nullptr) shard_.all_reduce->sum(shard_.rank, device_, partial);
}

}  // namespace headinfer
