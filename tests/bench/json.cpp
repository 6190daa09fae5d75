// JSON round trip: generate a document, parse it with simdjson, copy it into a
// tree of std::map / std::vector / std::string, serialise the tree again.
//
//   bench_json KIB REPS
//
// simdjson itself allocates a few large aligned buffers; the copy into
// standard containers is where most small allocations happen, as in a real
// program that keeps what it parsed.
#include <simdjson.h>

#include <charconv>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "common.hpp"

using namespace bench;

struct Node;
using Array = std::vector<Node>;
using Object = std::map<std::string, Node>;
struct Node {
  std::variant<std::nullptr_t, bool, int64_t, uint64_t, double, std::string, Array, Object> v;
};

// A deterministic document of about `bytes` bytes: records with strings,
// numbers, nested objects and arrays of varying length.
static std::string generate(size_t bytes) {
  static const char* words[] = {"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
                                "hotel", "india", "juliett", "kilo", "lima", "mike", "november"};
  Rng rng(99);
  auto word = [&] { return std::string(words[rng.below(14)]); };
  std::string s = "{\"records\":[";
  for (long i = 0; s.size() < bytes; ++i) {
    if (i) s += ',';
    s += "{\"id\":" + std::to_string(i) + ",\"name\":\"" + word() + "-" + word() + "\"";
    s += ",\"score\":" + std::to_string(rng.below(1000000)) + "." + std::to_string(rng.below(1000));
    s += ",\"active\":";
    s += rng.below(2) ? "true" : "false";
    s += ",\"tags\":[";
    for (uint64_t k = 0, n = rng.below(8); k < n; ++k) s += (k ? ",\"" : "\"") + word() + "\"";
    s += "],\"text\":\"";
    for (uint64_t k = 0, n = 2 + rng.below(30); k < n; ++k) s += (k ? " " : "") + word();
    s += "\",\"attrs\":{";
    for (uint64_t k = 0, n = rng.below(6); k < n; ++k)
      s += (k ? ",\"" : "\"") + word() + std::to_string(k) + "\":" + std::to_string(rng.below(100));
    s += "},\"parent\":" + (i ? std::to_string(rng.below(i)) : std::string("null")) + "}";
  }
  return s + "]}";
}

static Node copy(simdjson::dom::element e) {
  using T = simdjson::dom::element_type;
  switch (e.type()) {
    case T::ARRAY: {
      Array a;
      for (auto x : e.get_array()) a.push_back(copy(x));
      return {std::move(a)};
    }
    case T::OBJECT: {
      Object o;
      for (auto [k, x] : e.get_object()) o.emplace(std::string(k), copy(x));
      return {std::move(o)};
    }
    case T::STRING: return {std::string(std::string_view(e.get_string()))};
    case T::INT64: return {int64_t(e.get_int64())};
    case T::UINT64: return {uint64_t(e.get_uint64())};
    case T::DOUBLE: return {double(e.get_double())};
    case T::BOOL: return {bool(e.get_bool())};
    case T::NULL_VALUE: return {nullptr};
  }
  return {nullptr};
}

static void serialise(const Node& n, std::string& out) {
  char buf[32];
  std::visit([&](const auto& v) {
    using V = std::decay_t<decltype(v)>;
    if constexpr (std::is_same_v<V, std::nullptr_t>) out += "null";
    else if constexpr (std::is_same_v<V, bool>) out += v ? "true" : "false";
    else if constexpr (std::is_same_v<V, std::string>) { out += '"'; out += v; out += '"'; }
    else if constexpr (std::is_same_v<V, Array>) {
      out += '[';
      for (size_t i = 0; i < v.size(); ++i) { if (i) out += ','; serialise(v[i], out); }
      out += ']';
    } else if constexpr (std::is_same_v<V, Object>) {
      out += '{';
      bool first = true;
      for (auto& [k, x] : v) {
        if (!first) out += ',';
        first = false;
        out += '"'; out += k; out += "\":";
        serialise(x, out);
      }
      out += '}';
    } else {  // numbers: to_chars gives the same shortest form everywhere
      out.append(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
    }
  }, n.v);
}

int main(int argc, char** argv) {
  size_t bytes = (size_t)arg_or(argc, argv, 1, 4096) << 10;
  long reps = arg_or(argc, argv, 2, 1);
  uint64_t sum = 0;
  for (long r = 0; r < reps; ++r) {
    std::string doc = generate(bytes);
    simdjson::dom::parser parser;  // fresh each time: its buffers are allocations too
    simdjson::dom::element root;
    if (auto err = parser.parse(doc).get(root)) fail(simdjson::error_message(err));
    Node tree = copy(root);
    std::string out;
    serialise(tree, out);
    // Parse our own output again: the two trees must agree.
    simdjson::dom::element again;
    if (auto err = parser.parse(out).get(again)) fail(simdjson::error_message(err));
    std::string out2;
    serialise(copy(again), out2);
    if (out != out2) fail("JSON round trip differs");
    sum += hash_bytes(out.data(), out.size()) + out.size();
  }
  print_checksum(sum);
  return 0;
}
