"""Memory of a SQLite store under random inserts: the page cache per connection, and connections
left behind by threads that ended.

Each round writes ``--batch`` x 10 random keys (24-byte keys, 60-byte values, as a prediction
cache's shared tier gets them) from ``--threads`` new threads; the process's own memory (RssAnon)
is printed after each round. Before a thread's connection was closed with its thread, every round's
threads left their connections and page caches behind.

    PYTHONPATH=src .venv/bin/python bench/soak/sqlite_memory.py --page-cache-mib 64 --threads 1
    PYTHONPATH=src .venv/bin/python bench/soak/sqlite_memory.py --page-cache-mib 8 --threads 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading

from mlscale.storage.factory import open_url


def anon_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page-cache-mib", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="new writer threads per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2000, help="keys per write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlscale-sqlite-memory-") as folder:
        path = os.path.join(folder, "cache.db")
        store = open_url("sqlite:///" + path, sqlite_page_cache_kib=args.page_cache_mib * 1024)
        start = anon_mib()

        def write() -> None:
            for _ in range(10):
                store.set_many({os.urandom(24): os.urandom(60) for _ in range(args.batch)}, ttl=600)

        for round_ in range(1, args.rounds + 1):
            threads = [threading.Thread(target=write) for _ in range(args.threads)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            inserts = round_ * args.threads * 10 * args.batch
            print(
                f"page cache {args.page_cache_mib} MiB, {args.threads} new thread(s) per round: {inserts:,} inserts, "
                f"file {os.path.getsize(path) / 2**20:.0f} MiB, own memory +{anon_mib() - start:.1f} MiB",
                flush=True,
            )
        store.close()


if __name__ == "__main__":
    main()
