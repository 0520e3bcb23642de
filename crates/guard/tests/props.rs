//! Property tests: whatever text arrives — random bytes, mutated corpus statements, a destructive
//! statement glued to a harmless one — the guard never panics, every decision is well-formed,
//! and destruction never comes out Allow or RowGuard.

mod cases;

use cases::{CASES, V};
use guard::{Action, Class, Decision, Guard, Policy, Session};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
}

/// The invariants every decision keeps.
fn well_formed(sql: &str, d: &Decision) -> Result<(), TestCaseError> {
    let ctx = || format!("{sql:?} → {d:?}");
    if d.statements.is_empty() {
        prop_assert!(
            d.action == Action::Allow && d.class == Class::Read
                || d.action == Action::Deny && !d.reasons.is_empty(),
            "no statements: either nothing to run or a refusal with a reason: {}",
            ctx()
        );
    } else {
        let max = d.statements.iter().map(|s| s.class).max().unwrap();
        prop_assert_eq!(d.class, max, "class is the highest over statements: {}", ctx());
    }
    if d.class == Class::Destructive {
        prop_assert!(
            matches!(d.action, Action::Approve | Action::Deny),
            "destructive let through: {}",
            ctx()
        );
        prop_assert!(!d.reasons.is_empty(), "destructive without a reason: {}", ctx());
    }
    if let Action::RowGuard { max_rows } = d.action {
        // A string may hold other statements beside the measured write (`SET search_path …;
        // SELECT lower(…)`, where the SELECT is measured): the decision's class is then theirs.
        prop_assert!(
            d.class < Class::Destructive
                && d.statements.iter().any(|s| (s.class == Class::Write || s.by_files)
                    && matches!(s.action, Action::RowGuard { .. })),
            "row guard only for writes and measured DDL: {}",
            ctx()
        );
        prop_assert!(max_rows > 0);
    }
    for s in &d.statements {
        prop_assert!(!s.kind.is_empty());
        if s.class == Class::Destructive {
            prop_assert!(
                matches!(s.action, Action::Approve | Action::Deny),
                "statement let through: {}",
                ctx()
            );
        }
    }
    prop_assert!(serde_json::to_string(d).is_ok());
    Ok(())
}

fn destructive() -> Vec<&'static str> {
    CASES.iter().filter(|(_, c, v)| *c == Class::Destructive && *v == V::Approve).map(|(s, ..)| *s).collect()
}

fn harmless() -> Vec<&'static str> {
    CASES.iter().filter(|(_, c, v)| *c != Class::Destructive && *v == V::Allow).map(|(s, ..)| *s).collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_text_never_panics(sql in ".{0,200}") {
        let guard = Guard::new(Policy::default());
        let d = guard.check_query(&mut Session::default(), &sql);
        well_formed(&sql, &d)?;
        let mut s = Session::default();
        let p = guard.check_parse(&mut s, "x", &sql);
        well_formed(&sql, &p)?;
        well_formed(&sql, &guard.check_execute(&s, "x"))?;
    }

    #[test]
    fn random_sql_tokens_never_panic(words in proptest::collection::vec(prop_oneof![
        Just("SELECT"), Just("DELETE"), Just("FROM"), Just("WHERE"), Just("t"), Just("1"), Just("="),
        Just(";"), Just("("), Just(")"), Just("WITH"), Just("AS"), Just("DROP"), Just("TABLE"),
        Just("'x'"), Just("$$"), Just("/*"), Just("*/"), Just("--"), Just("\n"), Just("EXPLAIN"),
        Just("ANALYZE"), Just("PREPARE"), Just("EXECUTE"), Just("p"), Just("pg_terminate_backend"),
        Just(","), Just("UPDATE"), Just("SET"), Just("true"), Just("OR"), Just("RETURNING"), Just("*"),
    ], 0..30)) {
        let sql = words.join(" ");
        let guard = Guard::new(Policy::default());
        let d = guard.check_query(&mut Session::default(), &sql);
        well_formed(&sql, &d)?;
    }

    #[test]
    fn mutated_corpus_never_panics(i in 0..CASES.len(), pos in 0usize..400, len in 0usize..20, ins in ".{0,6}", upper in any::<bool>()) {
        let base = CASES[i].0;
        let mut at = pos.min(base.len());
        while !base.is_char_boundary(at) { at -= 1; }
        let mut end = (at + len).min(base.len());
        while !base.is_char_boundary(end) { end -= 1; }
        let mut sql = format!("{}{}{}", &base[..at], ins, &base[end..]);
        if upper { sql = sql.to_uppercase(); }
        let guard = Guard::new(Policy::default());
        let d = guard.check_query(&mut Session::default(), &sql);
        well_formed(&sql, &d)?;
    }

    #[test]
    fn destruction_glued_to_harmless_sql_is_never_allowed(
        d in 0..destructive().len(),
        h in 0..harmless().len(),
        sep in prop_oneof![Just(";\n"), Just(" ;\n\t"), Just(";/* x */\n"), Just(";\n-- x\n"), Just(";;\n")],
        first in any::<bool>(),
    ) {
        let (bad, ok) = (destructive()[d], harmless()[h]);
        let sql = if first { format!("{bad}{sep}{ok}") } else { format!("{ok}{sep}{bad}") };
        let guard = Guard::new(Policy::default());
        let dec = guard.check_query(&mut Session::default(), &sql);
        well_formed(&sql, &dec)?;
        prop_assert!(matches!(dec.action, Action::Approve | Action::Deny), "{sql:?} → {:?}", dec.action);
        prop_assert_eq!(dec.class, Class::Destructive, "{:?}", sql);
    }
}
