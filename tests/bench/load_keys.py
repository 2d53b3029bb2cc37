#!/usr/bin/python3
"""Loads N keys of SIZE bytes ("key:0" .. "key:N-1") into a Redis Cluster as fast as the servers take them: each
key goes straight to the master that owns its slot, through one `redis-cli --pipe` per master.

    tests/bench/load_keys.py HOST:PORT N SIZE
"""
import subprocess
import sys

import redis


def crc16_table():
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


def main():
    seed, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    host, port = seed.rsplit(":", 1)
    owner = [None] * 16384
    for first, last, master, *_ in redis.Redis(host=host, port=int(port)).execute_command("CLUSTER SLOTS"):
        for s in range(first, last + 1):
            owner[s] = (master[0].decode(), master[1])
    table = crc16_table()
    value = b"v" * size
    tail = b"\r\n$%d\r\n%s\r\n" % (size, value)
    pipes = {}
    for node in set(owner):
        pipes[node] = subprocess.Popen(["redis-cli", "-h", node[0], "-p", str(node[1]), "--pipe"],
                                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    batches = {node: [] for node in pipes}
    for i in range(count):
        key = b"key:%d" % i
        crc = 0
        for byte in key:
            crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
        node = owner[crc & 16383]
        batch = batches[node]
        batch.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s%s" % (len(key), key, tail))
        if len(batch) >= 10000:
            pipes[node].stdin.write(b"".join(batch))
            batch.clear()
    for node, pipe in pipes.items():
        pipe.stdin.write(b"".join(batches[node]))
        pipe.stdin.close()
    for pipe in pipes.values():
        if pipe.wait() != 0:
            sys.exit("redis-cli --pipe failed")


if __name__ == "__main__":
    main()
