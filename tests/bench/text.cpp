// String-heavy text processing: split generated text into lines and words,
// count words and word pairs in unordered_map<string, int>, sort by count,
// join the result into one report string.
//
//   bench_text KIB REPS
//
// Word pairs are usually longer than the 15 bytes std::string keeps inline,
// so they allocate; single words mostly do not. Both are common in practice.
#include <algorithm>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.hpp"

using namespace bench;

// A vocabulary of syllable-built words, picked with a skewed (Zipf-like)
// distribution so a few words are very frequent and most are rare.
static std::string generate(size_t bytes, uint64_t seed) {
  static const char* syl[] = {"ka", "lo", "mi", "ne", "ru", "sha", "ti", "vo", "zen", "qua",
                              "ber", "dro", "fin", "gle", "hum", "pix"};
  Rng rng(seed);
  std::vector<std::string> vocab;
  for (int i = 0; i < 20000; ++i) {
    std::string w;
    for (uint64_t k = 0, n = 1 + rng.below(4); k < n; ++k) w += syl[rng.below(16)];
    if (rng.below(10) == 0) w[0] = (char)(w[0] - 'a' + 'A');
    vocab.push_back(w);
  }
  std::string text;
  while (text.size() < bytes) {
    for (uint64_t k = 0, n = 3 + rng.below(15); k < n; ++k) {
      uint64_t a = rng.below(vocab.size()), b = rng.below(vocab.size());
      text += vocab[a * b / vocab.size()];
      text += rng.below(12) == 0 ? ", " : " ";
    }
    text += rng.below(3) == 0 ? ".\n" : "\n";
  }
  return text;
}

static std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      if (i > start) parts.emplace_back(s, start, i - start);
      start = i + 1;
    }
  return parts;
}

template <class Map>
static std::vector<std::pair<std::string, int>> by_count(const Map& m) {
  std::vector<std::pair<std::string, int>> v(m.begin(), m.end());
  std::sort(v.begin(), v.end(), [](auto& a, auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  return v;
}

int main(int argc, char** argv) {
  size_t bytes = (size_t)arg_or(argc, argv, 1, 2048) << 10;
  long reps = arg_or(argc, argv, 2, 1);
  uint64_t sum = 0;
  for (long r = 0; r < reps; ++r) {
    std::string text = generate(bytes, 5 + r);
    std::unordered_map<std::string, int> words, pairs;
    for (const std::string& line : split(text, '\n')) {
      std::vector<std::string> tokens;
      for (std::string w : split(line, ' ')) {
        std::string clean;
        for (char c : w)
          if (c != ',' && c != '.') clean += (char)(c | 0x20);  // lower-case, strip punctuation
        if (!clean.empty()) tokens.push_back(std::move(clean));
      }
      for (size_t i = 0; i < tokens.size(); ++i) {
        words[tokens[i]]++;
        if (i + 1 < tokens.size()) pairs[tokens[i] + ' ' + tokens[i + 1]]++;
      }
    }
    std::string report;
    for (auto& [w, n] : by_count(words)) report += w + '=' + std::to_string(n) + ';';
    for (auto& [w, n] : by_count(pairs)) report += w + '=' + std::to_string(n) + ';';
    sum += hash_bytes(report.data(), report.size()) + words.size() + pairs.size();
  }
  print_checksum(sum);
  return 0;
}
