//! Prints PostgreSQL's parse tree of a SQL text as the guard sees it (JSON), and the guard's
//! decision: `cargo run -p guard --example parse_tree -- "DELETE FROM t WHERE id = id"`.

fn main() {
    let Some(sql) = std::env::args().nth(1) else {
        eprintln!("usage: parse_tree SQL");
        std::process::exit(2);
    };
    match pg_query::parse(&sql, 0) {
        Ok(r) => println!("{}", serde_json::to_string_pretty(&r.protobuf).expect("serialisable")),
        Err(e) => println!("parse error: {e}"),
    }
    let guard = guard::Guard::new(guard::Policy::default());
    let d = guard.check_query(&mut guard::Session::default(), &sql);
    println!("{}", serde_json::to_string_pretty(&d).expect("serialisable"));
}
