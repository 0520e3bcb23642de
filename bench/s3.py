#!/usr/bin/env python3
"""Helpers for bench/s3.sh: a few SigV4-signed S3 requests to the bench's own RGW (create the
buckets, list and try to delete object versions), RGW's per-bucket usage, and the report.

Only the standard library: the S3 calls the bench needs are a dozen lines of SigV4, and the
bench must not pull in boto3 or the AWS CLI on a fresh machine.
"""
import datetime
import hashlib
import hmac
import http.client
import json
import os
import ssl
import subprocess
import sys
import urllib.parse
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture import finish_report, load  # noqa: E402

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def s3(endpoint, ca, key, secret, method, path, query=None, headers=None, body=b""):
    """One path-style S3 request signed with SigV4 (region us-east-1); returns (status, body)."""
    u = urllib.parse.urlsplit(endpoint)
    query = query or {}
    now = datetime.datetime.now(datetime.timezone.utc)
    amzdate, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(body).hexdigest()
    h = {"host": u.netloc, "x-amz-date": amzdate, "x-amz-content-sha256": payload}
    for k, v in (headers or {}).items():
        h[k.lower()] = v
    canon_path = urllib.parse.quote(path, safe="/-_.~")
    canon_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(query.items())
    )
    signed = ";".join(sorted(h))
    canon = "\n".join([method, canon_path, canon_query, "".join(f"{k}:{h[k].strip()}\n" for k in sorted(h)), signed, payload])
    scope = f"{day}/us-east-1/s3/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(canon.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (day, "us-east-1", "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    h["authorization"] = f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={signed}, Signature={sig}"
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=ca), timeout=60)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request(method, canon_path + ("?" + canon_query if canon_query else ""), body=body, headers=h)
    r = conn.getresponse()
    return r.status, r.read()


def env():
    return os.environ["S3_ENDPOINT"], os.environ["S3_CA"], os.environ["S3_KEY"], os.environ["S3_SECRET"]


def cmd_mkbucket(bucket, lock):
    """Creates BUCKET; with lock=1 Object Lock is enabled on it (so versioning too)."""
    hdr = {"x-amz-bucket-object-lock-enabled": "true"} if lock == "1" else {}
    st, body = s3(*env(), "PUT", f"/{bucket}", headers=hdr)
    if st != 200:
        sys.exit(f"creating bucket {bucket}: HTTP {st}: {body[:500]!r}")


def list_versions(bucket, limit=1000):
    st, body = s3(*env(), "GET", f"/{bucket}", query={"versions": "", "max-keys": str(limit)})
    if st != 200:
        sys.exit(f"listing versions of {bucket}: HTTP {st}: {body[:500]!r}")
    root = ET.fromstring(body)
    return [(v.find(NS + "Key").text, v.find(NS + "VersionId").text, int(v.find(NS + "Size").text))
            for v in root.iter(NS + "Version")]


def cmd_lockcheck(bucket, out):
    """Plays the holder of the S3 credential on BUCKET: for one object, reads its retention, then
    deletes the object (a delete marker, on a versioned bucket), then its version by id, plainly
    and with the GOVERNANCE bypass header; records the HTTP status of each and whether the bytes
    are still there. Writes a JSON object to OUT."""
    versions = list_versions(bucket, 50)
    if not versions:
        sys.exit(f"bucket {bucket} is empty")
    # The biggest object listed: a pack or a backup file, not a tiny marker.
    key, vid, size = max(versions, key=lambda v: v[2])
    res = {"bucket": bucket, "key": key, "version_id": vid, "size": size}
    st, body = s3(*env(), "GET", f"/{bucket}/{key}", query={"retention": "", "versionId": vid})
    res["get_retention_status"] = st
    if st == 200:
        root = ET.fromstring(body)
        res["retention"] = {c.tag.replace(NS, ""): c.text for c in root}
    st, _ = s3(*env(), "DELETE", f"/{bucket}/{key}")
    res["delete_object_status"] = st
    st, body = s3(*env(), "DELETE", f"/{bucket}/{key}", query={"versionId": vid})
    res["delete_version_status"] = st
    res["delete_version_error"] = body[:300].decode(errors="replace")
    st, _ = s3(*env(), "DELETE", f"/{bucket}/{key}", query={"versionId": vid},
               headers={"x-amz-bypass-governance-retention": "true"})
    res["delete_version_bypass_status"] = st
    st, body = s3(*env(), "GET", f"/{bucket}/{key}", query={"versionId": vid})
    res["read_back_status"] = st
    res["read_back_intact"] = st == 200 and len(body) == size
    json.dump(res, open(out, "w"))
    print(json.dumps(res))


def cmd_deletecheck(bucket, key, out):
    """Deletes KEY from BUCKET (no versioning, no lock) and reads it back; JSON to OUT."""
    st0, body0 = s3(*env(), "GET", f"/{bucket}/{key}")
    st, _ = s3(*env(), "DELETE", f"/{bucket}/{key}")
    st2, _ = s3(*env(), "GET", f"/{bucket}/{key}")
    res = {"bucket": bucket, "key": key, "size": len(body0) if st0 == 200 else None, "get_before_status": st0,
           "delete_status": st, "read_back_status": st2, "read_back_intact": st2 == 200}
    json.dump(res, open(out, "w"))
    print(json.dumps(res))


def cmd_bucketstats(conf, bucket):
    """Objects and bytes in BUCKET as RGW counts them (`radosgw-admin bucket stats`): JSON."""
    out = subprocess.run(["radosgw-admin", "-c", conf, "bucket", "stats", f"--bucket={bucket}"],
                         check=True, capture_output=True, text=True).stdout
    u = json.loads(out).get("usage", {}).get("rgw.main", {})
    print(json.dumps({"objects": u.get("num_objects", 0), "bytes": u.get("size", 0),
                      "bytes_actual": u.get("size_actual", 0)}))


def cmd_usage(conf, uid):
    """Requests per bucket so far, by category, from RGW's usage log: JSON {bucket: {cat: ops}}."""
    out = subprocess.run(["radosgw-admin", "-c", conf, "usage", "show", f"--uid={uid}", "--show-log-sum=false"],
                         check=True, capture_output=True, text=True).stdout
    res = {}
    for e in json.loads(out).get("entries", []):
        for b in e.get("buckets", []):
            d = res.setdefault(b.get("bucket") or "-", {})
            for c in b.get("categories", []):
                d[c["category"]] = d.get(c["category"], 0) + c.get("ops", 0)
    print(json.dumps(res))


def ops_between(before, after, bucket):
    a, b = (after or {}).get(bucket, {}), (before or {}).get(bucket, {})
    d = {c: a.get(c, 0) - b.get(c, 0) for c in a}
    return {c: n for c, n in d.items() if n}


def cmd_report(results, out_md, out_json):
    r = load(results)
    g = r.get
    num = lambda x: x if isinstance(x, (int, float)) else None
    sec = lambda s: "n/a" if s is None else f"{s:.1f}"
    mb = lambda b: "n/a" if b is None else f"{b / 1e6:,.1f}"
    fx = lambda x, f="{:.2f}": "n/a" if x is None else f.format(x)

    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    rows = {}
    for k, bucket in (("hf", g("hf_bucket")), ("pbr", g("pbr_bucket"))):
        st = g(k + "_stats_after_backup") if isinstance(g(k + "_stats_after_backup"), dict) else {}
        ops_b = ops_between(g(k + "_usage_before_backup"), g(k + "_usage_after_backup"), bucket)
        ops_r = ops_between(g(k + "_usage_before_restore"), g(k + "_usage_after_restore"), bucket)
        stored = num(st.get("bytes"))
        st0 = g(k + "_stats_before_backup") if isinstance(g(k + "_stats_before_backup"), dict) else {}
        added = stored - num(st0.get("bytes")) if stored is not None and num(st0.get("bytes")) is not None else None
        n_b, n_r = sum(ops_b.values()) if ops_b else None, sum(ops_r.values()) if ops_r else None
        ops_all = ops_between({}, g(k + "_usage_after_backup"), bucket)
        n_all = sum(ops_all.values()) if ops_all else None
        rows[k] = {
            "backup_seconds": num(g(k + "_backup_seconds")),
            "restore_seconds": num(g(k + "_rto")),
            "bucket_objects": num(st.get("objects")),
            "bucket_bytes": stored,
            "backup_requests": n_b,
            "backup_requests_by_kind": ops_b,
            "restore_requests": n_r,
            "restore_requests_by_kind": ops_r,
            "backup_bytes_added": added,
            "backup_requests_per_gb_added": round(n_b / (added / 1e9), 1) if n_b and added else None,
            "requests_until_backup_done": n_all,
            "requests_per_gb_stored": round(n_all / (stored / 1e9), 1) if n_all and stored else None,
            "verified": g(k + "_verified") == "yes",
        }
    derived = {
        "rows": rows,
        "ratio_backup_seconds": ratio(rows["hf"]["backup_seconds"], rows["pbr"]["backup_seconds"]),
        "ratio_restore_seconds": ratio(rows["hf"]["restore_seconds"], rows["pbr"]["restore_seconds"]),
        "ratio_bucket_bytes": ratio(rows["hf"]["bucket_bytes"], rows["pbr"]["bucket_bytes"]),
        "ratio_backup_requests_per_gb": ratio(rows["hf"]["backup_requests_per_gb_added"],
                                              rows["pbr"]["backup_requests_per_gb_added"]),
        "ratio_requests_per_gb_stored": ratio(rows["hf"]["requests_per_gb_stored"], rows["pbr"]["requests_per_gb_stored"]),
    }
    r["derived"] = derived
    json.dump(r, open(out_json, "w"), indent=1, sort_keys=True)

    L = ["# S3 benchmark: holdfast's vault on Ceph RGW (Object Lock) vs pgBackRest repo-type s3 (one run)", ""]
    L.append(
        f"Run {g('started')} on {g('cores')} cores shared with other jobs (load average at start {g('loadavg_start')}), "
        f"PostgreSQL {g('pg_version')}, pgBackRest {g('pgbackrest_version')}, Ceph {g('ceph_version')}, holdfast "
        f"{g('holdfast_version')}. `pgbench -i -s {g('scale')}`: database {mb(num(g('db_bytes')))} MB. One Ceph "
        "cluster started by the bench (one MON, one memstore OSD, RGW with HTTPS on 127.0.0.1); two buckets on it: "
        f"`{g('hf_bucket')}` created with Object Lock (holdfast's `[store] kind = \"s3\"`, every object written "
        f"COMPLIANCE) and `{g('pbr_bucket')}` without (pgBackRest `repo1-type=s3`, zstd, process-max=2). Both over "
        "HTTPS to the same endpoint with the same CA file."
    )
    L.append("")
    failures = [k[len("failure_"):] + ": " + str(v) for k, v in r.items() if k.startswith("failure_")]
    if failures:
        L += ["**Failures in this run:**", ""] + [f"- {f}" for f in failures] + [""]
    L.append("| | holdfast (vault, S3 store) | pgBackRest (repo s3) | holdfast / pgBackRest |")
    L.append("|---|---:|---:|---:|")
    h, p = rows["hf"], rows["pbr"]
    L.append(f"| full backup, s | {sec(h['backup_seconds'])} | {sec(p['backup_seconds'])} | {fx(derived['ratio_backup_seconds'])} |")
    L.append(f"| restore to a promoted server, s | {sec(h['restore_seconds'])} | {sec(p['restore_seconds'])} | {fx(derived['ratio_restore_seconds'])} |")
    L.append(f"| bytes in the bucket after the backup, MB | {mb(h['bucket_bytes'])} | {mb(p['bucket_bytes'])} | {fx(derived['ratio_bucket_bytes'])} |")
    L.append(f"| objects in the bucket | {h['bucket_objects']} | {p['bucket_objects']} | |")
    L.append(f"| S3 requests during the backup | {h['backup_requests']} | {p['backup_requests']} | |")
    L.append(f"| bytes the backup added to the bucket, MB | {mb(h['backup_bytes_added'])} | {mb(p['backup_bytes_added'])} | |")
    L.append(f"| backup: requests per GB added | {fx(h['backup_requests_per_gb_added'], '{:.0f}')} | "
             f"{fx(p['backup_requests_per_gb_added'], '{:.0f}')} | {fx(derived['ratio_backup_requests_per_gb'])} |")
    L.append(f"| all requests since the bucket was created (WAL + backup) per GB stored | "
             f"{fx(h['requests_per_gb_stored'], '{:.0f}')} | {fx(p['requests_per_gb_stored'], '{:.0f}')} | "
             f"{fx(derived['ratio_requests_per_gb_stored'])} |")
    L.append(f"| S3 requests during the restore | {h['restore_requests']} | {p['restore_requests']} | |")
    L.append(f"| restored cluster equals the source | {'yes' if h['verified'] else 'NO'} | {'yes' if p['verified'] else 'NO'} | |")
    L.append("")
    L.append(f"Requests by kind (RGW usage log), backup: holdfast {h['backup_requests_by_kind']}, pgBackRest "
             f"{p['backup_requests_by_kind']}; restore: holdfast {h['restore_requests_by_kind']}, pgBackRest "
             f"{p['restore_requests_by_kind']}. The holdfast bucket's bytes include the WAL the vault streamed until "
             "then (`pgbench -i` and the backup's own), pgBackRest's the WAL archive-push sent; both compressed.")
    L.append("")
    hl, pl = g("hf_lockcheck") or {}, g("pbr_deletecheck") or {}
    L.append("## Object Lock, seen")
    L.append("")
    if isinstance(hl, dict) and hl:
        L.append(
            f"- holdfast's bucket, with the vault's own S3 credential, object `{hl.get('key')}` ({hl.get('size')} bytes, "
            f"retention {hl.get('retention')}): DELETE of the object → HTTP {hl.get('delete_object_status')} (a delete "
            f"marker on a versioned bucket; the version stays), DELETE of its version → HTTP "
            f"{hl.get('delete_version_status')}, again with `x-amz-bypass-governance-retention: true` → HTTP "
            f"{hl.get('delete_version_bypass_status')}; the version read back afterwards intact: "
            f"{'yes' if hl.get('read_back_intact') else 'NO'}."
        )
    if isinstance(pl, dict) and pl:
        L.append(
            f"- pgBackRest's bucket (no Object Lock, no default retention), with pgBackRest's credential, object "
            f"`{pl.get('key')}` ({pl.get('size')} bytes): DELETE → HTTP {pl.get('delete_status')}; read back → HTTP "
            f"{pl.get('read_back_status')} ({'still there' if pl.get('read_back_intact') else 'gone'})."
        )
    L.append("")
    finish_report(out_md, L, "Commands (as run)", r, f"Reproduce: `{g('invocation')}`. Raw figures: `bench-out/s3.json`.")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {
        "mkbucket": cmd_mkbucket,
        "lockcheck": cmd_lockcheck,
        "deletecheck": cmd_deletecheck,
        "bucketstats": cmd_bucketstats,
        "usage": cmd_usage,
        "report": cmd_report,
    }[cmd]
    sys.exit(fn(*args) or 0)
