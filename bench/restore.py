#!/usr/bin/env python3
"""Helpers for bench/restore.sh: the vault's status (shared with capture.py), the report.

Only the standard library.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture import cmd_status, cmd_wait_durable, load  # noqa: E402

# Targets from the issue.
RTO_RATIO_TARGET = 0.5  # holdfast RTO <= 0.5 x pgBackRest's
BASE_DISK_TARGET = 0.70  # holdfast base-data phase >= 70 % of the disk's sequential write speed


def cmd_pglog(path):
    """Phases of a restored server's startup from its log, as JSON: the data directory fsync
    before recovery starts, redo, the end-of-recovery checkpoint, start -> ready."""
    import datetime
    marks = {}
    for line in open(path, errors="replace"):
        try:
            t = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
        except ValueError:
            continue
        for key, text in (
            ("start", "starting PostgreSQL"),
            ("interrupted", "database system was interrupted"),
            ("recovery_start", "starting point-in-time recovery"),
            ("redo_start", "redo starts at"),
            ("consistent", "consistent recovery state reached"),
            ("redo_done", "redo done at"),
            ("ckpt_start", "checkpoint starting: end-of-recovery"),
            ("ready", "database system is ready to accept connections"),
        ):
            if text in line and key not in marks:
                marks[key] = t
        if "checkpoint complete" in line and "ckpt_start" in marks and "ckpt_done" not in marks:
            marks["ckpt_done"] = t

    def span(a, b):
        return round(marks[b] - marks[a], 3) if a in marks and b in marks else None

    print(json.dumps({
        "startup_sync_seconds": span("interrupted", "recovery_start"),
        "redo_seconds": span("redo_start", "redo_done"),
        "end_checkpoint_seconds": span("ckpt_start", "ckpt_done"),
        "start_to_ready_seconds": span("start", "ready"),
    }))


def cmd_report(results, out_md, out_json):
    r = load(results)
    g = r.get

    def num(x):
        return x if isinstance(x, (int, float)) else None

    hf = g("hf_report") if isinstance(g("hf_report"), dict) else {}
    hfb = g("hfbase_report") if isinstance(g("hfbase_report"), dict) else {}
    dd_direct, dd_sync = num(g("dd_direct_mbs")), num(g("dd_fdatasync_mbs"))
    dd_ref = max([x for x in (dd_direct, dd_sync) if x is not None], default=None)
    inp = num(g("input_bytes"))

    # One row per tool, every figure derived here so the JSON carries them too.
    rows = {}
    hf_base_s = num((hf.get("base") or {}).get("seconds"))
    hf_base_b = num((hf.get("base") or {}).get("bytes"))
    rows["holdfast"] = {
        "rto_seconds": num(g("hf_rto")),
        "base_seconds": hf_base_s,
        "base_bytes": hf_base_b,
        "replay_seconds": num(hf.get("replay_seconds")),
        "wal_fetch_seconds": num(hf.get("wal_fetch_seconds")),
        "rss_kb": num(g("hf_rss_kb")),
        "vault_vmhwm_kb": num(g("hf_vault_vmhwm_kb")),
        "proc_cpu_seconds": num(g("hf_proc_cpu_s")),
        "vault_cpu_seconds": num(g("hf_vault_cpu_s")),
        "machine_cpu_seconds": num(g("hf_machine_cpu_s")),
        "verified": g("hf_verified") == "yes" and hf.get("ok") is True,
    }
    rows["pgbackrest"] = {
        "rto_seconds": num(g("pbr_rto")),
        "base_seconds": num(g("pbr_base_seconds")),
        "base_bytes": num(g("pbr_backup_size")),
        "replay_seconds": num(g("pbr_replay_seconds")),
        "rss_kb": num(g("pbr_rss_kb")),
        "proc_cpu_seconds": num(g("pbr_proc_cpu_s")),
        "machine_cpu_seconds": num(g("pbr_machine_cpu_s")),
        "verified": g("pbr_verified") == "yes",
    }
    rows["pg_basebackup_cp"] = {
        "rto_seconds": num(g("pgbb_rto")),
        "base_seconds": num(g("pgbb_base_seconds")),
        "base_bytes": num(g("pgbb_bytes")),
        "replay_seconds": num(g("pgbb_replay_seconds")),
        "rss_kb": num(g("pgbb_rss_kb")),
        "proc_cpu_seconds": num(g("pgbb_proc_cpu_s")),
        "machine_cpu_seconds": num(g("pgbb_machine_cpu_s")),
        "verified": g("pgbb_verified") == "yes",
    }
    for row in rows.values():
        b, s = row["base_bytes"], row["base_seconds"]
        row["base_mbs"] = round(b / s / 1e6, 1) if b and s else None

    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    hf_rto, pbr_rto, pgbb_rto = (rows[k]["rto_seconds"] for k in ("holdfast", "pgbackrest", "pg_basebackup_cp"))
    derived = {
        "rows": rows,
        "dd_reference_mbs": dd_ref,
        "rto_ratio_holdfast_pgbackrest": ratio(hf_rto, pbr_rto),
        "rto_ratio_holdfast_pg_basebackup_cp": ratio(hf_rto, pgbb_rto),
        "base_mbs_ratio_holdfast_dd": ratio(rows["holdfast"]["base_mbs"], dd_ref),
    }
    if hfb:
        s = num(g("hfbase_command_seconds")), num(g("hfbase_sync_seconds"))
        b = num((hfb.get("base") or {}).get("bytes"))
        if None not in s and b:
            derived["holdfast_base_plus_sync_mbs"] = round(b / (s[0] + s[1]) / 1e6, 1)
            derived["holdfast_base_plus_sync_ratio_dd"] = ratio(derived["holdfast_base_plus_sync_mbs"], dd_ref)
    rto_met = derived["rto_ratio_holdfast_pgbackrest"] is not None and derived["rto_ratio_holdfast_pgbackrest"] <= RTO_RATIO_TARGET and rows["holdfast"]["verified"]
    base_met = derived["base_mbs_ratio_holdfast_dd"] is not None and derived["base_mbs_ratio_holdfast_dd"] >= BASE_DISK_TARGET
    derived["target_rto"] = "MET" if rto_met else "MISSED"
    derived["target_base_speed"] = "MET" if base_met else "MISSED"
    r["derived"] = derived
    json.dump(r, open(out_json, "w"), indent=1, sort_keys=True)

    mb = lambda b: "n/a" if b is None else f"{b / 1e6:,.1f}"
    sec = lambda s: "n/a" if s is None else f"{s:.1f}"
    kbmb = lambda k: "n/a" if k is None else f"{k * 1024 / 1e6:,.1f}"
    fx = lambda x, f="{:.2f}": "n/a" if x is None else f.format(x)

    L = []
    L.append("# Restore benchmark (RTO): holdfast vs pgBackRest vs pg_basebackup + cp (one run)")
    L.append("")
    L.append(
        f"Run {g('started')} on {g('cores')} shared cores, {g('mem_mb')} MB RAM, PostgreSQL {g('pg_version')}, "
        f"pgBackRest {g('pgbackrest_version')}, holdfast {g('holdfast_version')}; filesystem {g('filesystem')}. "
        f"`pgbench -i -s {g('scale')}`: data directory {mb(inp)} MB without pg_wal. Then, after each tool's base "
        f"backup, `pgbench -N -c {g('clients')} -j 2 -T {g('duration')}`: {fx(num(g('load_tps')), '{:.0f}')} TPS, "
        f"{mb(num(g('load_wal_bytes')))} MB of WAL ({g('wal_segments_archived')} segments archived in all). "
        f"Restore target: **{g('target')}**, ~5 s before the load ended; {g('after_target_rows')} pgbench transactions "
        "committed after it and must not be in any restored cluster."
    )
    L.append("")
    L.append(
        "Everything on one machine: the vault (local-directory store) serves its backup and WAL over HTTPS on loopback; "
        "pgBackRest's repository (zstd) and the `cp` archive and the pg_basebackup copy are local directories. "
        "The source PostgreSQL is stopped before the restores. Each restore goes into a fresh empty directory on the "
        "same filesystem, promoted at the target (`recovery_target_action = promote`, inclusive), one restored copy at a time, "
        f"page cache dropped before each (`sync; echo 3 > /proc/sys/vm/drop_caches`: "
        f"holdfast {g('hf_drop_caches')}, pgBackRest {g('pbr_drop_caches')}, pg_basebackup+cp {g('pgbb_drop_caches')}). "
        f"Load average just before each restore (the cores are shared with other work): holdfast {g('hf_loadavg')}, "
        f"pgBackRest {g('pbr_loadavg')}, pg_basebackup+cp {g('pgbb_loadavg')}."
    )
    L.append("")
    failures = [k[len("failure_"):] + ": " + str(v) for k, v in r.items() if k.startswith("failure_")]
    if failures:
        L.append("**Failures in this run:**")
        L.append("")
        for f in failures:
            L.append(f"- {f}")
        L.append("")

    L.append("## RTO")
    L.append("")
    L.append(
        "RTO = wall seconds from the restore command's start until the restored server accepts connections, "
        "promoted, at the target (`pg_is_in_recovery()` = false, polled every 100 ms; for holdfast: until "
        "`holdfast restore --start --promote` exits, which it does after the same poll and its self-check). "
        "Base phase = writing the base backup's files (holdfast: `base.seconds` of its JSON report; pgBackRest: the "
        "`pgbackrest restore` command; pg_basebackup: `cp -a` + writing recovery settings); base MB/s = the backup's "
        "bytes / base seconds. Recovery = PostgreSQL start → promoted (WAL fetch + replay + startup fsync of the data directory)."
    )
    L.append("")
    L.append("| tool | RTO s | base phase s | base MB/s | WAL fetch + replay s | peak RSS MB | verified |")
    L.append("|---|---:|---:|---:|---:|---:|---|")
    names = {
        "holdfast": "holdfast restore --start --promote (parallel 4)",
        "pgbackrest": "pgBackRest restore (process-max=2, async archive-get) + pg_ctl start",
        "pg_basebackup_cp": "pg_basebackup -Fp copy: `cp -a` + restore_command `cp`",
    }
    for k, name in names.items():
        row = rows[k]
        rss = kbmb(row["rss_kb"])
        if k == "holdfast":
            rss += f" (vault: {kbmb(row['vault_vmhwm_kb'])})"
        L.append(
            f"| {name} | {sec(row['rto_seconds'])} | {sec(row['base_seconds'])} | {fx(row['base_mbs'], '{:.0f}')} | "
            f"{sec(row['replay_seconds'])} | {rss} | {'yes' if row['verified'] else 'NO'} |"
        )
    L.append("")
    L.append("| ratio | RTO (< 1 = holdfast faster) |")
    L.append("|---|---:|")
    L.append(f"| holdfast / pgBackRest | **{fx(derived['rto_ratio_holdfast_pgbackrest'])}** |")
    L.append(f"| holdfast / pg_basebackup + cp | {fx(derived['rto_ratio_holdfast_pg_basebackup_cp'])} |")
    L.append("")
    if hf:
        L.append(
            f"holdfast's own breakdown: base data {sec(hf_base_s)} s ({(hf.get('base') or {}).get('files')} files, "
            f"{mb(hf_base_b)} MB), {hf.get('wal_segments_planned')} WAL segments planned, "
            f"{hf.get('wal_prefetched_segments')} prefetched ({mb(num(hf.get('wal_prefetched_bytes')))} MB, "
            f"{sec(num(hf.get('wal_fetch_seconds')))} s of fetching, overlapping replay), PostgreSQL start → promoted "
            f"{sec(num(hf.get('replay_seconds')))} s, total {sec(num(hf.get('total_seconds')))} s; recovered to "
            f"{hf.get('recovered_lsn')}, last replayed commit {hf.get('last_replayed_commit')}; the prefetcher dropped "
            f"{g('hf_prefetch_dropped')} spooled segment(s) replay had already passed (each one fetched twice: the "
            f"`restore_command` helper fetched it itself). Verdict: {hf.get('verdict')}"
        )
        L.append("")

    L.append(
        "Inside the recovery column, from each restored server's log: the fsync of the data directory PostgreSQL does "
        "before recovery (the restored files are not known to be on disk), redo, the end-of-recovery checkpoint "
        "(`recovery_target_action = promote` ends with an immediate checkpoint), and postmaster start → ready."
    )
    L.append("")
    L.append("| tool | startup fsync s | redo s | end-of-recovery checkpoint s | start → ready s |")
    L.append("|---|---:|---:|---:|---:|")
    for k, name in (("hf", "holdfast"), ("pbr", "pgBackRest"), ("pgbb", "pg_basebackup + cp")):
        pl = g(k + "_pglog") if isinstance(g(k + "_pglog"), dict) else {}
        L.append(f"| {name} | {sec(pl.get('startup_sync_seconds'))} | {sec(pl.get('redo_seconds'))} | "
                 f"{sec(pl.get('end_checkpoint_seconds'))} | {sec(pl.get('start_to_ready_seconds'))} |")
    L.append("")

    L.append(
        "CPU during each restore (2 shared cores): the machine's busy CPU seconds from `/proc/stat` over the RTO window "
        "(every process: the tool, the vault, PostgreSQL's recovery, and any other work on the machine), and the "
        "restoring command's own user + system seconds (`/usr/bin/time -v`)."
    )
    L.append("")
    L.append("| tool | machine CPU s | restoring command CPU s | vault CPU s |")
    L.append("|---|---:|---:|---:|")
    for k, name in (("holdfast", "holdfast"), ("pgbackrest", "pgBackRest (restore command; async archive-get not included)"),
                    ("pg_basebackup_cp", "pg_basebackup + cp (`cp -a`)")):
        row = rows[k]
        L.append(f"| {name} | {sec(row.get('machine_cpu_seconds'))} | {sec(row.get('proc_cpu_seconds'))} | "
                 f"{sec(row.get('vault_cpu_seconds')) if k == 'holdfast' else '–'} |")
    L.append("")

    L.append("## Base-data phase vs the disk")
    L.append("")
    L.append(
        f"Disk sequential write speed, same filesystem, same run (`dd bs=16M`, {mb(num(g('dd_bytes')))} MB of zeros, "
        f"page cache dropped first): O_DIRECT **{fx(dd_direct, '{:.0f}')} MB/s**, buffered + fdatasync "
        f"{fx(dd_sync, '{:.0f}')} MB/s; reference = the higher, {fx(dd_ref, '{:.0f}')} MB/s."
    )
    L.append("")
    L.append("| tool | base MB/s | / disk |")
    L.append("|---|---:|---:|")
    for k, name in (("holdfast", "holdfast"), ("pgbackrest", "pgBackRest"), ("pg_basebackup_cp", "cp -a")):
        L.append(f"| {name} | {fx(rows[k]['base_mbs'], '{:.0f}')} | {fx(ratio(rows[k]['base_mbs'], dd_ref))} |")
    if "holdfast_base_plus_sync_mbs" in derived:
        L.append(
            f"| holdfast base only (no `--start`), then `sync`: {sec(num(g('hfbase_command_seconds')))} s + "
            f"{sec(num(g('hfbase_sync_seconds')))} s | {fx(derived['holdfast_base_plus_sync_mbs'], '{:.0f}')} | "
            f"{fx(derived['holdfast_base_plus_sync_ratio_dd'])} |"
        )
    L.append("")
    L.append(
        "holdfast writes the base files through the page cache without fsync (only `global/pg_control`); PostgreSQL "
        "fsyncs the whole data directory when it starts on a backup, so that writeback is inside its recovery "
        "column. The `sync` row shows the base phase with its writeback to disk. `cp -a` does not fsync either."
    )
    L.append("")

    L.append("## Memory")
    L.append("")
    L.append(
        f"Peak RSS of the restoring process (`/usr/bin/time -v`, largest of the process and the children it waited for): "
        f"holdfast restore **{kbmb(rows['holdfast']['rss_kb'])} MB** (design bound: `--parallel` 4 × 16 MiB ranges in "
        f"flight + runtime; independent of the data size); the vault while serving that restore (VmHWM, reset just before) "
        f"**{kbmb(rows['holdfast']['vault_vmhwm_kb'])} MB**; pgBackRest restore {kbmb(rows['pgbackrest']['rss_kb'])} MB "
        f"(its async archive-get daemon is not included); cp {kbmb(rows['pg_basebackup_cp']['rss_kb'])} MB. PostgreSQL's "
        "own memory (shared_buffers = 256MB, same for all) and the per-segment `restore_command` processes are not counted."
    )
    L.append("")

    L.append("## Verification")
    L.append("")
    L.append(
        f"Reference from the source, by commit timestamp (`track_commit_timestamp = on`): {g('ref_rows')} "
        f"`pgbench_history` rows committed at or before the target, sum(delta) {g('ref_delta')}, and sum(abalance) "
        f"of `pgbench_accounts` at the target = now − the deltas committed after it = {g('ref_abalance')}. "
        "A restore is verified when its server is promoted and has exactly those rows, that delta sum, that "
        "sum(abalance) and no row whose commit timestamp is later than the target."
    )
    L.append("")
    for k, name in (("hf", "holdfast"), ("pbr", "pgBackRest"), ("pgbb", "pg_basebackup + cp")):
        L.append(f"- {name}: {g(k + '_verified')} — {g(k + '_got')}")
    L.append("")

    L.append("## Targets")
    L.append("")
    L.append(
        f"- TARGET holdfast RTO ≤ {RTO_RATIO_TARGET}× pgBackRest's: {fx(hf_rto, '{:.1f}')} s / {fx(pbr_rto, '{:.1f}')} s "
        f"= {fx(derived['rto_ratio_holdfast_pgbackrest'])} → **{derived['target_rto']}**"
    )
    L.append(
        f"- TARGET holdfast base-data phase ≥ {BASE_DISK_TARGET:.0%} of the disk's sequential write speed: "
        f"{fx(rows['holdfast']['base_mbs'], '{:.0f}')} / {fx(dd_ref, '{:.0f}')} MB/s = "
        f"{fx(derived['base_mbs_ratio_holdfast_dd'])} → **{derived['target_base_speed']}**"
        + (f" (with its writeback, base + sync: {fx(derived.get('holdfast_base_plus_sync_ratio_dd'))})"
           if "holdfast_base_plus_sync_ratio_dd" in derived else "")
    )
    L.append(
        f"- Peak RSS (stated): holdfast restore {kbmb(rows['holdfast']['rss_kb'])} MB, vault while serving it "
        f"{kbmb(rows['holdfast']['vault_vmhwm_kb'])} MB"
    )
    L.append("")

    L.append("## Commands (exactly as run)")
    L.append("")
    L.append("```")
    for k in sorted(k for k in r if k.startswith("cmd_")):
        L.append(f"# {k[4:]}")
        L.append(str(r[k]))
    L.append("```")
    L.append("")
    L.append(
        f"Base backups for the record: holdfast {sec(num(g('hf_backup_seconds')))} s, pgBackRest full "
        f"{sec(num(g('pbr_backup_seconds')))} s, pg_basebackup -Fp {sec(num(g('pgbb_backup_seconds')))} s."
    )
    if g("hf_warnings"):
        L.append("")
        L.append("`holdfast restore` warnings (its stderr):")
        L.append("```")
        L.append(str(g("hf_warnings")))
        L.append("```")
    if g("vault_log_warnings"):
        L.append("")
        L.append("Vault log warnings (other than reconnection attempts to the stopped source):")
        L.append("```")
        L.append(str(g("vault_log_warnings")))
        L.append("```")
    L.append("")
    L.append(f"Reproduce: `{g('invocation')}`. Raw figures: `bench-out/restore.json`; vault log: `bench-out/restore-vault.log`.")
    open(out_md, "w").write("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {
        "status": cmd_status,
        "wait-durable": cmd_wait_durable,
        "pglog": cmd_pglog,
        "report": cmd_report,
    }[cmd]
    sys.exit(fn(*args) or 0)
