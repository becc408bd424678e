"""Concurrent callers on one link never interleave a write and another caller's read."""

import threading

from socs_tcp import TCPInterface


def test_many_threads_never_cross_replies(emulator):
    dev = TCPInterface("127.0.0.1", emulator.port, 5.0, termination="\n")
    emulator.split_replies(5, gap=0)  # replies arrive in pieces: reads span several recv calls
    threads, crossed, failures = 16, [], []
    per_thread = 150

    def worker(n):
        try:
            for i in range(per_thread):
                token = f"{n}:{i}"
                if i % 2:
                    reply = dev.query(token)
                else:
                    reply = dev.wrnrd_until(token, "\\n")
                if reply != f"echo:{token}":
                    crossed.append((token, reply))
        except Exception as e:  # collected and asserted below
            failures.append(repr(e))
    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert failures == []
    assert crossed == []
    assert dev.stats()["transactions"] == threads * per_thread


def test_lock_makes_a_multi_step_transaction_atomic(emulator):
    dev = TCPInterface("127.0.0.1", emulator.port, 5.0, termination="\n")
    results = []

    def two_step(n):
        for i in range(50):
            with dev.lock:
                dev.write(f"a{n}.{i}")
                dev.write(f"b{n}.{i}")
                results.append((dev.read_until(), dev.read_until(), n, i))
    pool = [threading.Thread(target=two_step, args=(n,)) for n in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert all(a == f"echo:a{n}.{i}" and b == f"echo:b{n}.{i}" for a, b, n, i in results)
    assert len(results) == 200
