//! Policy files: the example parses, mistakes are refused with the field named, and each setting
//! changes verdicts the way it says.

use guard::{Action, Class, Guard, KindRule, Policy, Rule, Session, UnknownFunctions};

fn example() -> Policy {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy.example.toml")).unwrap();
    Policy::from_toml(&text).unwrap()
}

#[test]
fn the_example_policy_parses() {
    let p = example();
    assert_eq!(p.max_statement_bytes, 1024 * 1024);
    assert_eq!(p.row_guard_max_rows, 1000);
    assert_eq!(p.unknown_functions, UnknownFunctions::Write);
    assert_eq!(p.classes.destructive, Rule::Approve);
    assert_eq!(p.kinds.get("alter_system"), Some(&KindRule::Deny));
    assert_eq!(p.row_guard_tables.get("orders"), Some(&100));
}

#[test]
fn an_empty_file_is_the_default() {
    assert_eq!(Policy::from_toml("").unwrap(), Policy::default());
}

#[test]
fn unknown_fields_are_refused_by_name() {
    for (text, field) in [
        ("require_approval = true", "require_approval"),
        ("max_statment_bytes = 10", "max_statment_bytes"),
        ("[classes]\ndestrutive = \"deny\"", "destrutive"),
        ("[class]\nread = \"allow\"", "class"),
    ] {
        let e = Policy::from_toml(text).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains("unknown field"), "{text:?}: {e}");
    }
}

#[test]
fn bad_values_are_refused_with_what_to_do() {
    let e = Policy::from_toml("[classes]\ndestructive = \"allow\"").unwrap_err().to_string();
    assert!(e.contains("destructive") && e.contains("approve"), "{e}");
    let e = Policy::from_toml("[classes]\nread = \"maybe\"").unwrap_err().to_string();
    assert!(e.contains("maybe"), "{e}");
    let e = Policy::from_toml("max_statements = 0").unwrap_err().to_string();
    assert!(e.contains("max_statements"), "{e}");
    let e = Policy::from_toml("max_statements = \"ten\"").unwrap_err().to_string();
    assert!(e.contains("max_statements"), "{e}");
    let e = Policy::from_toml("[kinds]\nalter_sytem = \"deny\"").unwrap_err().to_string();
    assert!(e.contains("alter_sytem") && e.contains("no statement has this kind"), "{e}");
    let e = Policy::from_toml("[kinds]\ntruncate = \"allow\"").unwrap_err().to_string();
    assert!(e.contains("allow"), "kind overrides only tighten: {e}");
    let e = Policy::from_toml("unknown_functions = \"read\"").unwrap_err().to_string();
    assert!(e.contains("read"), "{e}");
    let e = Policy::from_toml("safe_functions = [\"a.b.c\"]").unwrap_err().to_string();
    assert!(e.contains("a.b.c"), "{e}");
}

#[test]
fn the_example_policy_changes_verdicts() {
    let guard = Guard::new(example());
    let mut s = Session::default();
    let mut check = |sql: &str| guard.check_query(&mut s, sql);
    assert_eq!(check("ALTER SYSTEM SET fsync = off").action, Action::Deny);
    assert_eq!(check("DROP DATABASE shop").action, Action::Deny);
    assert_eq!(check("DROP TABLE orders").action, Action::Approve);
    assert_eq!(check("LOAD 'x'").action, Action::Deny);
    assert_eq!(
        check("DELETE FROM public.stored_value_cards WHERE id = 1").action,
        Action::RowGuard { max_rows: 10 }
    );
    assert_eq!(check("DELETE FROM orders WHERE id = 1").action, Action::RowGuard { max_rows: 100 });
    assert_eq!(check("DELETE FROM app.orders WHERE id = 1").action, Action::RowGuard { max_rows: 100 });
    assert_eq!(check("DELETE FROM customers WHERE id = 1").action, Action::RowGuard { max_rows: 1000 });
    // The strictest limit wins when a statement holds several guarded tables.
    assert_eq!(check("SELECT purge_tenant(7)").action, Action::Approve);
    assert_eq!(check("SELECT PURGE_TENANT(7)").action, Action::Approve);
    assert_eq!(
        check("SELECT x.purge_tenant(7)").action,
        Action::Approve,
        "unqualified entries match any schema"
    );
    assert_eq!(check("SELECT billing.reset_balances()").action, Action::Approve);
    assert_eq!(
        check("SELECT other.reset_balances()").class,
        Class::Write,
        "a qualified entry names one schema"
    );
    assert_eq!(check("SELECT public.order_total(1)").class, Class::Read);
    assert_eq!(
        check("SELECT order_total(1)").class,
        Class::Write,
        "the safe entry is public.order_total only"
    );
}

#[test]
fn unknown_functions_can_be_destructive() {
    let guard = Guard::new(Policy::from_toml("unknown_functions = \"destructive\"").unwrap());
    let d = guard.check_query(&mut Session::default(), "SELECT my_report(1)");
    assert_eq!((d.class, d.action), (Class::Destructive, Action::Approve));
    let d = guard.check_query(&mut Session::default(), "SELECT lower('x')");
    assert_eq!(d.action, Action::Allow, "built-in reads stay reads");
}

#[test]
fn classes_can_be_tightened() {
    let guard = Guard::new(
        Policy::from_toml("[classes]\nddl = \"approve\"\nwrite = \"approve\"\ndestructive = \"deny\"")
            .unwrap(),
    );
    let mut s = Session::default();
    assert_eq!(guard.check_query(&mut s, "CREATE TABLE t (id int)").action, Action::Approve);
    assert_eq!(
        guard.check_query(&mut s, "DELETE FROM t WHERE id = 1").action,
        Action::Approve,
        "write = approve overrides the row guard"
    );
    assert_eq!(guard.check_query(&mut s, "TRUNCATE t").action, Action::Deny);
    assert_eq!(guard.check_query(&mut s, "SELECT 1").action, Action::Allow);
}
