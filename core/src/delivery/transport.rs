//! The byte streams outbound SMTP and LMTP run over: TCP, a unix socket
//! (LMTP to a local mailbox server), or TLS on top of TCP after STARTTLS.
//! Also the rustls client configurations: one that verifies the next hop's
//! certificate (`tls = "required"`) and one that does not (opportunistic
//! TLS, RFC 7435: encryption against passive listeners without refusing
//! the many MX hosts with self-signed certificates).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

/// Where the system keeps its CA bundle (Debian's ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub enum ClientStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    /// "TLSv1_3 TLS13_AES_256_GCM_SHA384" once TLS is up.
    pub fn tls_description(&self) -> Option<String> {
        let ClientStream::Tls(tls) = self else {
            return None;
        };
        let (_, conn) = tls.get_ref();
        Some(format!(
            "{} {}",
            conn.protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            conn.negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default()
        ))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA bundle {path}: {reason}")]
    CaBundle { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The two client configurations outbound TLS uses.
#[derive(Clone)]
pub struct OutboundTlsConfig {
    /// Verifies the certificate chain and the host name; None when no CA
    /// bundle could be loaded, so `required` routes defer with a reason.
    pub verified: Option<Arc<ClientConfig>>,
    pub unverified: Arc<ClientConfig>,
}

impl OutboundTlsConfig {
    /// `ca_file` (PEM) or, without one, the system bundle if it exists.
    pub fn new(ca_file: Option<&Path>) -> Result<OutboundTlsConfig, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions = &[&rustls::version::TLS13, &rustls::version::TLS12];
        let bundle = match ca_file {
            Some(path) => Some(path.to_owned()),
            None => Some(Path::new(SYSTEM_CA_BUNDLE).to_owned()).filter(|p| p.exists()),
        };
        let verified = match bundle {
            None => None,
            Some(path) => {
                let mut roots = RootCertStore::empty();
                let certs =
                    CertificateDer::pem_file_iter(&path).map_err(|e| TlsSetupError::CaBundle {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                for cert in certs {
                    let cert = cert.map_err(|e| TlsSetupError::CaBundle {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                    // A bundle may hold certificates rustls cannot use; the
                    // rest still verify.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(TlsSetupError::CaBundle {
                        path: path.display().to_string(),
                        reason: "no usable certificate in it".to_owned(),
                    });
                }
                let config = ClientConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(versions)?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(Arc::new(config))
            }
        };
        let unverified = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Ok(OutboundTlsConfig {
            verified,
            unverified: Arc::new(unverified),
        })
    }
}

/// The server name a certificate is checked against: the host as written.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .ok()
}

/// Opportunistic TLS: any certificate is taken (there is no authenticated
/// name to check it against without DANE or MTA-STS), but the handshake
/// signatures are still verified so the session keys are the peer's.
#[derive(Debug)]
pub(super) struct AnyCertificate(pub(super) Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_accept_hosts_and_ip_literals() {
        assert!(server_name("mx.example.org").is_some());
        assert!(matches!(
            server_name("127.0.0.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]"),
            Some(ServerName::IpAddress(_))
        ));
    }

    #[test]
    fn missing_ca_bundle_is_an_error_naming_the_file() {
        let err = OutboundTlsConfig::new(Some(Path::new("/nonexistent/ca.pem")))
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
