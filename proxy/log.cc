#include "proxy/log.h"

#include "common/time_text.h"

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

namespace slotshift::proxy {
namespace {

LogFormat g_format = LogFormat::kText;

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

}  // namespace

void set_log_format(LogFormat format) {
  g_format = format;
}

bool parse_log_format(const char* text, LogFormat& into) {
  if (std::strcmp(text, "text") == 0) {
    into = LogFormat::kText;
  } else if (std::strcmp(text, "json") == 0) {
    into = LogFormat::kJson;
  } else {
    return false;
  }
  return true;
}

void log_line(LogLevel level, const char* format, ...) {
  std::va_list args;
  va_start(args, format);
  std::va_list again;
  va_copy(again, args);
  const int size = std::vsnprintf(nullptr, 0, format, args);
  va_end(args);
  std::string message(size > 0 ? static_cast<std::size_t>(size) : 0, '\0');
  if (size > 0) std::vsnprintf(message.data(), message.size() + 1, format, again);
  va_end(again);
  std::string line;
  if (g_format == LogFormat::kJson) {
    // Messages quote what clients and nodes sent (a node's error text): dump() escapes it, and replaces bytes
    // that are not UTF-8 rather than refusing the line.
    line = nlohmann::ordered_json{{"time", now_rfc3339()},
                                  {"level", level_name(level)},
                                  {"program", "slotshift-proxy"},
                                  {"message", message}}
               .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    line = "slotshift-proxy: " + message;
  }
  line += '\n';
  // One write per line: stdio locks the stream for it, so lines of different threads do not mix.
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace slotshift::proxy
