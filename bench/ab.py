"""A/B comparison of two bridge binaries under the same max load, alternating A B A B ... in one run
(so both see the same machine noise). Reports accepted/s and CPU per notification for each; with
MODE `drain`, the drain after a broker outage instead: messages/s, CPU seconds and peak RSS; with
MODE `half`, the open-loop latency at a fixed rate instead (HALF_RATE notifications/s, default 2000,
about half of max load at 1 to 12 hints; HALF_SECONDS long); with MODE `stall`, max load while the
broker hangs for 1 s every 8 s (SIGSTOP, SIGCONT), which builds and clears a backlog: what bounds
the peak RSS over a long run; with MODE `delivery`, A in spool mode and B in direct mode (give the
same binary twice): the price of durability, in as many alternating rounds as asked for
(`bench/run.sh`'s durability phase takes DELIVERY_ROUNDS); with MODE `delivery-rate`, the same at
one fixed rate for both (HALF_RATE, HALF_SECONDS), so that neither mode's CPU per notification is
that of a faster or slower round, the broker's CPU counted beside; with MODE `rate`, two builds at
one fixed rate, both in spool mode; with MODE `naive`, A in spool mode and B the naive bridge (give
the same binary twice: B's only creates the naive bridge's topics): the spool against the naive
bridge, in alternating rounds too.

Every round starts on a fresh broker, as a full run's phases do. Tansu keeps every message in memory
and takes more CPU as it grows (0.2 to 0.6 cores over six rounds of max load on one broker), and the
two sides of a comparison do not feel that alike: the spool's rounds share the machine's two cores
with it, the naive bridge is bound by its one Python thread, direct mode's answers wait for Kafka's.
FRESH_BROKER=0 keeps one broker for the whole run, as before.

    bench/.venv/bin/python bench/ab.py BIN_A BIN_B [ROUNDS] [spool|direct|drain|half|stall|delivery|delivery-rate|rate|naive]   (LOAD_SECONDS=10 here)
"""

import os
import signal
import statistics
import sys
import threading

os.environ.setdefault("LOAD_SECONDS", "10")
sys.path.insert(0, os.path.dirname(__file__))
import bench as b  # noqa: E402


def main():
    bins = {"A": sys.argv[1], "B": sys.argv[2]}
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    mode = sys.argv[4] if len(sys.argv) > 4 else "spool"
    b.WORK.mkdir(parents=True, exist_ok=True)
    broker = Broker()
    if mode == "drain":
        return drain(bins, rounds, broker)
    if mode == "half":
        return half(bins, rounds, broker)
    if mode in ("delivery-rate", "rate"):
        return at_rate(bins, rounds, broker, "direct" if mode == "delivery-rate" else "spool")

    def measure(name, i):
        tansu, brokers = broker.for_round()
        delivery = {"stall": "spool", "delivery": "spool" if name == "A" else "direct",
                    "naive": "spool"}.get(mode, mode)
        if mode == "naive" and name == "B":
            server = b.start_naive(brokers, f"ab{b.NONCE}-{name}{i}.")
        else:
            server = b.start_bridge(brokers, delivery, f"ab{b.NONCE}-{name}{i}.")
        done = threading.Event()

        def hang_the_broker():
            while not done.wait(7):
                os.kill(tansu.pid, signal.SIGSTOP)
                done.wait(1)
                os.kill(tansu.pid, signal.SIGCONT)

        staller = threading.Thread(target=hang_the_broker)
        if mode == "stall":
            staller.start()
        try:
            r = b.phase_max(server, f"{name} round {i}", brokers)
        finally:
            done.set()
            if mode == "stall":
                staller.join()
        peak = b.mib(b.mem_kib(server.pid)["VmHWM"])
        b.stop(server.proc)
        return r["accepted_per_s"], r["cpu_ms_per_notification"], r["latency_ms"]["p99"], peak

    out = alternate(bins, rounds, measure)
    for name in ("A", "B"):
        rps = [x[0] for x in out[name]]
        cpu = [x[1] for x in out[name]]
        print(f"{name} {bins[name]}: accepted/s median {statistics.median(rps):.0f} {rps}; "
              f"cpu ms/notification median {statistics.median(cpu):.4f} {cpu}; "
              f"peak RSS MiB {[x[3] for x in out[name]]}")
    ra = statistics.median(x[0] for x in out["B"]) / statistics.median(x[0] for x in out["A"])
    ca = statistics.median(x[1] for x in out["B"]) / statistics.median(x[1] for x in out["A"])
    print(f"B/A: throughput x{ra:.3f}, CPU per notification x{ca:.3f}")


class Broker:
    """The Tansu broker the rounds run against: a fresh one for every round unless FRESH_BROKER=0."""

    def __init__(self):
        self.fresh = os.environ.get("FRESH_BROKER", "1") != "0"
        self.proc, self.brokers = None, None

    def for_round(self):
        """The broker for the next round, started now if the rounds are on fresh ones."""
        if self.proc is None or self.fresh:
            self.proc, self.brokers = b.fresh_tansu(self.proc)
        return self.proc, self.brokers


def alternate(bins, rounds, measure):
    """`measure(name, round)` for A and B in turn, the order swapped every round; the results per build."""
    out = {"A": [], "B": []}
    try:
        for i in range(rounds):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                b.BRIDGE = b.Path(bins[name])
                out[name].append(measure(name, i))
    finally:
        for proc in b.children:
            b.stop(proc)
    return out


def print_ratios(out, names):
    for i, what in enumerate(names):
        ratio = statistics.median(x[i] for x in out["B"]) / statistics.median(x[i] for x in out["A"])
        print(f"B/A: {what} x{ratio:.3f}")


def drain(bins, rounds, broker):
    def measure(name, i):
        r = b.phase_drain(*broker.for_round())
        return r["msgs_per_s_from_resume"], r["bridge_cpu_s"], r["peak_rss_mib"]

    out = alternate(bins, rounds, measure)
    for name in ("A", "B"):
        print(f"{name} {bins[name]}: drain msgs/s, CPU s, peak RSS MiB: {out[name]}")
    print_ratios(out, ("drain rate", "CPU", "peak RSS"))


def half(bins, rounds, broker):
    rate = int(os.environ.get("HALF_RATE", "2000"))

    def measure(name, i):
        _, brokers = broker.for_round()
        server = b.start_bridge(brokers, "spool", f"ab{b.NONCE}-{name}{i}.")
        r = b.phase_half(server, f"{name} round {i} half", 2 * rate)
        b.stop(server.proc)
        # The slowest spool commit beside the answers: a tail the disk made shows in both.
        slowest = (r.get("spool_commit_durations") or {}).get("slowest_at_most_ms")
        return r["latency_ms"]["p50"], r["latency_ms"]["p99"], r["latency_ms"]["max"], slowest

    out = alternate(bins, rounds, measure)
    for name in ("A", "B"):
        print(f"{name} {bins[name]}: at {rate}/s, p50, p99, max ms, slowest commit at most ms: {out[name]}")
    print_ratios(out, ("p50", "p99", "max"))


def at_rate(bins, rounds, broker, b_delivery):
    """A in spool mode, B in `b_delivery` mode, both offered HALF_RATE notifications/s by the open-loop
    generator: CPU per notification of the bridge, and of the bridge and the broker together, over the
    load window. At a rate both sustain, the spool's relay keeps up, so what it still holds when the
    load ends (printed) is a few rounds at most."""
    deliveries = {"A": "spool", "B": b_delivery}
    rate = int(os.environ.get("HALF_RATE", "2000"))

    def measure(name, i):
        tansu, brokers = broker.for_round()
        server = b.start_bridge(brokers, deliveries[name], f"ab{b.NONCE}-{name}{i}.")
        before = b.metrics(server.admin_port)
        cpu0, tansu0 = b.cpu_seconds(server.pid), b.cpu_seconds(tansu.pid)
        r = b.run_loadgen(server.port, rate=rate, seconds=b.HALF_SECONDS)
        bridge_s, tansu_s = b.cpu_seconds(server.pid) - cpu0, b.cpu_seconds(tansu.pid) - tansu0
        after = b.metrics(server.admin_port)
        accepted = max(after["accepted"] - before["accepted"], 1)
        commits = after["spool_commits"] - before["spool_commits"]
        b.log(f"{name} round {i} at {rate}/s: achieved {r['rate_achieved']}/s, p99 {r['latency_ms']['p99']} ms, "
              f"{after['spool_entries']:.0f} entries left in the spool"
              + (f", {accepted / commits:.1f} notifications per commit" if commits else ""))
        b.stop(server.proc)
        return (r["rate_achieved"], round(1000 * bridge_s / accepted, 4),
                round(1000 * (bridge_s + tansu_s) / accepted, 4), r["latency_ms"]["p99"])

    out = alternate(bins, rounds, measure)
    for name in ("A", "B"):
        print(f"{name} ({deliveries[name]}, {bins[name]}) at {rate}/s: achieved/s, CPU ms per notification "
              f"(bridge; bridge and broker), p99 ms: {out[name]}")
    # Against direct mode, the price of durability: spool ÷ direct. Two builds: B ÷ A, as elsewhere.
    num, den, label = ("A", "B", "spool / direct") if b_delivery == "direct" else ("B", "A", "B/A")
    pairs = [n[1] / d[1] for n, d in zip(out[num], out[den])]
    print(f"{label}, CPU of the bridge round by round: {[round(x, 3) for x in pairs]}")
    for i, what in enumerate(("achieved rate", "CPU, the bridge", "CPU, bridge and broker", "p99")):
        ratio = statistics.median(x[i] for x in out[num]) / statistics.median(x[i] for x in out[den])
        print(f"{label} (medians): {what} x{ratio:.3f}")


if __name__ == "__main__":
    main()
