/* A correct program: 8 threads allocate with malloc, calloc, realloc, new and
   new[], hand every block to the next thread, which checks its contents,
   reallocs some of them and releases them with the matching call. The debug
   build must report nothing, natively or under memcheck.
   @native: none
   @native-stdout: threads checked 32000 blocks
   @valgrind-errors: 0 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace {
constexpr int kThreads = 8, kPerThread = 4000;

enum Kind { kMalloc, kCalloc, kRealloc, kNewArray, kNew };
struct Node { uint64_t words[6]; };
struct Item { void* p; size_t size; Kind kind; unsigned char fill; };

struct Mailbox { std::mutex m; std::vector<Item> items; };
Mailbox boxes[kThreads];
std::atomic<int> failures{0};

uint32_t next_random(uint32_t& s) { s ^= s << 13; s ^= s >> 17; s ^= s << 5; return s; }

bool filled(const void* p, size_t n, unsigned char c) {
  auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) if (b[i] != c) return false;
  return true;
}

Item make(uint32_t& rnd) {
  Item it;
  it.kind = Kind(next_random(rnd) % 5);
  it.size = next_random(rnd) % 16 == 0 ? 20000 + next_random(rnd) % 100000 : 1 + next_random(rnd) % 600;
  it.fill = static_cast<unsigned char>(next_random(rnd));
  switch (it.kind) {
    case kMalloc: it.p = std::malloc(it.size); break;
    case kCalloc:
      it.p = std::calloc(it.size, 1);
      if (!filled(it.p, it.size, 0)) failures++;
      break;
    case kRealloc: {  // grow then shrink, on this thread
      void* p = std::malloc(it.size / 2 + 1);
      std::memset(p, it.fill, it.size / 2 + 1);
      p = std::realloc(p, it.size * 2);
      if (!filled(p, it.size / 2 + 1, it.fill)) failures++;
      it.p = std::realloc(p, it.size);
      break;
    }
    case kNewArray: it.p = new char[it.size]; break;
    case kNew: it.size = sizeof(Node); it.p = new Node; break;
  }
  std::memset(it.p, it.fill, it.size);
  return it;
}

void release(Item& it, uint32_t& rnd) {
  if (!filled(it.p, it.size, it.fill)) failures++;
  switch (it.kind) {
    case kMalloc: case kCalloc: case kRealloc:
      if (next_random(rnd) % 2) {  // realloc a block another thread allocated
        size_t n = it.size + next_random(rnd) % 300;
        it.p = std::realloc(it.p, n);
        if (!filled(it.p, it.size, it.fill)) failures++;
      }
      std::free(it.p);
      break;
    case kNewArray: delete[] static_cast<char*>(it.p); break;
    case kNew: delete static_cast<Node*>(it.p); break;
  }
}

void worker(int self) {
  uint32_t rnd = 2463534242u + self * 7919u;
  Mailbox& out = boxes[(self + 1) % kThreads];
  Mailbox& in = boxes[self];
  int sent = 0, received = 0;
  std::vector<Item> got;
  while (sent < kPerThread || received < kPerThread) {
    if (sent < kPerThread) {
      Item it = make(rnd);
      std::lock_guard<std::mutex> g(out.m);
      out.items.push_back(it);
      ++sent;
    }
    {
      std::lock_guard<std::mutex> g(in.m);
      got.swap(in.items);
    }
    for (Item& it : got) release(it, rnd);
    received += int(got.size());
    got.clear();
    if (sent == kPerThread && received < kPerThread) std::this_thread::yield();
  }
}
}  // namespace

int main() {
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();
  if (failures) { std::printf("%d blocks had wrong contents\n", failures.load()); return 1; }
  std::printf("threads checked %d blocks\n", kThreads * kPerThread);
  return case_done();
}
