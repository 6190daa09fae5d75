// The HTTP endpoint: /stats as JSON, /healthz, and the dashboard at /. Loaded
// on demand by smalloc_stats_serve(); runs on a thread of its own, never inside
// malloc or free. Its own allocations go through smalloc like any other code's.
#include <fcntl.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <charconv>
#include <cstring>
#include <httplib.h>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "smalloc.h"

extern const unsigned char kDashboard[];
extern const std::size_t kDashboardSize;

namespace {

using nlohmann::json;

std::shared_ptr<spdlog::logger> logger() {
  static auto log = [] {
    auto existing = spdlog::get("smalloc");
    return existing ? existing : spdlog::stderr_color_mt("smalloc");
  }();
  return log;
}

json class_json(const smalloc_class_stats& c, bool slab_objects) {
  json j = {{"class", c.size_class},
            {"slot_size", c.slot_size},
            {"slots_per_slab", c.slots_per_slab},
            {"capacity", c.capacity},
            {"in_use", c.in_use},
            {"touched", c.touched},
            {"bytes_in_use", c.in_use * c.slot_size},
            {"touched_bytes", c.touched * c.slot_size},
            {"allocations", c.allocations},
            {"frees", c.frees},
            {"failovers", c.failovers},
            {"overflows", c.overflows},
            {"bytes_requested_total", c.bytes_requested_total}};
  if (slab_objects) {
    json slabs = json::array();
    for (unsigned s = 0; s < SMALLOC_SLABS_PER_CLASS; ++s) {
      const smalloc_slab_stats& b = c.slabs[s];
      slabs.push_back({{"slab", s},
                       {"in_use", b.in_use},
                       {"touched", b.touched},
                       {"capacity", b.capacity},
                       {"allocations", b.allocations},
                       {"frees", b.frees}});
    }
    j["slabs"] = std::move(slabs);
  } else {  // compact: one array per figure, indexed by slab
    json in_use, touched, allocations, frees;
    for (const smalloc_slab_stats& b : c.slabs) {
      in_use.push_back(b.in_use);
      touched.push_back(b.touched);
      allocations.push_back(b.allocations);
      frees.push_back(b.frees);
    }
    j["slabs"] = {{"in_use", in_use}, {"touched", touched}, {"allocations", allocations}, {"frees", frees}};
  }
  return j;
}

json stats_json(const smalloc_stats& s) {
  json classes = json::array();
  unsigned long long allocations = 0, frees = 0, in_use = 0, bytes_in_use = 0, touched_bytes = 0,
                     requested = 0, in_slots = 0, failovers = 0, overflows = 0;
  for (unsigned cls = s.min_class; s.max_class && cls <= s.max_class; ++cls) {
    const smalloc_class_stats& c = s.classes[cls];
    if (c.slot_size == 0) continue;  // no such class (an odd one, see smalloc.h)
    classes.push_back(class_json(c, false));
    allocations += c.allocations;
    frees += c.frees;
    in_use += c.in_use;
    bytes_in_use += c.in_use * c.slot_size;
    touched_bytes += c.touched * c.slot_size;
    requested += c.bytes_requested_total;
    in_slots += c.allocations * c.slot_size;
    failovers += c.failovers;
    overflows += c.overflows;
  }
  return {{"schema_version", s.schema_version},
          {"build", s.build},
          {"counters_enabled", bool(s.counters_enabled)},
          {"pid", getpid()},
          {"uptime_seconds", s.uptime_seconds},
          {"layout",
           {{"span_shift", s.span_shift},
            {"reserved_bytes", s.reserved_bytes},
            {"min_class", s.min_class},
            {"max_class", s.max_class},
            {"slabs_per_class", s.slabs_per_class}}},
          {"totals",
           {{"allocations", allocations},
            {"frees", frees},
            {"blocks_in_use", in_use},
            {"bytes_in_use", bytes_in_use},
            {"touched_bytes", touched_bytes},
            {"bytes_requested_total", requested},
            {"bytes_in_slots_total", in_slots},
            {"internal_fragmentation", in_slots ? 1.0 - double(requested) / double(in_slots) : 0.0},
            {"resident_bytes", s.resident_bytes},
            {"reserved_bytes", s.reserved_bytes},
            {"failovers", failovers},
            {"overflows", overflows}}},
          {"classes", std::move(classes)}};
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

void serve_stats(const httplib::Request& req, httplib::Response& res) {
  for (const auto& [name, value] : req.params)
    if (name != "class") return send_json(res, 400, {{"error", "unknown parameter '" + name + "'"}});
  auto snapshot = std::make_unique<smalloc_stats>();
  if (smalloc_stats_snapshot(snapshot.get()) != 0)
    return send_json(res, 503, {{"error", "the heap is not set up yet"}});
  if (!req.has_param("class")) return send_json(res, 200, stats_json(*snapshot));
  const std::string text = req.get_param_value("class");
  int cls = -1;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), cls);
  if (ec != std::errc() || end != text.data() + text.size() || cls < int(snapshot->min_class) ||
      cls > int(snapshot->max_class) || snapshot->classes[cls].slot_size == 0)
    return send_json(res, 400,
                     {{"error", "class must be one of the classes /stats lists, from " +
                                    std::to_string(snapshot->min_class) + " to " + std::to_string(snapshot->max_class)}});
  json body = class_json(snapshot->classes[cls], true);
  body["schema_version"] = snapshot->schema_version;
  send_json(res, 200, body);
}

// "port", ":port" or "host:port".
bool parse_address(const std::string& text, std::string& host, int& port) {
  const size_t colon = text.rfind(':');
  host = colon == std::string::npos || colon == 0 ? "127.0.0.1" : text.substr(0, colon);
  const std::string digits = colon == std::string::npos ? text : text.substr(colon + 1);
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  return ec == std::errc() && end == digits.data() + digits.size() && !digits.empty() && port >= 0 && port <= 65535;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) long smalloc_stats_json(const smalloc_stats* stats, int size_class,
                                                                          char* buf, unsigned long cap) noexcept {
  try {
    std::string text;
    if (size_class < 0) {
      text = stats_json(*stats).dump();
    } else {
      if (unsigned(size_class) < stats->min_class || unsigned(size_class) > stats->max_class ||
          stats->classes[size_class].slot_size == 0)
        return -1;
      text = class_json(stats->classes[size_class], true).dump();
    }
    if (cap) {
      size_t n = std::min<size_t>(text.size(), cap - 1);
      std::memcpy(buf, text.data(), n);
      buf[n] = 0;
    }
    return long(text.size());
  } catch (...) {
    return -1;
  }
}

extern "C" __attribute__((visibility("default"))) int smalloc_introspect_start(const char* address) noexcept {
  try {
    std::string host;
    int port = 0;
    if (!address || !parse_address(address, host, port)) {
      logger()->error("bad SMALLOC_STATS_ADDR '{}': expected PORT or HOST:PORT; stats endpoint not started",
                      address ? address : "");
      return -1;
    }
    // Never destroyed: the server thread may outlive static destruction at exit.
    auto* server = new httplib::Server;
    auto listening = std::make_shared<socket_t>(-1);
    server->set_socket_options([listening](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
      fcntl(sock, F_SETFD, FD_CLOEXEC);  // children must not inherit the port
      *listening = sock;
    });
    server->Get("/stats", serve_stats);
    server->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, {{"status", "ok"}, {"schema_version", SMALLOC_STATS_SCHEMA_VERSION}});
    });
    server->Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(reinterpret_cast<const char*>(kDashboard), kDashboardSize, "text/html; charset=utf-8");
    });
    server->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (res.status == 404) send_json(res, 404, {{"error", "no such route: " + req.path}});
    });
    const int bound = port == 0 ? server->bind_to_any_port(host) : (server->bind_to_port(host, port) ? port : -1);
    if (bound <= 0) {
      // cpp-httplib does not keep bind's errno, so name the likely causes.
      logger()->error(
          "cannot serve stats on {}:{}: the port is in use or the address is not this machine's; the program goes "
          "on without the endpoint",
          host, port);
      delete server;
      return -1;
    }
    // Debian's compiled cpp-httplib listens with a backlog of 5: sixteen
    // clients connecting at once overflowed it and waited a second to retry.
    if (*listening >= 0) ::listen(*listening, SOMAXCONN);
    std::thread([server] { server->listen_after_bind(); }).detach();
    logger()->info("serving allocator stats on http://{}:{}/stats", host, bound);
    return bound;
  } catch (const std::exception& e) {
    logger()->error("stats endpoint not started: {}", e.what());
    return -1;
  }
}
