// Multithreaded allocation patterns.
//
//   bench_threads MODE THREADS N
//
//   local     every thread churns its own working set (no sharing): scaling
//   prodcons  THREADS/2 producer->consumer pairs; every block is freed by a
//             thread other than the one that allocated it
//   server    every thread creates requests and passes messages to random
//             threads through queues; a message hops a few times, is sometimes
//             re-allocated on the way, and is finally freed at random
//
// N is the total number of blocks across all threads, so the work is the same
// for every thread count (64 threads oversubscribe a 2-core machine on
// purpose). A block's whole life (sizes, hops, targets) is derived from its id,
// and results are combined by addition, so the checksum does not depend on
// scheduling.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common.hpp"

using namespace bench;

static void run_threads(int t, auto&& body) {
  std::vector<std::thread> threads;
  for (int i = 0; i < t; ++i) threads.emplace_back(body, i);
  for (auto& th : threads) th.join();
}

static uint64_t local(int t, long n) {
  std::atomic<uint64_t> total{0};
  run_threads(t, [&](int id) {
    Rng rng(1000 + id);
    struct Block { void* p; size_t size; };
    std::vector<Block> set(1024, {nullptr, 0});
    uint64_t sum = 0;
    for (long i = 0; i < n / t; ++i) {
      Block& b = set[rng.below(set.size())];
      if (b.p) verify(b.p, b.size, b.size * 31);
      std::free(b.p);
      size_t size = rng.below(100) == 0 ? rng.log_size(2048, 32768) : rng.log_size(16, 2048);
      b = {std::malloc(size), size};
      if (!b.p) fail("malloc returned NULL", size);
      stamp(b.p, size, size * 31);
      sum += size;
    }
    for (auto& b : set) std::free(b.p);
    total += sum;
  });
  return total;
}

// A bounded queue of batches: batching keeps the lock cheap relative to the
// 256 allocations each batch stands for, so the allocator dominates.
struct BatchQueue {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::vector<void*>*> q;
  void push(std::vector<void*>* b) {
    std::unique_lock lk(m);
    cv.wait(lk, [&] { return q.size() < 8; });
    q.push_back(b);
    cv.notify_all();
  }
  std::vector<void*>* pop() {
    std::unique_lock lk(m);
    cv.wait(lk, [&] { return !q.empty(); });
    auto* b = q.front();
    q.pop_front();
    cv.notify_all();
    return b;
  }
};

static uint64_t prodcons(int t, long n) {
  int pairs = t / 2 > 0 ? t / 2 : 1;
  long per_pair = n / pairs;
  const size_t batch = 256;
  std::vector<BatchQueue> queues(pairs);
  std::atomic<uint64_t> total{0};
  run_threads(2 * pairs, [&](int id) {
    BatchQueue& q = queues[id / 2];
    if (id % 2 == 0) {  // producer
      Rng rng(2000 + id);
      for (long done = 0; done < per_pair; done += batch) {
        auto* b = new std::vector<void*>;
        b->reserve(batch);
        for (size_t k = 0; k < batch; ++k) {
          size_t size = rng.below(64) == 0 ? rng.log_size(1024, 16384) : rng.log_size(16, 1024);
          void* p = std::malloc(size);
          if (!p) fail("malloc returned NULL", size);
          stamp(p, size, size);
          b->push_back(p);
        }
        q.push(b);
      }
      q.push(nullptr);  // end of stream
    } else {  // consumer: frees memory it never allocated
      uint64_t sum = 0;
      while (auto* b = q.pop()) {
        for (void* p : *b) {
          uint64_t size;
          std::memcpy(&size, p, 8);  // producer stamped the size itself
          verify(p, size, size);
          sum += size;
          std::free(p);
        }
        delete b;
      }
      total += sum;
    }
  });
  return total;
}

struct Msg {
  uint64_t id;
  uint32_t hops;  // hops still to go
  uint32_t size;  // bytes of the whole block, tail stamped with tag(id, hops)
};
static uint64_t tag(const Msg* m) { return mix(m->id * 8 + m->hops); }
static Msg* new_msg(uint64_t id, uint32_t hops) {
  Rng rng(mix(id) + hops);  // the size depends only on (id, hops)
  size_t size = rng.below(64) == 0 ? rng.log_size(4096, 65536) : rng.log_size(32, 4096);
  auto* m = static_cast<Msg*>(std::malloc(size));
  if (!m) fail("malloc returned NULL", size);
  *m = {id, hops, (uint32_t)size};
  uint64_t tg = tag(m);
  std::memcpy(reinterpret_cast<char*>(m) + size - 8, &tg, 8);
  return m;
}
static void check_msg(const Msg* m) {
  uint64_t tg;
  std::memcpy(&tg, reinterpret_cast<const char*>(m) + m->size - 8, 8);
  if (tg != tag(m)) fail("message corrupted in flight", m->id);
}

static uint64_t server(int t, long n) {
  struct Inbox {
    std::mutex m;
    std::condition_variable cv;
    std::vector<Msg*> items;
  };
  std::vector<Inbox> inbox(t);
  long quota = n / t;
  const uint64_t total_msgs = (uint64_t)quota * t;
  // Bounded number of messages in flight: without it a thread that is
  // descheduled collects an unbounded backlog and the test measures paging.
  const uint64_t window = 4096 + 256 * (uint64_t)t;
  std::atomic<uint64_t> created{0}, finished{0}, total{0};
  run_threads(t, [&](int self) {
    std::vector<std::vector<Msg*>> out(t);  // per-target send buffers
    std::vector<Msg*> work, held(32, nullptr);  // held: freed later, at random
    uint64_t sum = 0;
    long produced = 0;
    auto send = [&](Msg* m) { out[mix(m->id + m->hops) % t].push_back(m); };
    for (;;) {
      long burst = std::min(16L, quota - produced);
      if (burst > 0 && created.load() - finished.load() < window) {
        created += burst;
        for (long k = 0; k < burst; ++k, ++produced) {
          uint64_t id = (uint64_t)self * quota + produced;
          send(new_msg(id, 1 + mix(id) % 4));
        }
      } else {
        burst = 0;
      }
      {
        std::lock_guard lk(inbox[self].m);
        work.swap(inbox[self].items);
      }
      uint64_t done = 0;
      for (Msg* m : work) {
        check_msg(m);
        if (m->hops > 1 && mix(m->id ^ m->hops) % 2 == 0) {
          // re-allocate as a differently sized message (a "response")
          Msg* r = new_msg(m->id, m->hops - 1);
          std::free(m);
          send(r);
        } else if (m->hops > 1) {
          m->hops--;
          uint64_t tg = tag(m);
          std::memcpy(reinterpret_cast<char*>(m) + m->size - 8, &tg, 8);
          send(m);
        } else {  // done: park it in a random slot, freeing the previous occupant
          sum += mix(m->id) + m->size;
          Msg*& slot = held[mix(m->id) % held.size()];
          if (slot) check_msg(slot);
          std::free(slot);
          slot = m;
          done++;
        }
      }
      if (done) finished += done;
      bool idle = work.empty() && burst == 0;
      work.clear();
      for (int d = 0; d < t; ++d) {
        if (out[d].empty()) continue;
        std::lock_guard lk(inbox[d].m);
        inbox[d].items.insert(inbox[d].items.end(), out[d].begin(), out[d].end());
        inbox[d].cv.notify_one();
        out[d].clear();
      }
      if (idle) {
        if (finished.load() == total_msgs) break;
        std::unique_lock lk(inbox[self].m);  // idle: sleep until mail arrives
        inbox[self].cv.wait_for(lk, std::chrono::milliseconds(1),
                                [&] { return !inbox[self].items.empty(); });
      }
    }
    for (Msg* m : held) std::free(m);
    total += sum;
  });
  return total;
}

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  int t = (int)arg_or(argc, argv, 2, 1);
  long n = arg_or(argc, argv, 3, 100000);
  if (t < 1) t = 1;
  uint64_t c;
  if (mode == "local") c = local(t, n);
  else if (mode == "prodcons") c = prodcons(t, n);
  else if (mode == "server") c = server(t, n);
  else {
    std::fprintf(stderr, "usage: %s local|prodcons|server THREADS N\n", argv[0]);
    return 2;
  }
  print_checksum(c);
  return 0;
}
