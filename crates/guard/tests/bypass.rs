//! The bypass suite: one line per attempt, `(sql, expected class, expected action)`, under the
//! default policy. Every way we could think of to slip something destructive past the guard —
//! comments, case, quoting, Unicode escapes, dollar quoting, several statements in one message,
//! writes hidden in CTEs and EXPLAIN ANALYZE, functions in every position, prepared statements
//! over SQL and over the extended protocol — plus the harmless statements that must keep
//! flowing. None of the destructive cases may come out Allow or RowGuard.

use guard::{Action, BindError, Class, Guard, Policy, Session};

mod cases;
use cases::{CASES, V, matches};

fn check(guard: &Guard, session: &mut Session, sql: &str, class: Class, v: V) -> Option<String> {
    let d = guard.check_query(session, sql);
    let mut bad = Vec::new();
    if d.class != class || !matches(&d.action, v) {
        bad.push(format!("expected {class:?}/{v:?}, got {:?}/{:?}", d.class, d.action));
    }
    if d.class == Class::Destructive && matches!(d.action, Action::Allow | Action::RowGuard { .. }) {
        bad.push("DESTRUCTIVE LET THROUGH".into());
    }
    if d.statements
        .iter()
        .any(|s| s.class == Class::Destructive && matches!(s.action, Action::Allow | Action::RowGuard { .. }))
    {
        bad.push("a destructive statement was let through".into());
    }
    if d.class > Class::Write && d.reasons.is_empty() && d.class == Class::Destructive {
        bad.push("destructive without a reason".into());
    }
    (!bad.is_empty()).then(|| format!("{sql:?}: {} (reasons: {:?})", bad.join("; "), d.reasons))
}

#[test]
fn bypass_table() {
    assert!(CASES.len() >= 200, "the suite holds {} cases", CASES.len());
    let guard = Guard::new(Policy::default());
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|(sql, class, v)| check(&guard, &mut Session::default(), sql, *class, *v))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn the_cache_gives_the_same_verdicts() {
    // Second round hits the parse cache; verdicts must not change.
    let guard = Guard::new(Policy::default());
    for _ in 0..2 {
        let failures: Vec<String> = CASES
            .iter()
            .filter_map(|(sql, class, v)| check(&guard, &mut Session::default(), sql, *class, *v))
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn oversized_input_is_denied_unparsed() {
    let guard = Guard::new(Policy::default());
    let big = format!("SELECT '{}'", "x".repeat(2 * 1024 * 1024));
    let d = guard.check_query(&mut Session::default(), &big);
    assert_eq!(d.action, Action::Deny);
    assert!(d.reasons[0].contains("max_statement_bytes"), "{:?}", d.reasons);
    // Just under the limit parses.
    let ok = format!("SELECT '{}'", "x".repeat(1024 * 1024 - 20));
    assert_eq!(guard.check_query(&mut Session::default(), &ok).action, Action::Allow);
}

#[test]
fn too_many_statements_are_denied() {
    let guard = Guard::new(Policy::default());
    let many = "SELECT 1;".repeat(257);
    let d = guard.check_query(&mut Session::default(), &many);
    assert_eq!(d.action, Action::Deny);
    assert!(d.reasons[0].contains("max_statements"), "{:?}", d.reasons);
    assert_eq!(guard.check_query(&mut Session::default(), &"SELECT 1;".repeat(256)).action, Action::Allow);
}

#[test]
fn deeply_nested_input_is_denied_not_crashed() {
    // Run where the gate would: a thread with a small (2 MiB, tokio's default) stack. PostgreSQL's
    // parser checks its stack depth; trees deeper than prost's recursion limit (about 45 levels
    // of nested expressions) are refused as too deep. Either way: Deny, never a crash.
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let guard = Guard::new(Policy::default());
            let ok = format!("SELECT {}1{}", "(SELECT ".repeat(10), ")".repeat(10));
            assert_eq!(guard.check_query(&mut Session::default(), &ok).action, Action::Allow);
            let ok = format!("SELECT {}x", "x || ".repeat(40));
            assert_eq!(guard.check_query(&mut Session::default(), &ok).action, Action::Allow);
            for depth in [100, 1000, 10_000, 100_000] {
                for sql in [
                    format!("SELECT {}1{}", "(SELECT ".repeat(depth), ")".repeat(depth)),
                    format!("SELECT {}true", "NOT ".repeat(depth)),
                    format!("SELECT {}1{}", "ARRAY[".repeat(depth), "]".repeat(depth)),
                    format!("SELECT {}x", "x || ".repeat(depth)),
                    format!("DELETE FROM t WHERE id = 1 AND {}true", "NOT ".repeat(depth)),
                ] {
                    let d = guard.check_query(&mut Session::default(), &sql);
                    assert_eq!(d.action, Action::Deny, "depth {depth}: {}", &sql[..40]);
                    assert!(!d.reasons.is_empty());
                }
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

// ---- prepared statements: SQL PREPARE/EXECUTE/DEALLOCATE and the extended protocol

#[test]
fn sql_prepare_then_execute_carries_the_class() {
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    let d = guard.check_query(&mut s, "PREPARE p AS DELETE FROM orders");
    assert_eq!(d.action, Action::Allow, "PREPARE itself runs nothing");
    let d = guard.check_query(&mut s, "EXECUTE p");
    assert_eq!((d.class, d.action.clone()), (Class::Destructive, Action::Approve), "{:?}", d.reasons);
    assert!(d.reasons.iter().any(|r| r.contains("DELETE without WHERE")), "{:?}", d.reasons);

    // In one message.
    let d = guard.check_query(&mut Session::default(), "PREPARE p AS DELETE FROM t; EXECUTE p");
    assert_eq!(d.action, Action::Approve);
    // A guarded DELETE stays under the row guard when executed.
    let mut s = Session::default();
    guard.check_query(&mut s, "PREPARE q(int) AS DELETE FROM orders WHERE id = $1");
    assert_eq!(guard.check_query(&mut s, "EXECUTE q(7)").action, Action::RowGuard { max_rows: 1000 });
    // …but not when hidden inside EXPLAIN ANALYZE.
    assert_eq!(guard.check_query(&mut s, "EXPLAIN ANALYZE EXECUTE q(7)").action, Action::Approve);
    // A harmless one.
    guard.check_query(&mut s, "PREPARE r AS SELECT 1");
    assert_eq!(guard.check_query(&mut s, "EXECUTE r").action, Action::Allow);
    assert_eq!(guard.check_query(&mut s, "execute R").action, Action::Allow, "names are case-folded");
    // CREATE TABLE AS EXECUTE of a destructive one.
    guard.check_query(&mut s, "PREPARE k AS SELECT pg_terminate_backend(1)");
    assert_eq!(guard.check_query(&mut s, "CREATE TABLE x AS EXECUTE k").action, Action::Approve);
}

#[test]
fn deallocate_then_reuse_of_a_name() {
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    guard.check_query(&mut s, "PREPARE p AS SELECT 1");
    s.synced(true);
    guard.check_query(&mut s, "DEALLOCATE p");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE p").action, Action::Deny, "deallocated: unknown");
    guard.check_query(&mut s, "PREPARE p AS DELETE FROM orders");
    s.synced(true);
    assert_eq!(
        guard.check_query(&mut s, "EXECUTE p").class,
        Class::Destructive,
        "the new meaning of p counts"
    );
    // PREPARE takes only SELECT/INSERT/UPDATE/DELETE/MERGE/VALUES: anything else is a syntax error,
    // denied, and binds nothing.
    assert_eq!(guard.check_query(&mut s, "PREPARE t AS TRUNCATE orders").action, Action::Deny);
    assert_eq!(guard.check_query(&mut s, "EXECUTE t").action, Action::Deny);

    guard.check_query(&mut s, "PREPARE a AS SELECT 1; PREPARE b AS SELECT 2");
    s.synced(true);
    guard.check_query(&mut s, "DEALLOCATE ALL");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE a").action, Action::Deny);
    guard.check_query(&mut s, "PREPARE c AS SELECT 1");
    s.synced(true);
    guard.check_query(&mut s, "DISCARD ALL");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE c").action, Action::Deny);
}

#[test]
fn a_reprepared_name_stays_suspect_until_the_server_confirms() {
    // Attack: get `p` approved as a DELETE, then in a batch that fails early (so the server never
    // runs the rest) deallocate and re-prepare `p` as something harmless; the server still holds
    // the DELETE, and EXECUTE p must still need approval.
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    guard.check_query(&mut s, "PREPARE p AS DELETE FROM orders");
    s.synced(true); // approved and run
    guard.check_query(&mut s, "SELECT 1/0; DEALLOCATE p; PREPARE p AS SELECT 1");
    s.synced(false); // the server stopped at the division by zero
    let d = guard.check_query(&mut s, "EXECUTE p");
    assert_eq!(d.action, Action::Approve, "{:?}", d.reasons);
    // A later successful batch that does not touch p changes nothing.
    guard.check_query(&mut s, "SELECT 1");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE p").action, Action::Approve);
    // Once p is re-prepared in a batch that succeeds, the old binding is gone.
    guard.check_query(&mut s, "DEALLOCATE p; PREPARE p AS SELECT 1");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE p").action, Action::Allow);
}

#[test]
fn a_message_held_or_refused_changes_no_binding() {
    // Attack: p is an approved DELETE on the server. A message that would re-prepare p as
    // something harmless is held for approval (it also drops a table) and rejected, so it never
    // reaches the server; later batches succeed. EXECUTE p must still be the DELETE.
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    guard.check_query(&mut s, "PREPARE p AS DELETE FROM orders");
    s.synced(true);
    let d = guard.check_query(&mut s, "DEALLOCATE p; PREPARE p AS SELECT 1; DROP TABLE x");
    assert_eq!(d.action, Action::Approve);
    guard.check_query(&mut s, "SELECT 1");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE p").action, Action::Approve);
    // Refused outright (a syntax error later in the message): no change either.
    guard.check_query(&mut s, "DEALLOCATE p; PREPARE p AS SELECT 1; SELEC");
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE p").action, Action::Approve);
    // Within the held message itself the new meaning counts: EXECUTE after re-PREPARE.
    let d = guard.check_query(&mut s, "DEALLOCATE p; PREPARE p AS SELECT 1; EXECUTE p; DROP TABLE x");
    assert_eq!(d.statements[2].action, Action::Allow);

    // Approved and sent on: the gate applies the decision, and the bindings follow.
    let d = guard.check_query(&mut s, "PREPARE q AS SELECT 1; DROP TABLE x");
    assert_eq!(d.action, Action::Approve);
    assert_eq!(guard.check_query(&mut s, "EXECUTE q").action, Action::Deny, "not sent yet: unknown");
    s.apply(&d);
    s.synced(true);
    assert_eq!(guard.check_query(&mut s, "EXECUTE q").action, Action::Allow);
}

#[test]
fn a_parse_that_would_prepare_only_adds_possibilities() {
    // Parse("s", "PREPARE p AS SELECT 1") prepares p only when s is executed; until then the
    // server's p (an approved DELETE) stays, and EXECUTE p is judged by the strictest.
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    guard.check_query(&mut s, "PREPARE p AS DELETE FROM orders");
    s.synced(true);
    guard.check_parse(&mut s, "s", "PREPARE p AS SELECT 1");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "s").action, Action::Allow);
    assert_eq!(guard.check_query(&mut s, "EXECUTE p").action, Action::Approve);
    // A name nobody prepared yet becomes known through it, with its own class.
    guard.check_parse(&mut s, "t", "PREPARE fresh AS DELETE FROM orders WHERE id = $1");
    assert_eq!(guard.check_query(&mut s, "EXECUTE fresh(1)").action, Action::RowGuard { max_rows: 1000 });
}

/// Under standard_conforming_strings = off this is `SELECT 'a'' || '` then `DROP TABLE victim`;
/// under the default (on) it is one harmless SELECT of two concatenated strings.
pub const BACKSLASH_ATTACK: &str = r"SELECT 'a\' || '; DROP TABLE victim; --'";

#[test]
fn statements_are_lexed_as_the_server_will() {
    let guard = Guard::new(Policy::default());
    // The server's default: one harmless SELECT, which is what PostgreSQL runs.
    let mut s = Session::default();
    assert_eq!(guard.check_query(&mut s, BACKSLASH_ATTACK).action, Action::Allow);
    // Attack: switch the lexing first, in its own message.
    let d = guard.check_query(&mut s, "SET standard_conforming_strings = off");
    assert_eq!(d.class, Class::Write, "{:?}", d.reasons);
    let d = guard.check_query(&mut s, BACKSLASH_ATTACK);
    assert_eq!((d.class, d.action.clone()), (Class::Destructive, Action::Approve), "{:?}", d.reasons);
    // Once the server reports the value the guard lexes exactly as it does.
    s.server_parameter("standard_conforming_strings", "off");
    assert_eq!(guard.check_query(&mut s, BACKSLASH_ATTACK).action, Action::Approve);
    // …including what PostgreSQL itself refuses with it off: a literal ending in one backslash.
    assert_eq!(guard.check_query(&mut s, r"SELECT 'C:\\temp\\'").action, Action::Allow);
    assert_eq!(guard.check_query(&mut s, r"SELECT 'C:\temp\'").action, Action::Deny);
    s.server_parameter("standard_conforming_strings", "on");
    assert_eq!(guard.check_query(&mut s, BACKSLASH_ATTACK).action, Action::Allow);
    // Every way to change it makes the lexing uncertain.
    for change in [
        "SET standard_conforming_strings TO off",
        "SET LOCAL standard_conforming_strings = 0",
        "RESET standard_conforming_strings",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
    ] {
        let mut s = Session::default();
        guard.check_query(&mut s, change);
        assert_eq!(guard.check_query(&mut s, BACKSLASH_ATTACK).action, Action::Approve, "after {change}");
    }
    // A server configured with it off, reported at connection start.
    let mut s = Session::default();
    s.server_parameter("standard_conforming_strings", "off");
    assert_eq!(guard.check_query(&mut s, BACKSLASH_ATTACK).action, Action::Approve);
    guard.check_parse(&mut s, "x", BACKSLASH_ATTACK);
    assert_eq!(guard.check_execute(&s, "x").action, Action::Approve);
}

#[test]
fn guard_and_session_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Guard>();
    send_sync::<Session>();
    send_sync::<guard::Decision>();
}

#[test]
fn extended_protocol_parse_then_execute_by_name() {
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    let d = guard.check_parse(&mut s, "s1", "DELETE FROM orders");
    assert_eq!(d.class, Class::Destructive, "Parse reports what executing would need");
    let d = guard.check_parse(&mut s, "s2", "SELECT * FROM orders WHERE id = $1");
    assert_eq!(d.action, Action::Allow);
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "s1").action, Action::Approve);
    assert_eq!(guard.check_execute(&s, "s2").action, Action::Allow);
    assert_eq!(guard.check_execute(&s, "nope").action, Action::Deny, "unknown name fails closed");
    assert_eq!(guard.check_execute(&s, "").action, Action::Deny, "no unnamed statement yet");

    // Unnamed statement, as most drivers use it.
    guard.check_parse(&mut s, "", "UPDATE t SET a = 1 WHERE id = $1");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "").action, Action::RowGuard { max_rows: 1000 });
    guard.check_parse(&mut s, "", "SELECT 1");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "").action, Action::Allow);

    // Close, then Execute.
    s.close_statement("s2");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "s2").action, Action::Deny);

    // A simple Query destroys the unnamed statement.
    guard.check_query(&mut s, "SELECT 1");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "").action, Action::Deny);
}

#[test]
fn extended_protocol_pipeline_error_keeps_the_old_binding_suspect() {
    // Parse("", DELETE…) approved and run; then a pipeline whose first message fails makes the
    // server skip Parse("", "SELECT 1"): Execute("") would run the old DELETE again.
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    guard.check_parse(&mut s, "", "DELETE FROM orders");
    s.synced(true);
    guard.check_parse(&mut s, "x", "SELECT 1/0");
    guard.check_parse(&mut s, "", "SELECT 1");
    s.synced(false);
    let d = guard.check_execute(&s, "");
    assert_eq!(d.action, Action::Approve, "{:?}", d.reasons);
    assert!(d.reasons[0].contains("re-prepared"), "{:?}", d.reasons);
}

#[test]
fn extended_protocol_statement_that_executes_a_sql_prepared_one() {
    // Parse("s", "EXECUTE p") is resolved at Execute time: p may have changed meanwhile.
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    guard.check_query(&mut s, "PREPARE p AS SELECT 1");
    s.synced(true);
    guard.check_parse(&mut s, "s", "EXECUTE p");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "s").action, Action::Allow);
    guard.check_query(&mut s, "DEALLOCATE p; PREPARE p AS DELETE FROM orders");
    s.synced(true);
    assert_eq!(guard.check_execute(&s, "s").action, Action::Approve);
    // A statement that executes itself does not loop.
    guard.check_parse(&mut s, "loop", "EXECUTE loop");
    assert_eq!(guard.check_execute(&s, "loop").action, Action::Deny);
}

#[test]
fn search_path_tampering_is_remembered_by_the_session() {
    let policy = Policy { unknown_functions: guard::UnknownFunctions::Destructive, ..Policy::default() };
    let guard = Guard::new(policy);
    let mut s = Session::default();
    assert_eq!(guard.check_query(&mut s, "SELECT lower('x')").action, Action::Allow);
    assert_eq!(guard.check_query(&mut s, "SET search_path = public, pg_catalog").class, Class::Ddl);
    assert!(s.search_path_tampered());
    // lower() may now be public.lower: an unknown function, destructive under this policy.
    let d = guard.check_query(&mut s, "SELECT lower('x')");
    assert_eq!(d.action, Action::Approve, "{:?}", d.reasons);
    assert_eq!(guard.check_query(&mut s, "SELECT pg_catalog.lower('x')").action, Action::Allow);
    // pg_catalog first (or absent, which means first) is harmless.
    let mut s = Session::default();
    guard.check_query(&mut s, "SET search_path = pg_catalog, public");
    guard.check_query(&mut s, "SET search_path = public");
    assert!(!s.search_path_tampered());
    // set_config and the extended protocol too.
    let mut s = Session::default();
    guard.check_query(&mut s, "SELECT set_config('search_path', 'evil,pg_catalog', false)");
    assert!(s.search_path_tampered());
    let mut s = Session::default();
    guard.check_query(&mut s, "SELECT set_config('search_path', 'evil, PG_CATALOG', false)");
    assert!(s.search_path_tampered(), "unquoted names are folded to lower case");
    let mut s = Session::default();
    guard.check_query(&mut s, "SELECT set_config('search_path', 'evil, \"PG_CATALOG\"', false)");
    assert!(!s.search_path_tampered(), "a quoted \"PG_CATALOG\" is another schema");
    let mut s = Session::default();
    guard.check_query(&mut s, "SET search_path = 'evil, pg_catalog'");
    assert!(!s.search_path_tampered(), "one quoted string is one (odd) schema name");
    let mut s = Session::default();
    guard.check_parse(&mut s, "", "SET search_path = evil, pg_catalog");
    assert!(s.search_path_tampered(), "tightened at Parse already");
}

#[test]
fn prepared_statements_per_session_are_bounded() {
    let policy = Policy { max_prepared_statements: 3, ..Policy::default() };
    let guard = Guard::new(policy);
    let mut s = Session::default();
    for i in 0..3 {
        assert_eq!(guard.check_parse(&mut s, &format!("s{i}"), "SELECT 1").action, Action::Allow);
    }
    assert_eq!(guard.check_parse(&mut s, "s3", "SELECT 1").action, Action::Deny);
    assert_eq!(guard.check_query(&mut s, "PREPARE p AS SELECT 1").action, Action::Deny);
    assert_eq!(
        guard.check_parse(&mut s, "s0", "SELECT 2").action,
        Action::Allow,
        "re-binding a held name is fine"
    );
    assert!(s.prepared_count() <= 3);
}

#[test]
fn decisions_serialise_for_the_audit_log() {
    let guard = Guard::new(Policy::default());
    let d = guard.check_query(&mut Session::default(), "DELETE FROM orders WHERE id = 1; DROP TABLE t");
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["action"]["action"], "approve");
    assert_eq!(v["class"], "destructive");
    assert_eq!(v["statements"][0]["kind"], "DELETE");
    assert_eq!(v["statements"][0]["action"]["action"], "row_guard");
    assert_eq!(v["statements"][0]["action"]["max_rows"], 1000);
    assert_eq!(v["statements"][1]["objects"][0], "t");
    assert!(d.summary().contains("DROP TABLE t"), "{}", d.summary());
    // Each statement's own text, to run one of them under a savepoint.
    assert_eq!(d.statements[0].text, "DELETE FROM orders WHERE id = 1");
    assert_eq!(d.statements[1].text, "DROP TABLE t");
    let d = guard
        .check_query(&mut Session::default(), "  SELECT 'é'  ;\n -- x\n UPDATE t SET a = 'ü' WHERE id = 2;");
    assert_eq!(d.statements[0].text, "SELECT 'é'");
    assert!(
        d.statements[1].text.ends_with("UPDATE t SET a = 'ü' WHERE id = 2"),
        "{:?}",
        d.statements[1].text
    );
}

#[test]
fn a_bind_of_a_statement_the_gate_does_not_hold_is_refused_and_binds_nothing() {
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    let e = s.bind_portal("p", "nowhere").unwrap_err();
    assert_eq!(e, BindError::UnknownStatement("nowhere".into()));
    assert!(e.to_string().contains("\"nowhere\" is unknown to the gate"), "{e}");
    assert_eq!(guard.check_execute_portal(&s, "p").action, Action::Deny);
    // Parsed and closed in the same batch: the server holds nothing under the name either.
    guard.check_parse(&mut s, "gone", "DELETE FROM orders");
    s.close_statement("gone");
    guard.check_parse(&mut s, "gone", "DELETE FROM orders WHERE id = 1");
    s.close_statement("gone");
    assert_eq!(s.bind_portal("p", "gone"), Err(BindError::Closed("gone".into())));
    assert_eq!(guard.check_execute_portal(&s, "p").action, Action::Deny);
}

#[test]
fn portals_keep_what_was_bound_and_share_one_namespace_with_cursors() {
    let guard = Guard::new(Policy::default());
    let mut s = Session::default();
    // Bound over a DELETE, then the statement name re-parsed as a read: the portal still runs
    // the DELETE.
    guard.check_parse(&mut s, "s", "DELETE FROM orders");
    s.bind_portal("p", "s").unwrap();
    s.close_statement("s");
    guard.check_parse(&mut s, "s", "SELECT 1");
    assert_eq!(guard.check_execute_portal(&s, "p").action, Action::Approve);
    // Even after the server confirmed the new statement text.
    s.sync_sent();
    s.ready(true, false);
    assert_eq!(guard.check_execute_portal(&s, "p").action, Action::Approve);
    // FETCH/MOVE from it run the DELETE: never a plain read.
    for drive in ["FETCH ALL FROM p", "MOVE ALL IN p", "FETCH 1 FROM \"p\""] {
        let d = guard.check_query(&mut s, drive);
        assert!(d.class >= Class::Destructive && d.action == Action::Approve, "{drive}: {d:?}");
    }
    // A portal over a measured write is measured when FETCHed.
    guard.check_parse(&mut s, "w", "DELETE FROM orders WHERE id > 5 RETURNING id");
    s.bind_portal("q", "w").unwrap();
    assert!(matches!(guard.check_query(&mut s, "FETCH ALL FROM q").action, Action::RowGuard { .. }));
    // The transaction ends: portals bound before that sync point are gone, cursors WITH HOLD
    // stay; portals bound after it (a pipelining client) stay too.
    s.sync_sent();
    guard.check_query(&mut s, "DECLARE h CURSOR WITH HOLD FOR SELECT 1");
    s.sync_sent();
    s.bind_portal("later", "w").unwrap();
    s.ready(true, true);
    assert_eq!(guard.check_execute_portal(&s, "p").action, Action::Deny, "gone with its transaction");
    s.ready(true, false); // the DECLARE's Query answered
    assert!(matches!(guard.check_execute_portal(&s, "later").action, Action::RowGuard { .. }));
    assert_eq!(guard.check_query(&mut s, "FETCH ALL FROM h").action, Action::Allow);
    // A cursor the gate never saw opened (a function may return one over a DELETE … RETURNING)
    // is measured like a write.
    assert!(matches!(guard.check_query(&mut s, "FETCH ALL FROM nobody").action, Action::RowGuard { .. }));
    // DECLARE then FETCH in one message: the FETCH sees the new cursor.
    let d = guard.check_query(&mut s, "DECLARE c CURSOR FOR SELECT id FROM orders; FETCH 5 FROM c");
    assert_eq!(d.action, Action::Allow);
    // A portal over a FETCH from itself is refused, not followed forever (found by the
    // generator: it overflowed the gate's stack).
    guard.check_parse(&mut s, "self", "FETCH ALL FROM loop");
    s.bind_portal("loop", "self").unwrap();
    assert_eq!(guard.check_execute_portal(&s, "loop").action, Action::Deny);
    assert_eq!(guard.check_query(&mut s, "FETCH ALL FROM loop").action, Action::Deny);
    // Re-bound again and again without the server confirming: refused rather than forgetting
    // an old binding.
    guard.check_parse(&mut s, "r", "SELECT 1");
    for _ in 0..40 {
        s.bind_portal("many", "w").unwrap();
        s.bind_portal("many", "r").unwrap();
    }
    assert_eq!(guard.check_execute_portal(&s, "many").action, Action::Deny);
    // The unnamed portal is dropped by a simple Query.
    guard.check_parse(&mut s, "", "DELETE FROM orders");
    s.bind_portal("", "").unwrap();
    guard.check_query(&mut s, "SELECT 1");
    s.sync_sent();
    s.ready(true, false);
    assert_eq!(guard.check_execute_portal(&s, "").action, Action::Deny);
}
