#!/usr/bin/env python3
"""Fixed, lock-step workloads for the callgrind before/after measurement.

    load.py churn PORT N        N WebSocket conns: upgrade, one 64-byte text, echo, close
    load.py frame PORT N        N frame:// conns: one 64-byte message, echo, close
    load.py http PORT N CONNS   N `GET /` requests spread over CONNS kept-alive conns
    load.py fanout PORT CLIENTS MSGS   CLIENTS ws clients; client 0 sends MSGS texts,
                                each read by every client before the next is sent
    load.py idle PORT           nothing (baseline: server start + stop)

Every step waits for its answer, so the server sees the same reads each run.
Prints what it did; exits non-zero on any mismatch.
"""
import base64
import os
import socket
import struct
import sys

MSG = b"m" * 64


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise RuntimeError("closed early")
        buf += chunk
    return buf


def read_head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed in head")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def ws_connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n" % key
        ).encode()
    )
    head, rest = read_head(s)
    if not head.startswith("HTTP/1.1 101"):
        raise RuntimeError("no upgrade: " + head.splitlines()[0])
    if rest:
        raise RuntimeError("bytes after 101")
    return s


def ws_send(s, opcode, payload):
    mask = b"\x01\x02\x03\x04"  # fixed: same bytes every run
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    else:
        hdr = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    s.sendall(hdr + mask + body)


def ws_recv(s):
    b0, b1 = recv_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", recv_exact(s, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", recv_exact(s, 8))
    return b0 & 0x0F, recv_exact(s, n)


def ws_close(s):
    ws_send(s, 8, struct.pack("!H", 1000))
    op, _ = ws_recv(s)
    if op != 8:
        raise RuntimeError("expected close, got op %d" % op)
    s.close()


def churn(port, n):
    for _ in range(n):
        s = ws_connect(port)
        ws_send(s, 1, MSG)
        op, p = ws_recv(s)
        if op != 1 or p != MSG:
            raise RuntimeError("bad echo op=%d len=%d" % (op, len(p)))
        ws_close(s)
    print("churn: %d connections" % n)


def frame(port, n):
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(struct.pack("!I", len(MSG) + 4) + MSG)
        (total,) = struct.unpack("!I", recv_exact(s, 4))
        p = recv_exact(s, total - 4)
        if p != MSG:
            raise RuntimeError("bad frame echo")
        # Half-close and wait for the server's EOF, so the server sees the
        # close before we go on (same reads every run).
        s.shutdown(socket.SHUT_WR)
        if s.recv(1) != b"":
            raise RuntimeError("data after echo")
        s.close()
    print("frame: %d connections" % n)


def http(port, n, conns):
    per = n // conns
    statuses = {}
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rest = b""
        for _ in range(per):
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head, rest = read_head(s) if not rest else (None, rest)
            if head is None:
                raise RuntimeError("pipelined bytes")
            status = head.split(" ", 2)[1]
            statuses[status] = statuses.get(status, 0) + 1
            length = 0
            for line in head.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
                if k.strip().lower() == "connection" and "close" in v.lower():
                    raise RuntimeError("server closes keep-alive")
            body = rest[:length]
            rest = rest[length:]
            if len(body) < length:
                body += recv_exact(s, length - len(body))
        s.close()
    print("http: %d requests over %d connections, statuses %s" % (per * conns, conns, statuses))


def fanout(port, clients, msgs):
    socks = [ws_connect(port) for _ in range(clients)]
    # The server has every connection registered once each has its 101.
    sender = socks[0]
    delivered = 0
    for i in range(msgs):
        payload = (b"%08d" % i) + b"x" * 56
        ws_send(sender, 1, payload)
        for s in socks:
            op, p = ws_recv(s)
            if op != 1 or p != payload:
                raise RuntimeError("bad delivery op=%d" % op)
            delivered += 1
    for s in socks:
        ws_close(s)
    print("fanout: %d clients, %d messages, %d deliveries" % (clients, msgs, delivered))


def main():
    what, port = sys.argv[1], int(sys.argv[2])
    args = [int(a) for a in sys.argv[3:]]
    if what == "churn":
        churn(port, *args)
    elif what == "frame":
        frame(port, *args)
    elif what == "http":
        http(port, *args)
    elif what == "fanout":
        fanout(port, *args)
    elif what == "idle":
        print("idle")
    else:
        sys.exit("unknown workload " + what)


if __name__ == "__main__":
    main()
