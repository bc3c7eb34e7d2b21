#!/usr/bin/env python3
"""Turns the results of scripts/bench.sh (one JSON object per line) into
docs/performance.md: the machine, the tables, the targets of issue 6 checked
against figures of the same sitting, and the exact commands."""

import datetime
import json
import os
import platform
import subprocess
import sys


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def fmt_rate(v):
    return "—" if v is None else f"{v:,.0f}"


def fmt_ms(v):
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def lat(r, key):
    return (r.get("latency_ms") or {}).get(key)


def server_cols(r):
    srv = r.get("servers") or []
    if not srv:
        return "—", "—"
    cpu = " / ".join(f"{s['cpu_pct']:.0f}" for s in srv)
    anon = max(s.get("anonymous_kib") or s.get("rss_anon_kib") or 0 for s in srv) / 1024
    return cpu, f"{anon:.0f}"


def errors_col(r):
    n = r.get("errors_total", 0)
    empty = f", {r['empty']:,} EMPTY" if r.get("empty") else ""
    c = r.get("check")
    if c is not None:
        # The consumer runs' own check of every entry they read.
        empty += ", check " + ("OK" if c.get("ok") else "FAILED: " + "; ".join(c.get("problems", [])[:2]))
    if not n:
        v = r.get("verify")
        if v is not None:
            return "0, verify " + ("OK" if v.get("ok") else "FAILED")
        return "0" + empty
    texts = ", ".join(f"{k} ×{v}" for k, v in sorted((r.get("errors") or {}).items()))
    return f"{n} ({texts}){empty}"


def table(rows, ratio_base=None, ratio_name=None, baseline=None):
    """A markdown table of load runs. `ratio_base(r)`: the rate to show `r`
    against (column `ratio_name`); `baseline(r)`: the same run of the
    baseline build in this sitting (columns "baseline ops/s", "vs baseline")."""
    head = ["run", "ops/s", "MiB/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors",
            "server CPU % (per node)", "server anon MiB (max)", "client CPU %"]
    if baseline:
        head[2:2] = ["baseline ops/s", "vs baseline"]
    if ratio_base:
        head.insert(3 + (2 if baseline else 0), ratio_name)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cpu, anon = server_cols(r)
        cells = [r["label"], fmt_rate(r.get("ops_per_sec")), f"{r.get('mib_per_sec', 0):.1f}",
                 fmt_ms(lat(r, "p50")), fmt_ms(lat(r, "p90")), fmt_ms(lat(r, "p99")),
                 fmt_ms(lat(r, "p999")), fmt_ms(lat(r, "max")), errors_col(r), cpu, anon,
                 "—" if r.get("client_cpu_pct") is None else f"{r['client_cpu_pct']:.0f}"]
        if baseline:
            b = rate(baseline(r))
            cells[2:2] = [fmt_rate(b), f"{r['ops_per_sec'] / b:.2f}×" if b and r.get("ops_per_sec") else "—"]
        if ratio_base:
            base = ratio_base(r)
            cells.insert(3 + (2 if baseline else 0), f"{r['ops_per_sec'] / base:.0%}" if base else "—")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def find(results, section, label):
    """The result of `section` whose label is `label`, or else the first
    whose label starts with it."""
    same = [r for r in results if r.get("section") == section]
    for r in same:
        if r.get("label") == label:
            return r
    for r in same:
        if r.get("label", "").startswith(label):
            return r
    return None


def rate(r):
    return None if r is None else r.get("ops_per_sec")


def main():
    results = load(sys.argv[1])
    duration = sys.argv[2]
    redis_version = ""
    if len(sys.argv) > 3 and os.path.exists(sys.argv[3]):
        redis_version = open(sys.argv[3]).read().strip()

    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("free -g | awk '/Mem:/ {print $2}'")
    fs = sh("df -T /var/tmp | awk 'NR==2 {print $2}'")
    rustc = sh("rustc --version")
    load_avg = sh("cut -d' ' -f1-3 /proc/loadavg")
    commit = sh("git -C '%s' rev-parse --short HEAD" % os.path.dirname(os.path.abspath(__file__)))

    o = []
    o.append("# Performance\n")
    o.append(
        f"Measured by `scripts/bench.sh` on {datetime.date.today().isoformat()} "
        f"(commit {commit}), all figures in one sitting, {duration} per load run.\n")
    o.append("## Machine\n")
    o.append(f"- {os.cpu_count()} vCPU ({cpu}), {mem} GiB RAM, kernel {platform.release()}, "
             f"data on {fs} (the virtual disk, not tmpfs: fsync is real)")
    o.append(f"- {rustc}, release build (`cargo build --release`)")
    o.append("- Server, load generator and (for clusters) all nodes on the same 2 cores, over "
             "loopback, on a virtual machine whose host is shared (load average at the end: "
             f"{load_avg}), so absolute figures are noisy: compare rows as ratios within this "
             "one run, not with other runs.")
    o.append("- Latency is measured by walrus-bench from the moment each request is written "
             "(closed loop: no `--rate`), over successful requests; the server columns are the "
             "CPU used by each server process during the run (100 = one core) and its anonymous "
             "memory (`Anonymous:` of `/proc/<pid>/smaps_rollup`) right after it; client CPU is "
             "walrus-bench's own (getrusage), which shares the same 2 cores.\n")

    probes = [r for r in results if r.get("section") == "fsync-probe"]
    if probes:
        o.append("## The disk during the sitting\n")
        o.append("1 KiB append + `fdatasync` on the data disk, measured between sections. On this "
                 "shared virtual disk its cost moves by an order of magnitude with the neighbours' "
                 "I/O; every `always` figure below moves with it, so compare an `always` row with "
                 "the probe taken just before it.\n")
        o.append("| when | fdatasync/s | p50 ms | p99 ms |")
        o.append("|---|---|---|---|")
        for r in probes:
            o.append(f"| {r['label']} | {r['per_sec']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")
        o.append("")

    docs_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")
    parts = [f"`docs/{n}`" for n in ("wal-performance.md", "raft-performance.md", "tcp-performance.md")
             if os.path.exists(os.path.join(docs_dir, n))]
    if parts:
        o.append("Figures of the single components (WAL, Raft log, transport) measured on their own: "
                 + ", ".join(parts) + ".\n")

    notes = keep_notes(sys.argv[4] if len(sys.argv) > 4 else None)
    o.append(notes or (NOTES_START + "\n_(No notes yet: write the reading of these figures "
                                      "between these markers; re-runs keep it.)_\n" + NOTES_END))
    o.append("")

    echo = [r for r in results if r.get("section") == "echo"]
    echo1 = rate(find(results, "echo", "1 KiB, 1 conn"))
    echo16 = rate(find(results, "echo", "1 KiB, 16 conns"))
    if echo:
        o.append("## Ceiling: walrus-echo\n")
        o.append("`walrus-echo` answers every frame with `OK` and does nothing else: the same "
                 "load generator and client settings against it give the ceiling of the network "
                 "stack and the client on this machine.\n")
        o.append(table(echo))
        o.append("")

    redis = [r for r in results if r.get("section", "").startswith("redis-")]
    if redis:
        o.append("## Anchor: Redis 7 Streams\n")
        o.append(f"{redis_version or 'redis-server'} (Debian package), one node, `appendonly yes`, "
                 "RDB off, `redis-benchmark ... XADD s '*' f <1 KiB>` (the request count of each "
                 "run sized from a short probe run, for about one run length). Latencies are "
                 "redis-benchmark's own, which reports p50/p95/p99/max: p90 and p99.9 show "
                 "as —.\n")
        for fsync in ("everysec", "always"):
            rows = [r for r in redis if r["section"] == f"redis-{fsync}"]
            if rows:
                o.append(f"### appendfsync {fsync}\n")
                o.append(table(rows))
                o.append("")

    # BENCH_BASELINE: results of the same runs against a baseline build (the
    # round-1 server), taken in this sitting by scripts/bench.sh.
    base_path = os.environ.get("BENCH_BASELINE")
    base_results = load(base_path) if base_path and os.path.exists(base_path) else []

    def baseline_of(r):
        return next((b for b in base_results
                     if b.get("section") == r.get("section") and b.get("label") == r.get("label")), None)

    sections = []
    for r in results:
        s = r.get("section", "")
        if s.startswith("walrus-") and s not in sections:
            sections.append(s)
    if sections:
        o.append("## Walrus\n")
        o.append("One fresh topic per run (registered, then the segment leader read from "
                 "`STATE`); \"to leader\" sends to the node leading the topic's segment, "
                 "\"to other\" to another node, which forwards. Ratio: against the echo ceiling "
                 "of the same connections and depth, where measured. The clusters run with "
                 f"`WALRUS_MAX_SEGMENT_ENTRIES={int(os.environ.get('BENCH_SEGMENT_ENTRIES', 50000000)):,}` "
                 "so that no run rolls over: with the default 1,000,000 a fast run fills its "
                 "segment, the leadership moves to the next node mid-run, and \"to leader\" "
                 "becomes partly forwarded while \"to other\" becomes partly direct. "
                 "Every section but Replication runs with `--replication-factor 1` (one copy "
                 "per segment, as round 1 did, so that these rows compare with it); "
                 "Replication measures three copies against one.\n")

        def echo_base(r):
            label = r["label"]
            size = "100 B" if "100 B" in label else "1 KiB"
            if label.startswith("("):
                return None
            if "ordinary" in label:
                return rate(find(results, "echo", "1 KiB, 1 conn, ordinary"))
            if "x depth 32" in label:
                return rate(find(results, "echo", f"{size}, 16 conns x depth 32"))
            if "16 conn" in label:
                return rate(find(results, "echo", "1 KiB, 16 conns"))
            if "1 conn" in label:
                return echo1
            return None

        for s in sections:
            _, nodes, fsync = s.split("-", 2)
            fsync = fsync.replace("interval", "interval:")
            count = nodes[:-1]
            o.append(f"### {count} node{'' if count == '1' else 's'}, `--fsync {fsync}`\n")
            o.append(table([r for r in results if r.get("section") == s], echo_base, "of echo",
                           baseline_of if base_results else None))
            o.append("")

    consumers = [r for r in results if r.get("section") == "consumers"]
    if consumers:
        o.append("## Consumers\n")
        o.append("3 nodes, `--fsync always`, one fresh topic per run. `read` and `fetch` first fill "
                 "their topic (PUTB on one connection, pipelined; the fill rate is in the raw "
                 "results), then read it from start to end, pass after pass, for the run length: "
                 "ops/s are entries read, MiB/s their payload, latency per READ (or per COMMIT + "
                 "FETCH, sent together). `tail-latency`: 16 connections PUT while a reader "
                 "long-polls; ops/s are entries delivered, and the latency columns are the delay "
                 "from each PUT's send to its delivery to the reader (one clock: same machine). "
                 "PUTB: ops/s are batches of 100 entries. Every consumer run checks each entry "
                 "it reads (offset, payload, order, none missing).\n")
        o.append(table(consumers, baseline=baseline_of if base_results else None))
        o.append("")

    security = [r for r in results if r.get("section") == "security"]
    if security:
        o.append("## TLS and authentication on the client port\n")
        o.append("1 node, `--fsync interval:200` (so that the CPU, not the disk, bounds a run and "
                 "the cost of the crypto shows), 1 KiB PUT, a fresh node per mode: plain TCP, "
                 "`--auth-token-file` with `AUTH` on each connection, TLS 1.3 (rustls, RSA-2048 "
                 "certificate made by openssl), and both. Ratio: against plain TCP of the same "
                 "connections and depth in this sitting.\n")

        def plain_base(r):
            shape = r["label"].rsplit(", ", 1)[-1]
            return rate(find(results, "security", f"PUT 1 KiB, plain, {shape}"))

        o.append(table(security, plain_base, "of plain", baseline_of if base_results else None))
        o.append("")

    def rf1_base(r):
        """Mean of the rf=1 runs of the same section and shape."""
        shape = r["label"].split(", ")[3]
        same = [rate(x) for x in results if x.get("section") == r["section"]
                and ", rf=1, " in x["label"] and x["label"].split(", ")[3] == shape]
        same = [v for v in same if v is not None]
        return sum(same) / len(same) if same else None

    repl_sections = sorted({r["section"] for r in results
                            if r.get("section", "").startswith("replication-")})
    if repl_sections:
        o.append("## Replication\n")
        o.append("3 nodes, 1 KiB PUT to the segment leader of an `RF 1` and an `RF 3` topic of the "
                 "same cluster, each shape twice with the factors in swapped order (so that a "
                 "drift of the host hits both). Ratio: against the mean of the two rf=1 runs of "
                 "the same shape.\n")
        for sec in repl_sections:
            o.append(f"### `--fsync {sec.rsplit('-', 1)[-1].replace('interval', 'interval:')}`\n")
            o.append(table([r for r in results if r.get("section") == sec], rf1_base, "of rf=1",
                           baseline_of if base_results else None))
            o.append("")
        frf3 = [r for r in results if r.get("section") == "failover-rf3"]
        for r in frf3:
            def ms(x):
                v = (x or {}).get("elapsed_ms")
                return f"**{v:.0f} ms**" if v is not None else \
                    f"**not within 60 s** (last: `{(x or {}).get('last_error')}`)"
            o.append(f"- {r['label']}: kill -9 of node {r['victim']} (leader of an rf=3 segment), "
                     f"then through node {r['survivor']}: a PUT accepted after {ms(r['write'])}; "
                     f"the last entry it acknowledged (offset {r['offset']}) read after "
                     f"{ms(r['read'])}.")
        if frf3:
            o.append("")

    walrus_rows = [r for r in results if r.get("section", "").startswith("walrus-") and r.get("servers")]
    if walrus_rows:
        heavy = max(walrus_rows, key=lambda r: sum(x["cpu_pct"] for x in r["servers"]))
        o.append("## Server resources\n")
        o.append(f"Heaviest run (most server CPU): {heavy['section']}, {heavy['label']}, "
                 f"{heavy.get('ops_per_sec', 0):,.0f} ops/s.\n")
        o.append("| process | CPU % | RSS MiB | RssAnon MiB | Anonymous MiB (smaps_rollup) | peak RSS MiB (VmHWM) |")
        o.append("|---|---|---|---|---|---|")
        for i, x in enumerate(heavy["servers"], 1):
            o.append(f"| node {i} (pid {x['pid']}) | {x['cpu_pct']:.0f} | {x['rss_kib'] / 1024:.0f} | "
                     f"{x['rss_anon_kib'] / 1024:.0f} | {x['anonymous_kib'] / 1024:.0f} | "
                     f"{x['hwm_kib'] / 1024:.0f} |")
        peak = max((x["hwm_kib"], r["section"]) for r in walrus_rows for x in r["servers"])
        o.append(f"\nHighest peak RSS of any server process over all runs: {peak[0] / 1024:.0f} MiB "
                 f"({peak[1]}).\n")

    ready = [r for r in results if r.get("section") == "ready"]
    fo = [r for r in results if r.get("section") == "failover"]
    after_get = [r for r in results if r.get("section") == "after-get"]
    problems = [r for r in results if r.get("section") == "problem"]
    if ready or fo or after_get or problems:
        o.append("## Start-up and failover\n")
        for r in ready:
            if r["label"].endswith("-verify"):
                continue
            nodes = "1 node started;" if r["nodes"] == 1 else f"{r['nodes']} nodes started at once;"
            o.append(f"- {r['label']}: {nodes} every node "
                     f"accepted a PUT (after REGISTER) **{r['ready_ms']} ms** after the start"
                     + (f" (baseline: {b['ready_ms']} ms)" if (b := baseline_of(r)) else "") + ".")
        for r in fo:
            ms = r.get("elapsed_ms")
            what = f"**{ms:.0f} ms**" if ms is not None else "**did not resume within 60 s**"
            o.append(f"- {r['label']}: kill -9 of node {r['victim']} (segment leader; Raft leader "
                     f"was node {r['raft_leader']}), PUTs retried every 10 ms through node "
                     f"{r['survivor']}: writes resumed after {what} "
                     f"({r.get('failed_attempts', '?')} failed attempts, last error: "
                     f"`{r.get('last_error')}`)"
                     + (f"; baseline: {b['elapsed_ms']:.0f} ms" if (b := baseline_of(r)) and b.get("elapsed_ms") is not None else "")
                     + ".")
        for r in after_get:
            ms = r.get("elapsed_ms")
            what = f"**{ms:.0f} ms**" if ms is not None else "**no write accepted within 60 s**"
            o.append(f"- {r['label']}: right after the GET runs, REGISTER + PUT through node 1 "
                     f"took {what}" + (f" ({r.get('failed_attempts')} failed attempts, last error: "
                                       f"`{r.get('last_error')}`)" if r.get("failed_attempts") else "") + ".")
        for r in problems:
            o.append(f"- problem in {r['label']}: {r['problem']}")
        o.append("")

    # Targets of issue 6, where the figures exist.
    def w(sec, label):
        return rate(find(results, sec, label))

    def red(fsync, label):
        return rate(find(results, f"redis-{fsync}", label))

    checks = []

    def check(name, got, want):
        if got is None or want is None:
            checks.append((name, "not measured", "—", "—"))
        else:
            checks.append((name, f"{got:,.0f}", f"{want:,.0f}", "met" if got >= want else "**missed**"))

    s200, sal = "walrus-3n-interval200", "walrus-3n-always"

    def put(section, size, via, shape):
        return rate(find_label(results, section, f"PUT {size}, to {via}", shape))

    one, sixteen, piped = "1 conn x depth 1", "16 conn x depth 1", "16 conn x depth 32"
    check("interval:200, 1 conn ≥ 50% of echo 1 conn", put(s200, "1 KiB", "leader", one),
          None if echo1 is None else 0.5 * echo1)
    check("interval:200, 16 conns ≥ Redis everysec 16 conns", put(s200, "1 KiB", "leader", sixteen),
          red("everysec", "16 conns"))
    check("interval:200, 16 conns × depth 32 ≥ Redis everysec 16 × pipeline 32",
          put(s200, "1 KiB", "leader", piped), red("everysec", "16 conns x pipeline 32"))
    check("interval:200, 100 B, 16 conns × depth 32 ≥ 150,000/s",
          put(s200, "100 B", "leader", piped), 150000)
    check("always, 16 conns ≥ Redis always 16 conns", put(sal, "1 KiB", "leader", sixteen),
          red("always", "16 conns"))
    check("always, 16 conns × depth 32 ≥ Redis always 16 × pipeline 32",
          put(sal, "1 KiB", "leader", piped), red("always", "16 conns x pipeline 32"))
    for shape in (one, sixteen, piped):
        direct = put(s200, "1 KiB", "leader", shape)
        check(f"interval:200, through another node ≥ 60% of direct ({shape})",
              put(s200, "1 KiB", "other", shape), None if direct is None else 0.6 * direct)
    get16 = find(results, s200, "GET, 16 conn")
    check("GET at 16 conns ≥ 20,000 entries/s (EMPTY answers not counted)",
          None if get16 is None else
          (get16["ops"] - get16.get("empty", 0)) / max(get16["elapsed_s"], 1e-9), 20000)
    tuned = put(s200, "1 KiB", "leader", one)
    check("ordinary client (no TCP_NODELAY) ≥ 90% of the tuned one (interval:200, 1 conn)",
          rate(find_label(results, s200, "PUT 1 KiB", "ordinary")),
          None if tuned is None else 0.9 * tuned)
    anon = [s.get("anonymous_kib", 0) / 1024 for r in results
            if r.get("section", "").startswith("walrus-") for s in r.get("servers") or []]
    if anon:
        checks.append(("server anonymous memory < 200 MiB in every run", f"{max(anon):.0f} MiB",
                       "200 MiB", "met" if max(anon) < 200 else "**missed**"))
    read_run = find(results, "consumers", "READ 1 KiB")
    check("READ 1 KiB × 1,000, 1 conn ≥ 500 MiB/s",
          None if read_run is None else read_run.get("mib_per_sec"), 500)
    put1 = put(sal, "1 KiB", "leader", one)
    check("READ entries/s ≥ 5 × PUT 1 KiB, 1 conn (always, to leader)", rate(read_run),
          None if put1 is None else 5 * put1)
    check("FETCH + COMMIT (durable: a consensus round per COMMIT), batches of 100 ≥ 100,000 entries/s",
          rate(find(results, "consumers", "FETCH + COMMIT 1 KiB")), 100000)
    check("FETCH + COMMIT ASYNC, batches of 100 ≥ 100,000 entries/s",
          rate(find(results, "consumers", "FETCH + COMMIT ASYNC")), 100000)
    putb = rate(find(results, "consumers", "PUTB 100 x 100 B"))
    check("PUTB 100 × 100 B, 16 conns, always ≥ 1,000,000 entries/s",
          None if putb is None else 100 * putb, 1000000)
    def repl(fsync, rf, shape):
        runs = [rate(r) for r in results
                if r.get("section") == f"replication-3n-{fsync}" and f", rf={rf}, " in r["label"]
                and shape in r["label"]]
        runs = [v for v in runs if v is not None]
        return sum(runs) / len(runs) if runs else None

    for fsync in ("always", "interval200"):
        for shape in (sixteen, piped):
            base = repl(fsync, 1, shape)
            check(f"rf=3 ≥ 60% of rf=1, {fsync.replace('interval', 'interval:')}, {shape}",
                  repl(fsync, 3, shape), None if base is None else 0.6 * base)
    check("rf=3, always, 16 conns × depth 32 ≥ Redis always 16 × pipeline 32 (1 node)",
          repl("always", 3, piped), red("always", "16 conns x pipeline 32"))
    for r in results:
        if r.get("section") == "failover-rf3":
            for what in ("write", "read"):
                v = (r.get(what) or {}).get("elapsed_ms")
                checks.append((f"{r['label']}: kill -9 to a {'PUT' if what == 'write' else 'READ of the last acknowledged entry'} < 2 s",
                               "not within 60 s" if v is None else f"{v:,.0f} ms", "2,000 ms",
                               "met" if v is not None and v < 2000 else "**missed**"))
    verified = [r for r in results if r.get("verify")]
    if verified:
        o.append("## Verification\n")
        o.append("Each cluster had one `--verify` run: every acknowledged payload (each carries a "
                 "unique id) read back through GET and checked.\n")
        for r in verified:
            v = r["verify"]
            errs = "; ".join(f"{k} ×{n}" for k, n in v.get("read_errors", {}).items())
            o.append(f"- {r['section']}: **{'OK' if v['ok'] else 'FAILED'}**: {v['acked']:,} "
                     f"acknowledged, {v['read']:,} read back, {v['missing']} missing, "
                     f"{v['duplicated']} duplicated, {v['corrupt']} corrupt, {v['out_of_order']} "
                     f"out of order"
                     + (f"; error answers during the read-back (retried): {errs}" if errs else "")
                     + "".join(f"; read-back incomplete: {w}" for w in v.get("read_stopped", []))
                     + ".")
        o.append("")

    if any(c[1] != "not measured" for c in checks):
        o.append("## Targets of issues 6, 10 and 11 (3 nodes, 1 KiB, to the segment leader unless said)\n")
        o.append("| target | measured | needed | |")
        o.append("|---|---|---|---|")
        for c in checks:
            o.append("| " + " | ".join(c) + " |")
        o.append("")

    o.append("## Measuring your own cluster\n")
    o.append("```")
    o.append("cargo build --release -p walrus-bench")
    o.append("walrus-bench -a 127.0.0.1:9091 --register -s 1024 -c 16 -d 32 -t 10s      # PUT, pipelined")
    o.append("walrus-bench -a 127.0.0.1:9091 -w get -c 16 -t 10s                          # GET")
    o.append("walrus-bench -a 127.0.0.1:9091 --register -r 20000 -c 16 -t 30s             # fixed rate, no coordinated omission")
    o.append("walrus-bench -a 127.0.0.1:9091 --register --verify -c 4 -d 8 -n 100000      # check every acknowledged write")
    o.append("walrus-bench -a 127.0.0.1:9091 -w read --fill 200000 --read-batch 1000      # READ by offset (fills the topic first)")
    o.append("walrus-bench -a 127.0.0.1:9091 -w fetch --fill 200000 --read-batch 100      # a group's FETCH + COMMIT loop")
    o.append("walrus-bench -a 127.0.0.1:9091 -w tail-latency -c 16 --readers 1            # PUT to long-poll delivery, p50/p99")
    o.append("walrus-bench --help                                                          # everything else (--json, --no-nodelay, --topics, mixed)")
    o.append("```")
    o.append("")
    o.append("## Commands\n")
    o.append("Everything above: `scripts/bench.sh` (set `BENCH_DURATION` to change the run length). "
             "Each row's exact command:\n")
    o.append("```")
    for r in results:
        if "cmd" in r:
            o.append(f"# {r['section']}: {r['label']}")
            o.append(r["cmd"])
    o.append("```")
    o.append("")
    o.append("Servers were started as:\n")
    o.append("```")
    o.append("walrus-echo --addr 127.0.0.1:27099")
    o.append("redis-server --port 27079 --appendonly yes --appendfsync everysec|always --save ''")
    o.append("walrus-server --node-id 1 --data-dir <tmp> --raft-port 27031 --client-port 27011 --fsync <policy>")
    o.append("walrus-server --node-id N --data-dir <tmp> --raft-port 2703N --client-port 2701N --fsync <policy> --join 127.0.0.1:27031")
    o.append("```")
    print("\n".join(o))


NOTES_START = "<!-- notes: kept by scripts/bench_table.py across re-runs -->"
NOTES_END = "<!-- /notes -->"


def keep_notes(path):
    """The hand-written notes block of an earlier performance.md, if any."""
    if not path or not os.path.exists(path):
        return None
    text = open(path).read()
    start, end = text.find(NOTES_START), text.find(NOTES_END)
    if start < 0 or end < start:
        return None
    return text[start:end + len(NOTES_END)]


def find_label(results, section, start, contains):
    for r in results:
        lab = r.get("label", "")
        if r.get("section") == section and lab.startswith(start) and contains in lab:
            return r
    return None


if __name__ == "__main__":
    main()
