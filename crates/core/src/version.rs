//! PostgreSQL server versions.
//!
//! pgkill supports major versions 10 to 18. Version-dependent decisions are made by the
//! planner from a [`ServerVersion`], never by comparing numbers in front-ends.

use std::fmt;

/// Oldest major version pgkill supports.
pub const OLDEST_SUPPORTED: u32 = 10;
/// Newest major version pgkill is tested against.
pub const NEWEST_SUPPORTED: u32 = 18;

/// A server version as `server_version_num` reports it (e.g. `150018` for 15.18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    /// Major version (10, 11, …, 18).
    pub major: u32,
    /// Minor version (the `18` of 15.18).
    pub minor: u32,
}

/// A version string that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The text did not contain a version number in a known form.
    #[error("cannot read a PostgreSQL version from {0:?}")]
    Unparsable(String),
    /// The version is older than pgkill supports.
    #[error(
        "PostgreSQL {0} is not supported: pgkill needs PostgreSQL {OLDEST_SUPPORTED} or newer"
    )]
    TooOld(String),
}

impl ServerVersion {
    /// Builds a version from `server_version_num` (`100023`, `150018`, …).
    pub fn from_num(num: u32) -> Result<Self, VersionError> {
        if num < 100_000 {
            return Err(VersionError::TooOld(format!(
                "{}.{}",
                num / 10_000,
                (num / 100) % 100
            )));
        }
        Ok(Self {
            major: num / 10_000,
            minor: num % 10_000,
        })
    }

    /// Reads the version out of text such as `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`,
    /// `15.18`, `18beta1` or `10.23`.
    pub fn parse_text(text: &str) -> Result<Self, VersionError> {
        let unparsable = || VersionError::Unparsable(text.trim().to_owned());
        let token = text
            .split_whitespace()
            .find(|t| t.starts_with(|c: char| c.is_ascii_digit()))
            .ok_or_else(unparsable)?;
        let mut parts = token.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(unparsable)?;
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if major < OLDEST_SUPPORTED {
            return Err(VersionError::TooOld(token.to_owned()));
        }
        Ok(Self { major, minor })
    }

    /// Whether this is a major version pgkill supports.
    pub fn is_supported(self) -> bool {
        (OLDEST_SUPPORTED..=NEWEST_SUPPORTED).contains(&self.major)
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_server_version_num() {
        assert_eq!(
            ServerVersion::from_num(150018),
            Ok(ServerVersion {
                major: 15,
                minor: 18
            })
        );
        assert_eq!(
            ServerVersion::from_num(100023),
            Ok(ServerVersion {
                major: 10,
                minor: 23
            })
        );
        assert_eq!(
            ServerVersion::from_num(180004),
            Ok(ServerVersion {
                major: 18,
                minor: 4
            })
        );
        assert!(matches!(
            ServerVersion::from_num(90624),
            Err(VersionError::TooOld(_))
        ));
    }

    #[test]
    fn from_version_text() {
        let v = |s| ServerVersion::parse_text(s);
        assert_eq!(
            v("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)").map(|v| v.major),
            Ok(15)
        );
        assert_eq!(
            v("postgres (PostgreSQL) 10.23"),
            Ok(ServerVersion {
                major: 10,
                minor: 23
            })
        );
        assert_eq!(
            v("18beta1"),
            Ok(ServerVersion {
                major: 18,
                minor: 0
            })
        );
        assert_eq!(
            v("17.2\n"),
            Ok(ServerVersion {
                major: 17,
                minor: 2
            })
        );
        assert!(matches!(
            v("postgres (PostgreSQL) 9.6.24"),
            Err(VersionError::TooOld(_))
        ));
        assert!(matches!(
            v("no digits here"),
            Err(VersionError::Unparsable(_))
        ));
    }

    #[test]
    fn supported_range() {
        assert!(ServerVersion {
            major: 10,
            minor: 0
        }
        .is_supported());
        assert!(ServerVersion {
            major: 18,
            minor: 4
        }
        .is_supported());
        assert!(!ServerVersion {
            major: 19,
            minor: 0
        }
        .is_supported());
    }
}
