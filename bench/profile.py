"""Profiles the bridge under max load: where does its CPU go?

    bench/profile.sh [spool|direct|drain|half] [SECONDS] [RATE]

Starts Tansu and the bridge like bench/bench.py, drives it with the same wrk load, samples it with
`perf record -e cpu-clock` (a software clock: this VM exposes no hardware counters) with DWARF call
graphs, and attributes every sample to one component of the bridge by the innermost frame of its stack
that names one (see RULES). Prints the components, the threads, and the top self-time symbols, and writes
bench/results/profile-MODE.txt (with HINTS=N-N, profile-MODE-Nhint.txt or -Nhints.txt; with another range
than 1-12, profile-MODE-hints-LO-HI.txt). `drain` profiles the relay instead: Tansu is stopped while
DRAIN_COUNT single-hint notifications are posted, then resumed, and the bridge is sampled while it drains.
`half` profiles spool mode under the open-loop load of the half-load phase, RATE notifications/s (3000).
"""

import collections
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import bench as b  # noqa: E402

# (component, substrings of a frame): the first frame from the leaf upwards that matches any rule wins.
RULES = [
    ("spool writer: serde_json encode of the spooled entry", ["Serialize for rc_kafka_bridge::spool::SpooledEntry",
                                                            "Serialize for rc_kafka_bridge::routing::RoutePlan"]),
    ("RoutePlan clones and drops", ["<rc_kafka_bridge::routing::RoutePlan as core::clone::Clone>",
                                                 "<rc_kafka_bridge::routing::OutboundMessage as core::clone::Clone>",
                                                 "<alloc::vec::Vec<T,A> as core::clone::Clone>::clone",
                                                 "drop_in_place<rc_kafka_bridge::routing::RoutePlan>",
                                                 "drop_in_place<rc_kafka_bridge::routing::plan::RoutePlan>",
                                                 "drop_in_place<rc_kafka_bridge::routing::plan::OutboundMessage>"]),
    ("ingress: encoding the stored record", ["rc_kafka_bridge::spool::record::encode",
                                             "rc_kafka_bridge::spool::record::store",
                                             "rc_kafka_bridge::spool::record::StoredRecord::new"]),
    # The journal's commit is inlined into the writer's `write` (so are its dedup checks, a sliver).
    ("spool writer: journal (frames, pwrite, fdatasync)", ["rc_kafka_bridge::spool::journal::Journal",
                                                           "rc_kafka_bridge::spool::Shared>::write"]),
    ("spool writer: redb commit (page writes, pwrite, fdatasync)", ["redb::transactions::WriteTransaction::commit"]),
    ("spool writer: redb inserts/removes/dedup", ["redb::table::Table", "redb::tree_store::btree_mutator", "redb::transactions::WriteTransaction::open_table",
                                                  "redb::db::Database::begin_write", "redb::transactions::WriteTransaction::begin"]),
    ("relay: reading entries back (journal read)", ["rc_kafka_bridge::spool::Spool::entries_from",
                                                    "rc_kafka_bridge::spool::Spool::stored_from"]),
    ("relay: reading stored records (LZ4 decompression, in place)", ["rc_kafka_bridge::spool::record::read_binary",
                                                                     "rc_kafka_bridge::spool::record::decompress"]),
    ("relay: enqueueing (librdkafka's copy, header list)", ["rc_kafka_bridge::kafka::publisher::Publisher<P>::enqueue"]),
    ("relay: serving delivery reports (librdkafka's frees)", ["RelayDelivery as core::future::future::Future>::poll"]),
    ("relay: other", ["rc_kafka_bridge::relay::"]),
    ("ingress: LZ4 compression of the stored record", ["rc_kafka_bridge::spool::record::compress",
                                                       "lz4_flex::block::compress"]),
    ("spool writer: the deduplication index", ["rc_kafka_bridge::spool::seen::SeenIndex"]),
    ("spool writer: other (channel, grouping, allocation)", ["rc_kafka_bridge::spool::Shared::run_writer",
                                                             "rc_kafka_bridge::spool::Shared>::run_writer",
                                                             "rc_kafka_bridge::spool::Shared>::commit_group"]),
    ("ingress: Notification::parse", ["rc_kafka_bridge::notification::Notification::parse"]),
    ("ingress: RoutingTable::plan", ["rc_kafka_bridge::routing::RoutingTable::plan"]),
    ("ingress: received_at formatting", ["time::formatting", "OffsetDateTime::format"]),
    ("direct: DirectSink publish", ["rc_kafka_bridge::sink::DirectSink"]),
    ("ingress: Spool::accept (channel, wait)", ["rc_kafka_bridge::spool::Spool as rc_kafka_bridge::sink::Sink"]),
    ("ingress: webhook handler, other", ["rc_kafka_bridge::ingress::webhook"]),
    ("ingress: record_http middleware (metrics)", ["rc_kafka_bridge::ingress::record_http"]),
    ("admin: /metrics rendering", ["rc_kafka_bridge::ingress::render_metrics"]),
    ("Metrics clone/drop (per request state)", ["rc_kafka_bridge::metrics::Metrics as core::clone::Clone",
                                                "drop_in_place<rc_kafka_bridge::metrics::Metrics>"]),
    ("HTTP: hyper/axum (read, parse, write)", ["hyper::", "axum::"]),
    ("librdkafka (its own threads)", ["rd_kafka_"]),
    ("tokio runtime (scheduler, timers, I/O driver)", ["tokio::"]),
]


GENERIC = 4  # the last rules (HTTP, metrics rendering, librdkafka, tokio) only apply when no other does


def attribute(stack):
    for rules in (RULES[:-GENERIC], RULES[-GENERIC:]):
        for frame in stack:  # leaf first
            for name, needles in rules:
                if any(n in frame for n in needles):
                    return name
    return "unattributed (kernel, libc, startup)"


def summarize(perf_data, out):
    script = subprocess.run(["perf", "script", "-i", perf_data, "-F", "comm,tid,ip,sym"],
                            capture_output=True, text=True, errors="replace", check=True).stdout
    components, threads, leaves = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for block in script.split("\n\n"):
        lines = [l.strip() for l in block.strip().splitlines()]
        if not lines:
            continue
        header, frames = lines[0], lines[1:]
        comm = header.split()[0] if header else "?"
        syms = [f.split(" ", 1)[1] if " " in f else f for f in frames]
        total += 1
        threads["tokio-rt-worker" if comm.startswith("tokio") else comm] += 1
        components[attribute(syms)] += 1
        if syms:
            leaves[syms[0][:110]] += 1
    lines = [f"samples: {total}", "", "component (innermost named frame)          share of bridge CPU"]
    for name, n in components.most_common():
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    lines += ["", "threads"]
    for name, n in threads.most_common(8):
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    lines += ["", "top self-time symbols"]
    for name, n in leaves.most_common(25):
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def profile_drain(tansu, brokers, seconds, data):
    server = b.start_bridge(brokers, "spool", f"p{b.NONCE}-drain.")
    os.kill(tansu.pid, signal.SIGSTOP)
    try:
        post = b.run_loadgen(server.port, seconds=120, count=b.DRAIN_COUNT, hints="1-1", single_topic=True)
        print(f"posted {post['ok']} notifications with Kafka stopped")
    finally:
        os.kill(tansu.pid, signal.SIGCONT)
    subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384",
                    "-p", str(server.pid), "-o", data, "--", "sleep", str(seconds)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b.wait_drained(server, post["ok"], time.time(), limit=120)
    b.stop(server.proc)


def profile_half(brokers, seconds, rate, data):
    server = b.start_bridge(brokers, "spool", f"p{b.NONCE}-half.")
    result = {}
    load = threading.Thread(target=lambda: result.update(
        b.run_loadgen(server.port, rate=rate, seconds=seconds + 3, hints=b.HINTS)))
    load.start()
    time.sleep(2)
    subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384",
                    "-p", str(server.pid), "-o", data, "--", "sleep", str(seconds)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load.join()
    print(f"at {rate}/s: achieved {result.get('rate_achieved')}/s, latency ms {result.get('latency_ms')}")
    b.stop(server.proc)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "spool"
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    b.WORK.mkdir(parents=True, exist_ok=True)
    tansu, brokers = b.start_tansu()
    data = str(b.WORK / f"perf-{mode}.data")
    if mode in ("drain", "half"):
        try:
            if mode == "drain":
                profile_drain(tansu, brokers, seconds, data)
            else:
                profile_half(brokers, seconds, int(sys.argv[3]) if len(sys.argv) > 3 else 3000, data)
        finally:
            for proc in b.children:
                b.stop(proc)
        (b.BENCH / "results").mkdir(exist_ok=True)
        print(summarize(data, b.BENCH / "results" / f"profile-{mode}.txt"))
        return
    try:
        server = b.start_bridge(brokers, mode, f"p{b.NONCE}-{mode}.")
        lo, hi = b.HINTS.split("-")
        env = dict(os.environ, BENCH_NONCE=b.NONCE_NEXT(), HINTS_MIN=lo, HINTS_MAX=hi)
        wrk = subprocess.Popen(["wrk", f"-t{b.WRK_THREADS}", f"-c{b.CONNECTIONS}", f"-d{seconds + 3}s", "--timeout",
                                "10s", "-s", str(b.BENCH / "webhook.lua"), f"http://{b.HOST}:{server.port}"],
                               stdout=subprocess.PIPE, text=True, env=env)
        time.sleep(2)
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384",
                        "-p", str(server.pid), "-o", data, "--", "sleep", str(seconds)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out, _ = wrk.communicate(timeout=60)
        print(next((l for l in out.splitlines() if l.startswith("RESULT")), "no wrk result"))
        b.stop(server.proc)
    finally:
        for proc in b.children:
            b.stop(proc)
    (b.BENCH / "results").mkdir(exist_ok=True)
    print(summarize(data, b.BENCH / "results" / profile_name(mode)))


def profile_name(mode):
    """Where the summary of a max-load profile goes: named after the hints per notification, unless
    they are the default."""
    if b.HINTS == "1-12":
        return f"profile-{mode}.txt"
    lo, hi = b.HINTS.split("-")
    if lo == hi:
        return f"profile-{mode}-{lo}hint{'' if lo == '1' else 's'}.txt"
    return f"profile-{mode}-hints-{lo}-{hi}.txt"


if __name__ == "__main__":
    main()
