// The server's pieces without HTTP: stop strings cut across pieces, request checking (the status,
// param and code of each error), and the queue's admission and order.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "api.h"
#include "generation.h"
#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/tokenizer.h"
#include "model_set.h"
#include "scheduler.h"
#include "testdata.h"

namespace headinfer::server {
namespace {

std::string run_cutter(std::vector<std::string> stops, const std::vector<std::string>& pieces, bool* stopped) {
  StopCutter cutter(std::move(stops));
  std::string out;
  for (const std::string& p : pieces) out += cutter.push(p);
  out += cutter.flush();
  *stopped = cutter.stopped();
  return out;
}

TEST(StopCutter, CutsAtTheFirstStopEvenAcrossPieces) {
  bool stopped = false;
  EXPECT_EQ(run_cutter({"END"}, {"ab", "cE", "N", "Dxyz"}, &stopped), "abc");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(run_cutter({"\n\n", "ZZ"}, {"one Z", "Z\n\ntwo"}, &stopped), "one ");
  EXPECT_TRUE(stopped);
  // A held-back prefix that never completes is sent at the end.
  EXPECT_EQ(run_cutter({"END"}, {"abcEN"}, &stopped), "abcEN");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(run_cutter({}, {"a", "b"}, &stopped), "ab");
}

TEST(StopCutter, HoldsBackOnlyWhatMayStartAStop) {
  StopCutter cutter({"xyz"});
  EXPECT_EQ(cutter.push("abx"), "ab");
  EXPECT_EQ(cutter.push("q"), "xq");
  EXPECT_EQ(cutter.push("xy"), "");
  EXPECT_EQ(cutter.push("z tail"), "");
  EXPECT_TRUE(cutter.stopped());
}

void expect_api_error(const std::string& body, bool chat, int status, const char* param, const char* code = nullptr) {
  try {
    parse_completion_request(body, chat, "m");
    ADD_FAILURE() << "accepted " << body;
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, status) << body;
    if (param != nullptr) {
      EXPECT_EQ(e.param.value_or("-"), param) << body;
    }
    if (code != nullptr) {
      EXPECT_EQ(e.code.value_or("-"), code) << body;
    }
    const auto j = error_body(e);
    EXPECT_EQ(j["error"].size(), 4u);
  }
}

TEST(Api, EveryBadFieldIsA4xxNamingIt) {
  expect_api_error("{", false, 400, nullptr);
  expect_api_error("[1]", false, 400, nullptr);
  // a number past double's range is nlohmann's out_of_range, not its parse_error: still a 400
  expect_api_error(R"({"model": "m", "prompt": "x", "temperature": 1E400})", false, 400, nullptr);
  expect_api_error(R"({"prompt": "x"})", false, 400, "model");
  expect_api_error(R"({"model": "other", "prompt": "x"})", false, 404, "model", "model_not_found");
  expect_api_error(R"({"model": "m", "prompt": {"a": 1}})", false, 400, "prompt");
  expect_api_error(R"({"model": "m", "prompt": [1, -2]})", false, 400, "prompt");
  expect_api_error(R"({"model": "m", "prompt": [1, 2.5]})", false, 400, "prompt");
  expect_api_error(R"({"model": "m", "prompt": "x", "max_tokens": -1})", false, 400, "max_tokens");
  expect_api_error(R"({"model": "m", "prompt": "x", "temperature": "hot"})", false, 400, "temperature");
  expect_api_error(R"({"model": "m", "prompt": "x", "top_p": 0})", false, 400, "top_p");
  expect_api_error(R"({"model": "m", "prompt": "x", "stop": [1]})", false, 400, "stop");
  expect_api_error(R"({"model": "m", "prompt": "x", "stop": ["a","b","c","d","e"]})", false, 400, "stop");
  expect_api_error(R"({"model": "m", "prompt": "x", "stream": "yes"})", false, 400, "stream");
  expect_api_error(R"({"model": "m", "prompt": "x", "n": 2})", false, 400, "n");
  expect_api_error(R"({"model": "m"})", true, 400, "messages");
  expect_api_error(R"({"model": "m", "messages": []})", true, 400, "messages");
  expect_api_error(R"({"model": "m", "messages": [{"role": "user"}]})", true, 400, "messages[0].content");
  expect_api_error(R"({"model": "m", "messages": [{"content": "x"}]})", true, 400, "messages[0].role");
}

TEST(Api, AcceptsOpenAiShapes) {
  const CompletionRequest r = parse_completion_request(
      R"({"model": "m", "prompt": [1, 2, 3], "max_tokens": 5, "temperature": 0, "top_p": 0.5, "top_k": 7,
          "seed": 9, "stop": "\n", "stream": true, "stream_options": {"include_usage": true}, "user": "u"})",
      false, "m");
  EXPECT_EQ(r.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(*r.max_tokens, 5);
  EXPECT_EQ(r.temperature, 0.0f);
  EXPECT_EQ(r.top_k, 7);
  EXPECT_EQ(*r.seed, 9u);
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_TRUE(r.stream && r.include_usage);
  const CompletionRequest c = parse_completion_request(
      R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
          {"type": "text", "text": "b"}]}], "max_completion_tokens": 3})",
      true, "m");
  EXPECT_EQ(c.messages[0].content, "ab");
  EXPECT_EQ(*c.max_tokens, 3);
}

// The server's kept conversation on a sliding-window model (issue 14; mistral_swa, window 48 on
// every layer, chunks of 7, so its blocks keep 101 of 300 positions; the llama2 tokenizer only
// decodes the ids, all below the model's 320): a request sharing a prefix inside what the window
// layers still hold reuses it; one sharing only an early prefix is recomputed (reused_tokens 0),
// and both complete as a fresh engine does.
TEST(Completion, WindowModelReusesInsideItsWindowAndRecomputesBeforeIt) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models" / "tiny" / "mistral_swa-f32");
  const Tokenizer tokenizer = Tokenizer::from_file(test::testdata_dir() / "tokenizers" / "llama2" / "tokenizer.json");
  const int64_t vocab = ckpt->config().vocab_size;
  auto device = make_cpu_device({2, 0});
  EngineOptions eo;
  eo.context = 300;
  eo.chunk = 7;
  auto make_engine = [&] { return std::make_unique<Engine>(*ckpt, *device, eo); };
  auto request = [&](std::vector<int32_t> ids) {
    Prepared p;
    p.ids = std::move(ids);
    p.options.max_new_tokens = 6;
    p.options.ignore_eos = true;
    p.options.reuse_prefix = true;
    return p;
  };
  const Emitter emit{[](const std::string&) { return true; }, [](int64_t, int64_t) { return true; }};
  const auto first = test::random_prompt(200, vocab, 41), more = test::random_prompt(40, vocab, 42);
  auto engine = make_engine();
  EXPECT_EQ(run_completion(*engine, tokenizer, request(first), emit).reused_tokens, 0);
  // The shortest prefix the window layers still serve (between 205 - 101 + 47 and 205, where
  // their blocks happen to have slid to) and an early one.
  const int64_t cut = engine->min_kept_prefix();
  ASSERT_GT(cut, 30);
  ASSERT_LE(cut, engine->n_past());
  auto inside = std::vector<int32_t>(engine->ids().begin(), engine->ids().begin() + cut);
  auto early = std::vector<int32_t>(first.begin(), first.begin() + 30);
  for (int32_t id : more) inside.push_back(id), early.push_back(id);
  const Outcome reused = run_completion(*engine, tokenizer, request(inside), emit);
  EXPECT_EQ(reused.reused_tokens, cut);
  EXPECT_EQ(reused.text, run_completion(*make_engine(), tokenizer, request(inside), emit).text);
  const Outcome recomputed = run_completion(*engine, tokenizer, request(early), emit);
  EXPECT_EQ(recomputed.reused_tokens, 0) << "the window layers no longer hold what a chunk at 30 sees";
  EXPECT_EQ(recomputed.prompt_tokens, 70);
  EXPECT_EQ(recomputed.text, run_completion(*make_engine(), tokenizer, request(early), emit).text);
}

TEST(Scheduler, AdmitsOneRunningPlusTheQueueInOrder) {
  Scheduler s(2);
  const uint64_t a = s.admit(), b = s.admit(), c = s.admit();
  EXPECT_NE(a, 0u);
  EXPECT_NE(c, 0u);
  EXPECT_EQ(s.admit(), 0u) << "one running + 2 waiting is full";
  EXPECT_TRUE(s.wait_turn(a, [] { return true; }));
  std::vector<uint64_t> order;
  std::mutex m;
  std::thread tc([&] {
    ASSERT_TRUE(s.wait_turn(c, [] { return true; }, 5));
    std::lock_guard<std::mutex> lock(m);
    order.push_back(c);
    s.done();
  });
  std::thread tb([&] {
    ASSERT_TRUE(s.wait_turn(b, [] { return true; }, 5));
    std::lock_guard<std::mutex> lock(m);
    order.push_back(b);
    s.done();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_EQ(s.waiting(), 2);
  s.done();
  tb.join();
  tc.join();
  EXPECT_EQ(order, (std::vector<uint64_t>{b, c}));
}

TEST(Scheduler, AWaiterThatGivesUpLeavesTheQueue) {
  Scheduler s(1);
  const uint64_t a = s.admit(), b = s.admit();
  ASSERT_TRUE(s.wait_turn(a, [] { return true; }));
  EXPECT_FALSE(s.wait_turn(b, [] { return false; }, 1));
  EXPECT_EQ(s.waiting(), 0);
  EXPECT_NE(s.admit(), 0u);
}

}  // namespace
}  // namespace headinfer::server
