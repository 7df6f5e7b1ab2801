#pragma once
// Engine::decode_greedy's `ahead` (the next step queued on the device's argmax before this step's
// token is read), checked on any device against an engine that steps one token at a time.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "headinfer/sampler.h"

namespace headinfer::test {

// The prompt both checks prefill, and their engines' options: chunks of 16, `context` positions.
inline std::vector<int32_t> ahead_prompt() {
  std::vector<int32_t> prompt;
  for (int32_t i = 0; i < 30; ++i) prompt.push_back(1 + (i * 7) % 200);
  return prompt;
}
inline EngineOptions ahead_options(int64_t context) {
  EngineOptions eo;
  eo.context = context;
  eo.chunk = 16;
  return eo;
}

// Counted, `ahead` gives the same tokens as one step at a time; dropped (the caller goes on with
// another token, reads logits, prefills, cuts the context), it leaves nothing behind: every later
// logit is the same bits as on the engine that never queued a step. A model with window layers
// must reach its first block slide (the tiny mistral_swa's window 48 and chunk 16 put it at 110):
// no step is queued ahead at that position (prepare_slides), so a dropped one cannot cost the
// context a later cut keeps. `a` runs with `ahead` on device da, the reference on dr (they may be
// the same device). `graphs`: whether a's steps must stay device graphs throughout.
inline void check_decode_ahead(const Checkpoint& ckpt, Device& da, Device& dr, const std::string& name, bool graphs) {
  const ModelConfig& c = ckpt.config();
  bool windowed = false;
  for (int64_t l = 0; l < c.n_layers; ++l) windowed = windowed || c.window(l) > 0;
  const std::vector<int32_t> prompt = ahead_prompt();
  // 320 positions: the last loop below runs past 256 keys, where the CUDA decode attention goes
  // from one split to two (a combine kernel more, so the step graph is instantiated anew while
  // the step queued before it may still run).
  const EngineOptions eo = ahead_options(320);
  Engine ref(ckpt, dr, eo), a(ckpt, da, eo);
  const int32_t first = argmax(ref.prefill(prompt));
  ASSERT_EQ(argmax(a.prefill(prompt)), first) << name;
  // Counted: 60 steps each way, the last without `ahead`.
  std::vector<int32_t> want{first}, got{first};
  bool slid = false;
  for (int i = 0; i < 60; ++i) {
    slid = slid || a.kv_cache().prepare_slides(a.n_past(), 1);
    want.push_back(ref.decode_greedy(want.back()));
    got.push_back(a.decode_greedy(got.back(), i + 1 < 60));
    ASSERT_EQ(got.back(), want.back()) << name << " step " << i;
  }
  EXPECT_EQ(a.n_past(), ref.n_past());
  EXPECT_TRUE(std::equal(a.ids().begin(), a.ids().end(), ref.ids().begin(), ref.ids().end())) << name;
  EXPECT_FALSE(slid) << name << ": a window block slid before " << a.n_past() << " (the test expects it later)";

  // Dropped, five ways. Each time `a` has a step queued ahead that is never counted.
  auto same = [&](std::span<const float> x, std::span<const float> y, const char* what) {
    ASSERT_EQ(x.size(), y.size());
    EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * sizeof(float))) << name << ": " << what;
  };
  const int32_t other = (want.back() + 1) % 200;
  a.decode_greedy(want.back(), true);
  ref.decode_greedy(want.back());
  EXPECT_EQ(a.decode_greedy(other, true), ref.decode_greedy(other)) << name << ": another token than the queued one";
  const int32_t t = ref.decode_greedy(other);
  ASSERT_EQ(a.decode_greedy(other, true), t) << name;
  same(a.decode(t), ref.decode(t), "logits after a queued step");
  const std::vector<int32_t> more{3, 1, 4, 1, 5};
  ASSERT_EQ(a.decode_greedy(7, true), ref.decode_greedy(7)) << name;
  same(a.prefill(more), ref.prefill(more), "a prefill after a queued step");
  // Up to the first slide of a window block.
  int64_t slide_at = a.n_past();
  while (slide_at < eo.context && !a.kv_cache().prepare_slides(slide_at, 1)) ++slide_at;
  if (windowed) {
    ASSERT_LT(slide_at, eo.context) << name << ": the test needs a slide";
    ASSERT_GT(slide_at, a.n_past()) << name << ": the test needs a slide still ahead";
  }
  int32_t id = 9;
  while (a.n_past() + 1 < std::min<int64_t>(slide_at, eo.context)) {
    ASSERT_EQ(a.decode_greedy(id, true), ref.decode_greedy(id)) << name;
    id = (id + 13) % 200;
  }
  ASSERT_EQ(a.decode_greedy(id, true), ref.decode_greedy(id)) << name;  // the next step would slide
  EXPECT_EQ(a.min_kept_prefix(), ref.min_kept_prefix()) << name;
  const int64_t cut = a.n_past() - 3;
  a.truncate(cut);
  ref.truncate(cut);
  same(a.decode(id), ref.decode(id), "logits after a cut");
  // The context's last position: nothing is queued past it, and nothing throws.
  while (a.n_past() + 1 < eo.context) ASSERT_EQ(a.decode_greedy(id, true), ref.decode_greedy(id)) << name;
  EXPECT_EQ(a.decode_greedy(id, true), ref.decode_greedy(id)) << name;
  EXPECT_EQ(a.n_past(), eo.context);
  EXPECT_THROW(a.decode_greedy(id, true), Error);
  EXPECT_EQ(a.step_graphs(), graphs) << name;
}

// decode_sampled's `ahead` where the device draws (CUDA): the same tokens as one step at a time
// with a sampler of the same seed, so the queued draws take the sampler's uniforms in the same
// order. It starts from a greedy step queued ahead, which the first sampled call must drop (its
// pick was an argmax), then runs 40 draws hot enough to leave the argmax often.
inline void check_decode_ahead_sampled(const Checkpoint& ckpt, Device& da, Device& dr, const std::string& name) {
  const std::vector<int32_t> prompt = ahead_prompt();
  const EngineOptions eo = ahead_options(160);
  Engine ref(ckpt, dr, eo), a(ckpt, da, eo);
  const int32_t first = argmax(ref.prefill(prompt));
  ASSERT_EQ(argmax(a.prefill(prompt)), first) << name;
  const SamplerOptions so{1.5f, 0, 1.0f, 1234};
  Sampler sa(so), sr(so);
  int32_t t = ref.decode_greedy(first);
  ASSERT_EQ(a.decode_greedy(first, true), t) << name;
  int off_argmax = 0;
  for (int i = 0; i < 40; ++i) {
    const int32_t want = ref.decode_sampled(t, sr);
    ASSERT_EQ(a.decode_sampled(t, sa, i + 1 < 40), want) << name << " draw " << i;
    t = want;
  }
  // The draws left the argmax (a test whose draws were all argmaxes could not tell their order):
  // replayed on a third engine, draw k against the argmax of the logits it was drawn from.
  const std::vector<int32_t> ids(a.ids().begin(), a.ids().end());  // prompt, first, greedy, draws
  Engine g(ckpt, dr, eo);
  g.prefill(prompt);
  g.decode_greedy(ids[prompt.size()]);
  for (size_t k = prompt.size() + 1; k + 1 < ids.size(); ++k) off_argmax += argmax(g.decode(ids[k])) != ids[k + 1];
  EXPECT_GT(off_argmax, 5) << name << ": the draws should often leave the argmax";
  const auto la = a.decode(t), lr = ref.decode(t);
  EXPECT_EQ(0, std::memcmp(la.data(), lr.data(), la.size() * sizeof(float))) << name << ": logits after the draws";
}

}  // namespace headinfer::test
