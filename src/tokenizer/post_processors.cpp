// Post-processors: TemplateProcessing, ByteLevel (offsets only: no-op on ids), Sequence,
// RobertaProcessing and BertProcessing (cls A sep).
#include <nlohmann/json.hpp>

#include "components.h"
#include "headinfer/error.h"

namespace headinfer::tok {
namespace {

class NoOpProcessor final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&) const override {}
  std::vector<int32_t> prefix_ids() const override { return {}; }
};

class SequenceProcessor final : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> steps) : steps_(std::move(steps)) {}
  void process(std::vector<int32_t>& ids) const override {
    for (const auto& step : steps_) step->process(ids);
  }
  std::vector<int32_t> prefix_ids() const override {
    std::vector<int32_t> prefix;
    for (const auto& step : steps_) {
      std::vector<int32_t> inner = step->prefix_ids();
      prefix.insert(prefix.begin(), inner.begin(), inner.end());
    }
    return prefix;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

// The single-sequence template: runs of special-token ids around the sequence "A".
class TemplateProcessor final : public PostProcessor {
 public:
  struct Item {
    bool is_sequence;
    std::vector<int32_t> ids;  // the special token's ids when !is_sequence
  };
  explicit TemplateProcessor(std::vector<Item> items) : items_(std::move(items)) {}
  void process(std::vector<int32_t>& ids) const override {
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const Item& item : items_) {
      if (item.is_sequence) out.insert(out.end(), ids.begin(), ids.end());
      else out.insert(out.end(), item.ids.begin(), item.ids.end());
    }
    ids = std::move(out);
  }
  std::vector<int32_t> prefix_ids() const override {
    std::vector<int32_t> prefix;
    for (const Item& item : items_) {
      if (item.is_sequence) break;
      prefix.insert(prefix.end(), item.ids.begin(), item.ids.end());
    }
    return prefix;
  }

 private:
  std::vector<Item> items_;
};

std::unique_ptr<PostProcessor> make_template(const Json& node, const std::string& where) {
  const Json& single = require_field(node, "single", where);
  if (!single.is_array()) throw Error(where + ".single: expected an array");
  const Json& specials = require_field(node, "special_tokens", where);
  std::vector<TemplateProcessor::Item> items;
  for (size_t i = 0; i < single.size(); ++i) {
    std::string item_where = where + ".single[" + std::to_string(i) + "]";
    const Json& item = single[i];
    if (item.is_object() && item.contains("Sequence")) {
      std::string id = require_string(item.at("Sequence"), "id", item_where + ".Sequence");
      if (id != "A") throw Error(item_where + ": the single template may only use sequence A, not '" + id + "'");
      items.push_back({true, {}});
    } else if (item.is_object() && item.contains("SpecialToken")) {
      std::string name = require_string(item.at("SpecialToken"), "id", item_where + ".SpecialToken");
      if (!specials.is_object() || !specials.contains(name))
        throw Error(item_where + ": special token '" + name + "' is not listed in special_tokens");
      const Json& ids = require_field(specials.at(name), "ids", where + ".special_tokens." + name);
      if (!ids.is_array()) throw Error(where + ".special_tokens." + name + ".ids: expected an array");
      TemplateProcessor::Item special{false, {}};
      for (const Json& id : ids) {
        if (!is_token_id(id)) throw Error(where + ".special_tokens." + name + ".ids: expected token ids");
        special.ids.push_back(id.get<int32_t>());
      }
      items.push_back(std::move(special));
    } else {
      throw Error(item_where + ": expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  return std::make_unique<TemplateProcessor>(std::move(items));
}

// ["token", id] pairs of RobertaProcessing / BertProcessing.
int32_t token_pair_id(const Json& node, const char* key, const std::string& where) {
  const Json& pair = require_field(node, key, where);
  if (!pair.is_array() || pair.size() != 2 || !is_token_id(pair[1]))
    throw Error(where + "." + key + ": expected [token, id]");
  return pair[1].get<int32_t>();
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const Json& node, std::string_view where_view) {
  std::string where(where_view);
  std::string type = type_of(node, where);
  if (type == "TemplateProcessing") return make_template(node, where);
  if (type == "ByteLevel") return std::make_unique<NoOpProcessor>();
  if (type == "Sequence") {
    const Json& list = require_field(node, "processors", where);
    if (!list.is_array()) throw Error(where + ".processors: expected an array");
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (size_t i = 0; i < list.size(); ++i)
      steps.push_back(make_post_processor(list[i], where + ".processors[" + std::to_string(i) + "]"));
    return std::make_unique<SequenceProcessor>(std::move(steps));
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    int32_t cls = token_pair_id(node, "cls", where), sep = token_pair_id(node, "sep", where);
    return std::make_unique<TemplateProcessor>(std::vector<TemplateProcessor::Item>{
        {false, {cls}}, {true, {}}, {false, {sep}}});
  }
  throw Error(where + ": unsupported post-processor type '" + type +
              "' (supported: TemplateProcessing, ByteLevel, Sequence, RobertaProcessing, BertProcessing)");
}

}  // namespace headinfer::tok
