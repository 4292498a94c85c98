//! The one audited place where text becomes SQL.
//!
//! Values are always bound as parameters (`$1`). Only where PostgreSQL's grammar does not
//! accept a parameter (identifiers such as database and role names, and the few literals
//! of utility statements such as `PREPARE TRANSACTION 'gid'` or `PASSWORD '…'`) is text
//! spliced into a statement, and then only through these two functions.

/// Quotes an identifier (database, role, table name) for use in SQL.
///
/// Always double-quotes, so the result never depends on keyword lists or case folding:
/// the name matches the stored name byte for byte. Embedded `"` are doubled. A NUL byte
/// cannot occur in a PostgreSQL identifier; it is dropped so that the output stays one
/// token (the server would reject the name anyway, and never as a different name).
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        match ch {
            '"' => out.push_str("\"\""),
            '\0' => {}
            _ => out.push(ch),
        }
    }
    out.push('"');
    out
}

/// Quotes a string literal for the few places where the grammar forbids a parameter.
///
/// Produces a standard-conforming literal (`'…'` with `'` doubled). When the text contains
/// a backslash the literal is written as `E'…'` with backslashes doubled, so that it means
/// the same whatever `standard_conforming_strings` is set to. NUL bytes are dropped as in
/// [`quote_ident`].
pub fn quote_literal(value: &str) -> String {
    let escape = value.contains('\\');
    let mut out = String::with_capacity(value.len() + 3);
    if escape {
        out.push('E');
    }
    out.push('\'');
    for ch in value.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => {}
            _ => out.push(ch),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_quoted_verbatim() {
        assert_eq!(quote_ident("shop"), r#""shop""#);
        assert_eq!(
            quote_ident("Shop"),
            r#""Shop""#,
            "case is preserved, never folded"
        );
        assert_eq!(quote_ident(""), r#""""#);
    }

    #[test]
    fn hostile_identifiers_stay_one_token() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_ident(r#"""#), r#""""""#);
        assert_eq!(quote_ident("my db"), r#""my db""#);
        assert_eq!(
            quote_ident("x; DROP DATABASE postgres; --"),
            r#""x; DROP DATABASE postgres; --""#
        );
        assert_eq!(quote_ident("Ünïcødé 数据库"), "\"Ünïcødé 数据库\"");
        assert_eq!(quote_ident("a\0b"), r#""ab""#);
        assert_eq!(quote_ident(r#"a\"b"#), r#""a\""b""#);
    }

    #[test]
    fn quoted_identifier_round_trips() {
        // Undo the quoting the way the server's lexer does and compare.
        for name in [
            "a",
            r#"a"b"#,
            r#""""#,
            "sp ace",
            ";",
            "Ünï",
            r"back\slash",
            "'",
        ] {
            let q = quote_ident(name);
            let inner = &q[1..q.len() - 1];
            assert_eq!(inner.replace("\"\"", "\""), name);
            assert!(
                !inner.replace("\"\"", "").contains('"'),
                "{q} has a lone quote"
            );
        }
    }

    #[test]
    fn literals() {
        assert_eq!(quote_literal("gid-1"), "'gid-1'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r"E'a\\b'");
        assert_eq!(quote_literal(r"\'; SELECT 1; --"), r"E'\\''; SELECT 1; --'");
        assert_eq!(quote_literal(""), "''");
        assert_eq!(quote_literal("nul\0x"), "'nulx'");
    }
}
