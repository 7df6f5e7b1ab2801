// Normalization forms and lowercase mapping over the generated tables in unicode_data.inc.
#include <algorithm>
#include <cstdint>
#include <iterator>

#include "unicode.h"

namespace headinfer::tok {
namespace {

#include "unicode_data.inc"

constexpr uint32_t kHangulSBase = 0xAC00, kHangulLBase = 0x1100, kHangulVBase = 0x1161,
                   kHangulTBase = 0x11A7;
constexpr uint32_t kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr uint32_t kHangulNCount = kHangulVCount * kHangulTCount;
constexpr uint32_t kHangulSCount = kHangulLCount * kHangulNCount;

bool is_hangul_syllable(uint32_t cp) { return cp >= kHangulSBase && cp < kHangulSBase + kHangulSCount; }

// Rows of (code point, pool offset, length) sorted by code point.
struct MappingTable {
  const uint32_t* rows;
  size_t n_rows;

  bool find(uint32_t cp, const uint32_t*& out, size_t& len) const {
    size_t lo = 0, hi = n_rows;
    while (lo < hi) {
      size_t mid = (lo + hi) / 2;
      uint32_t key = rows[3 * mid];
      if (key == cp) {
        out = kMappingPool + rows[3 * mid + 1];
        len = rows[3 * mid + 2];
        return true;
      }
      if (key < cp) lo = mid + 1;
      else hi = mid;
    }
    return false;
  }
};

constexpr MappingTable kNfd{kNfdRows, std::size(kNfdRows) / 3};
constexpr MappingTable kNfkd{kNfkdRows, std::size(kNfkdRows) / 3};
constexpr MappingTable kLowercase{kLowercaseRows, std::size(kLowercaseRows) / 3};

uint8_t combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  size_t n = std::size(kCombiningClassRuns) / 3;
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (kCombiningClassRuns[3 * mid + 1] < cp) lo = mid + 1;
    else hi = mid;
  }
  if (lo < n && kCombiningClassRuns[3 * lo] <= cp) return uint8_t(kCombiningClassRuns[3 * lo + 2]);
  return 0;
}

bool in_ranges(const uint32_t* ranges, size_t n_values, uint32_t cp) {
  size_t n = n_values / 2;
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (ranges[2 * mid + 1] < cp) lo = mid + 1;
    else hi = mid;
  }
  return lo < n && ranges[2 * lo] <= cp;
}

uint32_t compose_pair(uint32_t first, uint32_t second) {
  if (first >= kHangulLBase && first < kHangulLBase + kHangulLCount && second >= kHangulVBase &&
      second < kHangulVBase + kHangulVCount)
    return kHangulSBase + ((first - kHangulLBase) * kHangulVCount + (second - kHangulVBase)) * kHangulTCount;
  if (is_hangul_syllable(first) && (first - kHangulSBase) % kHangulTCount == 0 && second > kHangulTBase &&
      second < kHangulTBase + kHangulTCount)
    return first + (second - kHangulTBase);
  size_t n = std::size(kCompositions) / 3;
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    uint32_t f = kCompositions[3 * mid], s = kCompositions[3 * mid + 1];
    if (f < first || (f == first && s < second)) lo = mid + 1;
    else hi = mid;
  }
  if (lo < n && kCompositions[3 * lo] == first && kCompositions[3 * lo + 1] == second)
    return kCompositions[3 * lo + 2];
  return 0;
}

void decompose(uint32_t cp, bool compat, std::vector<uint32_t>& out) {
  if (is_hangul_syllable(cp)) {
    uint32_t s = cp - kHangulSBase;
    out.push_back(kHangulLBase + s / kHangulNCount);
    out.push_back(kHangulVBase + (s % kHangulNCount) / kHangulTCount);
    if (s % kHangulTCount != 0) out.push_back(kHangulTBase + s % kHangulTCount);
    return;
  }
  const uint32_t* seq = nullptr;
  size_t len = 0;
  if ((compat ? kNfkd : kNfd).find(cp, seq, len)) out.insert(out.end(), seq, seq + len);
  else out.push_back(cp);
}

// Stable sort of every run of non-starters by combining class (canonical ordering).
void canonical_order(std::vector<uint32_t>& cps) {
  size_t i = 0;
  while (i < cps.size()) {
    if (combining_class(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && combining_class(cps[j]) != 0) ++j;
    if (j - i > 1)
      std::stable_sort(cps.begin() + i, cps.begin() + j,
                       [](uint32_t a, uint32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
}

void compose(std::vector<uint32_t>& cps) {
  if (cps.empty()) return;
  size_t starter_pos = 0;
  int last_class = combining_class(cps[0]);
  if (last_class != 0) last_class = 256;  // a leading non-starter composes with nothing
  size_t out = 1;
  for (size_t i = 1; i < cps.size(); ++i) {
    uint32_t ch = cps[i];
    int ch_class = combining_class(ch);
    uint32_t composite = compose_pair(cps[starter_pos], ch);
    if (composite != 0 && (last_class < ch_class || last_class == 0)) {
      cps[starter_pos] = composite;
      continue;
    }
    if (ch_class == 0) starter_pos = out;
    last_class = ch_class;
    cps[out++] = ch;
  }
  cps.resize(out);
}

bool may_change(std::string_view utf8, NormalForm form) {
  bool compat = form == NormalForm::nfkc || form == NormalForm::nfkd;
  bool decomposing = form == NormalForm::nfd || form == NormalForm::nfkd;
  const uint32_t* ranges = compat ? kNfkcUnstableRanges : kNfcUnstableRanges;
  size_t n_values = compat ? std::size(kNfkcUnstableRanges) : std::size(kNfcUnstableRanges);
  size_t i = 0;
  while (i < utf8.size()) {
    if (uint8_t(utf8[i]) < 0x80) {
      ++i;
      continue;
    }
    uint32_t cp = next_code_point(utf8, i);
    if (in_ranges(ranges, n_values, cp) || (decomposing && is_hangul_syllable(cp))) return true;
  }
  return false;
}

}  // namespace

std::string normalize(std::string_view utf8, NormalForm form) {
  if (!may_change(utf8, form)) return std::string(utf8);
  bool compat = form == NormalForm::nfkc || form == NormalForm::nfkd;
  std::vector<uint32_t> cps;
  cps.reserve(utf8.size());
  size_t i = 0;
  while (i < utf8.size()) decompose(next_code_point(utf8, i), compat, cps);
  canonical_order(cps);
  if (form == NormalForm::nfc || form == NormalForm::nfkc) compose(cps);
  return from_code_points(cps);
}

std::string to_lowercase(std::string_view utf8) {
  std::string out;
  out.reserve(utf8.size());
  size_t i = 0;
  while (i < utf8.size()) {
    auto b = uint8_t(utf8[i]);
    if (b < 0x80) {
      out.push_back(b >= 'A' && b <= 'Z' ? char(b + 32) : char(b));
      ++i;
      continue;
    }
    uint32_t cp = next_code_point(utf8, i);
    const uint32_t* seq = nullptr;
    size_t len = 0;
    if (kLowercase.find(cp, seq, len)) {
      for (size_t k = 0; k < len; ++k) append_utf8(out, seq[k]);
    } else {
      append_utf8(out, cp);
    }
  }
  return out;
}

const char* unicode_data_version() { return kUnicodeVersion; }

}  // namespace headinfer::tok
