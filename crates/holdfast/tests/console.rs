//! The gate's approvals console in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) over WebDriver, against `holdfast gate serve` as its own process in front
//! of a real PostgreSQL, with real psql sessions holding statements.
//!
//! What must hold: no page without a session; a wrong one-time code signs nobody in; the
//! session cookie is `Secure; HttpOnly; SameSite=Strict`; the pending request shows its SQL
//! (a `<script>` in it as text), person, address and row count; a POST without the CSRF token
//! is refused; a wrong code decides nothing; a new request appears on an open page by itself;
//! nobody gets buttons for their own request (dave rejects bob's); bob's
//! approval runs alice's statement in her session; the audit page shows her held DELETE and
//! the decision, verified in the chain (the `<script>` as text), and exports them as JSON Lines
//! and CSV; with 5,000 more records it pages by 100 and still verifies the chain. One browser,
//! one gate: screenshots go to
//! `target/console-screenshots/` (to `docs/console/`, the README's gallery, with
//! `HOLDFAST_CONSOLE_SHOTS=docs`), page load times (as the browser measured them) to the test's output.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod gate_harness;
use gate_harness::*;
use serde_json::json;
use testkit::browser::Browser;

/// Where screenshots go: the build's target directory, so a test run leaves the checkout
/// clean; `HOLDFAST_CONSOLE_SHOTS=docs` refreshes the README's gallery in `docs/console/`.
fn shots() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = if std::env::var("HOLDFAST_CONSOLE_SHOTS").as_deref() == Ok("docs") {
        root.join("docs/console")
    } else {
        root.join("target/console-screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The TOTP code of `secret` `ahead` steps from now (the gate accepts one step of skew; the
/// console refuses a step once used, so each use takes the next one).
fn code(secret: &str, ahead: u64) -> String {
    let key = gate::totp::base32_decode(secret).unwrap();
    format!("{:06}", gate::totp::code_at(&key, gate::approvals::unix_now() / 30 + ahead))
}

/// The id of `person`'s pending request, once there is one.
fn pending_of(g: &Gate, person: &str) -> String {
    let deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(40));
    loop {
        let out = g.cli("alice", "alice-password", None, &["pending", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let found = v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["state"]["state"] == "pending" && r["person"] == person)
            .map(|r| r["id"].as_str().unwrap().to_string());
        if let Some(id) = found {
            return id;
        }
        assert!(Instant::now() < deadline, "no pending request of {person}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn_psql(g: &Gate, user: &str, password: &str, sql: &str) -> Child {
    Command::new(testkit::pg::bin("psql").unwrap())
        .arg(g.conninfo(user, "require"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The text of the first `css` element once it contains `needle` (the page may still be the
/// one before a form's POST, or be replaced while read: both are waited out).
fn wait_text(b: &Browser, css: &str, needle: &str) -> String {
    let deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(30));
    loop {
        let t = b.find(css).and_then(|e| e.text()).unwrap_or_default();
        if t.contains(needle) {
            return t;
        }
        assert!(Instant::now() < deadline, "no {css:?} saying {needle:?}; last seen {t:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sign_in(b: &Browser, base: &str, person: &str, password: &str, totp: &str) {
    b.goto(&format!("{base}/console/login")).unwrap();
    b.wait_for("#person", Duration::from_secs(10)).unwrap().send_keys(person).unwrap();
    b.find("#password").unwrap().send_keys(password).unwrap();
    b.find("#totp").unwrap().send_keys(totp).unwrap();
    b.find("#signin").unwrap().click().unwrap();
}

#[test]
fn console_bob_approves_alices_delete_in_a_browser() {
    // Dave approves too, so that bob's own request waits for him (with bob the only approver,
    // it would be refused at once).
    let dave = format!(
        "approval_timeout = \"180s\"\n[[person]]\nname = \"dave\"\nscram = \"{}\"\napprover = true\ntotp_secret = \"{ALICE_TOTP}\"\n",
        gate::scram::Verifier::generate("dave-password")
    );
    let g = Gate::start(&dave, "row_guard_max_rows = 10\n");
    let base = format!("https://{}", g.control);
    let b = Browser::start().unwrap();
    let mut loads = Vec::new();

    // No page without a session: the approvals page sends the browser to sign in.
    b.goto(&format!("{base}/console/approvals")).unwrap();
    assert!(b.url().unwrap().ends_with("/console/login"), "{}", b.url().unwrap());
    loads.push(("sign-in", b.load_ms().unwrap()));
    b.screenshot(&shots().join("sign-in.png")).unwrap();

    // Alice's DELETE touches 20 rows (the row guard allows 10): held, with a <script> in it.
    let sql = "DELETE FROM scratch WHERE id > 0 AND '<script>document.title=\"pwned\"</script>' <> ''";
    let alice = spawn_psql(&g, "alice", "alice-password", sql);
    let alice_id = pending_of(&g, "alice");

    // A wrong one-time code signs nobody in.
    let right = code(BOB_TOTP, 0);
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
    sign_in(&b, &base, "bob", "bob-password", &wrong);
    wait_text(&b, "#error", "Wrong name, password or one-time code");
    assert!(b.cookies().unwrap().iter().all(|c| c["name"] != "__Host-hf_session"), "no session cookie");
    b.goto(&format!("{base}/console/approvals")).unwrap();
    assert!(b.url().unwrap().ends_with("/console/login"));

    // The right code: signed in, with a cookie scripts cannot read and other sites cannot send.
    sign_in(&b, &base, "bob", "bob-password", &right);
    assert_eq!(b.wait_for("#whoami", Duration::from_secs(10)).unwrap().text().unwrap(), "bob");
    let cookies = b.cookies().unwrap();
    let session = cookies.iter().find(|c| c["name"] == "__Host-hf_session").expect("session cookie");
    assert_eq!(
        (&session["httpOnly"], &session["secure"], &session["sameSite"]),
        (&json!(true), &json!(true), &json!("Strict")),
        "{session}"
    );
    loads.push(("approvals", b.load_ms().unwrap()));

    // Alice's request: her SQL (the script as text, never run), address, the row count.
    let card = b.find(&format!("#req-{alice_id}")).unwrap();
    let t = card.text().unwrap();
    assert!(t.contains(sql), "the SQL verbatim: {t}");
    assert!(t.contains("alice from 127.0.0.1:"), "{t}");
    assert!(t.contains("20 rows"), "the row count that held it: {t}");
    assert_eq!(card.find_all("button.approve").unwrap().len(), 1);
    assert_ne!(b.title().unwrap(), "pwned");
    assert_eq!(b.execute("return document.querySelectorAll('main script').length", json!([])).unwrap(), 0);
    // Bob's own destructive statement is held too; the open page shows it by itself.
    let bobs = spawn_psql(&g, "bob", "bob-password", "DELETE FROM orders");
    let bob_id = pending_of(&g, "bob");
    let own = b.wait_for(&format!("#req-{bob_id}"), Duration::from_secs(15)).unwrap();
    assert_eq!(b.find("#pending-count").unwrap().text().unwrap(), "2");
    // No buttons for his own request.
    assert!(own.find_all("button").unwrap().is_empty(), "no decision on one's own request");
    assert!(own.text().unwrap().contains("Your own request"));
    b.screenshot(&shots().join("approvals.png")).unwrap();

    // A POST without the CSRF token is refused (from the page itself, with its cookie).
    let status = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/console/approvals/' + arguments[0] + '/decide', {method: 'POST',
               headers: {'content-type': 'application/x-www-form-urlencoded'},
               body: 'decision=approve&reason=no+token&totp=' + arguments[1]})
             .then(r => done(r.status), e => done(String(e)));",
            json!([alice_id, code(BOB_TOTP, 1)]),
        )
        .unwrap();
    assert_eq!(status, 403);

    // A wrong code decides nothing.
    let form = |b: &Browser, totp: &str, reason: &str| {
        let card = b.find(&format!("#req-{alice_id}")).unwrap();
        card.find_all("input.totp").unwrap()[0].send_keys(totp).unwrap();
        card.find_all("input.reason").unwrap()[0].send_keys(reason).unwrap();
        card.find_all("button.approve").unwrap()[0].click().unwrap();
    };
    form(&b, &wrong, "20 test rows, fine");
    wait_text(&b, "#flash", "Wrong or already used one-time code");
    assert!(b.find(&format!("#req-{alice_id}")).is_ok(), "still pending");

    // Bob approves with the next code: alice's psql gets its result.
    form(&b, &code(BOB_TOTP, 1), "20 test rows, fine");
    wait_text(&b, "#flash", &format!("Approved {alice_id}"));
    let outcome = b.find(&format!("#done-{alice_id} .outcome")).unwrap().text().unwrap();
    assert!(outcome.starts_with("approved by bob"), "{outcome}");
    loads.push(("approvals after a decision", b.load_ms().unwrap()));
    b.screenshot(&shots().join("approved.png")).unwrap();
    let out = alice.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(g.count("scratch"), 0);
    assert_eq!(g.count("orders"), 100, "bob's own DELETE never ran");

    // The audit page, searched for alice: her held DELETE (the <script> as text), verified in
    // the chain; searched for the request's id: the hold and bob's decision; the export has them.
    b.goto(&format!("{base}/console/audit?person=alice")).unwrap();
    wait_text(&b, "#chain", "Chain verified");
    let held = b.find("#records tr[data-kind=approval_requested]").unwrap().text().unwrap();
    assert!(held.contains(sql) && held.contains("alice") && held.contains("verified"), "{held}");
    assert_ne!(b.title().unwrap(), "pwned");
    assert_eq!(b.execute("return document.querySelectorAll('main script').length", json!([])).unwrap(), 0);
    loads.push(("audit, one person", b.load_ms().unwrap()));
    b.goto(&format!("{base}/console/audit?text={alice_id}")).unwrap();
    let decided = wait_text(&b, "#records tr[data-kind=approved]", "bob");
    assert!(decided.contains("verified") && !decided.contains("NOT"), "{decided}");
    assert!(b.find("#records tr[data-kind=approval_requested]").is_ok());
    b.screenshot(&shots().join("audit.png")).unwrap();
    let href = b.execute("return document.querySelector('#export-jsonl').href", json!([])).unwrap();
    let exported = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0]).then(r => r.text()).then(done, e => done(String(e)));",
            json!([href.as_str().unwrap()]),
        )
        .unwrap();
    let lines: Vec<serde_json::Value> =
        exported.as_str().unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"approval_requested") && kinds.contains(&"approved"), "{kinds:?}");
    assert!(lines.iter().all(|l| l["verified"] == true && l["hash"].as_str().unwrap().len() == 64));
    assert!(lines.iter().any(|l| l["detail"]["sql"] == sql), "the SQL verbatim in the export");
    let csv_href = b.execute("return document.querySelector('#export-csv').href", json!([])).unwrap();
    let csv = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0]).then(r => r.text()).then(done, e => done(String(e)));",
            json!([csv_href.as_str().unwrap()]),
        )
        .unwrap();
    let csv = csv.as_str().unwrap();
    assert!(csv.starts_with("seq,time,person,") && csv.lines().count() == lines.len() + 1, "{csv}");

    // On a phone's screen.
    b.set_window(390, 844).unwrap();
    b.goto(&format!("{base}/console/approvals")).unwrap();
    b.wait_for("#whoami", Duration::from_secs(10)).unwrap();
    b.screenshot(&shots().join("approvals-phone.png")).unwrap();

    // Signing out ends the session on the server.
    b.find("form.logout button").unwrap().click().unwrap();
    b.wait_for("#login", Duration::from_secs(10)).unwrap();
    b.goto(&format!("{base}/console/approvals")).unwrap();
    assert!(b.url().unwrap().ends_with("/console/login"));

    // Dave (the other approver) signs in and rejects bob's DELETE: bob's psql gets the
    // rejection, nothing is deleted.
    b.set_window(1100, 1000).unwrap();
    sign_in(&b, &base, "dave", "dave-password", &code(ALICE_TOTP, 0));
    assert_eq!(b.wait_for("#whoami", Duration::from_secs(10)).unwrap().text().unwrap(), "dave");
    let card = b.find(&format!("#req-{bob_id}")).unwrap();
    card.find_all("input.totp").unwrap()[0].send_keys(&code(ALICE_TOTP, 1)).unwrap();
    card.find_all("input.reason").unwrap()[0].send_keys("not without a WHERE").unwrap();
    card.find_all("button.reject").unwrap()[0].click().unwrap();
    wait_text(&b, "#flash", &format!("Rejected {bob_id}"));
    let out = bobs.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("rejected by dave"), "{}", text(&out));
    assert_eq!(g.count("orders"), 100);

    // The gate's audit log has bob's decision, made on the console from his address, and the
    // refused sign-in.
    let mut spool = String::new();
    for e in std::fs::read_dir(g.dir.join("state/audit")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            spool += &std::fs::read_to_string(p).unwrap();
        }
    }
    let decision = spool
        .lines()
        .find(|l| l.contains("\"via\":\"console\"") && l.contains(&alice_id))
        .unwrap_or_else(|| panic!("no console decision in the audit log"));
    assert!(decision.contains("\"bob\"") && decision.contains("127.0.0.1:"), "{decision}");
    assert!(
        spool.lines().any(|l| l.contains("console password + totp") && l.contains("\"ok\":false")),
        "the refused sign-in is audited"
    );

    // A large log: 5,000 more records appended to the spool while the gate is stopped (its key,
    // its chain), then the audit page pages through them and still verifies the whole chain.
    const EXTRA: usize = 5000;
    let mut g = g;
    g.restart_after(|state| {
        let key = audit::keyfile::load(&state.join("audit.key")).unwrap();
        let log = audit::AuditLog::open(&state.join("audit"), key, audit::SpoolOptions::default()).unwrap();
        for i in 0..EXTRA {
            let ev = audit::Event::new(audit::EventKind::Statement)
                .person(["alice", "bob", "carol"][i % 3])
                .client(format!("10.0.{}.{}:5432", i / 250, i % 250))
                .detail(json!({"sql": format!("SELECT * FROM orders WHERE id = {i}"), "verdict": "allow"}));
            log.submit_nowait(ev).unwrap();
        }
        log.append_blocking(audit::Event::new(audit::EventKind::Other("load_test_end".into()))).unwrap();
        drop(log);
        // Closed, but its lock file names this (living) test process: the gate would refuse it.
        std::fs::remove_file(state.join("audit/lock")).unwrap();
    });
    let base = format!("https://{}", g.control);
    sign_in(&b, &base, "dave", "dave-password", &code(ALICE_TOTP, 0));
    b.wait_for("#whoami", Duration::from_secs(10)).unwrap();
    b.goto(&format!("{base}/console/audit")).unwrap();
    wait_text(&b, "#chain", "Chain verified: seq 1–");
    let hits: usize = b.find("#hits").unwrap().text().unwrap().parse().unwrap();
    assert!(hits > EXTRA, "{hits}");
    assert_eq!(b.find_all("#records tr[id^=rec-]").unwrap().len(), 100, "100 a page");
    assert!(b.find("#pages").unwrap().text().unwrap().contains(&format!("of {}", hits.div_ceil(100))));
    eprintln!("console page load (audit, newest 100 of {hits} records): {:.0} ms", b.load_ms().unwrap());
    b.find("#next-page").unwrap().click().unwrap();
    wait_text(&b, "#pages", "page 2 of");
    b.goto(&format!("{base}/console/audit?person=carol&text=id+%3D+4997")).unwrap();
    wait_text(&b, "#hits", "1");
    loads.push(("audit, a search over all of them", b.load_ms().unwrap()));
    b.goto(&format!("{base}/console/approvals")).unwrap();
    b.wait_for("#whoami", Duration::from_secs(10)).unwrap();
    loads.push(("approvals, with that log", b.load_ms().unwrap()));

    for (page, ms) in loads {
        eprintln!("console page load ({page}): {ms:.0} ms");
    }
}

/// Grants and break-glass on the gate's console: no page without a session; alice requests a
/// grant of `dba` (a wrong code asks nothing; a POST without the CSRF token is refused; her
/// reason with a `<script>` in it shown as text) and is offered no decision on it; dave breaks
/// the glass and sees it active and until when; bob approves her grant on the approvals page
/// and both show as active with their end; `alice@dba` then logs in as `dba`. Both are in the
/// gate's audit log with the console's client address. Restarted with a 3-second approval
/// timeout and 10-second sessions: alice's held DELETE nobody decides gets the timeout error and
/// shows as expired, no longer pending; bob's session, left alone, is sent back to sign-in.
#[test]
fn console_grants_and_break_glass_in_a_browser() {
    let dave = format!(
        "approval_timeout = \"180s\"\n[[person]]\nname = \"dave\"\nscram = \"{}\"\napprover = true\ntotp_secret = \"{ALICE_TOTP}\"\n",
        gate::scram::Verifier::generate("dave-password")
    );
    let g = Gate::start(&dave, "");
    let base = format!("https://{}", g.control);
    let b = Browser::start().unwrap();
    b.goto(&format!("{base}/console/grants")).unwrap();
    assert!(b.url().unwrap().ends_with("/console/login"), "no page without a session");

    sign_in(&b, &base, "alice", "alice-password", &code(ALICE_TOTP, 0));
    b.wait_for("#whoami", Duration::from_secs(10)).unwrap();
    b.goto(&format!("{base}/console/grants")).unwrap();
    b.wait_for("#request-grant", Duration::from_secs(10)).unwrap();
    assert_eq!(b.find("#active-count").unwrap().text().unwrap(), "0");
    let ask = |b: &Browser, totp: &str, reason: &str| {
        b.find("#g-for").unwrap().send_keys("30m").unwrap();
        b.find("#g-totp").unwrap().send_keys(totp).unwrap();
        b.find("#g-reason").unwrap().send_keys(reason).unwrap();
        b.find("#g-submit").unwrap().click().unwrap();
    };
    // A wrong code asks nothing.
    let right = code(ALICE_TOTP, 1);
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
    let reason = "reindex <script>document.title='pwned'</script> orders";
    ask(&b, &wrong, reason);
    wait_text(&b, "#flash", "Wrong or already used one-time code");
    assert_eq!(b.find("#waiting-count").unwrap().text().unwrap(), "0");
    // A POST without the CSRF token is refused.
    let status = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/console/grants/break-glass', {method: 'POST',
               headers: {'content-type': 'application/x-www-form-urlencoded'},
               body: 'for=15m&reason=no+token+at+all&totp=' + arguments[0]})
             .then(r => done(r.status), e => done(String(e)));",
            json!([code(ALICE_TOTP, 1)]),
        )
        .unwrap();
    assert_eq!(status, 403);
    ask(&b, &right, reason);
    let flash = wait_text(&b, "#flash", "Requested ");
    let grant_id = flash.split_whitespace().nth(1).unwrap().trim_end_matches(':').to_string();
    let waiting = b.find(&format!("#wait-{grant_id}")).unwrap().text().unwrap();
    assert!(waiting.contains("alice") && waiting.contains("dba") && waiting.contains(reason), "{waiting}");
    assert_ne!(b.title().unwrap(), "pwned");
    assert_eq!(b.execute("return document.querySelectorAll('main script').length", json!([])).unwrap(), 0);
    // Her own request offers her no decision.
    b.goto(&format!("{base}/console/approvals")).unwrap();
    let own = b.wait_for(&format!("#req-{grant_id}"), Duration::from_secs(10)).unwrap();
    assert!(own.find_all("button").unwrap().is_empty() && own.text().unwrap().contains("Your own request"));

    // Dave breaks the glass (a code is good once per 30-second step and person, so a second
    // action of alice's would wait for the clock): active at once, with its end.
    b.find("form.logout button").unwrap().click().unwrap();
    b.wait_for("#login", Duration::from_secs(10)).unwrap();
    sign_in(&b, &base, "dave", "dave-password", &code(ALICE_TOTP, 0));
    b.wait_for("#whoami", Duration::from_secs(10)).unwrap();
    b.goto(&format!("{base}/console/grants")).unwrap();
    b.wait_for("#bg-for", Duration::from_secs(10)).unwrap().send_keys("15m").unwrap();
    b.find("#bg-totp").unwrap().send_keys(&code(ALICE_TOTP, 1)).unwrap();
    b.find("#bg-reason").unwrap().send_keys("the nightly job is stuck, clearing by hand").unwrap();
    b.find("#bg-submit").unwrap().click().unwrap();
    wait_text(&b, "#flash", "Break-glass active until");
    let active = b.find("#active").unwrap().text().unwrap();
    assert!(
        active.contains("dave") && active.contains("break-glass") && active.contains("nobody (alerted)"),
        "{active}"
    );
    assert!(b.find("#glass-active").is_ok());
    assert!(b.find_all("#no-roles").unwrap().len() == 1, "dave may request no role");

    // Bob approves alice's grant on the approvals page: both are active, each with its end.
    b.find("form.logout button").unwrap().click().unwrap();
    b.wait_for("#login", Duration::from_secs(10)).unwrap();
    sign_in(&b, &base, "bob", "bob-password", &code(BOB_TOTP, 0));
    b.wait_for("#whoami", Duration::from_secs(10)).unwrap();
    let card = b.wait_for(&format!("#req-{grant_id}"), Duration::from_secs(10)).unwrap();
    assert!(card.text().unwrap().contains("A grant of role dba"), "{}", card.text().unwrap());
    card.find_all("input.totp").unwrap()[0].send_keys(&code(BOB_TOTP, 1)).unwrap();
    card.find_all("input.reason").unwrap()[0].send_keys("index maintenance, ok").unwrap();
    card.find_all("button.approve").unwrap()[0].click().unwrap();
    wait_text(&b, "#flash", &format!("Approved {grant_id}"));
    b.find("#nav-grants").unwrap().click().unwrap();
    wait_text(&b, "#active-count", "2");
    let row = b.find("#active tr:not(.glass):not(:first-child)").unwrap().text().unwrap();
    assert!(
        row.contains("alice") && row.contains("dba") && row.contains("bob") && row.contains('T'),
        "{row}"
    );
    b.screenshot(&shots().join("grants.png")).unwrap();
    eprintln!("console page load (grants): {:.0} ms", b.load_ms().unwrap());

    // The grant works: alice@dba is the dba role.
    let out = g.psql_as("alice@dba", "alice-password", "SELECT current_user");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "dba");
    // Both are audited with the console's client address.
    let mut spool = String::new();
    for e in std::fs::read_dir(g.dir.join("state/audit")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            spool += &std::fs::read_to_string(p).unwrap();
        }
    }
    for (kind, who) in [("\"grant_requested\"", "\"alice\""), ("\"break_glass\"", "\"dave\"")] {
        let line = spool.lines().find(|l| l.contains(kind)).unwrap_or_else(|| panic!("no {kind} record"));
        assert!(line.contains(who) && line.contains("127.0.0.1:"), "{line}");
    }

    // The same gate restarted with a 3-second approval timeout and 10-second console sessions
    // (both global settings, so only now, after the steps that need time): a held statement
    // nobody decides ends in the timeout error for its client and shows as expired, no longer
    // pending; a session is sent back to sign-in once its time is over.
    let mut g = g;
    let toml = std::fs::read_to_string(g.dir.join("gate.toml")).unwrap();
    let toml =
        toml.replace("approval_timeout = \"180s\"", "approval_timeout = \"3s\"\nconsole_session = \"10s\"");
    std::fs::write(g.dir.join("gate.toml"), toml).unwrap();
    g.restart_after(|_| {});
    let base = format!("https://{}", g.control);
    let sql = "DELETE FROM orders";
    let out = spawn_psql(&g, "alice", "alice-password", sql).wait_with_output().unwrap();
    assert!(!out.status.success() && text(&out).contains("nobody approved it in time"), "{}", text(&out));
    assert_eq!(g.count("orders"), 100);
    sign_in(&b, &base, "bob", "bob-password", &code(BOB_TOTP, 0));
    b.wait_for("#whoami", Duration::from_secs(10)).unwrap();
    let signed_in_at = Instant::now();
    let done = wait_text(&b, "#decided", "expired");
    let row = done.lines().find(|l| l.contains("alice")).unwrap_or_default().to_string();
    assert!(row.contains("statement") && row.ends_with("expired"), "{done}");
    assert_eq!(b.find("#pending-count").unwrap().text().unwrap(), "0", "no longer pending");
    std::thread::sleep(Duration::from_secs(11).saturating_sub(signed_in_at.elapsed()));
    b.goto(&format!("{base}/console/approvals")).unwrap();
    assert!(
        b.url().unwrap().ends_with("/console/login"),
        "an expired session signs in again: {}",
        b.url().unwrap()
    );
}

/// The vault's console in the same kind of browser: a read token sees the cluster and, after a
/// DROP TABLE, the incident naming the table with the restore command — which, run as shown,
/// brings the rows back; a read sign-in gets no drill button and its POST is refused (the drills
/// page it does see), as is its acknowledgement of the incident; an admin sign-in acknowledges
/// it (shown with who and when, the incident kept) and gets the drill button, and the drill it
/// starts shows on the drills page, passed, its signed report verified. The cluster page draws
/// the restorable window as a bar with the incident's mark linking to its card; restarted with
/// short sessions, a session left alone past its time is sent back to sign-in.
#[test]
fn console_vault_shows_a_dropped_table_and_the_restore_that_undoes_it() {
    use testkit::pg::{TempPg, command_as_postgres};
    use testkit::vault::TempVault;
    let pg = TempPg::start().unwrap();
    pg.psql(
        "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 3000) g;",
    )
    .unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    // One enrolled keyholder, so that a deletion can be proposed (and shown).
    let keys = tempfile::tempdir().unwrap();
    let kh = keys.path().join("carol.key");
    let out = Command::new(holdfast()).args(["keygen", "--out", kh.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    let opts = testkit::vault::TempVaultOptions {
        keyholders: vec![("carol".into(), String::from_utf8(out.stdout).unwrap().trim().to_string())],
        threshold: Some(1),
        ..Default::default()
    };
    let mut v = TempVault::start_with(holdfast(), opts).unwrap();
    let pw = v.scratch().join("rep.password");
    std::fs::write(&pw, "rep-secret\n").unwrap();
    // The gate's audit key, trusted by the vault's audit page.
    let gate_key = audit::keyfile::generate(&v.scratch().join("gate-audit.key")).unwrap();
    let text = std::fs::read_to_string(v.config_path()).unwrap();
    std::fs::write(
        v.config_path(),
        format!(
            "audit_trust_keys = [\"{}\"]\n{text}\n[[cluster]]\nname = \"main\"\nhosts = [\"{}:{}\"]\nuser = \"holdfast_rep\"\npassword_file = \"{}\"\nsslmode = \"disable\"\ncatalog_refresh_seconds = 2\n",
            audit::key_hex(&gate_key.verifying_key()),
            pg.socket_dir().display(),
            pg.port(),
            pw.display()
        ),
    )
    .unwrap();
    v.kill();
    v.restart().unwrap();
    let admin = v.scratch().join("admin.token");
    let out = v.cli(&admin, &["backup", "--cluster", "main", "--json"]).unwrap();
    assert!(out.status.success(), "backup: {}\n{}", String::from_utf8_lossy(&out.stderr), v.log());
    let backup: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backup = backup["id"].as_str().unwrap_or_else(|| panic!("no id in {backup}")).to_string();
    let out =
        v.cli(&admin, &["vault", "propose", "--backup", &backup, "--reason", "<b>disk</b> space"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let proposal: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let proposal = proposal["id"].as_str().unwrap().to_string();
    let read = v.scratch().join("read.token");
    let args = ["vault", "token", "create", "--scope", "read", "--label", "oncall", "--out"];
    let out = v.cli(&admin, &[&args[..], &[read.to_str().unwrap()]].concat()).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A gate ships its audit log into the vault with an append token: mallory's DROP (a
    // `<script>` in its text), then a batch signed by a key the vault does not trust.
    let append = v.scratch().join("append.token");
    let args = ["vault", "token", "create", "--scope", "append", "--label", "gate", "--out"];
    let out = v.cli(&admin, &[&args[..], &[append.to_str().unwrap()]].concat()).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let drop_sql = "DROP TABLE customers -- <script>document.title='pwned'</script>";
    let now = audit::AuditTime::now();
    let r1 = audit::Record::new(
        1,
        now,
        audit::Digest::ZERO,
        audit::Event::new(audit::EventKind::Statement)
            .person("mallory")
            .client("10.0.0.66:50123")
            .detail(json!({"sql": drop_sql, "verdict": "allow"})),
    );
    let r2 = audit::Record::new(
        2,
        audit::AuditTime(now.0 + 1000),
        r1.hash,
        audit::Event::new(audit::EventKind::StatementDone).person("mallory").detail(json!({"rows": 0})),
    );
    let r3 = audit::Record::new(
        3,
        audit::AuditTime(now.0 + 2000),
        r2.hash,
        audit::Event::new(audit::EventKind::Statement),
    );
    let forger = ed25519_dalek::SigningKey::from_bytes(&[66; 32]);
    let append_client = vault_api::VaultClient::new(
        v.url(),
        &v.ca_pem(),
        Some(std::fs::read_to_string(&append).unwrap().trim().to_string()),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for b in [
        audit::Batch::sign("gate-1", vec![r1, r2], &gate_key).unwrap(),
        audit::Batch::sign("gate-1", vec![r3], &forger).unwrap(),
    ] {
        rt.block_on(append_client.append_record(audit::BATCH_KIND, serde_json::to_value(&b).unwrap()))
            .unwrap();
    }

    // The table is dropped: one incident.
    pg.psql("DROP TABLE customers").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = v.cli(&read, &["incidents", "--cluster", "main", "--json"]).unwrap();
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if list.iter().any(|i| i["kind"] == "relations_dropped") {
            break;
        }
        assert!(Instant::now() < deadline, "no incident: {list:?}\n{}", v.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    let b = Browser::start().unwrap();
    let base = v.url().to_string();
    for page in ["clusters", "audit", "audit/export.jsonl"] {
        b.goto(&format!("{base}/console/{page}")).unwrap();
        assert!(b.url().unwrap().ends_with("/console/login"), "no {page} without a session");
    }
    let sign_in = |token: &str| {
        b.goto(&format!("{base}/console/login")).unwrap();
        b.wait_for("#token", Duration::from_secs(10)).unwrap().send_keys(token).unwrap();
        b.find("#signin").unwrap().click().unwrap();
    };
    sign_in("hft_0000000000000000_nope");
    assert!(b.wait_for("#error", Duration::from_secs(10)).is_ok(), "a wrong token signs nobody in");
    let read_token = std::fs::read_to_string(&read).unwrap();
    sign_in(read_token.trim());
    assert_eq!(b.wait_for("#scope", Duration::from_secs(10)).unwrap().text().unwrap(), "read");
    let card = b.find("#cluster-main").unwrap().text().unwrap();
    assert!(card.contains("streaming") && card.contains("restorable"), "{card}");
    let mut loads = vec![("clusters", b.load_ms().unwrap())];
    b.screenshot(&shots().join("vault-clusters.png")).unwrap();

    b.goto(&format!("{base}/console/clusters/main")).unwrap();
    let incident = b.wait_for("#incident-1", Duration::from_secs(10)).unwrap().text().unwrap();
    assert!(incident.contains("customers") && incident.contains("dropped"), "{incident}");
    let command = b.find("#incident-1 pre.command").unwrap().text().unwrap();
    // The restorable window as a bar: a filled interval, the base backup's tick, and the
    // incident's red mark linking to its card.
    assert!(!b.find_all("#timeline svg rect.interval").unwrap().is_empty(), "a restorable interval");
    assert!(!b.find_all("#timeline svg line.backup").unwrap().is_empty(), "a base backup tick");
    b.find("#timeline svg a[href='#incident-1']").expect("the incident's mark links to its card");
    let title = b
        .execute(
            "return document.querySelector(\"#timeline a[href='#incident-1'] title\").textContent",
            json!([]),
        )
        .unwrap();
    assert!(title.as_str().unwrap().starts_with("incident #1 relations_dropped at "), "{title}");
    assert!(b.find("#windows").unwrap().text().unwrap().contains("timeline 1"), "the text list under it");
    assert!(command.starts_with("holdfast restore --cluster main --before-incident 1 "), "{command}");
    assert!(b.find_all("#start-drill").unwrap().is_empty(), "no admin action for a read token");
    // Who ran what just before: the gate's record of mallory's DROP, verified, as text.
    let around = b.find("#incident-1 + .around").unwrap().text().unwrap();
    assert!(
        around.contains("mallory") && around.contains(drop_sql) && around.contains("verified"),
        "{around}"
    );
    assert!(!around.contains("NOT verified"), "{around}");
    assert_ne!(b.title().unwrap(), "pwned");
    assert_eq!(b.execute("return document.querySelectorAll('main script').length", json!([])).unwrap(), 0);
    loads.push(("incidents", b.load_ms().unwrap()));
    b.screenshot(&shots().join("vault-incident.png")).unwrap();
    // Its link: the vault's audit page for that window, the chain checked against the trusted
    // key — mallory's records verified, the forged batch after them named.
    b.find("#incident-1 + .around a.audit-window").unwrap().click().unwrap();
    let chain = wait_text(&b, "#chain-gate-1", "DAMAGED");
    assert!(chain.contains("not trusted") && chain.contains("seq 3"), "{chain}");
    assert_eq!(b.find("#hits").unwrap().text().unwrap(), "2", "the window holds mallory's two records");
    let rec = b.find("#rec-gate-1-1").unwrap().text().unwrap();
    assert!(rec.contains("mallory") && rec.contains("10.0.0.66:50123") && rec.contains(drop_sql), "{rec}");
    assert!(rec.ends_with("verified") && !rec.contains("NOT"), "{rec}");
    assert!(b.url().unwrap().contains("/console/audit?since="), "{}", b.url().unwrap());
    assert_ne!(b.title().unwrap(), "pwned");
    assert_eq!(b.execute("return document.querySelectorAll('main script').length", json!([])).unwrap(), 0);
    loads.push(("audit, an incident's window", b.load_ms().unwrap()));
    b.screenshot(&shots().join("vault-audit.png")).unwrap();
    let fetch = |css: &str| -> String {
        let href = b.execute(&format!("return document.querySelector('{css}').href"), json!([])).unwrap();
        let got = b
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 fetch(arguments[0]).then(r => r.text()).then(done, e => done(String(e)));",
                json!([href.as_str().unwrap()]),
            )
            .unwrap();
        got.as_str().unwrap().to_string()
    };
    let lines: Vec<serde_json::Value> =
        fetch("#export-jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["gate"] == "gate-1" && l["verified"] == true), "{lines:?}");
    assert_eq!(lines[0]["detail"]["sql"], drop_sql);
    let csv = fetch("#export-csv");
    assert!(csv.starts_with("gate,seq,time,person,") && csv.lines().count() == 3, "{csv}");
    // The proposals page: what the deletion would remove, 0 of 1 signatures, the time left.
    b.goto(&format!("{base}/console/proposals")).unwrap();
    let card = b.wait_for(&format!("#proposal-{proposal}"), Duration::from_secs(10)).unwrap().text().unwrap();
    assert!(card.contains(&backup) && card.contains("0 of 1") && card.contains("left"), "{card}");
    assert!(card.contains("<b>disk</b> space"), "the reason as text: {card}");
    loads.push(("proposals", b.load_ms().unwrap()));
    b.screenshot(&shots().join("vault-proposals.png")).unwrap();
    // The drills page, for a read token too: no drill has run yet.
    b.goto(&format!("{base}/console/drills")).unwrap();
    assert_eq!(b.wait_for("#reports", Duration::from_secs(10)).unwrap().text().unwrap(), "0");
    b.goto(&format!("{base}/console/clusters/main")).unwrap();
    b.wait_for("#incident-1", Duration::from_secs(10)).unwrap();
    // A read session's POST to an admin action is refused, CSRF token and all.
    let csrf = b.execute("return document.querySelector('input[name=csrf]').value", json!([])).unwrap();
    let status = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/console/clusters/main/drill', {method: 'POST',
               headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'csrf=' + arguments[0]})
             .then(r => done(r.status), e => done(String(e)));",
            json!([csrf]),
        )
        .unwrap();
    assert_eq!(status, 403);
    assert!(b.find_all("#ack-button-1").unwrap().is_empty(), "no acknowledge button for a read token");
    let status = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/console/clusters/main/incidents/1/ack', {method: 'POST',
               headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'csrf=' + arguments[0]})
             .then(r => done(r.status), e => done(String(e)));",
            json!([csrf]),
        )
        .unwrap();
    assert_eq!(status, 403, "a read token cannot acknowledge");

    // The command as shown (into a scratch directory, with the read token) brings the rows back.
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = root.path().join("undo");
    let mut words: Vec<String> = command.split_whitespace().skip(1).map(String::from).collect();
    let at = words.iter().position(|w| w == "--target-dir").unwrap();
    words[at + 1] = dir.display().to_string();
    let out = Command::new(holdfast())
        .args(&words)
        .arg("--json")
        .args(v.remote_args(&read))
        .env("PGPASSWORD", pg.superuser_password())
        .output()
        .unwrap();
    assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = testkit::pg::psql_at(
        Path::new(report["socket_dir"].as_str().unwrap()),
        report["port"].as_u64().unwrap() as u16,
        pg.superuser_password(),
        "postgres",
        "SELECT count(*) FROM customers",
    );
    let mut stop = command_as_postgres(&testkit::pg::bin("pg_ctl").unwrap());
    stop.arg("-D").arg(&dir).args(["-m", "immediate", "-w", "stop"]);
    let _ = stop.output();
    assert_eq!(rows.unwrap().trim(), "3000", "every row is back");

    // An admin sign-in has the drill button.
    b.find("form.logout button").unwrap().click().unwrap();
    b.wait_for("#login", Duration::from_secs(10)).unwrap();
    sign_in(v.admin_token());
    assert_eq!(b.wait_for("#scope", Duration::from_secs(10)).unwrap().text().unwrap(), "admin");
    b.goto(&format!("{base}/console/clusters/main")).unwrap();
    // The admin acknowledges the incident: recorded with who and when, the incident stays.
    b.wait_for("#ack-button-1", Duration::from_secs(10)).unwrap().click().unwrap();
    let ack = wait_text(&b, "#ack-1", "Acknowledged by");
    assert!(ack.contains("first admin"), "{ack}");
    assert!(b.find("#incident-1").unwrap().text().unwrap().contains("customers"), "the incident stays");
    assert!(b.find_all("#ack-button-1").unwrap().is_empty());
    b.wait_for("#start-drill", Duration::from_secs(10)).unwrap().click().unwrap();
    // The drill it starts ends in a signed report: the drills page shows it passed, verified.
    let deadline = Instant::now() + Duration::from_secs(120);
    let report = loop {
        b.goto(&format!("{base}/console/drills")).unwrap();
        let rows = b.find_all("#drill-reports tr.report").unwrap();
        if let Some(r) = rows.first() {
            break r.text().unwrap();
        }
        assert!(Instant::now() < deadline, "no drill report\n{}", v.log());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(report.contains("main") && report.contains("passed") && report.ends_with("verified"), "{report}");
    assert!(b.find("#schedule-main").unwrap().text().unwrap().contains("1 / 1"));
    loads.push(("drills", b.load_ms().unwrap()));
    b.screenshot(&shots().join("vault-drills.png")).unwrap();

    // Load: 1,000 incidents and 10,000 audit records of a second gate (100 signed batches of
    // 100), written into the store with the escrow key while the vault is stopped, as the vault
    // would have; then the pages again. The browser's load times go to the output, not asserted.
    v.kill();
    let started = Instant::now();
    rt.block_on(async {
        let escrow = vault::keyfile::AgeKey::load(&v.escrow_key_path()).unwrap();
        let local: std::sync::Arc<dyn store::ObjectStore> =
            std::sync::Arc::new(store::LocalDir::open(v.store_dir()).unwrap());
        let repo = store::Repository::open(local, std::slice::from_ref(escrow.identity())).await.unwrap();
        let t0 = store::Timestamp::now().as_secs() - 2 * 86_400;
        for i in 0..1000i64 {
            let at = store::Timestamp(t0 + i * 120);
            let incident = json!({
                "cluster": "main", "kind": "mass_delete", "detected_at": at.to_string(),
                "message": format!("DELETE of 500 rows from public.t{i}"), "xid": 10_000 + i,
                "restore_target": {"kind": "before_xid", "xid": 10_000 + i},
                "objects": [{"database": "shop", "schema": "public", "table": format!("t{i}"), "rows": 500, "deleted": 500}],
            });
            repo.append_record("incident", incident, at, store::Timestamp::FOREVER).await.unwrap();
        }
        let mut prev = audit::Digest::ZERO;
        for batch in 0..100u64 {
            let mut records = Vec::new();
            for k in 0..100u64 {
                let seq = batch * 100 + k + 1;
                let ev = audit::Event::new(audit::EventKind::Statement)
                    .person(["alice", "bob", "carol"][(seq % 3) as usize])
                    .client(format!("10.1.{}.{}:5432", seq / 250, seq % 250))
                    .detail(json!({"sql": format!("DELETE FROM t{} WHERE id = {seq}", seq / 10), "verdict": "allow"}));
                let r = audit::Record::new(seq, audit::AuditTime((t0 + seq as i64 * 12) * 1_000_000), prev, ev);
                prev = r.hash;
                records.push(r);
            }
            let body = serde_json::to_value(audit::Batch::sign("gate-2", records, &gate_key).unwrap()).unwrap();
            let written = store::Timestamp(t0 + batch as i64);
            repo.append_record(audit::BATCH_KIND, body, written, store::Timestamp::FOREVER).await.unwrap();
        }
    });
    eprintln!("wrote 1,000 incidents and 10,000 audit records in {:.1} s", started.elapsed().as_secs_f64());
    // Restarted with 8-second console sessions: each page below is opened just after a fresh
    // sign-in, and the last session, left alone, is sent back to sign-in.
    let text = std::fs::read_to_string(v.config_path()).unwrap();
    std::fs::write(v.config_path(), format!("console_session = \"8s\"\n{text}")).unwrap();
    v.restart().unwrap();
    let base = v.url().to_string();
    let sign_in = || {
        b.goto(&format!("{base}/console/login")).unwrap();
        b.wait_for("#token", Duration::from_secs(10)).unwrap().send_keys(read_token.trim()).unwrap();
        b.find("#signin").unwrap().click().unwrap();
        b.wait_for("#scope", Duration::from_secs(10)).unwrap();
        Instant::now()
    };
    sign_in();
    loads.push(("clusters, 1,001 incidents", b.load_ms().unwrap()));
    sign_in();
    b.goto(&format!("{base}/console/clusters/main")).unwrap();
    assert_eq!(b.wait_for("#incident-count", Duration::from_secs(20)).unwrap().text().unwrap(), "1001");
    assert_eq!(b.find_all("article.incident").unwrap().len(), 20, "20 a page");
    // Marks of incidents listed on other pages link to those pages.
    let href = b
        .execute(
            "return document.querySelector(\"#timeline a.incident-mark\").getAttribute('href')",
            json!([]),
        )
        .unwrap();
    assert_eq!(href, "/console/clusters/main?page=50#incident-1", "the oldest incident is on the last page");
    b.screenshot(&shots().join("vault-timeline.png")).unwrap();
    b.set_window(390, 844).unwrap();
    b.screenshot(&shots().join("vault-timeline-phone.png")).unwrap();
    let widths = b
        .execute(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]",
            json!([]),
        )
        .unwrap();
    assert_eq!(widths[0], widths[1], "the cluster page fits a phone's width: {widths}");
    b.set_window(1100, 1000).unwrap();
    loads.push((
        "incidents, newest 20 of 1,001 with their audit windows (verifies the log)",
        b.load_ms().unwrap(),
    ));
    sign_in();
    b.goto(&format!("{base}/console/clusters/main?page=40")).unwrap();
    let around = b.wait_for(".around", Duration::from_secs(10)).unwrap().text().unwrap();
    assert!(around.contains("audit record(s)"), "{around}");
    loads.push(("incidents, page 41 of 51", b.load_ms().unwrap()));
    sign_in();
    b.goto(&format!("{base}/console/audit")).unwrap();
    assert_eq!(b.wait_for("#hits", Duration::from_secs(20)).unwrap().text().unwrap(), "10002");
    assert!(b.find("#chain-gate-2").unwrap().text().unwrap().contains("chain verified — 10000 records"));
    assert_eq!(b.find_all("#records tr[id^=rec-]").unwrap().len(), 100, "100 a page");
    loads.push(("audit, newest 100 of 10,002", b.load_ms().unwrap()));
    sign_in();
    b.goto(&format!("{base}/console/audit?page=1")).unwrap();
    wait_text(&b, "#pages", "page 2 of 101");
    loads.push(("audit, the next 100 of 10,002", b.load_ms().unwrap()));
    sign_in();
    b.goto(&format!("{base}/console/audit?person=carol&text=id+%3D+4997")).unwrap();
    assert_eq!(b.wait_for("#hits", Duration::from_secs(20)).unwrap().text().unwrap(), "1");
    loads.push(("audit, a search over 10,002", b.load_ms().unwrap()));
    let signed_in_at = sign_in();
    std::thread::sleep(Duration::from_secs(9).saturating_sub(signed_in_at.elapsed()));
    b.goto(&format!("{base}/console/clusters/main")).unwrap();
    assert!(
        b.url().unwrap().ends_with("/console/login"),
        "an expired session signs in again: {}",
        b.url().unwrap()
    );
    for (page, ms) in loads {
        eprintln!("vault console page load ({page}): {ms:.0} ms");
    }
}
