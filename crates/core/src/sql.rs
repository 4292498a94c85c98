//! A check that pgkill's SQL calls only schema-qualified functions.
//!
//! pgkill runs as a superuser in databases where other roles can create objects. An
//! unqualified call such as `pg_has_role('x', 'USAGE')` is resolved through
//! `search_path`, and a role that can create a better-matching `public.pg_has_role(text,
//! text)` would have it run with the caller's privileges (CVE-2018-1058's pattern). Every
//! connection pins `search_path = pg_catalog, pg_temp` (see `pgkill_pg::connect`), and, so
//! that this is not the only defence, every function call in pgkill's SQL names
//! `pg_catalog` itself. [`unqualified_calls`] finds the calls that do not; the unit tests of
//! every module that builds SQL run it over each statement, and the executor runs it (in
//! debug builds) over every statement it sends, so the integration tests check every
//! statement that really runs, on every server version.

/// SQL keywords that may stand before `(` without being a function call found through
/// `search_path` (grammar constructs, and the few "functions" the grammar itself resolves
/// in `pg_catalog`).
const NOT_CALLS: &[&str] = &[
    "all", "and", "any", "array", "as", "between", "by", "case", "cast", "coalesce", "distinct",
    "else", "exists", "extract", "filter", "from", "greatest", "in", "join", "least", "lateral",
    "not", "nullif", "on", "or", "over", "row", "select", "some", "then", "using", "values",
    "when", "where", "with",
];

#[derive(Debug, PartialEq)]
enum Token<'a> {
    /// An identifier or keyword, possibly qualified (`pg_catalog.count`), as written.
    Name(&'a str),
    /// One punctuation character.
    Punct(char),
    /// A quoted identifier.
    Quoted(&'a str),
    /// A string literal, a number or a parameter.
    Other,
}

fn tokens(sql: &str) -> Vec<Token<'_>> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b if b.is_ascii_whitespace() => i += 1,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            b'\'' | b'"' => {
                // A literal or a quoted identifier; a doubled quote stays inside.
                let start = i;
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == c {
                        if bytes.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                out.push(if c == b'"' {
                    Token::Quoted(&sql[start..i.min(sql.len())])
                } else {
                    Token::Other
                });
            }
            b if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 => {
                let start = i;
                // A qualified name: parts joined by dots.
                loop {
                    while i < bytes.len()
                        && (bytes[i].is_ascii_alphanumeric()
                            || bytes[i] == b'_'
                            || bytes[i] == b'$'
                            || bytes[i] >= 0x80)
                    {
                        i += 1;
                    }
                    if bytes.get(i) == Some(&b'.')
                        && bytes
                            .get(i + 1)
                            .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
                    {
                        i += 1;
                        continue;
                    }
                    break;
                }
                out.push(Token::Name(&sql[start..i]));
            }
            b if b.is_ascii_digit() || b == b'$' => {
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    i += 1;
                }
                out.push(Token::Other);
            }
            _ => {
                // Multi-byte characters only occur inside literals and names.
                out.push(Token::Punct(char::from(c)));
                i += 1;
            }
        }
    }
    out
}

/// The function calls in `sql` that are not qualified with `pg_catalog.` (empty when the
/// statement is safe to run whatever `search_path` says about functions). A name right
/// after `AS` is an alias with a column list, not a call.
pub fn unqualified_calls(sql: &str) -> Vec<String> {
    let toks = tokens(sql);
    let mut calls = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if toks.get(i + 1) != Some(&Token::Punct('(')) {
            continue;
        }
        let name = match t {
            Token::Name(name) => *name,
            // pgkill never calls a function by a quoted name: whatever it is, it is not
            // known to be qualified.
            Token::Quoted(name) => {
                calls.push((*name).to_owned());
                continue;
            }
            _ => continue,
        };
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("pg_catalog.") || NOT_CALLS.contains(&lower.as_str()) {
            continue;
        }
        let after_as =
            i > 0 && matches!(toks[i - 1], Token::Name(prev) if prev.eq_ignore_ascii_case("as"));
        if after_as {
            continue;
        }
        calls.push(name.to_owned());
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unqualified_calls() {
        assert_eq!(
            unqualified_calls("SELECT current_setting('is_superuser')"),
            vec!["current_setting"]
        );
        assert_eq!(
            unqualified_calls("SELECT count(*), public.f(1), x.pg_catalog.g()"),
            vec!["count", "public.f", "x.pg_catalog.g"]
        );
        assert_eq!(
            unqualified_calls("SELECT a FROM t WHERE unnest ( $1 )"),
            vec!["unnest"],
            "whitespace before ( is still a call"
        );
    }

    #[test]
    fn qualified_calls_keywords_aliases_and_literals_pass() {
        let sql = "WITH s AS (SELECT * FROM pg_catalog.pg_stat_activity)
SELECT pg_catalog.count(*) FILTER (WHERE x IN (SELECT 1)), coalesce(a, b),
       CASE WHEN (a) THEN (b) ELSE (c) END, CAST(x AS pg_catalog.int8),
       'not_a_call(1)', \"quoted(\" , x = ANY($1::text[]) -- comment(
FROM pg_catalog.unnest($1::int[]) AS t(pid) /* block f( */
JOIN z USING (a) WHERE EXISTS (SELECT) AND NOT (a OR (b))
DROP DATABASE \"x\" WITH (FORCE)";
        assert_eq!(unqualified_calls(sql), Vec::<String>::new());
    }

    #[test]
    fn a_quote_inside_a_literal_does_not_end_it() {
        assert_eq!(unqualified_calls("SELECT 'it''s f(' , g()"), vec!["g"]);
        assert_eq!(unqualified_calls("SELECT \"count\"(1)"), vec!["\"count\""]);
    }
}
