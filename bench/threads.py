"""Where a max-load round's CPU goes, thread by thread: rounds of max load on a fresh bridge each, and
for every round the notifications accepted per second, the CPU per notification of each of the
bridge's threads (the worker thread apart from tokio's blocking threads), their context switches per
notification, and how busy the machine was. Rounds of one build spread over a range at max load;
this shows which threads pay for it.

    bench/.venv/bin/python bench/threads.py BIN [ROUNDS]   (LOAD_SECONDS=12 here; HINTS, CONNECTIONS)
"""

import collections
import os
import re
import sys

os.environ.setdefault("LOAD_SECONDS", "12")
sys.path.insert(0, os.path.dirname(__file__))
import bench as b  # noqa: E402


def per_thread(pid):
    """CPU seconds and context switches by thread name (numbers folded; tokio's threads by id, the
    busiest of them being the worker)."""
    cpu, switches = collections.Counter(), collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
            status = open(f"/proc/{pid}/task/{tid}/status").read().splitlines()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        name = re.sub(r"\d+", "#", stat[stat.index("(") + 1:stat.rindex(")")])
        if name.startswith("tokio"):
            name += f" {tid}"
        fields = stat[stat.rindex(")") + 2:].split()
        cpu[name] += (int(fields[11]) + int(fields[12])) / b.CLK_TCK
        for line in status:
            key, _, value = line.partition(":")
            if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                switches[f"{name} {'waits' if key.startswith('vol') else 'preempted'}"] += int(value)
    return cpu, switches


def machine():
    """The machine's jiffies by kind (user, nice, system, idle, iowait, irq, softirq, steal)."""
    return [int(x) for x in open("/proc/stat").readline().split()[1:9]]


def main():
    binary = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    b.BRIDGE = b.Path(binary)
    b.WORK.mkdir(parents=True, exist_ok=True)
    tansu, brokers = b.start_tansu()
    b.TANSU_PID[0] = tansu.pid
    try:
        for i in range(rounds):
            server = b.start_bridge(brokers, "spool", f"threads{b.NONCE}{i}.")
            cpu0, switches0 = per_thread(server.pid)
            machine0 = machine()
            r = b.run_wrk(f"http://{b.HOST}:{server.port}", b.LOAD_SECONDS, hints=b.HINTS)
            cpu1, switches1 = per_thread(server.pid)
            seconds = r["duration_us"] / 1e6
            cores = [(after - before) / b.CLK_TCK / seconds for before, after in zip(machine0, machine())]
            ok = r["requests"] - r["errors"]["status"]
            b.stop(server.proc)
            print(f"round {i}: {ok / seconds:.0f} notifications/s, p99 {r['latency_ms']['p99']} ms; machine cores "
                  + ", ".join(f"{k} {v:.2f}" for k, v in zip(
                      ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"], cores)))
            spent = sorted(((k, v - cpu0.get(k, 0)) for k, v in cpu1.items()), key=lambda kv: -kv[1])
            print("  CPU ms per notification: " + ", ".join(
                f"{k} {1000 * v / ok:.4f}" for k, v in spent if v > 0.05))
            print("  context switches per notification: " + ", ".join(
                f"{k} {(v - switches0.get(k, 0)) / ok:.3f}" for k, v in sorted(switches1.items())
                if v - switches0.get(k, 0) > ok / 100), flush=True)
    finally:
        tansu.terminate()


if __name__ == "__main__":
    main()
