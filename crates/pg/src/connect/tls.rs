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
use rustls::client::{VerifierBuilderError, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, PeerIncompatible,
    RootCertStore, SignatureScheme, SupportedProtocolVersion,
};

use super::error::{ConnectError, Result};
use super::{RootCerts, Settings, SslMode, TlsVersion};

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

/// The TLS versions rustls may use within `min..=max` (empty when none of 1.2 and 1.3
/// is in the range).
pub(crate) fn protocol_versions(
    min: TlsVersion,
    max: Option<TlsVersion>,
) -> Vec<&'static SupportedProtocolVersion> {
    [
        (TlsVersion::Tls1_2, &rustls::version::TLS12),
        (TlsVersion::Tls1_3, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| *v >= min && max.is_none_or(|max| *v <= max))
    .map(|(_, r)| r)
    .collect()
}

/// The rustls configuration for `verify`, with the settings' roots, revocation lists and
/// protocol versions.
pub(crate) fn client_config(verify: Verify, settings: &Settings) -> Result<ClientConfig> {
    let provider = provider();
    let versions = protocol_versions(
        settings.ssl_min_protocol_version,
        settings.ssl_max_protocol_version,
    );
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(setup_error)?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(NameUnchecked {
            chain: None,
            provider,
        }),
        Verify::Chain => Arc::new(NameUnchecked {
            chain: Some(chain_verifier(settings, provider.clone())?),
            provider,
        }),
        Verify::Full => chain_verifier(settings, provider)?,
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// rustls's verifier of the chain, the revocation lists and the name. As OpenSSL does
/// for libpq, a certificate whose revocation status no list tells is refused, and so is
/// an expired list.
fn chain_verifier(
    settings: &Settings,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    let mut builder = WebPkiServerVerifier::builder_with_provider(
        Arc::new(root_store(&settings.root_certs)?),
        provider,
    );
    if !settings.crls.lists.is_empty() {
        builder = builder
            .with_crls(settings.crls.lists.iter().cloned())
            .enforce_revocation_expiration();
    }
    builder.build().map_err(|e| match e {
        VerifierBuilderError::InvalidCrl(e) => ConnectError::CrlInvalid {
            paths: settings.crls.paths.clone(),
            detail: format!("{e:?}"),
        },
        other => setup_error(other),
    })
}

/// A verifier that never checks the server's names: `prefer`/`require` without roots
/// (`chain: None`, any certificate) and `verify-ca` (`chain: Some`, the certificate must
/// chain to a trusted root and not be revoked). Either way the handshake signatures are
/// checked, so the server must hold the key of the certificate it shows.
#[derive(Debug)]
struct NameUnchecked {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NameUnchecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // rustls checks the name last, after the chain and the revocation lists (a unit
        // test below holds it to that): a name error means everything else passed.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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
pub(crate) fn explain(err: &rustls::Error, settings: &Settings) -> String {
    let mode = settings.ssl_mode;
    let roots_text = match &settings.root_certs {
        RootCerts::None => "the root certificates".to_owned(),
        RootCerts::File { path, .. } => format!("sslrootcert \"{}\"", path.display()),
        RootCerts::System => "the system's CA certificates (sslrootcert=system)".to_owned(),
    };
    let crls_text = || {
        settings
            .crls
            .paths
            .iter()
            .map(|p| format!("\"{}\"", p.display()))
            .collect::<Vec<_>>()
            .join(", ")
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
                    "the server's certificate is not valid for host \"{}\": connect with a \
                     host name or address listed in the certificate, or use sslmode=verify-ca \
                     to check only the CA",
                    settings.host
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired: renew it on the server".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet: check the clocks of server and client"
                    .to_owned()
            }
            CertificateError::Revoked => format!(
                "the server's certificate has been revoked (it is listed in the revocation list \
                 {}): the server needs a new certificate",
                crls_text()
            ),
            CertificateError::UnknownRevocationStatus => format!(
                "no revocation list in {} is from the CA that issued the server's certificate, \
                 so whether it was revoked is unknown: add that CA's CRL (sslcrl, sslcrldir)",
                crls_text()
            ),
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => format!(
                "the revocation list {} has expired (its next update is past): get a current \
                 one from the CA",
                crls_text()
            ),
            other => format!("the server's certificate was rejected: {other:?}"),
        },
        rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)
        | rustls::Error::PeerIncompatible(
            PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
            | PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled,
        ) => {
            let allowed: Vec<&str> = protocol_versions(
                settings.ssl_min_protocol_version,
                settings.ssl_max_protocol_version,
            )
            .iter()
            .map(|v| match v.version {
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                _ => "TLSv1.2",
            })
            .collect();
            format!(
                "the server and pgkill have no TLS version in common ({err}; pgkill allows {} \
                 here, from ssl_min_protocol_version={} and ssl_max_protocol_version={}): \
                 widen that range, or the server's ssl_min_protocol_version/\
                 ssl_max_protocol_version",
                allowed.join(" and "),
                settings.ssl_min_protocol_version,
                settings
                    .ssl_max_protocol_version
                    .map_or("(none)", TlsVersion::as_str)
            )
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    fn settings(conninfo: &str, env: crate::connect::MemoryEnv) -> Settings {
        crate::connect::resolve(
            &crate::connect::ConnectArgs {
                conninfo: Some(conninfo.to_owned()),
                ..Default::default()
            },
            &env.user("u").home("/home/u"),
        )
        .unwrap()
    }

    #[test]
    fn configs_build() {
        let s = settings("host=db", crate::connect::MemoryEnv::new());
        assert!(client_config(Verify::Nothing, &s).is_ok());
        let mut s = settings("host=db sslmode=require", crate::connect::MemoryEnv::new());
        s.root_certs = RootCerts::File {
            path: "/ca.crt".into(),
            certs: vec![CertificateDer::from(vec![1, 2, 3])],
        };
        let e = client_config(Verify::Full, &s).unwrap_err();
        assert!(matches!(e, ConnectError::RootCertInvalid { .. }), "{e:?}");
    }

    #[test]
    fn protocol_version_ranges() {
        use rustls::version::{TLS12, TLS13};
        let v = |min, max| protocol_versions(min, max);
        assert_eq!(v(TlsVersion::Tls1_2, None), vec![&TLS12, &TLS13]);
        assert_eq!(v(TlsVersion::Tls1_0, None), vec![&TLS12, &TLS13]);
        assert_eq!(v(TlsVersion::Tls1_3, None), vec![&TLS13]);
        assert_eq!(
            v(TlsVersion::Tls1_0, Some(TlsVersion::Tls1_2)),
            vec![&TLS12]
        );
        assert!(v(TlsVersion::Tls1_0, Some(TlsVersion::Tls1_1)).is_empty());
    }

    /// A CA, a server certificate for `localhost` (serial 7) and a CRL by the CA that
    /// revokes `revoked` serials.
    pub(crate) fn pki(ca_name: &str, revoked: &[u64]) -> (String, CertificateDer<'static>, String) {
        use rcgen::{
            BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa,
            Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.serial_number = Some(SerialNumber::from(7u64));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).unwrap();
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|n| RevokedCertParams {
                    serial_number: SerialNumber::from(*n),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap();
        (ca_cert.pem(), cert.der().clone(), crl.pem().unwrap())
    }

    fn check(
        settings: &Settings,
        verify: Verify,
        cert: &CertificateDer<'_>,
        name: &str,
    ) -> std::result::Result<(), rustls::Error> {
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::Full => chain_verifier(settings, provider()).unwrap(),
            _ => Arc::new(NameUnchecked {
                chain: Some(chain_verifier(settings, provider()).unwrap()),
                provider: provider(),
            }),
        };
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(drop)
    }

    #[test]
    fn revoked_certificates_are_refused_whatever_the_name() {
        let (ca, cert, revoking) = pki("unit CA", &[7]);
        let (_, _, forged) = pki("unit CA", &[]);
        let (_, _, foreign) = pki("another CA", &[7]);
        let env = || {
            crate::connect::MemoryEnv::new()
                .file("/ca.crt", ca.clone(), 0o644)
                .file("/revoking.crl", revoking.clone(), 0o644)
                .file("/forged.crl", forged.clone(), 0o644)
                .file("/foreign.crl", foreign.clone(), 0o644)
        };
        let base = "host=localhost sslrootcert=/ca.crt";
        let revoked = Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        for mode in ["verify-ca", "verify-full", "require"] {
            let s = settings(
                &format!("{base} sslmode={mode} sslcrl=/revoking.crl"),
                env(),
            );
            let verify = verification(s.ssl_mode, &s.root_certs).unwrap();
            assert_eq!(check(&s, verify, &cert, "localhost"), revoked, "{mode}");
        }
        // verify-ca ignores the name, never the revocation (rustls checks the name last).
        let s = settings(
            &format!("{base} sslmode=verify-ca sslcrl=/revoking.crl"),
            env(),
        );
        assert_eq!(check(&s, Verify::Chain, &cert, "wrong.invalid"), revoked);
        // Without a CRL, or with one that does not list it, the certificate is fine.
        let s = settings(&format!("{base} sslmode=verify-ca"), env());
        assert_eq!(check(&s, Verify::Chain, &cert, "wrong.invalid"), Ok(()));
        // A list that names the CA but is not signed by it is refused.
        let s = settings(
            &format!("{base} sslmode=verify-full sslcrl=/forged.crl"),
            env(),
        );
        assert!(matches!(
            check(&s, Verify::Full, &cert, "localhost"),
            Err(rustls::Error::InvalidCertRevocationList(_))
        ));
        // A CRL from another CA cannot tell: refused, as OpenSSL does for libpq.
        let s = settings(
            &format!("{base} sslmode=verify-full sslcrl=/foreign.crl"),
            env(),
        );
        assert_eq!(
            check(&s, Verify::Full, &cert, "localhost"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownRevocationStatus
            ))
        );
    }

    #[test]
    fn explanations() {
        let s = settings(
            "host=db sslmode=verify-full sslrootcert=/ca.crt sslcrl=/x.crl",
            crate::connect::MemoryEnv::new()
                .file("/ca.crt", pki("CA", &[]).0, 0o644)
                .file("/x.crl", pki("CA", &[]).2, 0o644),
        );
        let e = |c: CertificateError| explain(&rustls::Error::InvalidCertificate(c), &s);
        let t = e(CertificateError::UnknownIssuer);
        assert!(
            t.contains("not signed by a CA in sslrootcert \"/ca.crt\""),
            "{t}"
        );
        assert!(t.contains("use sslmode=require"), "{t}");
        let t = e(CertificateError::NotValidForName);
        assert!(t.contains("not valid for host \"db\""), "{t}");
        let t = e(CertificateError::Revoked);
        assert!(
            t.contains("has been revoked") && t.contains("\"/x.crl\""),
            "{t}"
        );
        let t = e(CertificateError::UnknownRevocationStatus);
        assert!(t.contains("add that CA's CRL"), "{t}");
        let t = e(CertificateError::ExpiredRevocationList);
        assert!(t.contains("has expired"), "{t}");
        let mut req = s.clone();
        req.ssl_mode = SslMode::Require;
        let t = explain(
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            &req,
        );
        assert!(t.contains("remove that root certificate"), "{t}");
        let mut v13 = s.clone();
        v13.ssl_min_protocol_version = TlsVersion::Tls1_3;
        let t = explain(
            &rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
            &v13,
        );
        assert!(
            t.contains("no TLS version in common") && t.contains("pgkill allows TLSv1.3 here"),
            "{t}"
        );
    }
}
