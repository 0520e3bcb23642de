#!/usr/bin/env python3
"""fdatasync latency of this disk, the way the gate's audit spool uses it (issue 19).

Each round writes one small record (RECORD bytes, default 400: one audit line) and calls
fdatasync, ROUNDS times (default 2000), in three ways:
  append        O_APPEND to a file that grows (what the spool did before pre-zeroed segments:
                every fdatasync also commits the file's new size and blocks to the journal);
  fallocated    pwrite into a file reserved with posix_fallocate (unwritten extents: the first
                write to each block still changes the extent tree, so metadata goes too);
  pre-zeroed    pwrite into a file whose blocks were written with zeros and fsynced first (what
                PostgreSQL does with WAL segments and the spool now does: only data blocks).
Prints the median, mean, p90 and p99 in ms for each, and 1000 / mean (durable waits per second
for one waiter at a time).

    python3 bench/fsync-latency.py [DIR]        # DIR defaults to the current directory
Env: ROUNDS=2000 RECORD=400
"""
import os
import statistics
import sys
import tempfile
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "."
ROUNDS = int(os.environ.get("ROUNDS", "2000"))
RECORD = int(os.environ.get("RECORD", "400"))
SIZE = ROUNDS * RECORD + (1 << 20)
LINE = (b"x" * (RECORD - 1)) + b"\n"


def measure(name, prepare, write):
    fd, path = tempfile.mkstemp(prefix="fsync-latency-", dir=DIR)
    try:
        prepare(fd)
        lat = []
        off = 0
        for _ in range(ROUNDS):
            t = time.perf_counter()
            write(fd, off)
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1000)
            off += RECORD
        lat.sort()
        mean = statistics.fmean(lat)
        print(f"{name:11} median {lat[len(lat) // 2]:.3f} ms  mean {mean:.3f} ms  "
              f"p90 {lat[int(len(lat) * 0.9)]:.3f} ms  p99 {lat[int(len(lat) * 0.99)]:.3f} ms  "
              f"({1000 / mean:.0f} durable waits/s one at a time)")
    finally:
        os.close(fd)
        os.unlink(path)


def no_prep(fd):
    pass


def fallocate(fd):
    os.posix_fallocate(fd, 0, SIZE)
    os.fsync(fd)


def zero(fd):
    chunk = b"\0" * (1 << 20)
    left = SIZE
    while left > 0:
        left -= os.write(fd, chunk[: min(left, len(chunk))])
    os.fsync(fd)


def append(fd, _off):
    os.write(fd, LINE)


def positional(fd, off):
    os.pwrite(fd, LINE, off)


print(f"fdatasync after one {RECORD}-byte write, {ROUNDS} rounds, in {os.path.abspath(DIR)}")
# Each measured twice, interleaved, so a burst of load on a shared machine shows as a
# disagreement between the two rather than as a difference between the ways.
for _ in range(2):
    measure("append", no_prep, append)
    measure("fallocated", fallocate, positional)
    measure("pre-zeroed", zero, positional)
