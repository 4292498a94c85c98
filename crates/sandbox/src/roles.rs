//! The roles every sandbox server has, created once in the cached template.
//!
//! They cover the privilege situations pgkill must handle: a superuser besides the
//! bootstrap one, a plain login role, a member of `pg_signal_backend` (signals any
//! non-superuser backend, never a superuser's) and a non-superuser database owner.
//!
//! The template holds no password at all: every sandbox gives each role a fresh random
//! one when it starts (see [`crate::Sandbox::password`]), so that knowing how sandboxes
//! are built never lets anybody into one.

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

/// Bytes of randomness in a password (192 bits).
const PASSWORD_BYTES: usize = 24;

/// A fresh random password from the operating system's generator, as lowercase hex (no
/// character needs escaping in SQL, in a conninfo string or in a password file).
pub(crate) fn fresh_password() -> crate::Result<String> {
    let mut bytes = [0u8; PASSWORD_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| crate::Error::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Iterations of the SCRAM secrets the sandbox stores. They exist to slow down guessing
/// a weak password from a stolen secret; a sandbox's passwords are 192 random bits, so
/// there is nothing to guess, while PostgreSQL's default of 4096 would cost every login
/// (both server and client hash) and every start a few milliseconds, and a debug-build
/// client over 100 ms.
const SCRAM_ITERATIONS: u32 = 16;

/// The SCRAM-SHA-256 secret PostgreSQL stores for `password` (computed here, so the
/// password itself never reaches the server's logs or statistics, and the same on every
/// version whatever `password_encryption` says). `password` is one of ours (ASCII, which
/// SASLprep leaves as it is).
pub(crate) fn scram_secret(password: &str) -> crate::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| crate::Error::Random(e.to_string()))?;
    scram_secret_with(password.as_bytes(), &salt, SCRAM_ITERATIONS)
}

/// RFC 5802/7677 with PostgreSQL's format: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
fn scram_secret_with(password: &[u8], salt: &[u8], iterations: u32) -> crate::Result<String> {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let b64 = base64::engine::general_purpose::STANDARD;
    let salted = hi(password, salt, iterations)?;
    let client_key = hmac_sha256(&salted, b"Client Key")?;
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(&salted, b"Server Key")?;
    Ok(format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key),
        b64.encode(server_key)
    ))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> crate::Result<[u8; 32]> {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
        .map_err(|e| crate::Error::Random(format!("HMAC key: {e}")))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().into())
}

/// `Hi()` of RFC 5802: PBKDF2 with HMAC-SHA-256, one block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> crate::Result<[u8; 32]> {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(password, &first)?;
    let mut result = u;
    for _ in 1..iterations {
        u = hmac_sha256(password, &u)?;
        for (r, b) in result.iter_mut().zip(u) {
            *r ^= b;
        }
    }
    Ok(result)
}

/// SQL run once in single-user mode when a version's template is built.
/// Single-user mode reads one statement per line.
pub(crate) fn template_sql() -> crate::Result<String> {
    use pgkill_core::quote_ident as id;
    let mut sql = String::new();
    let mut line = |s: String| {
        sql.push_str(&s);
        sql.push('\n');
    };
    // No role has a password in the template: until a sandbox has set its own, password
    // authentication fails for everyone.
    line(format!("ALTER ROLE {} PASSWORD NULL", id(ADMIN)?));
    line(format!("CREATE ROLE {} LOGIN SUPERUSER", id(SUPERUSER)?));
    line(format!("CREATE ROLE {} LOGIN", id(PLAIN)?));
    line(format!("CREATE ROLE {} LOGIN", id(SIGNALLER)?));
    line(format!("GRANT pg_signal_backend TO {}", id(SIGNALLER)?));
    line(format!("CREATE ROLE {} LOGIN CREATEDB", id(OWNER)?));
    Ok(sql)
}

/// One statement setting the SCRAM secret of each `(role, password)`, in one transaction.
pub(crate) fn set_passwords_sql<'a>(
    passwords: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> crate::Result<String> {
    use pgkill_core::{quote_ident as id, quote_literal as lit};
    let mut sql = String::from("BEGIN;");
    for (role, password) in passwords {
        sql.push_str(&format!(
            " ALTER ROLE {} PASSWORD {};",
            id(role)?,
            lit(&scram_secret(password)?)?
        ));
    }
    sql.push_str(" COMMIT;");
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_fresh_and_plain_hex() {
        let a = fresh_password().unwrap();
        let b = fresh_password().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 2 * PASSWORD_BYTES);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn scram_secret_matches_a_known_one() {
        // The vector of rust-postgres (postgres-protocol), PostgreSQL's default iterations.
        let salt: Vec<u8> = (1..=16).collect();
        assert_eq!(
            scram_secret_with(b"secret", &salt, 4096).unwrap(),
            "SCRAM-SHA-256$4096:AQIDBAUGBwgJCgsMDQ4PEA==$8rrDg00OqaiWXJ7p+sCgHEIaBSHY89ZJl3mfIsf32oY=:05L1f+yZbiN8O0AnO40Og85NNRhvzTS57naKRWCcsIA="
        );
    }

    #[test]
    fn secrets_are_scram_salted_and_never_contain_the_password() {
        let secret = scram_secret("hunter2hunter2").unwrap();
        assert!(secret.starts_with("SCRAM-SHA-256$16:"), "{secret}");
        assert!(!secret.contains("hunter2"));
        assert_ne!(secret, scram_secret("hunter2hunter2").unwrap());
        let sql = set_passwords_sql([("a\"b", "pw-one")]).unwrap();
        assert!(sql.starts_with("BEGIN; ALTER ROLE \"a\"\"b\" PASSWORD 'SCRAM-SHA-256$"));
        assert!(!sql.contains("pw-one") && sql.ends_with(" COMMIT;"));
    }

    #[test]
    fn the_template_has_no_password() {
        let sql = template_sql().unwrap();
        assert!(sql.contains("PASSWORD NULL") && !sql.contains("PASSWORD '"));
    }
}
