//! The one audited place where text becomes SQL.
//!
//! Values are always bound as parameters (`$1`). Only where PostgreSQL's grammar does not
//! accept a parameter (identifiers such as database and role names, and the few literals
//! of utility statements such as `PREPARE TRANSACTION 'gid'` or `PASSWORD '…'`) is text
//! spliced into a statement, and then only through these two functions.

/// Text that cannot become SQL: PostgreSQL names and strings never contain a NUL byte,
/// so a NUL means the text is not what the user thinks it is. Refused rather than
/// quoted differently: the statement must never name something else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// A name with a NUL byte.
    #[error("the name {name:?} contains a NUL byte (\\0), which PostgreSQL names cannot contain: check where the name came from")]
    NulInIdentifier {
        /// The name, as given (shown escaped).
        name: String,
    },
    /// A string with a NUL byte (its text is not shown: it may be a password).
    #[error("a text value contains a NUL byte (\\0), which PostgreSQL text cannot contain")]
    NulInLiteral,
}

/// Quotes an identifier (database, role, table name) for use in SQL.
///
/// Always double-quotes, so the result never depends on keyword lists or case folding:
/// the name matches the stored name byte for byte. Embedded `"` are doubled. A NUL byte
/// cannot occur in a PostgreSQL identifier: such a name is refused, never changed.
pub fn quote_ident(name: &str) -> Result<String, QuoteError> {
    if name.contains('\0') {
        return Err(QuoteError::NulInIdentifier {
            name: name.to_owned(),
        });
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        match ch {
            '"' => out.push_str("\"\""),
            _ => out.push(ch),
        }
    }
    out.push('"');
    Ok(out)
}

/// Quotes a string literal for the few places where the grammar forbids a parameter.
///
/// Produces a standard-conforming literal (`'…'` with `'` doubled). When the text contains
/// a backslash the literal is written as `E'…'` with backslashes doubled, so that it means
/// the same whatever `standard_conforming_strings` is set to. Text with a NUL byte is
/// refused, as in [`quote_ident`].
pub fn quote_literal(value: &str) -> Result<String, QuoteError> {
    if value.contains('\0') {
        return Err(QuoteError::NulInLiteral);
    }
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
            _ => out.push(ch),
        }
    }
    out.push('\'');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qi(name: &str) -> String {
        quote_ident(name).unwrap()
    }

    fn ql(value: &str) -> String {
        quote_literal(value).unwrap()
    }

    #[test]
    fn plain_names_are_quoted_verbatim() {
        assert_eq!(qi("shop"), r#""shop""#);
        assert_eq!(qi("Shop"), r#""Shop""#, "case is preserved, never folded");
        assert_eq!(qi(""), r#""""#);
    }

    #[test]
    fn hostile_identifiers_stay_one_token() {
        assert_eq!(qi(r#"a"b"#), r#""a""b""#);
        assert_eq!(qi(r#"""#), r#""""""#);
        assert_eq!(qi("my db"), r#""my db""#);
        assert_eq!(
            qi("x; DROP DATABASE postgres; --"),
            r#""x; DROP DATABASE postgres; --""#
        );
        assert_eq!(qi("Ünïcødé 数据库"), "\"Ünïcødé 数据库\"");
        assert_eq!(qi(r#"a\"b"#), r#""a\""b""#);
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
            let q = qi(name);
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
        assert_eq!(ql("gid-1"), "'gid-1'");
        assert_eq!(ql("it's"), "'it''s'");
        assert_eq!(ql(r"a\b"), r"E'a\\b'");
        assert_eq!(ql(r"\'; SELECT 1; --"), r"E'\\''; SELECT 1; --'");
        assert_eq!(ql(""), "''");
    }

    #[test]
    fn nul_bytes_are_refused_never_dropped() {
        for name in ["a\0b", "\0", "shop\0", "\0; DROP DATABASE postgres"] {
            let e = quote_ident(name).unwrap_err();
            assert_eq!(
                e,
                QuoteError::NulInIdentifier {
                    name: name.to_owned()
                }
            );
            let shown = e.to_string();
            assert!(shown.contains("NUL byte"), "{shown}");
            assert!(
                !shown.contains('\0'),
                "the message itself carries no NUL: {shown:?}"
            );
            assert!(shown.contains(r"\0"), "{shown}");
        }
        let e = quote_literal("s3cret\0pw").unwrap_err();
        assert_eq!(e, QuoteError::NulInLiteral);
        assert!(
            !e.to_string().contains("s3cret"),
            "a literal may be a password"
        );
        assert!(!format!("{e:?}").contains("s3cret"));
        // Other control characters are names PostgreSQL can hold: quoted verbatim.
        assert_eq!(qi("a\u{1b}]0;x\u{7}"), "\"a\u{1b}]0;x\u{7}\"");
        assert_eq!(qi("tab\there\nline"), "\"tab\there\nline\"");
    }
}
