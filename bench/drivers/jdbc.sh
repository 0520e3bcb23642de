#!/usr/bin/env bash
# JDBC (Debian's libpostgresql-jdbc-java, PgJDBC 42.5) through a real `holdfast gate serve` in
# front of a real PostgreSQL 15: connect over TLS (sslmode=verify-ca with the gate's
# certificate), parameterised SELECT/INSERT/UPDATE with PreparedStatement (extended protocol,
# row-guarded), then a DELETE over the row limit that is held, approved by a second person
# through the CLI and run; and one held and rejected, after which every row is still there.
# Prints each step; exits non-zero on any failure.
#
# One command (as root, Debian 12 with Rust): bench/drivers/jdbc.sh (also: ./run drivers jdbc).
# Env: HOLDFAST_BIN (else `cargo build -p holdfast`), KEEP=1 keeps the work dir.
set -euo pipefail

DRIVER_APT=()
dpkg -s libpostgresql-jdbc-java >/dev/null 2>&1 || DRIVER_APT+=(libpostgresql-jdbc-java)
# The single-file source launcher (java Smoke.java) needs the JDK's compiler.
command -v javac >/dev/null || DRIVER_APT+=(default-jdk-headless)
source "$(dirname "$0")/lib-shop.sh"

cat > "$W/Smoke.java" <<'JAVA'
// JDBC through the gate: what a DBA's Java tool or an application does.
import java.sql.*;
import java.util.*;
import java.util.concurrent.*;

public class Smoke {
    static final Map<String, String> env = System.getenv();

    static void ok(boolean cond, String what) {
        if (!cond) { System.err.println("FAILED: " + what); System.exit(1); }
        System.out.println("ok: " + what);
    }

    static String cli(String user, String pw, String totpSecret, String... args) throws Exception {
        List<String> cmd = new ArrayList<>(List.of(env.get("HF"), "gate"));
        cmd.addAll(List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(false);
        Map<String, String> e = pb.environment();
        e.put("HOLDFAST_GATE_URL", "https://127.0.0.1:" + env.get("CPORT"));
        e.put("HOLDFAST_GATE_CA", env.get("CA"));
        e.put("HOLDFAST_GATE_USER", user);
        e.put("HOLDFAST_GATE_PASSWORD", pw);
        if (totpSecret != null) {
            Process t = new ProcessBuilder(env.get("HF"), "gate", "totp-code").redirectErrorStream(true).start();
            t.getOutputStream().close();
            // HOLDFAST_GATE_TOTP_SECRET comes from the environment of this process.
            e.put("HOLDFAST_GATE_TOTP", new String(t.getInputStream().readAllBytes()).trim());
            t.waitFor();
        }
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes());
        if (p.waitFor() != 0) throw new RuntimeException("holdfast gate " + String.join(" ", args) + " failed: " + out);
        return out;
    }

    /** The id of the pending request whose SQL is `sql` (polls for up to 20 s). */
    static String pending(String sql) throws Exception {
        for (int i = 0; i < 200; i++) {
            String out = cli("alice", "alice-password", null, "pending");
            for (String line : out.split("\n")) {
                if (line.contains("pending") && line.contains(sql)) return line.trim().split("\\s+")[0];
            }
            Thread.sleep(100);
        }
        throw new RuntimeException("no pending request for " + sql);
    }

    public static void main(String[] a) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + env.get("GPORT") + "/postgres?sslmode=verify-ca&sslrootcert=" + env.get("CA");
        try (Connection c = DriverManager.getConnection(url, "alice", "alice-password")) {
            ok(true, "connected over TLS (verify-ca with the gate's certificate)");
            try (PreparedStatement s = c.prepareStatement("SELECT count(*) FROM orders WHERE merchant = ?")) {
                s.setInt(1, 3);
                ResultSet r = s.executeQuery(); r.next();
                ok(r.getInt(1) == 14, "parameterised SELECT: 14 orders of merchant 3");
            }
            try (PreparedStatement s = c.prepareStatement("INSERT INTO orders VALUES (?, ?, ?)")) {
                s.setInt(1, 101); s.setInt(2, 3); s.setBigDecimal(3, new java.math.BigDecimal("9.99"));
                ok(s.executeUpdate() == 1, "parameterised INSERT");
            }
            try (PreparedStatement s = c.prepareStatement("UPDATE orders SET total = total + ? WHERE id = ?")) {
                // Six times: past PgJDBC's prepareThreshold (5), it switches to a named server statement.
                for (int i = 0; i < 6; i++) {
                    s.setBigDecimal(1, new java.math.BigDecimal("1.00")); s.setInt(2, 101);
                    ok(s.executeUpdate() == 1, "parameterised UPDATE #" + (i + 1) + " (row-guarded, one row, not held)");
                }
            }
            // In a transaction (autocommit off: BEGIN travels in the same batch as the statement).
            c.setAutoCommit(false);
            try (PreparedStatement s = c.prepareStatement("UPDATE orders SET total = ? WHERE id = ?")) {
                s.setBigDecimal(1, new java.math.BigDecimal("1.50")); s.setInt(2, 1);
                ok(s.executeUpdate() == 1, "UPDATE inside a transaction");
            }
            c.commit();
            c.setAutoCommit(true);
            String del = "DELETE FROM orders WHERE id > $1 AND id <= 100";
            ExecutorService ex = Executors.newSingleThreadExecutor();
            // Ten rows: over the limit of 5, rolled back and held; bob approves; it runs.
            Future<Integer> f1 = ex.submit(() -> {
                try (PreparedStatement s = c.prepareStatement("DELETE FROM orders WHERE id > ? AND id <= 100")) {
                    s.setInt(1, 90);
                    return s.executeUpdate();
                }
            });
            String id1 = pending(del);
            String listed = cli("alice", "alice-password", null, "pending");
            ok(listed.contains("[1 parameters, shown: \"\\\\x0000005a\"]"), "the approval request shows the SQL and its parameter (JDBC binds the int in binary: " + listed.trim() + ")");
            cli("bob", "bob-password", "bob", "approve", id1);
            ok(f1.get(60, TimeUnit.SECONDS) == 10, "held DELETE approved by bob: 10 rows deleted");
            // Fifty rows: held, rejected; the error reaches the driver.
            Future<Integer> f2 = ex.submit(() -> {
                try (PreparedStatement s = c.prepareStatement("DELETE FROM orders WHERE id > ? AND id <= 100")) {
                    s.setInt(1, 40);
                    return s.executeUpdate();
                }
            });
            String id2 = pending(del);
            cli("bob", "bob-password", "bob", "reject", id2, "--reason", "not today");
            try {
                f2.get(60, TimeUnit.SECONDS);
                ok(false, "the rejected DELETE must fail");
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof SQLException)) e.getCause().printStackTrace();
                ok(e.getCause() instanceof SQLException && e.getCause().getMessage().contains("rejected"),
                   "held DELETE rejected: the driver gets an SQLException (" + e.getCause().getMessage() + ")");
            }
            ex.shutdown();
            try (Statement s = c.createStatement()) {
                ResultSet r = s.executeQuery("SELECT count(*) FROM orders"); r.next();
                ok(r.getInt(1) == 91, "91 rows: 100 + 1 inserted - 10 approved; the rejected DELETE removed nothing");
            }
        }
    }
}
JAVA
log "JDBC smoke through the gate"
(cd "$W" && HF="$HF" GPORT="$GPORT" CPORT="$CPORT" CA="$CA" HOLDFAST_GATE_TOTP_SECRET="$BOB_TOTP" \
  java -cp /usr/share/java/postgresql.jar Smoke.java)
N="$("$PGBIN/psql" -h "$W/pg" -p "$PGPORT" -U postgres -X -At -c 'SELECT count(*) FROM orders')"
[ "$N" = 91 ] || die "the database has $N rows, not 91"
log "JDBC through the gate: all steps passed (the database itself has $N rows)"
