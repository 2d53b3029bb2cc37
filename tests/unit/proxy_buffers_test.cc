// The proxy's pure pieces that bound memory and carry state across calls: the read buffer's reservations and
// the whole-cluster SCAN cursor.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "proxy/buffer.h"
#include "proxy/scan_cursor.h"
#include "proxy/stream_writer.h"

using namespace slotshift;
using namespace slotshift::proxy;

TEST_CASE("a header alone does not reserve the size it announces") {
  ReadBuffer in;
  CHECK(in.capacity() == 0);  // nothing until the first read
  const std::string header = "*3\r\n$3\r\nSET\r\n$536870000\r\n";
  uv_buf_t buf = in.prepare(16 * 1024, 0);
  std::copy(header.begin(), header.end(), buf.base);
  in.commit(header.size());
  // The scanner now says the message completes at ~512 MB: the buffer believes 1 MB of it.
  in.prepare(16 * 1024, 536870000 + header.size() + 2);
  CHECK(in.capacity() <= 2 * ReadBuffer::kTrustedAhead);
  CHECK(in.data() == header);
}

TEST_CASE("a large message grows the buffer by doubling as its bytes arrive, then it shrinks") {
  ReadBuffer in;
  const std::size_t total = 64ull << 20;
  std::size_t reallocations = 0, last_capacity = 0;
  while (in.size() < total) {
    uv_buf_t buf = in.prepare(64 * 1024, total);
    if (in.capacity() != last_capacity) ++reallocations, last_capacity = in.capacity();
    const std::size_t n = std::min<std::size_t>(buf.len, total - in.size());
    std::fill(buf.base, buf.base + n, 'x');
    in.commit(n);
  }
  CHECK(reallocations <= 8);
  CHECK(in.capacity() <= 2 * total);
  in.consume(total - 10);
  in.trim(16 * 1024);
  CHECK(in.capacity() <= 64 * 1024);
  CHECK(in.size() == 10);
  in.consume(10);
  in.release();
  CHECK(in.capacity() == 0);
}

TEST_CASE("release keeps a buffer that still holds bytes") {
  ReadBuffer in;
  uv_buf_t buf = in.prepare(16, 0);
  buf.base[0] = 'a';
  in.commit(1);
  in.release();
  CHECK(in.data() == "a");
}

TEST_CASE("the SCAN cursor carries the slot, the tag and the node's cursor, and 0 only at the end") {
  using namespace scan_cursor;
  const Position p{16383, 65535, kMaxNodeCursor};
  const Position q = decode(encode(p));
  CHECK(q.slot == p.slot);
  CHECK(q.tag == p.tag);
  CHECK(q.node_cursor == p.node_cursor);
  // A master starting its walk still has a cursor other than 0: tags are never 0.
  CHECK(encode({0, tag_of("127.0.0.1:7000"), 0}) != 0);
  for (const char* address : {"", "a", "127.0.0.1:7000", "10.0.0.1:6379", "[::1]:6379"})
    CHECK(tag_of(address) != 0);
  CHECK(tag_of("127.0.0.1:7000") != tag_of("127.0.0.1:7001"));
  CHECK(decode(0).tag == 0);
}

TEST_CASE("bytes the kernel took count as sent even while their write is still in progress") {
  // A connection whose peer reads nothing: the kernel takes what its buffers hold and libuv keeps the rest,
  // and the write's callback (which written_total() waits for) never comes. A request whose bytes were all
  // taken may have run on the node, and must not be counted as unsent if the connection then dies.
  int fds[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  int small = 16 * 1024;
  setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  setsockopt(fds[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  uv_loop_t loop;
  uv_loop_init(&loop);
  uv_pipe_t pipe;
  uv_pipe_init(&loop, &pipe, 0);
  REQUIRE(uv_pipe_open(&pipe, fds[0]) == 0);
  StreamWriter out;
  out.attach(reinterpret_cast<uv_stream_t*>(&pipe));
  const std::size_t total = 4u << 20;
  out.buffer().assign(total, 'x');
  REQUIRE(out.flush() == 0);
  uv_run(&loop, UV_RUN_NOWAIT);
  const std::uint64_t taken = out.kernel_total();
  CHECK(taken < total);  // the rest never left the process
  // Read a little: the kernel takes more of the write in progress, whose callback has not come.
  char sink[8192];
  std::size_t drained = 0;
  while (drained < 256 * 1024) {
    const ssize_t n = ::read(fds[1], sink, sizeof sink);
    if (n <= 0) break;
    drained += static_cast<std::size_t>(n);
    uv_run(&loop, UV_RUN_NOWAIT);
  }
  CHECK(out.kernel_total() > taken);
  CHECK(out.written_total() < out.kernel_total());
  CHECK(out.kernel_total() < total);
  uv_close(reinterpret_cast<uv_handle_t*>(&pipe), nullptr);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  ::close(fds[1]);
}
