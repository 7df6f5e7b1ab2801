#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "headinfer/checkpoint.h"
#include "headinfer/error.h"

namespace headinfer {
namespace {

using nlohmann::json;

// dtype names the safetensors format defines; anything else is not a safetensors file.
bool is_safetensors_dtype(const std::string& s) {
  static const std::set<std::string> known = {"BOOL", "U8", "I8", "I16", "U16", "F16", "BF16",
                                              "I32", "U32", "F32", "F64", "I64", "U64",
                                              "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3",
                                              "F6_E3M2", "C64"};
  return known.count(s) != 0;
}

// Parses the header, rejecting duplicate top-level names (nlohmann keeps the last silently).
json parse_header(const std::string& text, const std::string& path) {
  std::set<std::string> seen;
  std::string duplicate;
  auto cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key) {
      const std::string key = parsed.get<std::string>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text, cb);
  } catch (const json::exception& e) {
    // parse_error, and out_of_range for a number past double's range (1E400).
    throw Error(path + ": header is not valid JSON (" + std::string(e.what()) + ")");
  }
  if (!duplicate.empty()) throw Error(path + ": tensor '" + duplicate + "' is listed twice");
  if (!header.is_object()) throw Error(path + ": header is not a JSON object");
  return header;
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& fs_path) {
  const std::string path = fs_path.string();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error(path + ": cannot stat");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error(path + ": truncated: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) throw Error(path + ": mmap failed (" + std::strerror(errno) + ")");

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = map;
  file->map_size_ = size;
  file->tensors_ = parse_safetensors(static_cast<const uint8_t*>(map), size, path);
  return file;
}

std::vector<TensorView> parse_safetensors(const uint8_t* bytes, size_t size, const std::string& path) {
  if (size < 8)
    throw Error(path + ": truncated: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > size - 8)
    throw Error(path + ": header length " + std::to_string(header_len) + " runs past the end of the file (" +
                std::to_string(size) + " bytes): truncated or not a safetensors file");
  const json header = parse_header(std::string(reinterpret_cast<const char*>(bytes + 8), header_len), path);
  const size_t data_begin = 8 + header_len;
  const size_t data_size = size - data_begin;
  std::vector<TensorView> tensors;
  struct Span {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Span> spans;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string where = path + ": tensor '" + name + "'";
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets"))
      throw Error(where + ": entry needs dtype, shape and data_offsets");
    if (!entry["dtype"].is_string()) throw Error(where + ": dtype is not a string");
    const std::string dtype_str = entry["dtype"].get<std::string>();
    TensorView t;
    t.name = name;
    t.file = path;
    if (!parse_dtype(dtype_str, &t.dtype)) {
      if (!is_safetensors_dtype(dtype_str))
        throw Error(where + ": unknown dtype '" + dtype_str + "'");
      throw Error(where + ": dtype " + dtype_str + " is not supported (F32, F16 or BF16)");
    }
    if (!entry["shape"].is_array()) throw Error(where + ": shape is not a list");
    uint64_t numel = 1;
    for (const json& d : entry["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        throw Error(where + ": shape " + entry["shape"].dump() + " has a bad dimension");
      const auto dim = d.get<uint64_t>();
      if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / 16 / dim)
        throw Error(where + ": shape " + entry["shape"].dump() + " is too large");
      numel *= dim;
      t.shape.push_back(d.get<int64_t>());
    }
    const json& off = entry["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw Error(where + ": data_offsets must be two non-negative integers");
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (e < b) throw Error(where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + "] end before they begin");
    if (e > data_size)
      throw Error(where + ": data_offsets end " + std::to_string(e) + " is past the data section (" +
                  std::to_string(data_size) + " bytes): the file is truncated");
    const uint64_t expected = numel * dtype_size(t.dtype);
    if (e - b != expected)
      throw Error(where + ": holds " + std::to_string(e - b) + " bytes but shape " + t.shape_string() + " of " +
                  dtype_str + " needs " + std::to_string(expected));
    t.data = bytes + data_begin + b;
    t.nbytes = static_cast<size_t>(expected);
    spans.push_back({b, e, tensors.size()});
    tensors.push_back(std::move(t));
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const Span& s : spans) {
    const std::string& name = tensors[s.index].name;
    if (s.begin < cursor)
      throw Error(path + ": tensor '" + name + "' overlaps the tensor before it (offset " + std::to_string(s.begin) +
                  " < " + std::to_string(cursor) + ")");
    if (s.begin > cursor)
      throw Error(path + ": gap before tensor '" + name + "' (offset " + std::to_string(s.begin) + ", expected " +
                  std::to_string(cursor) + ")");
    cursor = s.end;
  }
  if (cursor != data_size)
    throw Error(path + ": " + std::to_string(data_size - cursor) + " bytes after the last tensor are not described by the header");
  return tensors;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors) {
  json header = json::object();
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');  // align the data section, as HF does
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path.string() + ": cannot write");
  const uint64_t len = text.size();
  uint8_t len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<uint8_t>(len >> (8 * i));
  out.write(reinterpret_cast<const char*>(len_bytes), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const TensorToWrite& t : tensors)
    out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
  if (!out) throw Error(path.string() + ": write failed");
}

}  // namespace headinfer
