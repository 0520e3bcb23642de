//! The shape of a SQL text: its token sequence from PostgreSQL's own lexer (libpg_query's
//! scanner, the server's `scan.l`) with the values of constants left out. Two texts of one
//! shape reach the grammar as the same tokens, differing only in the values of numeric, string,
//! bit-string and hex-string constants, so they parse to the same tree but for those values.
//! The guard reuses one analysis for every text of a shape only when that analysis never looked
//! at a constant's value (`classify` records it) — which is what makes `WHERE aid = 17` and
//! `WHERE aid = 42` one parse, and `LIKE '%'` against `LIKE 'a%'` two.
//!
//! Scanning is a few µs; a parse plus the classification walk is the cost it saves.

use std::fmt::Write as _;

use pg_query::protobuf::Token;

/// A text's shape: the key, and where the statement's own text ends (before a final `;`).
pub(crate) struct Shape {
    pub key: String,
    pub end: usize,
}

/// The shape of `sql`, or `None` when the text must be judged on its own: the lexer failed,
/// it holds several statements (a `;` that is not the last token), Unicode-escape forms whose
/// meaning depends on a constant (`U&'…' UESCAPE '!'`), or no constant at all (then the text
/// itself is the key).
///
/// The key lists every token as its kind and, except for constants, its exact bytes,
/// length-prefixed so that no two token sequences share a key.
pub(crate) fn shape(sql: &str) -> Option<Shape> {
    // `scan`, not `scan_tokens`: the latter builds a slice from a null pointer when the text
    // holds no token at all (undefined behaviour, caught by debug assertions).
    let tokens = pg_query::scan(sql).ok()?.tokens;
    let mut key = String::with_capacity(sql.len() + 2 * tokens.len());
    let mut constants = 0;
    let mut end = sql.len();
    for (i, t) in tokens.iter().enumerate() {
        let kind = Token::try_from(t.token).ok()?;
        match kind {
            // pgbench and psql-style scripts end each statement with one.
            Token::Ascii59 if i + 1 == tokens.len() => {
                end = usize::try_from(t.start).ok()?;
                let _ = write!(key, "{};|", t.token);
            }
            Token::Ascii59 | Token::Uident | Token::Usconst | Token::Uescape => return None,
            Token::Iconst | Token::Fconst | Token::Sconst | Token::Bconst | Token::Xconst => {
                constants += 1;
                let _ = write!(key, "{}|", t.token);
            }
            _ => {
                let text = sql.get(usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?)?;
                let _ = write!(key, "{}:{}:{text}|", t.token, text.len());
            }
        }
    }
    (constants > 0).then_some(Shape { key, end })
}

/// The statement's own text within `sql` of shape `s`, as the parser cuts it (trimmed).
pub(crate) fn statement_text<'a>(sql: &'a str, s: &Shape) -> &'a str {
    sql.get(..s.end).unwrap_or(sql).trim()
}

#[cfg(test)]
mod tests {
    use super::shape;

    #[test]
    fn only_constants_are_left_out() {
        let k = |s: &str| shape(s).map(|s| s.key);
        assert!(k("DELETE FROM t WHERE id = 1").is_some());
        assert_eq!(k("DELETE FROM t WHERE id = 1"), k("DELETE FROM t WHERE id = 987654"));
        assert_eq!(k("SELECT 'a' FROM t"), k("SELECT $$ ; DROP TABLE t; $$ FROM t"));
        assert_ne!(k("DELETE FROM t WHERE id = 1"), k("DELETE FROM t WHERE id = 1.5"));
        assert_ne!(k("SELECT 1 FROM \"t1\""), k("SELECT 1 FROM \"t2\""));
        assert_ne!(k("SELECT 1 /* a */"), k("SELECT 1 /* b */"));
        assert_ne!(k("SELECT 1 FROM t"), k("select 1 from t"));
        // No constants: the text is its own key.
        assert_eq!(k("DELETE FROM t"), None);
        assert_eq!(k("SELECT $1"), None);
        // Several statements, Unicode escapes, unterminated text: judged on their own.
        assert_eq!(k("SELECT 1; DROP TABLE t"), None);
        assert_eq!(k("SELECT 1;; SELECT 2"), None);
        assert_ne!(k("SELECT 1;"), k("SELECT 1"));
        assert_eq!(k("SELECT 1;"), k("SELECT 2;"));
        let s = shape("DELETE FROM t WHERE id = 1 ;  ").unwrap();
        assert_eq!(super::statement_text("DELETE FROM t WHERE id = 1 ;  ", &s), "DELETE FROM t WHERE id = 1");
        assert_eq!(k("SELECT 1 FROM U&\"t!0031\" UESCAPE '!'"), None);
        assert_eq!(k("SELECT U&'x' FROM t"), None);
        assert_eq!(k("SELECT 'unterminated"), None);
    }
}
