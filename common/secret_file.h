// Secrets kept off the command line, where `ps` shows them to every user: a password or a token in a file of
// its own.
#pragma once

#include <string>

namespace slotshift {

// Reads a secret (a token, a password) from `path`: the file's first line, without its line end. Returns an
// error message (unreadable, empty, or too long to be a secret's file), empty on success.
std::string read_secret_file(const std::string& path, std::string& secret);

}  // namespace slotshift
