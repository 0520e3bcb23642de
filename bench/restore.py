#!/usr/bin/env python3
"""Helpers for bench/restore.sh: the vault's status (shared with capture.py), one size's raw
figures as JSON, and the report over every size.

Only the standard library.
"""
import http.client
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture import Vault, cmd_status, cmd_wait_durable, finish_report, load  # noqa: E402

# Targets from issue 18.
STANDBY_TARGET_S = 10.0  # warm standby at the target (read-only) within 10 s, at any size
RTO_RATIO_TARGET = 0.5  # holdfast cold restore RTO <= 0.5 x pgBackRest's


def num(x):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def cmd_watch_standby(url, ca, token, name, known, t0_file, timeout, out_json):
    """Started before the destruction: polls the vault every 50 ms over one keep-alive
    connection (a CLI call per look costs a process start, seconds on a loaded box) until its
    standby is paused, ready, before an incident after the first `known`. Writes when the
    new incident appeared in the cluster's status and when the standby was seen paused, in
    seconds after the epoch time the script writes into `t0_file` (the destruction's return),
    and the standby's last status."""
    v = Vault(url, ca, token)

    def get(path):
        for attempt in range(3):
            try:
                if v.conn is None:
                    v.conn = http.client.HTTPSConnection(v.host, v.port, context=v.ctx, timeout=10)
                v.conn.request("GET", path, headers={"Authorization": f"Bearer {v.token}"})
                resp = v.conn.getresponse()
                body = resp.read()
                return json.loads(body) if resp.status == 200 else None
            except (OSError, http.client.HTTPException, ValueError):
                v.conn = None
                if attempt == 2:
                    return None
                time.sleep(0.05)

    def incidents():
        got = get(f"/v1/clusters/{name}/incidents")
        return got if isinstance(got, list) else None

    deadline = time.time() + float(timeout)
    known = int(known)
    incident_at = paused_at = None
    st = {}
    while time.time() < deadline:
        if incident_at is None and any(i.get("restore_target") for i in (incidents() or [])[known:]):
            incident_at = time.time()
        st = ((get("/v1/standbys") or {}).get("standbys") or [{}])[0]
        if incident_at is not None and st.get("state") == "paused" and st.get("ready") \
                and (st.get("paused_before_incident") or 0) > known:
            paused_at = time.time()
            break
        if st.get("state") in ("overrun", "failed"):
            break
        time.sleep(0.05)
    t0 = float(open(t0_file).read().strip()) if os.path.exists(t0_file) else None
    rel = lambda t: None if t is None or t0 is None else round(t - t0, 3)
    json.dump({"incident_seconds": rel(incident_at), "paused_seconds": rel(paused_at), "paused_at": paused_at,
               "standby": st}, open(out_json, "w"))
    return 0 if paused_at else 1


def cmd_count_backups(url, ca, token, name):
    """Prints how many complete base backups of cluster `name` the vault holds."""
    v = Vault(url, ca, token)
    conn = http.client.HTTPSConnection(v.host, v.port, context=v.ctx, timeout=30)
    conn.request("GET", f"/v1/clusters/{name}/inventory", headers={"Authorization": f"Bearer {v.token}"})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"inventory answered {resp.status}: {body[:300]!r}")
    print(len(json.loads(body)["backups"]))


def cmd_size_json(results, out_json):
    """One size's raw figures (the TSV of restore.sh) plus the rows the report reads."""
    r = load(results)
    g = r.get
    hf = g("hf_report") if isinstance(g("hf_report"), dict) else {}
    r["rows"] = {
        "standby": {
            "paused_seconds": num(g("standby_paused_seconds")),
            "read_seconds": num(g("standby_read_seconds")),
            "promoted_seconds": num(g("standby_promoted_seconds")),
            "promote_command_seconds": num(g("standby_promote_command_seconds")),
            "incident_seconds": num(g("incident_seconds")),
            "verified": g("standby_verified") == "yes",
        },
        "holdfast": {"rto_seconds": num(g("hf_rto")), "base_seconds": num((hf.get("base") or {}).get("seconds")),
                     "replay_seconds": num(hf.get("replay_seconds")), "verified": g("hf_verified") == "yes",
                     "segments": hf.get("wal_segments_planned"), "prefetched": hf.get("wal_prefetched_segments")},
        "pgbackrest": {"rto_seconds": num(g("pbr_rto")), "base_seconds": num(g("pbr_base_seconds")),
                       "verified": g("pbr_verified") == "yes"},
        "pg_basebackup_cp": {"rto_seconds": num(g("pgbb_rto")), "base_seconds": num(g("pgbb_base_seconds")),
                             "verified": g("pgbb_verified") == "yes"},
    }
    json.dump(r, open(out_json, "w"), indent=1, sort_keys=True)


def cmd_report(out_md, invocation, *jsons):
    runs = [json.load(open(p)) for p in jsons]
    sec = lambda s: "n/a" if s is None else f"{s:.1f}"
    mb = lambda b: "n/a" if b is None else f"{b / 1e6:,.0f}"
    fx = lambda x: "n/a" if x is None else f"{x:.2f}"

    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    def cell(row, key="rto_seconds"):
        v = row.get(key)
        return sec(v) + ("" if row.get("verified") else " (NOT verified)") if v is not None else "failed"

    first = runs[0]
    L = ["# Restore benchmark: back to just before a destructive transaction (one run, two sizes)", ""]
    L.append(
        f"Run {first.get('started')} on {first.get('cores')} cores shared with other jobs, {first.get('mem_mb')} MB RAM, "
        f"PostgreSQL {first.get('pg_version')}, pgBackRest {first.get('pgbackrest_version')}, holdfast "
        f"{first.get('holdfast_version')}; filesystem {first.get('filesystem')}. Per size: `pgbench -i -s SCALE`, base "
        f"backups by each tool, then `pgbench -N -c {first.get('clients')} -j 2 -T {first.get('duration')}`; 15 s before "
        "its end an insider runs `TRUNCATE pgbench_accounts` (one transaction) while the load goes on. The warm "
        f"standby is the vault's (`[[standby]]`, `apply_delay = \"{first.get('apply_delay')}\"`), fed only from the "
        "vault's stored WAL. The cold restores start after the source is stopped, each into an empty directory, page "
        "cache dropped first, one at a time, and end when the restored server is promoted at the target "
        "(just before the TRUNCATE's commit: `--before-incident N` for holdfast, `--type=xid --target-exclusive` for "
        "pgBackRest, `recovery_target_xid` + `recovery_target_inclusive = off` for the `cp` archive)."
    )
    L.append("")
    def size(r):
        shop = num(r.get("shop_bytes"))
        text = f"scale {r.get('scale')}: {mb(num(r.get('db_bytes')))} MB"
        return text + (f" + shop of {r.get('shop_merchants')} merchants: {mb(shop)} MB" if shop else "")

    head = "| | " + " | ".join(size(r) for r in runs) + " |"
    L.append(head)
    L.append("|---|" + "---:|" * len(runs))
    L.append("| write load: TPS, WAL MB | " + " | ".join(
        f"{sec(num(r.get('load_tps')))}, {mb(num(r.get('load_wal_bytes')))}" for r in runs) + " |")
    if any(r.get("shop_tps") is not None for r in runs):
        L.append("| shop load: orders/s (each an order, its item, a gift-card debit) | " + " | ".join(
            sec(num(r.get("shop_tps"))) for r in runs) + " |")
    L.append("| incident raised, s after the TRUNCATE returned | " + " | ".join(
        sec(r["rows"]["standby"]["incident_seconds"]) for r in runs) + " |")
    L.append("| **warm standby: paused read-only at the target**, s after the TRUNCATE | " + " | ".join(
        "**" + sec(r["rows"]["standby"]["paused_seconds"]) + "**" for r in runs) + " |")
    L.append("| warm standby: first read there (1000 accounts), s after the TRUNCATE | " + " | ".join(
        sec(r["rows"]["standby"]["read_seconds"]) for r in runs) + " |")
    L.append("| warm standby: promoted (`holdfast standby promote` right after that read), s after the TRUNCATE | " + " | ".join(
        cell(r["rows"]["standby"], "promoted_seconds") for r in runs) + " |")
    L.append("| … of which the promote command, s | " + " | ".join(
        sec(r["rows"]["standby"]["promote_command_seconds"]) for r in runs) + " |")
    L.append("| holdfast cold restore (`restore --before-incident N --start --promote`), RTO s | " + " | ".join(
        cell(r["rows"]["holdfast"]) for r in runs) + " |")
    L.append("| … holdfast: base data s / replay s / WAL segments replayed (prefetched) | " + " | ".join(
        f"{sec(r['rows']['holdfast'].get('base_seconds'))} / {sec(r['rows']['holdfast'].get('replay_seconds'))} / "
        f"{r['rows']['holdfast'].get('segments')} ({r['rows']['holdfast'].get('prefetched')})" for r in runs) + " |")
    L.append("| … holdfast's `backup_wal_share` / `backup_replay_budget_seconds` / `backup_min_interval_seconds`; its backups by the restore (pgBackRest, pg_basebackup: 1 each, before the load) | " + " | ".join(
        f"{r.get('backup_wal_share', 'none')} / {r.get('backup_replay_budget', 'none')} / {r.get('backup_min_interval', 'default')}; {r.get('hf_backups')}" for r in runs) + " |")
    L.append("| pgBackRest restore + start, RTO s | " + " | ".join(cell(r["rows"]["pgbackrest"]) for r in runs) + " |")
    L.append("| pg_basebackup copy `cp -a` + restore_command `cp`, RTO s | " + " | ".join(
        cell(r["rows"]["pg_basebackup_cp"]) for r in runs) + " |")
    L.append("| holdfast cold / pgBackRest | " + " | ".join(
        fx(ratio(r["rows"]["holdfast"]["rto_seconds"], r["rows"]["pgbackrest"]["rto_seconds"])) for r in runs) + " |")
    L.append("| standby promoted / pgBackRest | " + " | ".join(
        fx(ratio(r["rows"]["standby"]["promoted_seconds"], r["rows"]["pgbackrest"]["rto_seconds"])) for r in runs) + " |")
    L.append("| base backups: holdfast / pgBackRest / pg_basebackup, s | " + " | ".join(
        f"{sec(num(r.get('hf_backup_seconds')))} / {sec(num(r.get('pbr_backup_seconds')))} / {sec(num(r.get('pgbb_backup_seconds')))}"
        for r in runs) + " |")
    L.append("")
    L.append(
        "Standby times are wall seconds from the moment `psql` returned from the TRUNCATE's COMMIT (the vault's "
        "/v1/standbys polled every 50 ms over one connection; \"paused\" = state `paused`, ready, before the new incident; its "
        "`pgbench_accounts` is then read: the first 1000 rows there). Cold RTO = wall seconds from the restore command's start "
        "until `pg_is_in_recovery()` is false. Each restored server, the promoted standby included, was checked: "
        "every account row there, balances equal to the history's deltas (every pgbench transaction whole), every "
        "history row committed > 50 ms before the TRUNCATE there and none committed > 50 ms after it; with a shop, the "
        "same for its orders, every order with its items, and the gift cards' total equal to the initial one less "
        "one cent per order placed (every shop transaction whole)."
    )
    L.append("")
    for r in runs:
        fails = [k[len("failure_"):] + ": " + str(v) for k, v in r.items() if k.startswith("failure_")]
        if fails:
            L.append(f"Failures at scale {r.get('scale')}:")
            L += [f"- {f}" for f in fails]
            L.append("")
    L.append("Targets (issue 18):")
    for r in runs:
        sb = r["rows"]["standby"]["paused_seconds"]
        rr = ratio(r["rows"]["holdfast"]["rto_seconds"], r["rows"]["pgbackrest"]["rto_seconds"])
        L.append(
            f"- scale {r.get('scale')}: standby at the target ≤ {STANDBY_TARGET_S:.0f} s: {sec(sb)} s → "
            f"**{'MET' if sb is not None and sb <= STANDBY_TARGET_S else 'MISSED'}**; cold restore ≤ "
            f"{RTO_RATIO_TARGET}× pgBackRest: {fx(rr)} → **{'MET' if rr is not None and rr <= RTO_RATIO_TARGET else 'MISSED'}**"
        )
    L.append("")
    L.append("Load average before each timed phase (standby / holdfast / pgBackRest / cp): " + "; ".join(
        f"scale {r.get('scale')}: {r.get('standby_loadavg')} / {r.get('hf_loadavg')} / {r.get('pbr_loadavg')} / {r.get('pgbb_loadavg')}"
        for r in runs))
    L.append("")
    finish_report(out_md, L, "Commands (as run)", first, f"Reproduce: `{invocation}`. Raw figures: " + ", ".join(f"`bench-out/{os.path.basename(p)}`" for p in jsons) + ".")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {
        "status": cmd_status,
        "wait-durable": cmd_wait_durable,
        "watch-standby": cmd_watch_standby,
        "size-json": cmd_size_json,
        "count-backups": cmd_count_backups,
        "report": cmd_report,
    }[cmd]
    sys.exit(fn(*args) or 0)
