// The classic binary-trees benchmark: build and drop many complete binary
// trees of small nodes, while one long-lived tree stays allocated.
//
//   bench_trees MAX_DEPTH
//
// Every node is a separate `new` of 16 bytes, so this measures the smallest
// size class's allocate/free speed and the cost of a large live heap.
#include <algorithm>

#include "common.hpp"

struct Node {
  Node* left;
  Node* right;
};

static Node* make(int depth) {
  if (depth == 0) return new Node{nullptr, nullptr};
  return new Node{make(depth - 1), make(depth - 1)};
}
static long check(const Node* n) { return n->left ? 1 + check(n->left) + check(n->right) : 1; }
static void drop(Node* n) {
  if (n->left) {
    drop(n->left);
    drop(n->right);
  }
  delete n;
}

int main(int argc, char** argv) {
  const int min_depth = 4;
  int max_depth = std::max(min_depth + 2, (int)bench::arg_or(argc, argv, 1, 16));
  uint64_t sum = 0;

  Node* stretch = make(max_depth + 1);
  sum += check(stretch);
  drop(stretch);

  Node* long_lived = make(max_depth);
  for (int d = min_depth; d <= max_depth; d += 2) {
    long iterations = 1L << (max_depth - d + min_depth);
    for (long i = 0; i < iterations; ++i) {
      Node* t = make(d);
      sum += check(t);
      drop(t);
    }
  }
  sum += check(long_lived);
  drop(long_lived);
  bench::print_checksum(sum);
  return 0;
}
