//! The roles every sandbox server has, created once in the cached template.
//!
//! They cover the privilege situations pgkill must handle: a superuser besides the
//! bootstrap one, a plain login role, a member of `pg_signal_backend` (signals any
//! non-superuser backend, never a superuser's) and a non-superuser database owner.

/// The bootstrap superuser; the sandbox's own administrative connections use it.
pub const ADMIN: &str = "postgres";
/// A second superuser login, e.g. for pools of superuser clients.
pub const SUPERUSER: &str = "sandbox_superuser";
/// A plain login role with no special privileges.
pub const PLAIN: &str = "sandbox_plain";
/// A non-superuser member of `pg_signal_backend`.
pub const SIGNALLER: &str = "sandbox_signaller";
/// A non-superuser role with `CREATEDB`, to own databases.
pub const OWNER: &str = "sandbox_owner";

/// Every role of the template.
pub const ALL: [&str; 5] = [ADMIN, SUPERUSER, PLAIN, SIGNALLER, OWNER];

/// The password of a sandbox role (sandboxes are throw-away and listen on loopback only).
pub fn password(role: &str) -> String {
    format!("{role}-password")
}

/// SQL run once in single-user mode when a version's template is built.
/// Single-user mode reads one statement per line.
pub(crate) fn template_sql() -> crate::Result<String> {
    use pgkill_core::{quote_ident as id, quote_literal as lit};
    let mut sql = String::new();
    let mut line = |s: String| {
        sql.push_str(&s);
        sql.push('\n');
    };
    line(format!(
        "ALTER ROLE {} PASSWORD {}",
        id(ADMIN)?,
        lit(&password(ADMIN))?
    ));
    line(format!(
        "CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}",
        id(SUPERUSER)?,
        lit(&password(SUPERUSER))?
    ));
    line(format!(
        "CREATE ROLE {} LOGIN PASSWORD {}",
        id(PLAIN)?,
        lit(&password(PLAIN))?
    ));
    line(format!(
        "CREATE ROLE {} LOGIN PASSWORD {}",
        id(SIGNALLER)?,
        lit(&password(SIGNALLER))?
    ));
    line(format!("GRANT pg_signal_backend TO {}", id(SIGNALLER)?));
    line(format!(
        "CREATE ROLE {} LOGIN CREATEDB PASSWORD {}",
        id(OWNER)?,
        lit(&password(OWNER))?
    ));
    Ok(sql)
}
