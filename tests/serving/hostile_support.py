"""A server with tight limits for the hostile-input tests, and the raw-socket helpers they use."""

from __future__ import annotations

import socket
import struct
import time
import zlib
from pathlib import Path

from serving_support import ECHO_MODEL, PICKY_MODEL, RunningServer, write_python_model

MAX_BODY = 8 * 1024 * 1024
HEADER_TIMEOUT = 3.0
BODY_TIMEOUT = 1.0


def start_hostile_server(root: Path) -> RunningServer:
    """One worker (so its pid is the process that reads bodies), small limits, payload log on."""
    models = root / "models"
    write_python_model(
        models,
        "picky",
        PICKY_MODEL,
        'max_batch_size = 64\nmax_delay = 0.001\nexecution = "thread"\n'
        '[[inputs]]\nname = "x"\ndatatype = "FP64"\nshape = [-1, 2]\n'
        '[[outputs]]\nname = "y"\ndatatype = "FP64"\nshape = [-1, 2]\n',
    )
    for name, datatype in (("text", "BYTES"), ("vector", "FP32")):
        write_python_model(
            models,
            name,
            ECHO_MODEL,
            f'[[inputs]]\nname = "in_{datatype}"\ndatatype = "{datatype}"\nshape = [-1, 3]\n'
            f'[[outputs]]\nname = "out_{datatype}"\ndatatype = "{datatype}"\nshape = [-1, 3]\n',
        )
    config = root / "mlscale.toml"
    config.write_text(
        "[server]\n"
        f"max_body_bytes = {MAX_BODY}\nheader_timeout = {HEADER_TIMEOUT}\nbody_timeout = {BODY_TIMEOUT}\n"
        "poll_interval = 0\n"
        '[streams]\nbroker = "embedded:streams"\n'
        '[monitoring.payload_log]\nenabled = true\ndirectory = "payload-log"\nroll_seconds = 1.0\n'
    )
    return RunningServer(models, workers=1, config=config)


def gzip_bomb(expanded: int, encoding: str = "gzip") -> bytes:
    """``expanded`` zero bytes compressed about 1000:1, built in a second: one 16 MiB block is
    compressed after a full flush (which resets the compressor's history), so every later block
    compresses to the same bytes and is repeated; the trailer's checksum is computed for the whole."""
    gzip = encoding == "gzip"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
    piece = bytes(16 * 1024 * 1024)
    count = expanded // len(piece)
    first = compressor.compress(piece) + compressor.flush(zlib.Z_FULL_FLUSH)
    unit = compressor.compress(piece) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = compressor.flush()[: -8 if gzip else -4]  # the empty last block, without the trailer
    check = zlib.crc32(b"") if gzip else zlib.adler32(b"")
    for _ in range(count):
        check = zlib.crc32(piece, check) if gzip else zlib.adler32(piece, check)
    trailer = struct.pack("<II", check, (count * len(piece)) & 0xFFFFFFFF) if gzip else struct.pack(">I", check)
    return first + unit * (count - 1) + final + trailer


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident memory (VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc status")


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(within)
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks), time.monotonic() - started
        chunks.append(chunk)
