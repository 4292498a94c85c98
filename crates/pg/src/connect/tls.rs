//! TLS for pgkill's connections: rustls (ring provider, no system OpenSSL) with libpq's
//! `sslmode` semantics.
//!
//! | sslmode | TLS | verifies |
//! |---|---|---|
//! | `disable` | never | – |
//! | `allow`, `prefer` | if the server offers it | nothing (encryption only) |
//! | `require` | always | nothing, unless a root certificate is available (`sslrootcert`, `~/.postgresql/root.crt`): then the chain, like libpq |
//! | `verify-ca` | always | the chain against the root certificates, not the host name |
//! | `verify-full` | always | the chain and that the certificate names the host |
//!
//! Unix-socket connections never use TLS (the server does not offer it there).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::error::{ConnectError, Result};
use super::{RootCerts, SslMode};

/// What the server's certificate is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Nothing: encryption against passive eavesdroppers only.
    Nothing,
    /// The chain to a trusted root, not the name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// How `mode` with `roots` verifies (`None`: no TLS at all).
pub(crate) fn verification(mode: SslMode, roots: &RootCerts) -> Option<Verify> {
    match mode {
        SslMode::Disable => None,
        SslMode::Allow | SslMode::Prefer => Some(Verify::Nothing),
        SslMode::Require => Some(match roots {
            RootCerts::None => Verify::Nothing,
            RootCerts::File { .. } | RootCerts::System => Verify::Chain,
        }),
        SslMode::VerifyCa => Some(Verify::Chain),
        SslMode::VerifyFull => Some(Verify::Full),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn setup_error(detail: impl std::fmt::Display) -> ConnectError {
    ConnectError::TlsSetup {
        detail: detail.to_string(),
    }
}

/// The trusted roots for verification.
fn root_store(roots: &RootCerts) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::None => {
            return Err(setup_error(
                "no root certificates to verify the server against",
            ))
        }
        RootCerts::File { path, certs } => {
            let (added, _ignored) = store.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return Err(ConnectError::RootCertInvalid {
                    path: path.clone(),
                    detail: "none of its certificates could be parsed".into(),
                });
            }
        }
        RootCerts::System => {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let detail = match loaded.errors.first() {
                    Some(e) => e.to_string(),
                    None => "no CA certificates found (is ca-certificates installed?)".into(),
                };
                return Err(ConnectError::SystemRoots { detail });
            }
        }
    }
    Ok(store)
}

/// The rustls configuration for `verify` with `roots`.
pub(crate) fn client_config(verify: Verify, roots: &RootCerts) -> Result<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(setup_error)?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(NameUnchecked {
            roots: None,
            provider,
        }),
        Verify::Chain => Arc::new(NameUnchecked {
            roots: Some(root_store(roots)?),
            provider,
        }),
        Verify::Full => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider)
                .build()
                .map_err(setup_error)?
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// A verifier that never checks the server's names: `prefer`/`require` without roots
/// (`roots: None`, any certificate) and `verify-ca` (`roots: Some`, the certificate must
/// chain to a trusted root). Either way the handshake signatures are checked, so the
/// server must hold the key of the certificate it shows.
#[derive(Debug)]
struct NameUnchecked {
    roots: Option<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NameUnchecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls error behind a failed handshake, if any (tokio-rustls wraps it in an
/// `io::Error`, which tokio-postgres wraps again).
pub(crate) fn rustls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r);
            }
        }
        current = e.source();
    }
    None
}

/// What to tell the user about a rustls error: what failed and what to do.
pub(crate) fn explain(err: &rustls::Error, mode: SslMode, host: &str, roots: &RootCerts) -> String {
    let roots_text = match roots {
        RootCerts::None => "the root certificates".to_owned(),
        RootCerts::File { path, .. } => format!("sslrootcert \"{}\"", path.display()),
        RootCerts::System => "the system's CA certificates (sslrootcert=system)".to_owned(),
    };
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                let instead = if mode == SslMode::Require {
                    // require verifies only because a root certificate is there.
                    "or remove that root certificate to encrypt without verifying"
                } else {
                    "or use sslmode=require to encrypt without verifying"
                };
                format!(
                    "the server's certificate is not signed by a CA in {roots_text}: give the \
                     CA that signed it with sslrootcert=FILE, {instead}"
                )
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate is not valid for host \"{host}\": connect with a \
                     host name or address listed in the certificate, or use sslmode=verify-ca \
                     to check only the CA"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired: renew it on the server".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet: check the clocks of server and client"
                    .to_owned()
            }
            other => format!("the server's certificate was rejected: {other:?}"),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_mode_verifies() {
        let file = RootCerts::File {
            path: "/ca.crt".into(),
            certs: Vec::new(),
        };
        assert_eq!(verification(SslMode::Disable, &file), None);
        assert_eq!(verification(SslMode::Prefer, &file), Some(Verify::Nothing));
        assert_eq!(
            verification(SslMode::Allow, &RootCerts::None),
            Some(Verify::Nothing)
        );
        assert_eq!(
            verification(SslMode::Require, &RootCerts::None),
            Some(Verify::Nothing)
        );
        // libpq: require with a root certificate behaves like verify-ca.
        assert_eq!(verification(SslMode::Require, &file), Some(Verify::Chain));
        assert_eq!(verification(SslMode::VerifyCa, &file), Some(Verify::Chain));
        assert_eq!(verification(SslMode::VerifyFull, &file), Some(Verify::Full));
    }

    #[test]
    fn configs_build() {
        assert!(client_config(Verify::Nothing, &RootCerts::None).is_ok());
        let e = client_config(
            Verify::Full,
            &RootCerts::File {
                path: "/ca.crt".into(),
                certs: vec![CertificateDer::from(vec![1, 2, 3])],
            },
        )
        .unwrap_err();
        assert!(matches!(e, ConnectError::RootCertInvalid { .. }), "{e:?}");
    }

    #[test]
    fn explanations() {
        let roots = RootCerts::File {
            path: "/ca.crt".into(),
            certs: Vec::new(),
        };
        let s = explain(
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            SslMode::VerifyFull,
            "db",
            &roots,
        );
        assert!(
            s.contains("not signed by a CA in sslrootcert \"/ca.crt\""),
            "{s}"
        );
        assert!(s.contains("use sslmode=require"), "{s}");
        let s = explain(
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            SslMode::Require,
            "db",
            &roots,
        );
        assert!(s.contains("remove that root certificate"), "{s}");
        let s = explain(
            &rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            SslMode::VerifyFull,
            "db",
            &roots,
        );
        assert!(s.contains("not valid for host \"db\""), "{s}");
    }
}
