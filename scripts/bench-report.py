#!/usr/bin/env python3
"""Turns the benchmark's JSON results into the sections of docs/PERFORMANCE.md between markers:
the main table (BENCH), cluster mode (CLUSTER) and the reconnect storm (STORM). A section is written only when every
scenario it shows ran, so a run of some scenarios leaves the other sections as they were."""
import json, os, platform, subprocess, sys, datetime

results, target = sys.argv[1], sys.argv[2]

def load(name):
    path = os.path.join(results, name + ".json")
    if not os.path.exists(path):
        return None
    data = json.load(open(path))
    calls_path = os.path.join(results, name + ".calls")
    calls = open(calls_path).read().strip() if os.path.exists(calls_path) else ""
    data["upstream_calls"] = int(float(calls)) if calls else None
    return data

def at_most(value, limit):
    """A measured value within the limit; a missing one is not (0.0 is a measurement)."""
    return value is not None and value <= limit

def fmt(v, unit="", digits=1):
    return "n/a" if v is None or v != v else f"{v:,.{digits}f}{unit}"

rows = []
def row(scenario, target_text, measured, met):
    rows.append(f"| {scenario} | {target_text} | {measured} | {'yes' if met else '**no**'} |")

b = load("broadcast")
if b:
    row("Broadcast: 1 doc × 2,000 viewers × 150/s", "≥ 270k ev/s, p99 ≤ 25 ms, 1 upstream call",
        f"{fmt(b['events_per_s'], digits=0)} ev/s, p99 {fmt(b['latency_ms']['p99'], ' ms')}, "
        f"{b['upstream_calls']} call(s), BFF {fmt(b['server_cores'], ' cores', 2)}, gaps {b['gaps']}",
        b["events_per_s"] >= 270_000 and b["latency_ms"]["p99"] <= 25 and b["upstream_calls"] == 1)
for writers in (1, 2):
    f = load(f"floor-{writers}")
    if f:
        loops = "one writing loop" if writers == 1 else f"{writers} writing loops"
        rows.append(f"| Floor, for comparison: the broadcast load against `examples/floor.rs` ({loops}, one write per event and socket) | — | "
                    f"{fmt(f['events_per_s'], digits=0)} ev/s, p99 {fmt(f['latency_ms']['p99'], ' ms')}, "
                    f"{fmt(f['server_cores'], ' cores', 2)} | — |")
p = load("progress")
if p:
    per_viewer = p["server_bytes_per_connection"]
    row("Progress bars: 2,000 docs × 1 viewer × 5/s", "10k ev/s, p99 ≤ 10 ms, ≤ 0.3 cores, ≤ 16 KB/viewer",
        f"{fmt(p['events_per_s'], digits=0)} ev/s, p99 {fmt(p['latency_ms']['p99'], ' ms')}, "
        f"{fmt(p['server_cores'], ' cores', 2)}, {fmt(per_viewer and per_viewer / 1024, ' KB', 1)}/viewer",
        p["events_per_s"] >= 9_900 and p["latency_ms"]["p99"] <= 10 and at_most(p["server_cores"], 0.3)
        and at_most(per_viewer, 16 * 1024))
m = load("multiplexed")
if m:
    per_viewer = m["server_bytes_per_connection"]
    row("Multiplexed: 1,000 viewers × 10 topics over 100 docs × 5/s (`/events`)",
        "50k ev/s, 100 upstream calls, gaps 0",
        f"{fmt(m['events_per_s'], digits=0)} ev/s, p99 {fmt(m['latency_ms']['p99'], ' ms')}, "
        f"{m['upstream_calls']} call(s), gaps {m['gaps']}, dup {m['duplicates']}, "
        f"{fmt(m['server_cores'], ' cores', 2)}, {fmt(per_viewer and per_viewer / 1024, ' KB', 1)}/viewer",
        m["events_per_s"] >= 49_500 and m["upstream_calls"] == 100 and m["gaps"] == 0 and m["duplicates"] == 0)
t = load("tls")
if t:
    per = t["bytes_per_stream"]
    row("TLS + HTTP/2: 100 connections × 100 idle streams (`--tls-cert`, ALPN h2)", "≤ 12 KB RSS/stream",
        f"{t['still_open']:,} streams open, {fmt(per / 1024, ' KB', 1)}/stream",
        t["still_open"] == t["streams"] and at_most(per, 12 * 1024))
i = load("idle")
if i:
    per = i["server_bytes_per_connection"]
    row("Idle: 19,000 streams, heartbeats only", "≤ 8 KB RSS/stream, CPU near 0",
        f"{i['connections']:,} streams, {fmt(per and per / 1024, ' KB', 1)}/stream, {fmt(i['server_cores'], ' cores', 3)}",
        i["connections"] >= 19_000 and at_most(per, 8 * 1024) and at_most(i["server_cores"], 0.05))
s1, s100 = load("sharing-1"), load("sharing-100")
if s1 and s100:
    row("Sharing: 1,000 viewers of 1 doc / over 100 docs", "1 / 100 upstream calls",
        f"{s1['upstream_calls']} / {s100['upstream_calls']} upstream calls",
        s1["upstream_calls"] == 1 and s100["upstream_calls"] == 100)
one = load("single")
if one:
    row("Single viewer, 10/s", "added latency p99 ≤ 1 ms",
        f"p50 {fmt(one['latency_ms']['p50'], ' ms', 3)}, p99 {fmt(one['latency_ms']['p99'], ' ms', 3)}",
        one["latency_ms"]["p99"] <= 1)

def pair(name):
    a, b = load(name + "-a"), load(name + "-b")
    if not (a and b):
        return None
    redis_path = os.path.join(results, name + ".redis")
    redis = json.load(open(redis_path)) if os.path.exists(redis_path) else None
    calls = open(os.path.join(results, name + ".calls")).read().strip()
    return a, b, int(calls or 0), redis

def kb(value):
    return fmt(value and value / 1024, " KB", 1)

cluster_rows = []
def cluster_row(scenario, target_text, measured_text, met):
    cluster_rows.append(f"| {scenario} | {target_text} | {measured_text} | {'yes' if met else '**no**'} |")

alone, clustered = pair("cluster-broadcast-alone"), pair("cluster-broadcast")
if alone and clustered:
    (a0, b0, calls0, _), (a, b, calls, redis) = alone, clustered
    p99_alone = max(a0["latency_ms"]["p99"], b0["latency_ms"]["p99"])
    p99 = max(a["latency_ms"]["p99"], b["latency_ms"]["p99"])
    delivered = a["gaps"] + b["gaps"] + a["duplicates"] + b["duplicates"] == 0 and a["failed"] + b["failed"] == 0
    cluster_row("Cluster broadcast: 2 instances × 1,000 viewers of 1 doc × 150/s (`--redis`)",
        "1 upstream call, every event delivered; p99 the Redis hop adds",
        f"{fmt(a['events_per_s'] + b['events_per_s'], digits=0)} ev/s, {calls} call(s) (alone: {calls0}), "
        f"gaps {a['gaps'] + b['gaps']}, dup {a['duplicates'] + b['duplicates']}, "
        f"p99 {fmt(p99, ' ms')} (alone: {fmt(p99_alone, ' ms')}, +{fmt(p99 - p99_alone, ' ms')}), "
        f"BFFs {fmt(a['server_cores'], '', 2)} + {fmt(b['server_cores'], ' cores', 2)}, "
        f"RSS {kb(a['server_rss_kib']['peak'] and a['server_rss_kib']['peak'] * 1024)} + {kb(b['server_rss_kib']['peak'] and b['server_rss_kib']['peak'] * 1024)}, "
        f"redis-server {fmt(redis and redis['cores'], ' cores', 3)}, {kb(redis and redis['rss_kib'] * 1024)}",
        calls == 1 and delivered)
progress = pair("cluster-progress")
if progress:
    a, b, calls, redis = progress
    cluster_row("Cluster progress bars: 2 instances × 1,000 docs × 5/s, the same docs on both (`--redis`)",
        "1,000 upstream calls, every event delivered",
        f"{fmt(a['events_per_s'] + b['events_per_s'], digits=0)} ev/s, {calls} call(s), "
        f"gaps {a['gaps'] + b['gaps']}, p99 {fmt(max(a['latency_ms']['p99'], b['latency_ms']['p99']), ' ms')}, "
        f"BFFs {fmt(a['server_cores'], '', 2)} + {fmt(b['server_cores'], ' cores', 2)}, "
        f"{kb(a['server_bytes_per_connection'])} + {kb(b['server_bytes_per_connection'])}/viewer, "
        f"redis-server {fmt(redis and redis['cores'], ' cores', 3)}, {kb(redis and redis['rss_kib'] * 1024)}",
        calls == 1000 and a["gaps"] + b["gaps"] == 0)

cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
measured = (f"Measured {datetime.date.today()} on {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
            "load generator on the same cores.")
table = "\n".join([
    f"{measured} Command: `scripts/bench`.",
    "",
    "| scenario | target | measured | met |",
    "|---|---|---|---|",
    *rows,
])


def storm_section():
    """The reconnect storm's figures, or None when it did not run."""
    st = load("storm")
    if not st:
        return None
    calls, viewers, documents = st["upstream_calls"], st["viewers"], st["documents"]
    lines = [
        f"{measured} Command: `scripts/bench storm`.",
        "",
        "| figure | target | measured | met |",
        "|---|---|---|---|",
    ]
    def line(name, target_text, measured_text, met):
        lines.append(f"| {name} | {target_text} | {measured_text} | {'yes' if met else '**no**' if met is not None else '—'} |")
    line("viewers streaming on A before the SIGTERM", f"{viewers:,}", f"{st['streaming_before']:,}", st["streaming_before"] == viewers)
    line("viewers streaming again (from B)", f"{viewers:,}", f"{st['back']:,}", st["back"] == viewers)
    line("time until 99 % stream again", "—", fmt(st["back_99_s"], " s", 2), None)
    line("time until 100 % stream again", "—", fmt(st["back_100_s"], " s", 2), None)
    line("A's last stream ended", "—", fmt(st["left_100_s"], " s", 2), None)
    gap = st["reconnect_gap_ms"]
    line("stream ended → streaming again, per viewer (includes the `retry:` wait)", "—",
         f"p50 {fmt(gap['p50'], ' ms', 0)}, p99 {fmt(gap['p99'], ' ms', 0)}, max {fmt(gap['max'], ' ms', 0)}", None)
    line("peak rate of reconnects B answered", "—",
         f"{st['peak_accepts_per_s']:,} in one second, {st['peak_accepts_per_100ms']:,} in 100 ms", None)
    line("upstream calls on B", f"{documents} (one per document)", f"{calls}", calls == documents)
    line("events lost / repeated (all viewers)", "0 / 0", f"{st['lost']} / {st['repeated']}",
         st["lost"] == 0 and st["repeated"] == 0)
    line("`reset` / `error` events, refused reconnects", "0 / 0 / 0",
         f"{st['resets']} / {st['errors']} / {sum(st['failed_requests'].values())}",
         st["resets"] == 0 and st["errors"] == 0 and not st["failed_requests"])
    rss = st["server_rss_kib"]
    line("B's RSS before the storm → peak", "—",
         f"{fmt(rss['before'] and rss['before'] / 1024, ' MiB')} → {fmt(rss['peak'] and rss['peak'] / 1024, ' MiB')}", None)
    cores = st["server_cores"]
    line("B's CPU during the storm (mean / busiest second)", "—",
         f"{fmt(cores['mean'], ' cores', 2)} / {fmt(cores['peak_1s'], ' cores', 2)}", None)
    queue = st["listen_queue"]
    line(f"listen-queue overflows / drops (kernel, every socket): while {viewers:,} connect, then in the storm", "0 / 0",
         f"{queue['before_kill']['overflows']} / {queue['before_kill']['drops']}, then "
         f"{queue['storm']['overflows']} / {queue['storm']['drops']}",
         queue["storm"]["overflows"] == 0 and queue["storm"]["drops"] == 0)
    line("events delivered over the run", "—", f"{st['events']:,}", None)
    return "\n".join(lines)


if rows:
    print(table)
doc = open(target).read() if os.path.exists(target) else "# Performance\n\n<!-- BENCH:START -->\n<!-- BENCH:END -->\n"


def replace(doc, marker, text):
    start, end = f"<!-- {marker}:START -->", f"<!-- {marker}:END -->"
    if start not in doc:
        return doc + f"\n{start}\n{text}\n{end}\n"
    head, rest = doc.split(start, 1)
    return head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]


scenarios = ["broadcast", "floor-1", "floor-2", "progress", "multiplexed", "tls", "idle", "sharing-1", "sharing-100", "single"]
missing = [name for name in scenarios if load(name) is None]
if missing and len(missing) < len(scenarios):
    print(f"partial run (no {', '.join(missing)}): the main table of {target} left as it was")
elif not missing:
    doc = replace(doc, "BENCH", table)
if alone and clustered and progress:
    cluster = "\n".join([
        f"{measured} Command: `scripts/bench cluster`.",
        "",
        "| scenario | target | measured | met |",
        "|---|---|---|---|",
        *cluster_rows,
    ])
    print(cluster)
    doc = replace(doc, "CLUSTER", cluster)
storm = storm_section()
if storm:
    print(storm)
    doc = replace(doc, "STORM", storm)
open(target, "w").write(doc)
