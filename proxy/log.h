// The proxy's log: one line per event on stderr, as text ("slotshift-proxy: <message>") or, with
// --log-format json, as one JSON object per line for a log collector: {"time", "level", "program",
// "message"}.
#pragma once

namespace slotshift::proxy {

enum class LogFormat : unsigned char { kText, kJson };
enum class LogLevel : unsigned char { kInfo, kWarning, kError };

// Set once at start-up, before any thread that logs is started.
void set_log_format(LogFormat format);
// "text" or "json"; false for anything else.
bool parse_log_format(const char* text, LogFormat& into);

// printf-style; the message has no trailing newline. Lines from several threads never interleave.
[[gnu::format(printf, 2, 3)]] void log_line(LogLevel level, const char* format, ...);

}  // namespace slotshift::proxy
