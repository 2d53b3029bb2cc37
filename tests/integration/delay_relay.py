#!/usr/bin/python3
"""A TCP relay that delays every byte by the same time in each direction: an endpoint that is far away. Each
connection accepted is joined to a new connection to the upstream address; what arrives on either side is sent
on delay_ms after it arrived, in order (a reader and a sender thread per direction, so delays do not add up).

    delay_relay.py UPSTREAM_HOST:PORT DELAY_MS     prints the port it listens on (127.0.0.1), then serves

Runs as a process of its own, so that the threads of a test's clients cannot hold up its deliveries.
"""

import queue
import socket
import sys
import threading
import time


def pump(src, dst, delay_s):
    pending = queue.Queue()

    def read():
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            pending.put((time.monotonic() + delay_s, data))
            if not data:
                return

    def send():
        while True:
            due, data = pending.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=send, daemon=True).start()


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    delay_s = float(sys.argv[2]) / 1000
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    print(server.getsockname()[1], flush=True)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((host, int(port)), timeout=5)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pump(client, upstream, delay_s)
        pump(upstream, client, delay_s)


if __name__ == "__main__":
    main()
