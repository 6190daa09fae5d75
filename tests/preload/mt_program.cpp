// A multithreaded C++ program run under LD_PRELOAD (it is not linked to
// smalloc): producers build objects and hand them through a queue to
// consumers, which free them (cross-thread frees); every thread also churns
// containers and every form of new/delete. The printed checksums are sums of
// per-item values, so they do not depend on scheduling, only on correctness.
#include <malloc.h>

#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr int kProducers = 8, kConsumers = 4, kItemsPerProducer = 60000;

std::atomic<uint64_t> g_errors{0};
void check(bool ok, const char* what) {
  if (!ok && g_errors.fetch_add(1) < 10) std::fprintf(stderr, "check failed: %s\n", what);
}

uint64_t mix(uint64_t x) {  // splitmix64: cheap, deterministic
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct Item {
  std::string name;
  std::vector<uint64_t> data;
  std::map<int, std::string> attrs;
  uint64_t value() const {
    uint64_t v = name.size();
    for (uint64_t d : data) v += d;
    for (auto& [k, s] : attrs) v += uint64_t(k) * s.size();
    return v;
  }
};

std::unique_ptr<Item> make_item(uint64_t seed) {
  auto it = std::make_unique<Item>();
  it->name = "item-" + std::to_string(seed) + std::string(mix(seed) % 200, 'x');
  it->data.resize(mix(seed + 1) % 300);
  for (size_t i = 0; i < it->data.size(); i++) it->data[i] = mix(seed + i) & 0xffff;
  for (int k = 0; k < int(mix(seed + 2) % 12); k++) it->attrs[k] = std::string(size_t(k) * 7, 'a' + k);
  return it;
}

// A plain mutex/condvar queue: the allocator is what is under test here.
struct Queue {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::unique_ptr<Item>> q;
  int producers_left = kProducers;
};

struct alignas(64) Line {
  uint64_t words[8];
};

// Every form of operator new/delete, with the alignment and contents checked.
uint64_t new_delete_forms(uint64_t seed) {
  uint64_t sum = 0;
  int* a = new int[100 + seed % 50];  // array
  for (int i = 0; i < 100; i++) a[i] = i;
  sum += uint64_t(a[99]);
  delete[] a;

  Line* lines = new Line[5];  // over-aligned array: align_val_t overloads
  check(reinterpret_cast<uintptr_t>(lines) % 64 == 0, "new Line[] aligned to 64");
  lines[4].words[7] = seed;
  sum += lines[4].words[7] % 7;
  delete[] lines;

  auto* one = new Line{};  // over-aligned single object, sized aligned delete
  check(reinterpret_cast<uintptr_t>(one) % 64 == 0, "new Line aligned to 64");
  delete one;

  size_t bytes = 1 + seed % 5000;
  void* raw = ::operator new(bytes, std::align_val_t(4096));
  check(reinterpret_cast<uintptr_t>(raw) % 4096 == 0, "operator new(align 4096)");
  std::memset(raw, 0xab, bytes);
  ::operator delete(raw, bytes, std::align_val_t(4096));

  raw = ::operator new(bytes, std::align_val_t(128), std::nothrow);
  check(raw && reinterpret_cast<uintptr_t>(raw) % 128 == 0, "nothrow aligned new");
  ::operator delete(raw, std::align_val_t(128), std::nothrow);

  char* nt = new (std::nothrow) char[bytes];  // nothrow array
  check(nt != nullptr, "nothrow new[]");
  nt[bytes - 1] = 1;
  delete[] nt;

  raw = ::operator new(bytes);  // sized delete
  ::operator delete(raw, bytes);
  return sum;
}

// The C interface as C++ programs also use it.
uint64_t c_forms(uint64_t seed) {
  uint64_t sum = 0;
  char* p = static_cast<char*>(std::malloc(16));
  p[15] = 16;
  for (size_t n = 32; n <= 1 << 16; n *= 2) {  // realloc growth keeps the contents
    p = static_cast<char*>(std::realloc(p, n));
    p[n - 1] = char(n);
    sum += uint8_t(p[n / 2 - 1]);
  }
  check(malloc_usable_size(p) >= 1 << 16, "malloc_usable_size");
  std::free(p);
  auto* z = static_cast<uint64_t*>(std::calloc(1000 + seed % 100, sizeof(uint64_t)));
  for (int i = 0; i < 1000; i++) {
    check(z[i] == 0, "calloc is zero");
    z[i] = uint64_t(i);
  }
  std::free(z);
  void* al = nullptr;
  check(posix_memalign(&al, 256, 1000) == 0 && reinterpret_cast<uintptr_t>(al) % 256 == 0, "posix_memalign");
  std::free(al);
  al = std::aligned_alloc(1024, 2048);
  check(al && reinterpret_cast<uintptr_t>(al) % 1024 == 0, "aligned_alloc");
  std::free(al);
  return sum;
}

void producer(Queue& q, int id, std::atomic<uint64_t>& produced) {
  uint64_t local = 0;
  std::map<int, std::string> mine;  // thread-local container churn
  for (int i = 0; i < kItemsPerProducer; i++) {
    uint64_t seed = uint64_t(id) * 1000003 + uint64_t(i);
    auto item = make_item(seed);
    local += item->value();
    mine[i % 500] = item->name;  // replaces (frees) older strings
    if (i % 50 == 0) local += new_delete_forms(seed) + c_forms(seed);
    std::lock_guard lock(q.m);
    q.q.push_back(std::move(item));
    q.cv.notify_one();
  }
  for (auto& [k, s] : mine) local += uint64_t(k) + s.size();
  produced += local;
  std::lock_guard lock(q.m);
  if (--q.producers_left == 0) q.cv.notify_all();
}

void consumer(Queue& q, std::atomic<uint64_t>& consumed, std::atomic<uint64_t>& count) {
  uint64_t local = 0, n = 0;
  for (;;) {
    std::unique_ptr<Item> item;
    {
      std::unique_lock lock(q.m);
      q.cv.wait(lock, [&] { return !q.q.empty() || q.producers_left == 0; });
      if (q.q.empty()) break;
      item = std::move(q.q.front());
      q.q.pop_front();
    }
    local += item->value();
    n++;
  }  // item freed here, on a thread that did not allocate it
  consumed += local;
  count += n;
}

}  // namespace

int main() {
  Queue q;
  std::atomic<uint64_t> produced{0}, consumed{0}, count{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kConsumers; i++) threads.emplace_back(consumer, std::ref(q), std::ref(consumed), std::ref(count));
  for (int i = 0; i < kProducers; i++) threads.emplace_back(producer, std::ref(q), i, std::ref(produced));
  for (auto& t : threads) t.join();

  // Failure must be predictable: impossible requests fail cleanly.
  // volatile: the compiler may not elide an allocation whose result is used.
  static char* volatile huge;
  huge = new (std::nothrow) char[size_t(1) << 62];
  std::printf("nothrow huge new: %s\n", huge ? "non-null" : "null");
  try {
    huge = new char[size_t(1) << 62];
    std::printf("huge new: returned %s\n", huge ? "non-null" : "null");
  } catch (const std::bad_alloc&) {
    std::printf("huge new: bad_alloc\n");
  }
  std::printf("items consumed: %llu\n", (unsigned long long)count.load());
  std::printf("produced checksum: %llu\n", (unsigned long long)produced.load());
  std::printf("consumed checksum: %llu\n", (unsigned long long)consumed.load());
  std::printf("errors: %llu\n", (unsigned long long)g_errors.load());
  return g_errors.load() == 0 ? 0 : 1;
}
