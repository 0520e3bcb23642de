#!/usr/bin/env python3
"""Helpers for bench/capture.sh: poll the vault's status, compute WAL latency, write the report.

Only the standard library: the vault is reached over HTTPS with its own certificate as CA.
"""
import http.client
import json
import os
import ssl
import statistics
import sys
import time


def lsn(text):
    """PostgreSQL's `X/Y` LSN form to a byte position (None for empty)."""
    if text is None or text == "":
        return None
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


class Vault:
    """A keep-alive HTTPS connection to the vault's `/v1/status`."""

    def __init__(self, url, ca, token_file):
        host_port = url.split("://", 1)[1].rstrip("/")
        host, port = host_port.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.ctx = ssl.create_default_context(cafile=ca)
        self.token = open(token_file).read().strip()
        self.conn = None

    def status(self):
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=10)
                self.conn.request("GET", "/v1/status", headers={"Authorization": f"Bearer {self.token}"})
                resp = self.conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"/v1/status answered {resp.status}: {body[:300]!r}")
                return json.loads(body)["clusters"]
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.05)

    def cluster(self, name):
        for c in self.status():
            if c["name"] == name:
                return c
        raise RuntimeError(f"cluster {name} not in the vault's status")


def cmd_status(url, ca, token, name):
    c = Vault(url, ca, token).cluster(name)
    print(json.dumps(c))


def cmd_wait_durable(url, ca, token, name, target, timeout):
    """Waits until the cluster is streaming and durable_lsn >= target; exit 1 on timeout."""
    v = Vault(url, ca, token)
    target = lsn(target)
    deadline = time.time() + float(timeout)
    c = {}
    while time.time() < deadline:
        c = v.cluster(name)
        d = lsn(c.get("durable_lsn"))
        if c.get("connected") and d is not None and d >= target:
            return 0
        time.sleep(0.1)
    print(f"timed out: durable_lsn did not reach the target; last status: {json.dumps(c)}", file=sys.stderr)
    return 1


def cmd_sample(url, ca, token, name, out, stop_file, interval):
    """Writes `epoch_seconds durable_lsn_bytes` lines until stop_file exists."""
    v = Vault(url, ca, token)
    interval = float(interval)
    with open(out, "w") as f:
        while not os.path.exists(stop_file):
            t0 = time.time()
            try:
                c = v.cluster(name)
            except Exception as e:  # keep sampling through a transient error; note it
                f.write(f"# error {e}\n")
                time.sleep(interval)
                continue
            t1 = time.time()
            d = lsn(c.get("durable_lsn"))
            # The answer reflects the state somewhere between t0 and t1: credit it at t1 (the
            # conservative end) so that latency is never under-estimated.
            if d is not None:
                f.write(f"{t1:.6f} {d}\n")
            time.sleep(max(0.0, interval - (time.time() - t0)))


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def cmd_latency(server_file, vault_file, t_start, t_end):
    """For each server sample (time, flush LSN) taken while pgbench ran, the delay until the
    vault's durable_lsn reached that LSN. Also the same from the server's own view
    (pg_stat_replication.flush_lsn of the vault's walsender) as a cross-check."""
    t_start, t_end = float(t_start), float(t_end)
    server = []
    for line in open(server_file):
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0][:1].isdigit():
            continue
        server.append((float(parts[0]), lsn(parts[1]), lsn(parts[2]) if len(parts) > 2 and parts[2] else None))
    vault = []
    for line in open(vault_file):
        if line.startswith("#"):
            continue
        t, d = line.split()
        vault.append((float(t), int(d)))
    vault.sort()
    window = [s for s in server if t_start <= s[0] <= t_end]

    def delays(points):
        out, missing = [], 0
        j = 0
        for t, target, _ in window:
            # first point at or after t with lsn >= target (points are time-ordered)
            while j < len(points) and points[j][0] < t:
                j += 1
            k = j
            while k < len(points) and points[k][1] < target:
                k += 1
            if k == len(points):
                missing += 1
            else:
                out.append(points[k][0] - t)
        return out, missing

    vd, vmiss = delays(vault)
    srv_points = [(t, f) for t, _, f in server if f is not None]
    sd, smiss = delays(srv_points)
    vault_gaps = [b[0] - a[0] for a, b in zip(vault, vault[1:])]

    def summary(d, miss):
        return {
            "samples": len(d),
            "never_durable": miss,
            "p50": pct(d, 50),
            "p99": pct(d, 99),
            "max": max(d) if d else None,
            "mean": statistics.mean(d) if d else None,
        }

    res = {
        "server_samples": len(window),
        "vault_samples": len(vault),
        "vault_poll_interval_median": pct(vault_gaps, 50),
        "vault": summary(vd, vmiss),
        "server_view": summary(sd, smiss),
    }
    print(json.dumps(res))


# ---------------------------------------------------------------------------------------------
# The report


def load(path):
    r = {}
    for line in open(path):
        if "\t" not in line:
            continue
        k, v = line.rstrip("\n").split("\t", 1)
        try:
            r[k] = json.loads(v)
        except json.JSONDecodeError:
            r[k] = v
    return r


def finish_report(out_md, L, heading, figures, reproduce):
    """Ends a report (shared by the benches' reports): every `cmd_*` figure, exactly as run,
    under `heading`, then the line `reproduce`; writes it to out_md and prints it."""
    L.append(f"## {heading}")
    L.append("")
    L.append("```")
    for k in sorted(k for k in figures if k.startswith("cmd_")):
        L.append(f"# {k[4:]}")
        L.append(str(figures[k]))
    L.append("```")
    L.append("")
    L.append(reproduce)
    open(out_md, "w").write("\n".join(L) + "\n")
    print("\n".join(L))


def cmd_report(results, out_md, out_json):
    r = load(results)
    json.dump(r, open(out_json, "w"), indent=1, sort_keys=True)
    g = r.get
    mb = lambda b: "n/a" if b is None else f"{b / 1e6:,.1f}"
    sec = lambda s: "n/a" if s is None else f"{s:.1f}"
    ms = lambda s: "n/a" if s is None else f"{s * 1000:.0f} ms"

    def ratio(a, b, fmt="{:.2f}"):
        if a is None or b is None or b == 0:
            return "n/a"
        return fmt.format(a / b)

    # Repeated rounds of part 4 (SYNC_ROUNDS): each mode's median stands for it.
    rounds = int(g("sync_rounds") or 1)
    if rounds > 1:
        for k in ("tps_none", "tps_receivewal", "tps_hf_sync"):
            for sfx in ("", "_lat_ms"):
                vals = sorted(v for v in (g(f"{k}_r{i}{sfx}") for i in range(1, rounds + 1)) if v is not None)
                if vals and g(k + sfx) is None:
                    r[k + sfx] = vals[len(vals) // 2]
    sync_only = str(g("sync_only")) == "1"

    inp = g("input_bytes")
    L = []
    L.append("# Capture benchmark: holdfast vs pg_basebackup vs pgBackRest (one run)")
    L.append("")
    L.append(
        f"Run {g('started')} on {g('cores')} shared cores, PostgreSQL {g('pg_version')}, pgBackRest {g('pgbackrest_version')}, "
        f"holdfast {g('holdfast_version')}. `pgbench -i -s {g('scale')}`: data directory {mb(inp)} MB without pg_wal "
        f"(`pg_database_size` {mb(g('db_bytes'))} MB). Everything on one machine: PostgreSQL, the vault " + (
        "(local-directory store), pgBackRest's repository; page cache warm; `fsync=on`. The vault streams WAL "
        "continuously through every phase, and `archive_command` pushes every segment to pgBackRest (zstd) "
        "throughout, as both tools would in production."
        if not sync_only else
        "(local-directory store); `fsync=on`. `SYNC_ONLY=1`: part 4 alone, on a fresh cluster, no base backup "
        "and no pgBackRest (`archive_command = '/bin/true'`); the vault streams WAL throughout.")
    )
    L.append("")
    failures = [k[len("failure_"):] + ": " + str(v) for k, v in r.items() if k.startswith("failure_")]
    if failures:
        L.append("**Failures in this run:**")
        L.append("")
        for f in failures:
            L.append(f"- {f}")
        L.append("")

    if not sync_only:
        sections_1_to_3(L, g, mb, sec, ms, ratio)
    sync_section(L, g, ratio, rounds)
    finish_report(out_md, L, "Commands (exactly as run)", r, f"Reproduce: `{g('invocation')}`. Raw figures: `bench-out/capture.json`; vault log: `bench-out/capture-vault.log`.")


def sections_1_to_3(L, g, mb, sec, ms, ratio):
    inp = g("input_bytes")
    L.append("## 1. Base backup (full)")
    L.append("")
    L.append("MB/s = data directory size (without pg_wal) / wall seconds, the same numerator for every tool.")
    L.append("")
    L.append("| tool | seconds | MB/s | stored MB (du growth) | stored / input | tool's own size figure |")
    L.append("|---|---:|---:|---:|---:|---|")
    rows = [
        ("holdfast (`holdfast backup`)", "hf1", f"summary `bytes` {mb(g('hf1_bytes'))} MB, `stored_bytes` {mb(g('hf1_stored_bytes'))} MB"),
        ("pg_basebackup -Ft -X none", "pgbb", "tar files"),
        ("pg_basebackup -Ft -X none --compress=client-zstd", "pgbbz", "tar.zst files"),
        ("pgBackRest full (zst, process-max=2)", "pbr1", f"`info`: size {mb(g('pbr1_info_size'))} MB, repo {mb(g('pbr1_info_repo_size'))} MB"),
    ]
    for name, k, own in rows:
        s, st = g(f"{k}_seconds"), g(f"{k}_stored")
        if s is None:
            L.append(f"| {name} | failed | | | | |")
            continue
        L.append(f"| {name} | {sec(s)} | {inp / s / 1e6:.0f} | {mb(st)} | {ratio(st, inp)} | {own} |")
    L.append("")
    L.append("| ratio | time (holdfast / other; < 1 = holdfast faster) | stored bytes (holdfast / other) |")
    L.append("|---|---:|---:|")
    for name, k in (("holdfast / pgBackRest", "pbr1"), ("holdfast / pg_basebackup -Ft", "pgbb"), ("holdfast / pg_basebackup zstd", "pgbbz")):
        L.append(f"| {name} | {ratio(g('hf1_seconds'), g(f'{k}_seconds'))} | {ratio(g('hf1_stored'), g(f'{k}_stored'))} |")
    L.append("")
    L.append(
        f"Peak RSS of the vault process (VmHWM, reset with `/proc/PID/clear_refs` just before): "
        f"during the full backup **{mb(g('hf1_vmhwm_kb') and g('hf1_vmhwm_kb') * 1024)} MB**, "
        f"during the incremental backup {mb(g('hf2_vmhwm_kb') and g('hf2_vmhwm_kb') * 1024)} MB; "
        f"pgBackRest full backup peak RSS (`/usr/bin/time -v`, main process) {mb(g('pbr1_rss_kb') and g('pbr1_rss_kb') * 1024)} MB; "
        f"pg_basebackup {mb(g('pgbb_rss_kb') and g('pgbb_rss_kb') * 1024)} MB."
    )
    L.append("")

    L.append("## 2. Incremental")
    L.append("")
    L.append(f"`{g('update_sql')}` ({g('update_rows')} rows), `CHECKPOINT`, then wait until the vault and the archiver "
             "have all WAL, then a second backup by each tool.")
    if g("update_pages_changed") is not None:
        L.append(f"That statement touches {g('update_pages_changed')} of {g('update_pages_total')} heap pages of "
                 "`pgbench_accounts` (every page holds ~61 rows, so `aid % 20 = 0` hits every page), "
                 "and new row versions land in new pages: a page-granular incremental cannot be small here.")
    L.append("")
    L.append("| tool | seconds | stored MB (du growth) | second / first | tool's own figure |")
    L.append("|---|---:|---:|---:|---|")
    L.append(f"| holdfast | {sec(g('hf2_seconds'))} | {mb(g('hf2_stored'))} | {ratio(g('hf2_stored'), g('hf1_stored'), '{:.1%}')} | "
             f"`stored_bytes` {mb(g('hf2_stored_bytes'))} MB = {ratio(g('hf2_stored_bytes'), g('hf1_stored_bytes'), '{:.1%}')} of the first's |")
    L.append(f"| pgBackRest --type=incr | {sec(g('pbr2_seconds'))} | {mb(g('pbr2_stored'))} | {ratio(g('pbr2_stored'), g('pbr1_stored'), '{:.1%}')} | "
             f"`info` repo delta {mb(g('pbr2_info_repo_delta'))} MB |")
    L.append("")
    L.append(f"holdfast / pgBackRest incremental stored bytes: **{ratio(g('hf2_stored'), g('pbr2_stored'))}**. "
             f"Target for holdfast: second ≤ 15 % of first → {'met' if g('hf2_stored') is not None and g('hf1_stored') and g('hf2_stored') / g('hf1_stored') <= 0.15 else 'NOT met'}.")
    if g("hf3_stored") is not None:
        L.append("")
        L.append(f"Extra, same run: a localized 5 % change, `{g('update3_sql')}` ({g('update3_rows')} rows, contiguous pages), CHECKPOINT, third backup:")
        L.append("")
        L.append("| tool | seconds | stored MB (du growth) | third / first |")
        L.append("|---|---:|---:|---:|")
        L.append(f"| holdfast | {sec(g('hf3_seconds'))} | {mb(g('hf3_stored'))} | {ratio(g('hf3_stored'), g('hf1_stored'), '{:.1%}')} |")
        L.append(f"| pgBackRest --type=incr | {sec(g('pbr3_seconds'))} | {mb(g('pbr3_stored'))} | {ratio(g('pbr3_stored'), g('pbr1_stored'), '{:.1%}')} |")
        L.append("")
        L.append(f"holdfast / pgBackRest stored bytes: **{ratio(g('hf3_stored'), g('pbr3_stored'))}**. "
                 f"Target for holdfast: ≤ 15 % of first → {'met' if g('hf3_stored') is not None and g('hf1_stored') and g('hf3_stored') / g('hf1_stored') <= 0.15 else 'NOT met'}. "
                 "(Pages rewritten by PostgreSQL itself between the backups — hint bits, pruning, autovacuum — count as changed: "
                 "a backup cannot tell them apart from user writes.)")
    L.append("")

    L.append("## 3. WAL latency under load (async mode)")
    L.append("")
    lat = g("latency") or {}
    v, sv = lat.get("vault", {}), lat.get("server_view", {})
    L.append(
        f"`pgbench -c {g('clients')} -j 2 -T {g('duration')} -N`: {g('lat_tps') and round(g('lat_tps'))} TPS. "
        f"Every 100 ms the server's `pg_current_wal_flush_lsn()` with its clock ({lat.get('server_samples')} samples "
        f"in the pgbench window); the vault's `durable_lsn` polled from `/v1/status` every "
        f"{ms(lat.get('vault_poll_interval_median'))} ({lat.get('vault_samples')} samples). Delay = time from the server sample "
        "until the first vault sample with `durable_lsn` ≥ that LSN (so it includes up to one vault poll interval)."
    )
    L.append("")
    L.append("| view | p50 | p99 | max | never durable in window |")
    L.append("|---|---:|---:|---:|---:|")
    L.append(f"| vault `durable_lsn` | {ms(v.get('p50'))} | {ms(v.get('p99'))} | {ms(v.get('max'))} | {v.get('never_durable')} |")
    L.append(f"| cross-check: server's `pg_stat_replication.flush_lsn` of the vault's walsender | {ms(sv.get('p50'))} | {ms(sv.get('p99'))} | {ms(sv.get('max'))} | {sv.get('never_durable')} |")
    L.append("")
    p99 = v.get("p99")
    L.append(f"Target p99 ≤ 1 s → {'met' if p99 is not None and p99 <= 1 else 'NOT met'}.")
    L.append("")



def sync_section(L, g, ratio, rounds):
    L.append("## 4. Synchronous-mode TPS cost")
    L.append("")
    if rounds > 1:
        L.append(f"{rounds} rounds, each running the three modes in turn (none, pg_receivewal, holdfast); the table "
                 "shows each mode's median, the rounds follow it with `uptime` before each run.")
        L.append("")
    L.append(f"`pgbench -c {g('clients')} -j 2 -T {g('duration')} -N`, `synchronous_commit=on`:")
    L.append("")
    L.append("| synchronous standby | TPS | latency avg | TPS / no-sync |")
    L.append("|---|---:|---:|---:|")
    for name, k in (("none (vault streaming async)", "tps_none"), ("holdfast vault (`synchronous = true`)", "tps_hf_sync"),
                    ("pg_receivewal --synchronous (vault async too)", "tps_receivewal")):
        t = g(k)
        L.append(f"| {name} | {'failed' if t is None else round(t)} | {g(k + '_lat_ms') if g(k + '_lat_ms') is not None else 'n/a'} ms | {ratio(t, g('tps_none'))} |")
    L.append("")
    L.append(f"holdfast sync / pg_receivewal sync TPS: **{ratio(g('tps_hf_sync'), g('tps_receivewal'))}**.")
    L.append("")
    if rounds > 1:
        L.append("| round | none | pg_receivewal | holdfast | holdfast / pg_receivewal | load before each (1-min avg) |")
        L.append("|---:|---:|---:|---:|---:|---|")
        for i in range(1, rounds + 1):
            t = [g(f"{k}_r{i}") for k in ("tps_none", "tps_receivewal", "tps_hf_sync")]
            load = [str(g(f"uptime_{k}_r{i}") or "").split("load average:")[-1].split(",")[0].strip()
                    for k in ("none", "receivewal", "hf_sync")]
            L.append(f"| {i} | " + " | ".join("failed" if x is None else str(round(x)) for x in t)
                     + f" | {ratio(t[2], t[1])} | {' / '.join(load)} |")
        L.append("")
    sfxs = [f"_r{i}" for i in range(1, rounds + 1)] if rounds > 1 else [""]
    if any(g(f"ctxt_hf_sync{s}") is not None for s in sfxs):
        L.append("The vault during its synchronous runs: context switches of all its threads (each sleep and "
                 "wake-up of a thread), journal appends (one write + `fdatasync` each, from its debug log), "
                 "and pgbench's transactions.")
        L.append("")
        L.append("| round | context switches | journal appends | transactions | switches / append | switches / transaction |")
        L.append("|---:|---:|---:|---:|---:|---:|")
        for i, s in enumerate(sfxs, 1):
            c, a, t = g(f"ctxt_hf_sync{s}"), g(f"appends_hf_sync{s}"), g(f"txns_hf_sync{s}")
            per = lambda n, d: f"{n / d:.2f}" if n is not None and d else "n/a"
            L.append(f"| {i} | {c} | {a} | {t} | {per(c, a)} | {per(c, t)} |")
        L.append("")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {
        "status": cmd_status,
        "wait-durable": cmd_wait_durable,
        "sample": cmd_sample,
        "latency": cmd_latency,
        "report": cmd_report,
    }[cmd]
    sys.exit(fn(*args) or 0)
