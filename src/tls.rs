//! TLS termination on the public listener, with rustls (ring provider, no
//! OpenSSL anywhere).
//!
//! * TLS 1.2 and 1.3 only; ALPN offers `h2` and `http/1.1`.
//! * The certificate is served through a resolver that is swapped when the
//!   files change (cert-manager rotating a mounted Secret by symlink swap):
//!   new handshakes get the new pair, open connections keep theirs, and a
//!   broken new pair is logged and ignored while the old one stays.
//! * Optional mTLS: with a client CA, a verified client certificate is
//!   required and its subject is handed to the request path.
//!
//! Also the client side, shared by the connection to an `https://` app and
//! the OTLP exporter's to its collector: PEM reading, the key-pair check,
//! and the rustls client config.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tracing::{info, warn};

/// Paths and options of the listener's TLS.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM bundle of CAs whose client certificates are accepted; `None`
    /// means no client certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for a new pair.
    pub reload_interval: Duration,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The acceptor handed to the server, plus what it needs at run time.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<ReloadingResolver>,
    options: TlsOptions,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("options", &self.options).finish()
    }
}

impl Tls {
    /// Loads the pair (and client CA) and builds the server config.
    ///
    /// # Errors
    /// A file is missing, unreadable, or not a valid PEM certificate/key.
    pub fn new(options: TlsOptions) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (key, files) = load_pair(&options.cert, &options.key, &provider)?;
        let resolver = Arc::new(ReloadingResolver { current: RwLock::new((Arc::new(key), files)) });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Invalid { path: "TLS".into(), reason: e.to_string() })?;
        let builder = match &options.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| TlsError::Invalid { path: ca.display().to_string(), reason: e.to_string() })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| TlsError::Invalid { path: ca.display().to_string(), reason: e.to_string() })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), resolver, options })
    }

    /// Checks the files every `reload_interval` and swaps in a new valid
    /// pair; runs forever.
    pub async fn watch(self) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tick = tokio::time::interval(self.options.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (cert, key) = (self.options.cert.clone(), self.options.key.clone());
            let current = self.resolver.files();
            let provider = provider.clone();
            // File reads and parsing off the async workers.
            let loaded = tokio::task::spawn_blocking(move || {
                let files = read_files(&cert, &key).ok()?;
                if files == current {
                    return None;
                }
                Some(load_pair(&cert, &key, &provider))
            })
            .await;
            match loaded {
                Ok(Some(Ok((key, files)))) => {
                    self.resolver.replace(key, files);
                    info!(cert = %self.options.cert.display(), "TLS certificate reloaded");
                }
                Ok(Some(Err(e))) => warn!(error = %e, "new TLS certificate rejected; keeping the current one"),
                Ok(None) | Err(_) => {}
            }
        }
    }
}

/// Subject of a verified client certificate, as an RFC 4514 string.
pub fn client_subject(conn: &rustls::ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.subject().to_string())
}

/// Raw bytes of the two files, to notice a change (a symlink swap changes
/// contents, not necessarily the path's modification time).
type Files = (Vec<u8>, Vec<u8>);

struct ReloadingResolver {
    current: RwLock<(Arc<CertifiedKey>, Files)>,
}

impl fmt::Debug for ReloadingResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReloadingResolver")
    }
}

impl ReloadingResolver {
    fn files(&self) -> Files {
        self.current.read().map(|c| c.1.clone()).unwrap_or_default()
    }

    fn replace(&self, key: CertifiedKey, files: Files) {
        if let Ok(mut current) = self.current.write() {
            *current = (Arc::new(key), files);
        }
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Once per handshake, never per request; held for a pointer copy.
        self.current.read().ok().map(|c| c.0.clone())
    }
}

fn read_files(cert: &Path, key: &Path) -> Result<Files, TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.display().to_string(), source });
    Ok((read(cert)?, read(key)?))
}

/// The certificates of a PEM file; at least one.
///
/// # Errors
/// The file cannot be read, is not PEM, or holds no certificate.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid { path: path.display().to_string(), reason: format!("not PEM certificates: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid { path: path.display().to_string(), reason: "no certificate found".into() });
    }
    Ok(certs)
}

fn load_pair(cert: &Path, key: &Path, provider: &rustls::crypto::CryptoProvider) -> Result<(CertifiedKey, Files), TlsError> {
    let files = read_files(cert, key)?;
    Ok((certified_key(cert, key, &files.1, provider)?, files))
}

/// A certificate chain and its private key, checked to belong together.
///
/// # Errors
/// A file is unreadable or not PEM, or the key is not the certificate's.
pub fn load_certified_key(cert: &Path, key: &Path, provider: &rustls::crypto::CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read { path: key.display().to_string(), source })?;
    certified_key(cert, key, &key_pem, provider)
}

fn certified_key(cert: &Path, key: &Path, key_pem: &[u8], provider: &rustls::crypto::CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert)?;
    let private = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Invalid { path: key.display().to_string(), reason: format!("not a PEM private key: {e}") })?;
    CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| TlsError::Invalid { path: cert.display().to_string(), reason: format!("certificate and key do not match: {e}") })
}

/// A TLS client for an `https://` app, verifying it against `ca`.
///
/// # Errors
/// The bundle cannot be read or holds no usable certificate.
pub fn client_connector(ca: &Path, http2: bool) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(read_certs(ca)?);
    if added == 0 {
        return Err(TlsError::Invalid { path: ca.display().to_string(), reason: "no usable CA certificate".into() });
    }
    let alpn: &[u8] = if http2 { b"h2" } else { b"http/1.1" };
    let config = client_config(Arc::new(roots), None, alpn)
        .map_err(|e| TlsError::Invalid { path: ca.display().to_string(), reason: e.to_string() })?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A TLS 1.2/1.3 client (ring provider) that verifies servers against
/// `roots`, presents `identity` when a server asks for a certificate, and
/// offers the one protocol `alpn` names.
///
/// # Errors
/// Only if the provider supports neither protocol version.
pub fn client_config(
    roots: Arc<rustls::RootCertStore>,
    identity: Option<Arc<CertifiedKey>>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder.with_client_cert_resolver(Arc::new(ClientIdentity(identity))),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Always the one configured client certificate.
struct ClientIdentity(Arc<CertifiedKey>);

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.write_str("ClientIdentity")
    }
}

impl rustls::client::ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _root_hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
