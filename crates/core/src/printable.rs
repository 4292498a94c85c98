//! The one function that makes text safe to show a person on a terminal.
//!
//! Role, database, application, slot and subscription names, transaction ids, query
//! texts, privileges and the server's own error messages are chosen by whoever can
//! create those objects or open a session, and pgkill shows them to an administrator.
//! Printed raw, an ESC or C1 control sequence in a role name rewrites the terminal's
//! title, moves the cursor over earlier lines or worse. Every front-end passes such text
//! through [`printable`] where it meets the terminal (the CLI's writers for people, the
//! TUI's cells), so the data itself stays exact for `--json`, `--csv` to a pipe and the
//! SQL that names the object.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal as it is: the C0 controls (except `\n` and
/// `\t`, which only lay text out), DEL, the C1 controls (U+0080–U+009F, which some
/// terminals obey like ESC sequences) and the Unicode bidirectional embeddings, overrides
/// and isolates (which reorder what is shown around them).
pub fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every [`is_unsafe`] character written as a visible escape: `\x1b` for C0
/// controls and DEL, `\u{9b}` for the others (borrowed unchanged when there is none).
/// Not reversible (a backslash stays a backslash): it is for reading, not for data.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !is_unsafe(c) {
            out.push(c);
        } else if u32::from(c) < 0x80 {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in [
            "",
            "shop",
            "naïve 'db' \\ x",
            "日本語",
            "a\tb\nc",
            "Ünï \"role\"; --",
        ] {
            assert!(matches!(printable(s), Cow::Borrowed(t) if t == s), "{s:?}");
        }
    }

    #[test]
    fn controls_become_visible_escapes() {
        assert_eq!(printable("x\x1b]0;pwned\x07"), "x\\x1b]0;pwned\\x07");
        assert_eq!(printable("x\x1b]0;title\x1b\\"), "x\\x1b]0;title\\x1b\\");
        assert_eq!(printable("\u{9b}31m red"), "\\u{9b}31m red");
        assert_eq!(printable("a\rb\x7f\0"), "a\\x0db\\x7f\\x00");
        assert_eq!(printable("\u{85}\u{9f}\u{80}"), "\\u{85}\\u{9f}\\u{80}");
        assert_eq!(printable("abc\u{202e}fed"), "abc\\u{202e}fed");
    }

    #[test]
    fn nothing_unsafe_survives_any_char() {
        // Every char of the BMP and some beyond: the result never holds an unsafe one.
        let all: String = (0u32..0x3000)
            .chain(0x1_0000..0x1_0100)
            .filter_map(char::from_u32)
            .collect();
        let out = printable(&all);
        assert!(!out.chars().any(is_unsafe));
        for c in out.chars() {
            assert!(!(c.is_control() && c != '\n' && c != '\t'), "{c:?}");
        }
    }
}
