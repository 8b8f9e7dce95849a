"""Holds N connections open with half-sent request heads, adding one header byte to
each every second, until interrupted; then prints how many were still open."""

from __future__ import annotations

import socket
import sys
import time


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    conns: list[socket.socket] = []
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
            s.setblocking(False)
            conns.append(s)
        except OSError:
            break
    try:
        while True:
            time.sleep(1)
            alive = []
            for s in conns:
                try:
                    s.send(b"a")
                    alive.append(s)
                except (BlockingIOError, InterruptedError):
                    alive.append(s)
                except OSError:
                    s.close()
            conns = alive
    except KeyboardInterrupt:
        pass
    print(f"{len(conns)} of {count} slow connections open at the end")


if __name__ == "__main__":
    main()
