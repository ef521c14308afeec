"""A/B comparison of two bridge binaries under the same max load, alternating A B A B ... in one run
(so both see the same machine noise). Reports accepted/s and CPU per notification for each.

    bench/.venv/bin/python bench/ab.py BIN_A BIN_B [ROUNDS] [MODE]     (LOAD_SECONDS=10 by default here)
"""

import os
import statistics
import sys

os.environ.setdefault("LOAD_SECONDS", "10")
sys.path.insert(0, os.path.dirname(__file__))
import bench as b  # noqa: E402


def main():
    bins = {"A": sys.argv[1], "B": sys.argv[2]}
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    mode = sys.argv[4] if len(sys.argv) > 4 else "spool"
    b.WORK.mkdir(parents=True, exist_ok=True)
    tansu, brokers = b.start_tansu()
    b.TANSU_PID[0] = tansu.pid
    out = {"A": [], "B": []}
    try:
        for i in range(rounds):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                b.BRIDGE = b.Path(bins[name])
                server = b.start_bridge(brokers, mode, f"ab{b.NONCE}-{name}{i}.")
                r = b.phase_max(server, f"{name} round {i}", brokers)
                out[name].append((r["accepted_per_s"], r["cpu_ms_per_notification"], r["latency_ms"]["p99"]))
                b.stop(server.proc)
    finally:
        for proc in b.children:
            b.stop(proc)
    for name in ("A", "B"):
        rps = [x[0] for x in out[name]]
        cpu = [x[1] for x in out[name]]
        print(f"{name} {bins[name]}: accepted/s median {statistics.median(rps):.0f} {rps}; "
              f"cpu ms/notification median {statistics.median(cpu):.4f} {cpu}")
    ra = statistics.median(x[0] for x in out["B"]) / statistics.median(x[0] for x in out["A"])
    ca = statistics.median(x[1] for x in out["B"]) / statistics.median(x[1] for x in out["A"])
    print(f"B/A: throughput x{ra:.3f}, CPU per notification x{ca:.3f}")


if __name__ == "__main__":
    main()
