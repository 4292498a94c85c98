//! libpq's `require_auth` (`PGREQUIREAUTH`): which authentication requests the client
//! answers, and the watcher that enforces it on the startup messages.
//!
//! tokio-postgres answers whatever the server asks for: a server (or anything pretending
//! to be one) that asks for a cleartext password gets it. `require_auth` lets the user
//! say which requests are acceptable; pgkill reads every message the server sends during
//! startup *before* tokio-postgres does ([`StartupScanner`], fed by the stream wrapper in
//! `stream.rs`) and fails the read when a request is not allowed, so the client never
//! answers it.
//!
//! The semantics are libpq's (PostgreSQL 16+, `oauth` from 18):
//!
//! - a comma-separated list of `password`, `md5`, `gss`, `sspi`, `scram-sha-256`, `oauth`
//!   and `none`: the server must use one of them;
//! - or the same names each prefixed with `!`: the server must use none of them (and may
//!   skip authentication unless `!none` is given); the two forms cannot be mixed and no
//!   name may appear twice;
//! - `none` allows a server that lets the client in without any request (`trust`); when
//!   it is not allowed, an `AuthenticationOk` before any exchange is refused.
//!
//! pgkill performs only password, md5 and SCRAM-SHA-256: allowing `gss`, `sspi` or
//! `oauth` is accepted (libpq spelling) but such a request still fails, with
//! tokio-postgres's "unsupported authentication method".

use std::fmt;

use super::error::{ConnectError, Result};

/// `AuthenticationRequest` codes of the protocol (the int32 after an `R` message's length).
mod code {
    pub(super) const OK: u32 = 0;
    pub(super) const CLEARTEXT: u32 = 3;
    pub(super) const MD5: u32 = 5;
    pub(super) const GSS: u32 = 7;
    pub(super) const GSS_CONTINUE: u32 = 8;
    pub(super) const SSPI: u32 = 9;
    pub(super) const SASL: u32 = 10;
    pub(super) const SASL_CONTINUE: u32 = 11;
    pub(super) const SASL_FINAL: u32 = 12;
}

const fn bit(code: u32) -> u32 {
    1 << code
}

const SASL_BITS: u32 = bit(code::SASL) | bit(code::SASL_CONTINUE) | bit(code::SASL_FINAL);

/// A SASL mechanism `require_auth` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mechanism {
    Scram,
    OAuth,
}

/// Which authentication requests the client may answer (libpq's `require_auth`).
#[derive(Clone, PartialEq, Eq)]
pub struct RequireAuth {
    /// As given, for messages.
    text: String,
    /// Allowed request codes, one bit per code (as libpq keeps them).
    allowed: u32,
    scram: bool,
    oauth: bool,
    /// Whether the server must run some authentication exchange (`none` not allowed).
    required: bool,
}

impl fmt::Debug for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequireAuth({:?})", self.text)
    }
}

impl fmt::Display for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const METHODS: &str = "password, md5, gss, sspi, scram-sha-256, oauth or none";

fn invalid(value: &str, expected: String) -> ConnectError {
    ConnectError::InvalidValue {
        name: "require_auth".into(),
        value: value.to_owned(),
        expected,
    }
}

impl RequireAuth {
    /// Parses a `require_auth` value (non-empty; an empty value means "not set").
    pub fn parse(value: &str) -> Result<RequireAuth> {
        let negated = value.starts_with('!');
        let mut policy = if negated {
            RequireAuth {
                text: value.to_owned(),
                allowed: u32::MAX,
                scram: true,
                oauth: true,
                required: false,
            }
        } else {
            RequireAuth {
                text: value.to_owned(),
                allowed: 0,
                scram: false,
                oauth: false,
                required: true,
            }
        };
        for part in value.split(',') {
            let method = match (part.strip_prefix('!'), negated) {
                (Some(m), true) => m,
                (None, false) => part,
                (Some(_), false) => {
                    return Err(invalid(
                        value,
                        format!(
                            "negative method \"{part}\" cannot be mixed with non-negative \
                             methods: list either the methods to allow or, each with a \
                             leading !, the methods to forbid"
                        ),
                    ))
                }
                (None, true) => {
                    return Err(invalid(
                        value,
                        format!(
                            "method \"{part}\" cannot be mixed with negative methods: list \
                             either the methods to allow or, each with a leading !, the \
                             methods to forbid"
                        ),
                    ))
                }
            };
            let duplicate = || invalid(value, format!("method \"{part}\" is given more than once"));
            let bits = match method {
                "password" => bit(code::CLEARTEXT),
                "md5" => bit(code::MD5),
                "gss" => bit(code::GSS) | bit(code::GSS_CONTINUE),
                "sspi" => bit(code::SSPI) | bit(code::GSS_CONTINUE),
                "scram-sha-256" | "oauth" => {
                    let mechanism = if method == "oauth" {
                        Mechanism::OAuth
                    } else {
                        Mechanism::Scram
                    };
                    let slot = match mechanism {
                        Mechanism::Scram => &mut policy.scram,
                        Mechanism::OAuth => &mut policy.oauth,
                    };
                    // Allowed already (positive) or forbidden already (negative).
                    if *slot != negated {
                        return Err(duplicate());
                    }
                    *slot = !negated;
                    continue;
                }
                "none" => {
                    // Positive lists start out requiring authentication, negative ones not.
                    if policy.required == negated {
                        return Err(duplicate());
                    }
                    policy.required = negated;
                    continue;
                }
                _ => {
                    return Err(invalid(
                        value,
                        format!("unknown method \"{method}\": use {METHODS}, or each with a leading ! to forbid it"),
                    ))
                }
            };
            if negated {
                if policy.allowed & bits == 0 {
                    return Err(duplicate());
                }
                policy.allowed &= !bits;
            } else {
                if policy.allowed & bits == bits {
                    return Err(duplicate());
                }
                policy.allowed |= bits;
            }
        }
        // SASL requests are allowed exactly when some mechanism is.
        let any_mechanism = policy.scram || policy.oauth;
        if !negated && any_mechanism {
            policy.allowed |= SASL_BITS;
        } else if negated && !any_mechanism {
            policy.allowed &= !SASL_BITS;
        }
        Ok(policy)
    }

    fn allows(&self, code: u32) -> bool {
        code < 32 && self.allowed & bit(code) != 0
    }

    /// Checks one authentication request (`body` is the `R` message's body after the
    /// code). `exchanged`: an allowed request came before this one.
    fn check(&self, code: u32, body: &[u8], exchanged: bool) -> std::result::Result<(), String> {
        let refuse = |what: &str| Err(what.to_owned());
        match code {
            code::OK => {
                if self.required && !exchanged {
                    refuse("the server let pgkill in without any authentication")
                } else {
                    Ok(())
                }
            }
            code::CLEARTEXT if !self.allows(code) => {
                refuse("the server requested a cleartext password")
            }
            code::MD5 if !self.allows(code) => refuse("the server requested a hashed password"),
            code::GSS | code::GSS_CONTINUE if !self.allows(code) => {
                refuse("the server requested GSSAPI authentication")
            }
            code::SSPI if !self.allows(code) => refuse("the server requested SSPI authentication"),
            code::SASL_CONTINUE | code::SASL_FINAL if !self.allows(code) => {
                refuse("the server requested SASL authentication")
            }
            code::SASL => {
                let offered = mechanisms(body);
                if !self.allows(code) {
                    return Err(format!(
                        "the server requested SASL authentication ({})",
                        offered.join(", ")
                    ));
                }
                // tokio-postgres always picks SCRAM-SHA-256(-PLUS) when offered; with
                // nothing it can do it fails by itself.
                let scram_offered = offered
                    .iter()
                    .any(|m| *m == "SCRAM-SHA-256" || *m == "SCRAM-SHA-256-PLUS");
                if scram_offered && !self.scram {
                    refuse("the server requested SCRAM-SHA-256 authentication")
                } else {
                    Ok(())
                }
            }
            code::CLEARTEXT
            | code::MD5
            | code::GSS
            | code::GSS_CONTINUE
            | code::SSPI
            | code::SASL_CONTINUE
            | code::SASL_FINAL => Ok(()),
            other => Err(format!(
                "the server requested an unknown authentication type ({other})"
            )),
        }
    }
}

/// The mechanism names of an `AuthenticationSASL` body: NUL-terminated strings ending
/// with an empty one.
fn mechanisms(body: &[u8]) -> Vec<String> {
    body.split(|b| *b == 0)
        .take_while(|m| !m.is_empty())
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

/// Why pgkill stopped answering the server: the error a watched read fails with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}, but require_auth={requirement} does not allow it")]
pub(crate) struct Refusal {
    /// What the server did, in libpq's words.
    pub(crate) reason: String,
    /// The `require_auth` value.
    pub(crate) requirement: String,
}

/// Authentication messages larger than this are refused (the server's own limit for an
/// authentication token is 65,535 bytes).
const MAX_AUTH_MESSAGE: usize = 65_535 + 8;

#[derive(Debug, Clone)]
enum Phase {
    /// The one-byte answer to the SSLRequest comes first.
    SslAnswer,
    /// Reading the 5-byte header (type, int32 length) of the next message.
    Header { got: usize, header: [u8; 5] },
    /// Inside a message: `left` bytes to go; `R` messages are kept in `body`.
    Body { auth: bool, left: usize },
    /// Authentication is over (or TLS took over the bytes): nothing more to check.
    Done,
    /// A request was refused; every later read fails the same way.
    Refused(Refusal),
}

/// Follows the server's messages during startup and refuses authentication requests
/// `require_auth` does not allow. Pure: fed the bytes as they are read.
#[derive(Debug, Clone)]
pub(crate) struct StartupScanner {
    policy: RequireAuth,
    phase: Phase,
    body: Vec<u8>,
    exchanged: bool,
}

impl StartupScanner {
    /// A scanner for the plain socket: when `ssl_request` the first byte is the
    /// SSLRequest's answer (`S`: TLS follows and the TLS stream is scanned instead).
    pub(crate) fn new(policy: RequireAuth, ssl_request: bool) -> Self {
        StartupScanner {
            policy,
            phase: if ssl_request {
                Phase::SslAnswer
            } else {
                Phase::Header {
                    got: 0,
                    header: [0; 5],
                }
            },
            body: Vec::new(),
            exchanged: false,
        }
    }

    /// Takes in bytes the server sent, in order. An error means the bytes must not
    /// reach the client (and no later ones either).
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> std::result::Result<(), Refusal> {
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::Done => return Ok(()),
                Phase::Refused(r) => return Err(r.clone()),
                Phase::SslAnswer => {
                    self.phase = if bytes[0] == b'S' {
                        Phase::Done
                    } else {
                        Phase::Header {
                            got: 0,
                            header: [0; 5],
                        }
                    };
                    bytes = &bytes[1..];
                }
                Phase::Header { got, header } => {
                    let take = (5 - *got).min(bytes.len());
                    header[*got..*got + take].copy_from_slice(&bytes[..take]);
                    *got += take;
                    bytes = &bytes[take..];
                    if *got == 5 {
                        let kind = header[0];
                        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                        let left = (len as usize).saturating_sub(4);
                        let auth = kind == b'R';
                        if auth && left > MAX_AUTH_MESSAGE {
                            return Err(self.refuse(
                                "the server sent an oversized authentication request".into(),
                            ));
                        }
                        self.body.clear();
                        self.phase = Phase::Body { auth, left };
                        if left == 0 {
                            self.end_of_message()?;
                        }
                    }
                }
                Phase::Body { auth, left } => {
                    let take = (*left).min(bytes.len());
                    if *auth {
                        self.body.extend_from_slice(&bytes[..take]);
                    }
                    *left -= take;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.end_of_message()?;
                    }
                }
            }
        }
        match &self.phase {
            Phase::Refused(r) => Err(r.clone()),
            _ => Ok(()),
        }
    }

    /// The refusal, once a request was refused.
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        match &self.phase {
            Phase::Refused(r) => Some(r.clone()),
            _ => None,
        }
    }

    fn refuse(&mut self, reason: String) -> Refusal {
        let r = Refusal {
            reason,
            requirement: self.policy.text.clone(),
        };
        self.phase = Phase::Refused(r.clone());
        r
    }

    /// A whole message has been read (its body, for `R`, in `self.body`).
    fn end_of_message(&mut self) -> std::result::Result<(), Refusal> {
        let was_auth = matches!(self.phase, Phase::Body { auth: true, .. });
        self.phase = Phase::Header {
            got: 0,
            header: [0; 5],
        };
        if !was_auth {
            return Ok(());
        }
        let Some(code) = self.body.get(..4) else {
            return Err(self.refuse("the server sent a malformed authentication request".into()));
        };
        let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
        let body = std::mem::take(&mut self.body);
        match self.policy.check(code, &body[4..], self.exchanged) {
            Err(reason) => Err(self.refuse(reason)),
            Ok(()) if code == code::OK => {
                self.phase = Phase::Done;
                Ok(())
            }
            Ok(()) => {
                self.exchanged = true;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RequireAuth {
        RequireAuth::parse(s).unwrap()
    }

    fn err(s: &str) -> String {
        RequireAuth::parse(s).unwrap_err().to_string()
    }

    /// An `R` message with `code` and `rest`.
    fn auth(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + rest.len() as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(rest);
        m
    }

    fn sasl(mechs: &[&str]) -> Vec<u8> {
        let mut rest = Vec::new();
        for m in mechs {
            rest.extend_from_slice(m.as_bytes());
            rest.push(0);
        }
        rest.push(0);
        auth(code::SASL, &rest)
    }

    /// Feeds `messages` in one go and again byte by byte; both must agree.
    fn run<M: AsRef<[u8]>>(policy: &str, messages: &[M]) -> std::result::Result<(), String> {
        let all: Vec<u8> = messages.iter().flat_map(|m| m.as_ref().to_vec()).collect();
        let mut whole = StartupScanner::new(p(policy), false);
        let a = whole.feed(&all).map_err(|r| r.to_string());
        let mut bytewise = StartupScanner::new(p(policy), false);
        let b = all
            .iter()
            .try_for_each(|b| bytewise.feed(std::slice::from_ref(b)))
            .map_err(|r| r.to_string());
        assert_eq!(a, b, "{policy}: whole vs byte by byte");
        a
    }

    #[test]
    fn parsing_like_libpq() {
        for ok in [
            "password",
            "md5",
            "gss",
            "sspi",
            "scram-sha-256",
            "oauth",
            "none",
            "password,scram-sha-256",
            "scram-sha-256,password,md5",
            "gss,sspi",
            "none,scram-sha-256",
            "!password",
            "!password,!md5,!scram-sha-256",
            "!none",
            "!gss,!sspi",
        ] {
            assert!(RequireAuth::parse(ok).is_ok(), "{ok}");
        }
        assert!(err("scram-sha-256,!md5").contains("negative method \"!md5\" cannot be mixed"));
        assert!(err("!password,!none,scram-sha-256")
            .contains("method \"scram-sha-256\" cannot be mixed with negative methods"));
        for (value, dup) in [
            ("password,md5,password", "password"),
            ("!password,!md5,!password", "!password"),
            ("none,md5,none", "none"),
            ("!none,!md5,!none", "!none"),
            ("scram-sha-256,scram-sha-256", "scram-sha-256"),
            ("!scram-sha-256,!scram-sha-256", "!scram-sha-256"),
            ("gss,gss", "gss"),
        ] {
            let e = err(value);
            assert!(
                e.contains(&format!("method \"{dup}\" is given more than once")),
                "{value}: {e}"
            );
        }
        for bad in [
            "none,abcdefg",
            "SCRAM-SHA-256",
            "password,",
            "!",
            "scram",
            " md5",
            "trust",
        ] {
            let e = RequireAuth::parse(bad).unwrap_err();
            assert!(
                matches!(&e, ConnectError::InvalidValue { name, .. } if name == "require_auth"),
                "{bad}: {e:?}"
            );
        }
        assert!(err("none,abcdefg").contains("unknown method \"abcdefg\""));
    }

    #[test]
    fn what_each_value_allows() {
        let ok = auth(code::OK, b"");
        let cleartext = auth(code::CLEARTEXT, b"");
        let md5 = auth(code::MD5, b"salt");
        let scram = sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        let scram_rest = [
            auth(code::SASL_CONTINUE, b"r=abc"),
            auth(code::SASL_FINAL, b"v=xyz"),
            ok.clone(),
        ];
        let scram_all: Vec<Vec<u8>> = std::iter::once(scram.clone())
            .chain(scram_rest.iter().cloned())
            .collect();
        let gss = auth(code::GSS, b"");

        // Trust.
        for allowed in [
            "none",
            "!password",
            "!scram-sha-256",
            "!password,!scram-sha-256",
        ] {
            assert_eq!(run(allowed, &[&ok]), Ok(()), "{allowed}");
        }
        for refused in [
            "password",
            "md5",
            "scram-sha-256",
            "gss",
            "sspi",
            "!none",
            "password,scram-sha-256",
        ] {
            let e = run(refused, &[&ok]).unwrap_err();
            assert!(e.contains("without any authentication"), "{refused}: {e}");
            assert!(e.contains(&format!("require_auth={refused}")), "{e}");
        }
        // Cleartext password.
        for allowed in ["password", "!none", "scram-sha-256,password,md5", "!md5"] {
            assert_eq!(run(allowed, &[&cleartext, &ok]), Ok(()), "{allowed}");
        }
        for refused in [
            "md5",
            "scram-sha-256",
            "none",
            "!password",
            "!password,!md5,!scram-sha-256",
        ] {
            let e = run(refused, &[&cleartext]).unwrap_err();
            assert!(
                e.contains("requested a cleartext password"),
                "{refused}: {e}"
            );
        }
        assert_eq!(
            run("scram-sha-256", &[&cleartext]).unwrap_err(),
            "the server requested a cleartext password, but require_auth=scram-sha-256 does not allow it"
        );
        // MD5.
        assert_eq!(run("md5", &[&md5, &ok]), Ok(()));
        assert!(run("password", &[&md5])
            .unwrap_err()
            .contains("hashed password"));
        // SCRAM.
        for allowed in [
            "scram-sha-256",
            "!none",
            "password,scram-sha-256,md5",
            "!password",
            "!md5",
        ] {
            assert_eq!(run(allowed, &scram_all), Ok(()), "{allowed}");
        }
        for refused in ["password", "md5", "none"] {
            let e = run(refused, &[&scram]).unwrap_err();
            assert!(
                e.contains("requested SASL authentication (SCRAM-SHA-256-PLUS, SCRAM-SHA-256)"),
                "{refused}: {e}"
            );
        }
        for refused in ["!scram-sha-256", "!password,!md5,!scram-sha-256", "oauth"] {
            let e = run(refused, &[&scram]).unwrap_err();
            assert!(e.contains("requested "), "{refused}: {e}");
        }
        assert!(run("!scram-sha-256", &[&scram])
            .unwrap_err()
            .contains("SCRAM-SHA-256 authentication"));
        // GSSAPI: allowed means tokio-postgres gets to refuse it itself.
        assert_eq!(run("gss", &[&gss]), Ok(()));
        assert!(run("scram-sha-256", &[gss]).unwrap_err().contains("GSSAPI"));
        // Unknown codes are refused whatever is allowed.
        assert!(run("!none", &[auth(42, b"")])
            .unwrap_err()
            .contains("unknown authentication type (42)"));
    }

    #[test]
    fn other_messages_pass_and_authentication_ends_the_watch() {
        // A notice before the request, parameter statuses after AuthenticationOk.
        let notice = {
            let mut m = vec![b'N'];
            m.extend_from_slice(&9u32.to_be_bytes());
            m.extend_from_slice(b"hello");
            m
        };
        let after = {
            let mut m = vec![b'S'];
            m.extend_from_slice(&100u32.to_be_bytes());
            m.extend_from_slice(&[b'R'; 96]);
            m
        };
        let msgs = [
            notice,
            auth(code::CLEARTEXT, b""),
            auth(code::OK, b""),
            after,
        ];
        assert_eq!(run("password", &msgs), Ok(()));
        // Bytes after AuthenticationOk are not looked at: a fake `R` in them passes.
        let mut s = StartupScanner::new(p("password"), false);
        s.feed(&[auth(code::CLEARTEXT, b""), auth(code::OK, b"")].concat())
            .unwrap();
        s.feed(&auth(code::CLEARTEXT, b"")).unwrap();
    }

    #[test]
    fn ssl_answer_is_one_byte() {
        // 'S': TLS follows, the plain socket carries ciphertext: nothing more to read.
        let mut s = StartupScanner::new(p("scram-sha-256"), true);
        s.feed(b"S").unwrap();
        s.feed(&auth(code::CLEARTEXT, b"")).unwrap();
        // 'N': the messages follow in plain text.
        let mut s = StartupScanner::new(p("scram-sha-256"), true);
        let mut bytes = b"N".to_vec();
        bytes.extend(auth(code::CLEARTEXT, b""));
        assert!(s.feed(&bytes).is_err());
    }

    #[test]
    fn a_refusal_sticks() {
        let mut s = StartupScanner::new(p("scram-sha-256"), false);
        assert!(s.feed(&auth(code::CLEARTEXT, b"")).is_err());
        assert!(s.feed(b"anything").is_err());
        assert!(s.feed(&auth(code::OK, b"")).is_err());
    }

    #[test]
    fn malformed_requests_are_refused() {
        let mut short = vec![b'R'];
        short.extend_from_slice(&6u32.to_be_bytes());
        short.extend_from_slice(&[0, 0]);
        assert!(run("!none", &[short]).unwrap_err().contains("malformed"));
        let mut huge = vec![b'R'];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut s = StartupScanner::new(p("!none"), false);
        assert!(s.feed(&huge).unwrap_err().reason.contains("oversized"));
    }
}
