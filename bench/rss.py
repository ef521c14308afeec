"""Where the bridge's resident memory is, at its peak under max load: a freshly started bridge (spool
mode) takes the benchmark's max load while its memory map is sampled every 200 ms; the sample with the
highest RSS is broken down by mapping. Writes bench/results/rss-spool.txt.

    bench/.venv/bin/python bench/rss.py [BRIDGE_BINARY]   (HINTS, LOAD_SECONDS as for bench.py)

Anonymous mappings of 256 MiB or more are mimalloc's arenas (the Rust heap: mimalloc reserves address
space in large arenas and commits it as needed); the other anonymous mappings are the C library's heap
(librdkafka's allocations and the other C code), thread stacks and mimalloc's metadata.
"""

import os
import re
import sys
import threading
import time

os.environ.setdefault("LOAD_SECONDS", "10")
sys.path.insert(0, os.path.dirname(__file__))
import bench as b  # noqa: E402

MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")
ARENA_KIB = 256 * 1024


def breakdown(pid):
    """RSS in KiB by kind of mapping."""
    parts, kind = {}, None
    for line in open(f"/proc/{pid}/smaps"):
        m = MAPPING.match(line)
        if m:
            size_kib = (int(m.group(2), 16) - int(m.group(1), 16)) // 1024
            name = m.group(3).strip()
            if not name:
                kind = "Rust heap (mimalloc arenas)" if size_kib >= ARENA_KIB else "C heap, stacks, other anonymous"
            elif name == str(b.BRIDGE) or name.endswith("/rc-kafka-bridge"):
                kind = "the binary (code, data)"
            elif name.startswith("/"):
                kind = "shared libraries, other files"
            else:
                kind = f"{name}"
        elif line.startswith("Rss:"):
            parts[kind] = parts.get(kind, 0) + int(line.split()[1])
    return parts


def main():
    if len(sys.argv) > 1:
        b.BRIDGE = b.Path(sys.argv[1])
    b.WORK.mkdir(parents=True, exist_ok=True)
    tansu, brokers = b.start_tansu()
    b.TANSU_PID[0] = tansu.pid
    peak = {"rss": 0, "parts": {}}
    try:
        server = b.start_bridge(brokers, "spool", f"rss{b.NONCE}.")
        done = threading.Event()

        def sample():
            while not done.wait(0.2):
                rss = b.mem_kib(server.pid)["VmRSS"]
                if rss > peak["rss"]:
                    peak["rss"], peak["parts"] = rss, breakdown(server.pid)

        sampler = threading.Thread(target=sample)
        sampler.start()
        result = b.phase_max(server, "rss", brokers)
        done.set()
        sampler.join()
        after = breakdown(server.pid)
        hwm = b.mem_kib(server.pid)["VmHWM"]
        b.stop(server.proc)
    finally:
        for proc in b.children:
            b.stop(proc)
    lines = [
        f"spool mode, hints {b.HINTS}, "
        f"{result['accepted_per_s']:.0f} notifications/s for {b.LOAD_SECONDS} s",
        f"VmHWM {hwm / 1024:.1f} MiB; highest sampled RSS {peak['rss'] / 1024:.1f} MiB",
        f"{'':34}{'at the peak':>12}{'after load':>12}",
    ]
    for kind in sorted(peak["parts"], key=lambda k: -peak["parts"][k]):
        if peak["parts"][kind] < 64 and after.get(kind, 0) < 64:
            continue  # the kernel's small mappings: vdso, vvar and the like
        lines.append(f"{kind:34}{peak['parts'][kind] / 1024:9.1f} MiB{after.get(kind, 0) / 1024:9.1f} MiB")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (b.BENCH / "results" / "rss-spool.txt").write_text(text)


if __name__ == "__main__":
    main()
