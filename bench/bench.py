"""Load benchmark of rc-kafka-bridge against a real Kafka-compatible broker (Tansu), on loopback only.

Run through bench/run.sh, which builds everything and calls this with the venv's Python. Phases, all in
one run so that ratios compare like with like on a noisy machine:

  ceiling      wrk GET /healthz on the bridge's admin listener (same axum stack, no work)
  spool        wrk POST /webhook, closed loop, max throughput; then until the relay drained
  spool-half   open-loop loadgen at half the spool max: latency from the due time (no coordinated omission)
  soak         wrk at max load for SOAK_SECONDS, RSS sampled: memory flat?
  direct       the same against `--delivery direct`, max and half load
  naive        the same wrk load against bench/naive_bridge.py (aiohttp + confluent-kafka)
  durability   DELIVERY_ROUNDS rounds of max load in spool mode and in direct mode, alternating, each on a
               fresh broker: what durability costs in CPU, by the medians, not by one round of each
  drain        Tansu SIGSTOPped, 100k single-hint notifications posted, SIGCONT, time until all in Kafka;
               DRAIN_ROUNDS times, each on a fresh broker, the median reported

Every phase uses its own topic prefix, so a topic read back holds only that phase's messages.
Everything is bounded in time and in count; only 127.0.0.1 is ever contacted.
"""

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
HOST = "127.0.0.1"


def env_int(name, default):
    return int(os.environ.get(name, default))


LOAD_SECONDS = env_int("LOAD_SECONDS", 20)
HALF_SECONDS = env_int("HALF_SECONDS", 20)
SOAK_SECONDS = env_int("SOAK_SECONDS", 90)
CONNECTIONS = env_int("CONNECTIONS", 64)
WRK_THREADS = env_int("WRK_THREADS", 1)
DRAIN_COUNT = env_int("DRAIN_COUNT", 100_000)
DRAIN_TIMEOUT = env_int("DRAIN_TIMEOUT", 300)
# A drain of 100k messages takes about a second: one round of it is as noisy as one round of max load.
DRAIN_ROUNDS = env_int("DRAIN_ROUNDS", 3)
# How often a drain's progress is read from /metrics (about 0.5 ms of the scraper's CPU each): its end
# is known to within this, 2% of a drain of one second.
DRAIN_POLL_SECONDS = 0.02
DELIVERY_ROUNDS = env_int("DELIVERY_ROUNDS", 2)
SKIP = set(filter(None, os.environ.get("SKIP", "").split(",")))
# Hints per notification at max load: a range `lo-hi` (uniform), or one number: `3` is `3-3`,
# exactly three.
HINTS = os.environ.get("HINTS", "1-12")
if "-" not in HINTS:
    HINTS = f"{HINTS}-{HINTS}"
BRIDGE = Path(os.environ.get("BRIDGE_BIN", ROOT / "target/release/rc-kafka-bridge"))
LOADGEN = Path(os.environ.get("LOADGEN_BIN", BENCH / ".work/loadgen"))
TANSU = os.environ.get("TANSU_BIN", "tansu")
WORK = Path(os.environ.get("BENCH_WORK", BENCH / ".work"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
NONCE = "%08x" % (int(time.time() * 1000) & 0xFFFFFFFF)

results = {"config": {}, "machine": {}, "phases": {}}
children = []


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- procs


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout}s")


def spawn(args, log_name, **kw):
    out = open(WORK / log_name, "w")
    proc = subprocess.Popen([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT, **kw)
    children.append(proc)
    return proc


def stop(proc, timeout=20):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def mem_kib(pid):
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def machine_busy_seconds():
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]  # idle + iowait
    return (sum(f[:8]) - idle) / CLK_TCK


class CpuSplit:
    """Where the machine's CPU went during a load window: server, broker, load generator, anything else
    (other work on a shared machine). Figures are average cores busy."""

    def __init__(self, server_pid, tansu_pid):
        import resource
        self.resource = resource
        self.pids = {"server": server_pid, "tansu": tansu_pid}
        self.t0 = time.time()
        self.machine0 = machine_busy_seconds()
        self.proc0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children0 = ru.ru_utime + ru.ru_stime

    def done(self):
        wall = time.time() - self.t0
        ru = self.resource.getrusage(self.resource.RUSAGE_CHILDREN)
        gen = ru.ru_utime + ru.ru_stime - self.children0
        out = {k: (cpu_seconds(p) - self.proc0[k]) / wall for k, p in self.pids.items()}
        out["generator"] = gen / wall
        out["machine"] = (machine_busy_seconds() - self.machine0) / wall
        out["other"] = out["machine"] - out["server"] - out["tansu"] - out["generator"]
        return {k: round(v, 2) for k, v in out.items()}


TANSU_PID = [None]


def mib(kib):
    return round(kib / 1024, 1)


# ------------------------------------------------------------------------------------------- metrics


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def metrics(admin_port):
    """Sums of the series we need from the bridge's /metrics."""
    text = get(f"http://{HOST}:{admin_port}/metrics")
    m = {"published": 0.0, "accepted": 0.0, "spool_entries": 0.0, "publish_errors": 0.0, "spool_commits": 0.0,
         "by_topic": {}, "commit_buckets": {}}
    for line in text.splitlines():
        g = SAMPLE.match(line)
        if not g:
            continue
        name, labels, value = g.group(1), g.group(2) or "", float(g.group(3))
        if name == "rckb_messages_published_total":
            m["published"] += value
            topic = re.search(r'topic="([^"]*)"', labels).group(1)
            m["by_topic"][topic] = m["by_topic"].get(topic, 0) + value
        elif name == "rckb_notifications_total" and 'outcome="accepted"' in labels:
            m["accepted"] += value
        elif name == "rckb_spool_entries":
            m["spool_entries"] = value
        elif name == "rckb_publish_errors_total":
            m["publish_errors"] += value
        elif name == "rckb_spool_commits_total":
            m["spool_commits"] = value
        elif name == "rckb_spool_commit_duration_seconds_bucket":
            le = re.search(r'le="([^"]*)"', labels).group(1)
            m["commit_buckets"][float(le)] = value
    return m


def commit_durations(before, after):
    """The spool's commits between two scrapes: how many, how many slower than 10 and 50 ms, and the
    bucket bounds of their p99 and of the slowest (ms). What the disk held the answers back by, as
    opposed to the threads that make and wait for them."""
    delta = {le: after["commit_buckets"][le] - before["commit_buckets"].get(le, 0)
             for le in sorted(after["commit_buckets"])}
    total = delta.get(float("inf"), 0)
    if not total:
        return None

    def bound(share):
        le = next(le for le, n in delta.items() if n >= share * total)
        return None if le == float("inf") else round(1000 * le, 2)

    return dict(commits=int(total),
                over_10ms=int(total - delta.get(0.01, 0)),
                over_50ms=int(total - delta.get(0.05, 0)),
                p99_at_most_ms=bound(0.99),
                slowest_at_most_ms=bound(1.0))


# ------------------------------------------------------------------------------------------- kafka


def start_tansu():
    port = free_port()
    url = f"tcp://{HOST}:{port}"
    proc = spawn(
        [TANSU, "broker", "--storage-engine", "memory://tansu/", "--listener-url", url,
         "--advertised-listener-url", url],
        "tansu.log",
        env=dict(os.environ, RUST_LOG=os.environ.get("TANSU_LOG", "warn")),
    )
    wait_port(port, proc=proc)
    return proc, f"{HOST}:{port}"


def ensure_topics(brokers, prefix):
    subprocess.run(
        [str(BRIDGE), "topics", "ensure", "--brokers", brokers, "--topic-prefix", prefix,
         "--partitions", "1", "--replication-factor", "1"],
        check=True, stdout=subprocess.DEVNULL, timeout=60,
    )


def read_topic(brokers, topic, expected, idle=5.0, limit=180.0):
    """Counts a topic's messages by reading it from the beginning (partition assignment, no group)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": brokers, "group.id": f"bench-{NONCE}", "enable.auto.commit": False,
        "fetch.max.bytes": 52428800, "log_level": 3,
    })
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    total, ids = 0, set()
    started = last = time.time()
    while time.time() - last < idle and time.time() - started < limit and total < 10 * expected + 10:
        batch = consumer.consume(num_messages=10000, timeout=0.5)
        for msg in batch:
            if msg.error():
                continue
            total += 1
            for key, value in msg.headers() or []:
                if key == "rc-message-id":
                    ids.add(value)
        if batch:
            last = time.time()
        if total >= expected and not batch:
            break
    consumer.close()
    return {"messages": total, "unique_ids": len(ids), "seconds": round(time.time() - started, 1)}


# ------------------------------------------------------------------------------------------- bridges


class Server:
    def __init__(self, proc, port, admin_port, prefix, name):
        self.proc, self.port, self.admin_port, self.prefix, self.name = proc, port, admin_port, prefix, name

    @property
    def pid(self):
        return self.proc.pid


def start_bridge(brokers, mode, prefix):
    port, admin = free_port(), free_port()
    spool = WORK / f"spool-{prefix.rstrip('.')}"
    shutil.rmtree(spool, ignore_errors=True)
    ensure_topics(brokers, prefix)
    proc = spawn(
        [BRIDGE, "serve", "--brokers", brokers, "--listen", f"{HOST}:{port}",
         "--admin-listen", f"{HOST}:{admin}", "--spool-dir", spool, "--delivery", mode,
         "--topic-prefix", prefix, "--allow-unverified-webhooks"],
        f"bridge-{prefix.rstrip('.')}.log",
        env=dict(os.environ, RUST_LOG=os.environ.get("BRIDGE_LOG", "warn")),
    )
    wait_port(port, proc=proc)
    wait_port(admin, proc=proc)
    time.sleep(1.0)  # let the producer connect
    return Server(proc, port, admin, prefix, mode)


def start_naive(brokers, prefix):
    port = free_port()
    ensure_topics(brokers, prefix)
    proc = spawn(
        [sys.executable, BENCH / "naive_bridge.py", "--brokers", brokers, "--listen", f"{HOST}:{port}",
         "--topic-prefix", prefix],
        f"naive-{prefix.rstrip('.')}.log",
    )
    wait_port(port, proc=proc)
    time.sleep(1.0)
    return Server(proc, port, None, prefix, "naive")


# ---------------------------------------------------------------------------------------- generators


def run_wrk(url, seconds, script=True, hints="1-12", method="POST", path="/webhook"):
    lo, hi = hints.split("-")
    args = ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s"]
    if script:
        args += ["-s", str(BENCH / "webhook.lua")]
    else:
        args += ["-s", str(BENCH / "get.lua")]
    env = dict(os.environ, BENCH_NONCE=NONCE_NEXT(), HINTS_MIN=lo, HINTS_MAX=hi, BENCH_METHOD=method,
               BENCH_PATH=path)
    proc = subprocess.Popen(args + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out}\n{err}")
    r = json.loads(line[len("RESULT "):])
    r["rps"] = round(r["requests"] / (r["duration_us"] / 1e6), 1)
    r["errors_total"] = sum(r["errors"].values())
    return r


def run_loadgen(url_port, path="/webhook", rate=0, seconds=20, count=0, hints="1-12", single_topic=False,
                connections=None):
    args = [LOADGEN, "--addr", f"{HOST}:{url_port}", "--path", path, "--rate", rate, "--duration", seconds,
            "--count", count, "--hints", hints, "--connections", connections or CONNECTIONS,
            "--nonce", NONCE_NEXT()]
    if single_topic:
        args.append("--single-topic")
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=seconds + 60, check=True)
    return json.loads(out.stdout)


_nonce_counter = [0]


def NONCE_NEXT():
    # A fresh uuid namespace per generator run: no request is ever a duplicate of an earlier one.
    _nonce_counter[0] += 1
    return "%08x" % ((int(NONCE, 16) + _nonce_counter[0] * 0x01000000) & 0xFFFFFFFF)


def loaded(server, fn):
    """Runs a load function and returns its result with the server's CPU seconds and wall time."""
    cpu0, t0 = cpu_seconds(server.pid), time.time()
    split = CpuSplit(server.pid, TANSU_PID[0])
    r = fn()
    r["cores"] = split.done()
    r["server_cpu_s"] = round(cpu_seconds(server.pid) - cpu0, 3)
    r["wall_s"] = round(time.time() - t0, 3)
    return r


def wait_drained(server, expected_accepted, t_start, limit=180):
    """Polls /metrics until the spool is empty and nothing moves; returns Kafka-side throughput."""
    deadline = time.time() + limit
    last_published, last_change = -1, time.time()
    while time.time() < deadline:
        m = metrics(server.admin_port)
        if m["published"] != last_published:
            last_published, last_change = m["published"], time.time()
        if m["spool_entries"] == 0 and m["accepted"] >= expected_accepted and time.time() - last_change > 1.0:
            break
        time.sleep(0.2)
    return m, last_change - t_start


# -------------------------------------------------------------------------------------------- phases


def phase_max(server, label, brokers):
    """Closed-loop max load on /webhook: accepted/s, latency, Kafka msgs/s, CPU per notification."""
    before = metrics(server.admin_port) if server.admin_port else None
    cpu0, t0 = cpu_seconds(server.pid), time.time()
    split = CpuSplit(server.pid, TANSU_PID[0])
    r = run_wrk(f"http://{HOST}:{server.port}", LOAD_SECONDS, hints=HINTS)
    r["cores"] = split.done()
    cpu_load = cpu_seconds(server.pid) - cpu0
    r["server_cpu_s_during_load"] = round(cpu_load, 3)
    ok = r["requests"] - r["errors"]["status"]
    if server.admin_port:
        after, since_start = wait_drained(server, before["accepted"] + ok, t0)
        cpu_total = cpu_seconds(server.pid) - cpu0
        accepted = after["accepted"] - before["accepted"]
        published = after["published"] - before["published"]
        r.update(
            accepted=accepted,
            messages=published,
            messages_per_notification=round(published / max(accepted, 1), 3),
            kafka_msgs_per_s=round(published / since_start, 1),
            seconds_until_all_in_kafka=round(since_start, 2),
            server_cpu_s_total=round(cpu_total, 3),
            cpu_ms_per_notification=round(1000 * cpu_total / max(accepted, 1), 4),
            publish_errors=after["publish_errors"] - before["publish_errors"],
        )
        # The spool's writer commits several notifications with each fdatasync (none in direct mode);
        # its commits of releases alone, after the load, count too.
        commits = after["spool_commits"] - before["spool_commits"]
        r["notifications_per_commit"] = round(accepted / commits, 2) if commits else None
        r["spool_commit_durations"] = commit_durations(before, after)
        topic = server.prefix + "account.dialing-plan"
        want = after["by_topic"].get(topic, 0) - before["by_topic"].get(topic, 0)
        r["readback"] = dict(topic=topic, metric=want, **read_topic(brokers, topic, want))
    else:
        # Naive: it answers only after Kafka acknowledged, so accepted == in Kafka when wrk ends.
        r.update(accepted=ok, server_cpu_s_total=round(cpu_load, 3),
                 cpu_ms_per_notification=round(1000 * cpu_load / max(ok, 1), 4))
        r["kafka_msgs_per_s"] = None
    r["accepted_per_s"] = round(r["accepted"] / (r["duration_us"] / 1e6), 1)
    r["rss_mib"] = {k: mib(v) for k, v in mem_kib(server.pid).items()}
    log(f"{label}: {r['accepted_per_s']}/s accepted, p50 {r['latency_ms']['p50']} ms, "
        f"p99 {r['latency_ms']['p99']} ms, max {r['latency_ms']['max']} ms, "
        f"kafka {r.get('kafka_msgs_per_s')} msg/s, cpu {r['cpu_ms_per_notification']} ms/notif, "
        f"errors {r['errors_total']}; cores {r['cores']}"
        + (f"; {r['notifications_per_commit']} notifications per commit" if r.get("notifications_per_commit") else ""))
    return r


def phase_half(server, label, max_rps):
    rate = round(max_rps / 2)
    before = metrics(server.admin_port) if server.admin_port else None
    r = loaded(server, lambda: run_loadgen(server.port, rate=rate, seconds=HALF_SECONDS))
    commits = None
    if server.admin_port:
        after, _ = wait_drained(server, before["accepted"] + r["ok"], time.time(), limit=120)
        commits = r["spool_commit_durations"] = commit_durations(before, after)
    log(f"{label} at {rate}/s: achieved {r['rate_achieved']}/s, p50 {r['latency_ms']['p50']} ms, "
        f"p99 {r['latency_ms']['p99']} ms, max {r['latency_ms']['max']} ms, non-2xx {r['non_2xx']}, "
        f"errors {r['errors']}; cores {r['cores']}"
        + (f"; spool commits {commits['commits']}, over 10 ms {commits['over_10ms']}, over 50 ms "
           f"{commits['over_50ms']}, p99 <= {commits['p99_at_most_ms']} ms, slowest <= "
           f"{commits['slowest_at_most_ms']} ms" if commits else ""))
    return r


def phase_soak(server):
    samples = []
    start_rss = mem_kib(server.pid)
    cpu0 = cpu_seconds(server.pid)
    env = dict(os.environ, BENCH_NONCE=NONCE_NEXT(), HINTS_MIN="1", HINTS_MAX="12")
    proc = subprocess.Popen(
        ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{SOAK_SECONDS}s", "--timeout", "10s", "-s",
         str(BENCH / "webhook.lua"), f"http://{HOST}:{server.port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < SOAK_SECONDS + 60:
        time.sleep(2)
        m = metrics(server.admin_port)
        # VmHWM too: a peak between two samples shows as a step in it. The broker's RSS: whether a
        # step of the bridge's comes with a pause of the broker's.
        mem = mem_kib(server.pid)
        samples.append({"t": round(time.time() - t0, 1), "rss_mib": mib(mem["VmRSS"]),
                        "hwm_mib": mib(mem["VmHWM"]), "spool_entries": m["spool_entries"],
                        "tansu_rss_mib": mib(mem_kib(TANSU_PID[0])["VmRSS"]) if TANSU_PID[0] else None})
    out, _ = proc.communicate(timeout=60)
    line = next(l for l in out.splitlines() if l.startswith("RESULT "))
    r = json.loads(line[len("RESULT "):])
    wait_drained(server, 0, time.time(), limit=180)
    time.sleep(5)
    third = max(1, len(samples) // 3)
    mid = [s["rss_mib"] for s in samples[third:2 * third]] or [0]
    last = [s["rss_mib"] for s in samples[-third:]] or [0]
    mem = mem_kib(server.pid)
    soak = {
        "seconds": SOAK_SECONDS,
        "requests": r["requests"],
        "rps": round(r["requests"] / (r["duration_us"] / 1e6), 1),
        "latency_ms": r["latency_ms"],
        "errors": r["errors"],
        "rss_mib_before": mib(start_rss["VmRSS"]),
        "rss_mib_mid_third_avg": round(sum(mid) / len(mid), 1),
        "rss_mib_last_third_avg": round(sum(last) / len(last), 1),
        "rss_mib_after_drain": mib(mem["VmRSS"]),
        "peak_rss_mib": mib(mem["VmHWM"]),
        "cpu_s": round(cpu_seconds(server.pid) - cpu0, 2),
        "samples": samples,
    }
    soak["growth_last_vs_mid_pct"] = round(
        100 * (soak["rss_mib_last_third_avg"] - soak["rss_mib_mid_third_avg"]) / max(soak["rss_mib_mid_third_avg"], 1), 1)
    log(f"soak {SOAK_SECONDS}s: {soak['rps']}/s, RSS before {soak['rss_mib_before']} MiB, mid {soak['rss_mib_mid_third_avg']}, "
        f"last {soak['rss_mib_last_third_avg']}, after drain {soak['rss_mib_after_drain']}, peak {soak['peak_rss_mib']} MiB")
    return soak


def phase_drain(tansu, brokers):
    server = start_bridge(brokers, "spool", f"b{NONCE_NEXT()}-drain.")
    try:
        os.kill(tansu.pid, signal.SIGSTOP)
        t0 = time.time()
        post = run_loadgen(server.port, seconds=120, count=DRAIN_COUNT, hints="1-1", single_topic=True)
        post_seconds = time.time() - t0
        m = metrics(server.admin_port)
        log(f"drain: posted {post['ok']} single-hint notifications in {post_seconds:.1f}s with Kafka stopped "
            f"({post['rate_achieved']}/s, p99 {post['latency_ms']['p99']} ms); spool holds {m['spool_entries']:.0f}, "
            f"published {m['published']:.0f}")
        cpu0 = cpu_seconds(server.pid)
        os.kill(tansu.pid, signal.SIGCONT)
        resumed = time.time()
        first = None
        deadline = resumed + DRAIN_TIMEOUT
        trace = []
        while time.time() < deadline:
            m = metrics(server.admin_port)
            now = time.time()
            trace.append((round(now - resumed, 2), m["published"]))
            if first is None and m["published"] > 0:
                first = now
            if m["published"] >= post["ok"] and m["spool_entries"] == 0:
                break
            time.sleep(DRAIN_POLL_SECONDS)
        done = time.time()
        total = m["published"]
        r = {
            "notifications": post["ok"],
            "post_rate_with_kafka_stopped": post["rate_achieved"],
            "post_latency_ms": post["latency_ms"],
            "published": total,
            "complete": total >= post["ok"] and m["spool_entries"] == 0,
            "seconds_from_resume": round(done - resumed, 2),
            "seconds_first_to_last": round(done - first, 2) if first else None,
            "msgs_per_s_from_resume": round(total / (done - resumed), 1),
            "msgs_per_s_first_to_last": round(total / (done - first), 1) if first and done > first else None,
            "publish_errors": m["publish_errors"],
            "bridge_cpu_s": round(cpu_seconds(server.pid) - cpu0, 2),
            "peak_rss_mib": mib(mem_kib(server.pid)["VmHWM"]),
            "trace": trace[:: max(1, len(trace) // 60)],
        }
        # Steady rate: the best 1 s window of the drain, away from reconnection delays.
        best = 0
        for i, (t, p) in enumerate(trace):
            for t2, p2 in trace[i:]:
                if t2 - t >= 1:
                    best = max(best, (p2 - p) / (t2 - t))
                    break
        r["msgs_per_s_best_1s"] = round(best, 1)
        readback = {}
        for topic in sorted(m["by_topic"]):
            readback[topic] = read_topic(brokers, topic, m["by_topic"][topic])["unique_ids"]
        r["readback_unique_ids"] = sum(readback.values())
        log(f"drain: {total:.0f} messages in Kafka {r['seconds_from_resume']}s after resume "
            f"({r['msgs_per_s_from_resume']}/s; first to last {r['msgs_per_s_first_to_last']}/s; "
            f"best 1 s {r['msgs_per_s_best_1s']}/s); read back {r['readback_unique_ids']} unique ids")
        return r
    finally:
        os.kill(tansu.pid, signal.SIGCONT)
        stop(server.proc)


def fresh_tansu(old):
    """A fresh broker in place of `old` (stopped), for a phase whose rounds must not feel each other's."""
    stop(old)
    tansu, brokers = start_tansu()
    TANSU_PID[0] = tansu.pid
    return tansu, brokers


def phase_durability(tansu, rounds):
    """Max load in spool mode and in direct mode, alternating, the order swapped every round, each
    round on a fresh broker. One round of each, taken minutes apart, sets a fast round against a slow
    one: the machine's speed moves more than the spool's cost does."""
    out = {"spool": [], "direct": []}
    for i in range(rounds):
        for mode in ("spool", "direct") if i % 2 == 0 else ("direct", "spool"):
            tansu, brokers = fresh_tansu(tansu)
            server = start_bridge(brokers, mode, f"b{NONCE_NEXT()}-{mode}{i}.")
            try:
                r = phase_max(server, f"durability round {i}, {mode}", brokers)
            finally:
                stop(server.proc)
            out[mode].append({k: r[k] for k in ("accepted_per_s", "cpu_ms_per_notification", "cores")})
    median = {mode: statistics.median(r["cpu_ms_per_notification"] for r in out[mode]) for mode in out}
    out["cpu_spool_over_direct"] = ratio(median["spool"], median["direct"])
    log(f"durability: CPU per notification, by the medians of {rounds} rounds each: spool "
        f"{median['spool']:.4f} ms, direct {median['direct']:.4f} ms, spool / direct {out['cpu_spool_over_direct']}")
    return tansu, out


def phase_drains(tansu, rounds):
    """`phase_drain` `rounds` times, each on a fresh broker: every round, and the median one."""
    drains = []
    for _ in range(rounds):
        tansu, brokers = fresh_tansu(tansu)
        drains.append(phase_drain(tansu, brokers))
    rates = [d["msgs_per_s_from_resume"] for d in drains]
    median = sorted(drains, key=lambda d: d["msgs_per_s_from_resume"])[(len(drains) - 1) // 2]
    log(f"drain: {rounds} rounds, messages/s from resume {rates}, the median {median['msgs_per_s_from_resume']}")
    return tansu, median, drains


def fsync_probe():
    """fsync latency of the spool's filesystem: 4 KiB writes, each followed by fdatasync (fio)."""
    if not shutil.which("fio"):
        return None
    out = subprocess.run(
        ["fio", "--name=fsync", f"--directory={WORK}", "--rw=write", "--bs=4k", "--size=8m", "--fdatasync=1",
         "--runtime=10", "--time_based=0", "--output-format=json"],
        capture_output=True, text=True, timeout=60)
    try:
        job = json.loads(out.stdout)["jobs"][0]
        sync = job["sync"]["lat_ns"]
        pct = sync.get("percentile", {})
        return {
            "fdatasyncs": job["write"]["total_ios"],
            "mean_ms": round(sync["mean"] / 1e6, 3),
            "p50_ms": round(pct.get("50.000000", 0) / 1e6, 3),
            "p99_ms": round(pct.get("99.000000", 0) / 1e6, 3),
            "max_ms": round(sync["max"] / 1e6, 3),
        }
    except (KeyError, ValueError, IndexError):
        return None
    finally:
        for f in WORK.glob("fsync.*"):
            f.unlink()


def machine():
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), "?")
    mem = next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    return {"nproc": os.cpu_count(), "cpu": model, "mem_gib": round(int(mem) / 1024 / 1024, 1),
            "kernel": os.uname().release, "loadavg_at_start": os.getloadavg()}


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def bridge_name():
    """The binary measured, relative to the project (results are committed: no paths of the machine)."""
    return str(BRIDGE.relative_to(ROOT)) if BRIDGE.is_relative_to(ROOT) else BRIDGE.name


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    results["machine"] = machine()
    results["config"] = dict(load_seconds=LOAD_SECONDS, half_seconds=HALF_SECONDS, soak_seconds=SOAK_SECONDS,
                             connections=CONNECTIONS, wrk_threads=WRK_THREADS, drain_count=DRAIN_COUNT,
                             bridge=bridge_name(), commit=os.environ.get("BENCH_COMMIT", "?"))
    log("machine:", results["machine"])
    results["fsync"] = fsync_probe()
    log("fsync probe:", results["fsync"])
    tansu, brokers = start_tansu()
    TANSU_PID[0] = tansu.pid
    log("tansu on", brokers)
    P = results["phases"]
    try:
        # --- spool mode, and the ceiling on the same process
        spool = start_bridge(brokers, "spool", f"b{NONCE}-spool.")
        P["rss_at_start_mib"] = mib(mem_kib(spool.pid)["VmRSS"])
        # The ceiling: the same generated requests, as GET /healthz on the admin listener.
        ceiling = loaded(spool, lambda: run_wrk(f"http://{HOST}:{spool.admin_port}", LOAD_SECONDS,
                                                method="GET", path="/healthz"))
        ceiling["cpu_ms_per_request"] = round(1000 * ceiling["server_cpu_s"] / max(ceiling["requests"], 1), 4)
        P["ceiling"] = ceiling
        log(f"ceiling GET /healthz with the webhook bodies: {ceiling['rps']}/s, p99 {ceiling['latency_ms']['p99']} ms; "
            f"cores {ceiling['cores']}")
        # And a plain GET /healthz (no body, no Lua per request): the generator's cheapest request.
        plain = loaded(spool, lambda: run_wrk(f"http://{HOST}:{spool.admin_port}/healthz",
                                              max(5, LOAD_SECONDS // 2), script=False))
        P["ceiling_plain_get"] = plain
        log(f"ceiling plain GET /healthz: {plain['rps']}/s, p99 {plain['latency_ms']['p99']} ms")
        P["spool"] = phase_max(spool, "spool max", brokers)
        P["spool_half"] = phase_half(spool, "spool half", P["spool"]["accepted_per_s"])
        if "soak" not in SKIP:
            P["soak"] = phase_soak(spool)
        P["spool"]["peak_rss_mib_process"] = mib(mem_kib(spool.pid)["VmHWM"])
        stop(spool.proc)
        if "soak" in P:
            # Tansu keeps every message in memory: after the soak it holds gigabytes and answers
            # more slowly. The phases after it (direct mode, whose answers each wait for Kafka, the
            # naive bridge, the drain) get a fresh broker, as the spool's max-load phase had.
            tansu, brokers = fresh_tansu(tansu)
            log("tansu restarted after the soak, on", brokers)

        # --- direct mode
        direct = start_bridge(brokers, "direct", f"b{NONCE}-direct.")
        P["direct"] = phase_max(direct, "direct max", brokers)
        P["direct_half"] = phase_half(direct, "direct half", P["direct"]["accepted_per_s"])
        P["direct"]["peak_rss_mib_process"] = mib(mem_kib(direct.pid)["VmHWM"])
        stop(direct.proc)

        # --- the naive baseline
        if "naive" not in SKIP:
            naive = start_naive(brokers, f"b{NONCE}-naive.")
            P["naive"] = phase_max(naive, "naive max", brokers)
            P["naive"]["peak_rss_mib_process"] = mib(mem_kib(naive.pid)["VmHWM"])
            stop(naive.proc)

        # --- what durability costs, in alternating rounds
        if "durability" not in SKIP and DELIVERY_ROUNDS > 0:
            tansu, P["durability"] = phase_durability(tansu, DELIVERY_ROUNDS)

        # --- spool drain after a broker outage
        if "drain" not in SKIP and DRAIN_ROUNDS > 0:
            tansu, P["drain"], P["drain_rounds"] = phase_drains(tansu, DRAIN_ROUNDS)
    finally:
        for proc in children:
            stop(proc)

    s = P["spool"]
    results["summary"] = {
        "spool_over_ceiling": ratio(s["accepted_per_s"], P["ceiling"]["rps"]),
        "spool_over_naive": ratio(s["accepted_per_s"], P.get("naive", {}).get("accepted_per_s")),
        "spool_over_direct": ratio(s["accepted_per_s"], P["direct"]["accepted_per_s"]),
        "direct_over_naive": ratio(P["direct"]["accepted_per_s"], P.get("naive", {}).get("accepted_per_s")),
        "kafka_msgs_over_accepted_msgs_spool": ratio(s["kafka_msgs_per_s"], s["accepted_per_s"] * s["messages_per_notification"]),
        "spool_p99_half_load_ms": P["spool_half"]["latency_ms"]["p99"],
        "spool_max_half_load_ms": P["spool_half"]["latency_ms"]["max"],
        "spool_p99_max_load_ms": s["latency_ms"]["p99"],
        "spool_max_latency_max_load_ms": s["latency_ms"]["max"],
        "drain_msgs_per_s": P.get("drain", {}).get("msgs_per_s_from_resume"),
        "drain_msgs_per_s_rounds": [d["msgs_per_s_from_resume"] for d in P.get("drain_rounds", [])],
        "drain_msgs_per_s_best_1s": P.get("drain", {}).get("msgs_per_s_best_1s"),
        "peak_rss_mib_drain": max((d["peak_rss_mib"] for d in P.get("drain_rounds", [])), default=None),
        "peak_rss_mib_spool": s["peak_rss_mib_process"],
        "rss_growth_soak_pct": P.get("soak", {}).get("growth_last_vs_mid_pct"),
        "cpu_ms_per_notification_spool": s["cpu_ms_per_notification"],
        "cpu_ms_per_notification_direct": P["direct"]["cpu_ms_per_notification"],
        "cpu_spool_over_direct_single_rounds": ratio(s["cpu_ms_per_notification"], P["direct"]["cpu_ms_per_notification"]),
        "cpu_spool_over_direct_alternating": P.get("durability", {}).get("cpu_spool_over_direct"),
        "cpu_ms_per_notification_naive": P.get("naive", {}).get("cpu_ms_per_notification"),
        "cpu_ratio_naive_over_spool": ratio(P.get("naive", {}).get("cpu_ms_per_notification"), s["cpu_ms_per_notification"]),
    }
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    # Always in bench/results: a path given whole (`bench/results/x.json`) keeps only its name, so a
    # long run never ends without its results for a directory that is not there.
    path = out / Path(os.environ.get("RESULTS_FILE", "latest.json")).name
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    log("full results in", path)


if __name__ == "__main__":
    def on_signal(signum, _frame):
        for proc in children:
            stop(proc, timeout=5)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    main()
