//! TLS for the listeners that speak it: the rustls server configuration made from the
//! PEM files the options name (made again on a reload, for the connections accepted
//! after it), a session for each accepted connection, and what a finished handshake
//! tells the application. No sockets here: `socket.rs` moves the bytes.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use super::cert_subject;
use crate::config::{ClientCertificates, TlsConfig, TlsVersion};

/// The ALPN protocols offered, most preferred first (`h2` before them with `http2`).
const ALPN: &[&[u8]] = &[b"http/1.1", b"http/1.0"];
pub const ALPN_H2: &[u8] = b"h2";

/// Makes the TLS sessions of accepted connections.
pub struct Acceptor {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl Acceptor {
    /// Reads the certificate, key and CA files; the error names the file and what is
    /// wrong with it.
    pub fn new(settings: &TlsConfig) -> Result<Acceptor, String> {
        Ok(Acceptor {
            current: RwLock::new(Arc::new(server_config(settings)?)),
            settings: settings.clone(),
        })
    }

    /// Reads the files again: connections accepted from now on use what they say,
    /// open ones keep their session. On an error the previous files stay in use.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Arc::new(server_config(&self.settings)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// A session for a connection just accepted.
    pub fn session(&self) -> Result<ServerConnection, rustls::Error> {
        let config = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        ServerConnection::new(config)
    }
}

/// What the application learns of a connection's TLS session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3` (`SSL_PROTOCOL`).
    pub protocol: &'static str,
    /// The cipher suite, as IANA names it (`SSL_CIPHER`).
    pub cipher: String,
    /// The client certificate's subject, RFC 4514 (`SSL_CLIENT_S_DN`), when the client
    /// sent one (rustls verified it against `ca_certs` before the handshake finished).
    pub client_subject: Option<String>,
    /// The client and server agreed on HTTP/2 by ALPN.
    pub h2: bool,
}

impl TlsInfo {
    /// What a session that finished its handshake says.
    pub fn of(session: &ServerConnection) -> TlsInfo {
        let protocol = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let cipher = session
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("unknown")
            // rustls spells the TLS 1.3 suites `TLS13_...`; IANA (and SSL_CIPHER in
            // Apache and nginx) `TLS_...`.
            .replacen("TLS13_", "TLS_", 1);
        let client_subject = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            // A certificate rustls accepted but this cannot name still says "verified".
            .map(|cert| cert_subject::subject(cert).unwrap_or_default());
        TlsInfo {
            protocol,
            cipher,
            client_subject,
            h2: session.alpn_protocol() == Some(ALPN_H2),
        }
    }
}

fn server_config(settings: &TlsConfig) -> Result<ServerConfig, String> {
    let certs = certificates(&settings.certfile, "certfile")?;
    let key_path = settings.keyfile.as_deref().unwrap_or(&settings.certfile);
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|err| {
        let name = if settings.keyfile.is_some() {
            "keyfile"
        } else {
            "certfile (no keyfile given)"
        };
        format!("{name} {}: no private key read: {err}", key_path.display())
    })?;
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_protocol_versions(versions);
    let builder = match &settings.clients {
        ClientCertificates::NotAsked => builder.with_no_client_auth(),
        ClientCertificates::Optional { ca_certs } | ClientCertificates::Required { ca_certs } => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca_certs, "ca_certs")? {
                roots.add(cert).map_err(|err| {
                    format!(
                        "ca_certs {}: a certificate is not usable: {err}",
                        ca_certs.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = match settings.clients {
                ClientCertificates::Optional { .. } => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|err| format!("ca_certs {}: {err}", ca_certs.display()))?,
            )
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|err| {
        format!(
            "certfile {} and its key do not go together: {err}",
            settings.certfile.display()
        )
    })?;
    config.alpn_protocols = settings
        .http2
        .then_some(ALPN_H2)
        .into_iter()
        .chain(ALPN.iter().copied())
        .map(<[u8]>::to_vec)
        .collect();
    // The client's order of cipher suites is not a reason to pick a weaker one.
    config.ignore_client_order = true;
    Ok(config)
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| format!("{option} {shown}: {err}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{option} {shown}: {err}"))?;
    if certs.is_empty() {
        return Err(format!("{option} {shown}: no certificate (PEM) in it"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A self-signed certificate for `localhost` and its key, written as PEM files in
    /// `dir`: (certfile, keyfile).
    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let certfile = dir.join(format!("{name}.crt"));
        let keyfile = dir.join(format!("{name}.key"));
        std::fs::write(&certfile, cert.pem()).unwrap();
        std::fs::write(&keyfile, key.serialize_pem()).unwrap();
        (certfile, keyfile)
    }

    fn settings(certfile: &Path, keyfile: Option<&Path>) -> TlsConfig {
        TlsConfig {
            certfile: certfile.to_owned(),
            keyfile: keyfile.map(Path::to_owned),
            clients: ClientCertificates::NotAsked,
            min_version: TlsVersion::Tls12,
            http2: false,
        }
    }

    #[test]
    fn a_certificate_and_its_key_make_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let acceptor = Acceptor::new(&settings(&cert, Some(&key))).unwrap();
        assert!(acceptor.session().unwrap().is_handshaking());
    }

    #[test]
    fn the_key_may_be_in_the_certfile() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let both = dir.path().join("both.pem");
        let text =
            std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&key).unwrap();
        std::fs::write(&both, text).unwrap();
        assert!(Acceptor::new(&settings(&both, None)).is_ok());
        let err = Acceptor::new(&settings(&cert, None)).err().unwrap();
        assert!(err.starts_with("certfile (no keyfile given)"), "{err}");
    }

    #[test]
    fn errors_name_the_file_and_the_option() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let (_, other_key) = write_pair(dir.path(), "b");
        let missing = dir.path().join("missing.pem");
        let err = Acceptor::new(&settings(&missing, Some(&key)))
            .err()
            .unwrap();
        assert!(
            err.starts_with("certfile ") && err.contains("missing.pem"),
            "{err}"
        );
        let err = Acceptor::new(&settings(&key, Some(&key))).err().unwrap();
        assert!(err.contains("no certificate"), "{err}");
        let err = Acceptor::new(&settings(&cert, Some(&cert))).err().unwrap();
        assert!(err.starts_with("keyfile "), "{err}");
        let err = Acceptor::new(&settings(&cert, Some(&other_key)))
            .err()
            .unwrap();
        assert!(err.contains("do not go together"), "{err}");
        let mut asked = settings(&cert, Some(&key));
        asked.clients = ClientCertificates::Required {
            ca_certs: key.clone(),
        };
        let err = Acceptor::new(&asked).err().unwrap();
        assert!(err.starts_with("ca_certs "), "{err}");
    }

    #[test]
    fn a_failed_reload_keeps_the_files_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let acceptor = Acceptor::new(&settings(&cert, Some(&key))).unwrap();
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(acceptor.reload().is_err());
        assert!(acceptor.session().is_ok());
        write_pair(dir.path(), "a");
        assert!(acceptor.reload().is_ok());
    }

    #[test]
    fn options_are_checked_together() {
        let ok = TlsConfig::from_options(Some("c"), None, None, "none", "1.2").unwrap();
        assert_eq!(ok.unwrap().clients, ClientCertificates::NotAsked);
        let required = TlsConfig::from_options(Some("c"), None, Some("ca"), "2", "1.3")
            .unwrap()
            .unwrap();
        assert_eq!(required.min_version, TlsVersion::Tls13);
        assert!(matches!(
            required.clients,
            ClientCertificates::Required { .. }
        ));
        assert!(TlsConfig::from_options(None, None, None, "none", "1.2")
            .unwrap()
            .is_none());
        let errors = [
            (
                TlsConfig::from_options(None, Some("k"), None, "none", "1.2"),
                "keyfile",
            ),
            (
                TlsConfig::from_options(None, None, Some("ca"), "none", "1.2"),
                "ca_certs",
            ),
            (
                TlsConfig::from_options(Some("c"), None, Some("ca"), "none", "1.2"),
                "ca_certs",
            ),
            (
                TlsConfig::from_options(Some("c"), None, None, "required", "1.2"),
                "cert_reqs",
            ),
            (
                TlsConfig::from_options(Some("c"), None, None, "always", "1.2"),
                "cert_reqs",
            ),
            (
                TlsConfig::from_options(Some("c"), None, None, "none", "1.1"),
                "tls_min_version",
            ),
        ];
        for (result, option) in errors {
            let err = result.err().unwrap();
            assert!(err.starts_with(option), "{option}: {err}");
        }
    }
}
