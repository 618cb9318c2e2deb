//! TLS to the collector: the roots that verify it and the certificate
//! outrider presents when asked, from the `OTEL_EXPORTER_OTLP_*CERTIFICATE`
//! and `*CLIENT_KEY` files, re-read when those files change.
//!
//! Rotation (cert-manager swapping a mounted Secret's symlink, or any
//! write-then-rename) is noticed by the files' identity, checked before
//! each export attempt: a few `stat(2)` calls every few seconds, on the
//! export thread, never on the request path. The listener's reload
//! compares contents on a timer instead; here attempts are the timer.

use std::{
    fmt,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

use crate::{
    telemetry::env::{OtelError, traces_or_general},
    tls::{TlsError, client_config, load_certified_key, read_certs},
};

/// The variables, traces-only first (the OTLP exporter specification's
/// precedence, variable by variable).
const CA: (&str, &str) = ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE");
const CLIENT_CERT: (&str, &str) = ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE");
const CLIENT_KEY: (&str, &str) = ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY");

/// A file named by a variable.
#[derive(Debug, Clone)]
struct File {
    var: &'static str,
    path: PathBuf,
}

/// What verifies the collector.
enum Roots {
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`: these CAs only, as the Go and
    /// Java exporters do (a private CA, not the public ones too).
    File(File),
    /// The system's bundle, loaded once: it does not rotate under a
    /// running process the way a mounted Secret does.
    System(Arc<RootCertStore>, SystemRoots),
}

/// How outrider speaks TLS to one collector.
pub struct CollectorTls {
    server_name: ServerName<'static>,
    /// `h2` for gRPC, `http/1.1` for `http/protobuf`.
    alpn: &'static [u8],
    roots: Roots,
    /// Client certificate and key, for a collector that asks for one.
    identity: Option<(File, File)>,
    /// The files as last read (a failed read included, so that a broken
    /// file is reported once, not at every attempt).
    seen: Mutex<Stamp>,
}

impl fmt::Debug for CollectorTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Paths only: never what is in them.
        let ca = match &self.roots {
            Roots::File(file) => Some(&file.path),
            Roots::System(..) => None,
        };
        f.debug_struct("CollectorTls")
            .field("server_name", &self.server_name)
            .field("ca", &ca)
            .field("client_certificate", &self.identity.as_ref().map(|(cert, _)| &cert.path))
            .finish_non_exhaustive()
    }
}

impl CollectorTls {
    /// Reads the variables and loads the files once, so that a bad one is
    /// a configuration error at start-up. Returns the first connector too.
    ///
    /// # Errors
    /// A client certificate without its key or the reverse, a file that
    /// cannot be read or holds no certificate, a key that is not the
    /// certificate's, or a host that is not a TLS server name.
    pub fn from_env(
        endpoint_var: &'static str,
        endpoint: &str,
        host: &str,
        alpn: &'static [u8],
    ) -> Result<(Self, TlsConnector), OtelError> {
        // An IPv6 host comes bracketed in a URL.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(bare.to_owned()).map_err(|_| OtelError::Invalid {
            var: endpoint_var,
            value: endpoint.to_owned(),
            reason: "the host is not a name or address TLS can verify",
        })?;
        let file = |(traces, general): (&'static str, &'static str)| {
            traces_or_general(traces, general).map(|(var, path)| File { var, path: PathBuf::from(path) })
        };
        let identity = match (file(CLIENT_CERT), file(CLIENT_KEY)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(cert), None) => return Err(OtelError::Missing { var: partner(cert.var, CLIENT_CERT, CLIENT_KEY), with: cert.var }),
            (None, Some(key)) => return Err(OtelError::Missing { var: partner(key.var, CLIENT_KEY, CLIENT_CERT), with: key.var }),
        };
        let roots = match file(CA) {
            Some(ca) => Roots::File(ca),
            None => {
                let (roots, found) = system_roots();
                Roots::System(roots, found)
            }
        };
        let tls = Self { server_name, alpn, roots, identity, seen: Mutex::new(Stamp::default()) };
        *tls.seen.lock().unwrap_or_else(PoisonError::into_inner) = tls.stamp();
        let connector = tls.load()?;
        Ok((tls, connector))
    }

    /// Says which roots verify the collector. Called once the whole
    /// configuration is known good, so that an error stays one line.
    pub fn log_roots(&self) {
        match &self.roots {
            Roots::File(ca) => tracing::debug!(ca = %ca.path.display(), "the collector is verified with the configured CA"),
            Roots::System(_, SystemRoots::Found(n)) => {
                tracing::debug!(certificates = n, "the collector is verified with the system's CA certificates");
            }
            Roots::System(_, SystemRoots::Bundled(why)) => {
                info!(reason = %why, "no system CA certificates; the collector is verified with the bundled Mozilla roots");
            }
        }
    }

    /// The name the collector's certificate must carry.
    pub fn server_name(&self) -> ServerName<'static> {
        self.server_name.clone()
    }

    /// A new connector when a file changed since the last look and the
    /// new files load; `None` when nothing changed, or when the new files
    /// are broken (logged once; the connector in use stays).
    pub fn reloaded(&self) -> Option<TlsConnector> {
        if matches!(self.roots, Roots::System(..)) && self.identity.is_none() {
            return None;
        }
        let now = self.stamp();
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        match self.load() {
            Ok(connector) => {
                info!(files = %self.files(), "collector TLS files reloaded");
                Some(connector)
            }
            Err(e) => {
                warn!(error = %e, "new collector TLS files rejected; exporting with the previous ones");
                None
            }
        }
    }

    fn load(&self) -> Result<TlsConnector, OtelError> {
        let roots = match &self.roots {
            Roots::System(roots, _) => roots.clone(),
            Roots::File(ca) => {
                let mut roots = RootCertStore::empty();
                let (added, _unusable) = roots.add_parsable_certificates(read_certs(&ca.path).map_err(|e| ca.error(&e))?);
                if added == 0 {
                    return Err(
                        ca.error(&TlsError::Invalid { path: ca.path.display().to_string(), reason: "no usable CA certificate".into() })
                    );
                }
                Arc::new(roots)
            }
        };
        let identity = match &self.identity {
            None => None,
            Some((cert, key)) => {
                let provider = rustls::crypto::ring::default_provider();
                let pair = load_certified_key(&cert.path, &key.path, &provider).map_err(|e| {
                    // Name the variable of the file at fault.
                    let blamed = match &e {
                        TlsError::Read { path, .. } | TlsError::Invalid { path, .. } if Path::new(path) == key.path => key,
                        _ => cert,
                    };
                    blamed.error(&e)
                })?;
                Some(Arc::new(pair))
            }
        };
        let config = client_config(roots, identity, self.alpn).map_err(|e| OtelError::Exporter(format!("TLS: {e}")))?;
        Ok(TlsConnector::from(Arc::new(config)))
    }

    fn paths(&self) -> impl Iterator<Item = &File> {
        let ca = match &self.roots {
            Roots::File(ca) => Some(ca),
            Roots::System(..) => None,
        };
        ca.into_iter().chain(self.identity.iter().flat_map(|(cert, key)| [cert, key]))
    }

    fn files(&self) -> String {
        self.paths().map(|f| f.path.display().to_string()).collect::<Vec<_>>().join(", ")
    }

    fn stamp(&self) -> Stamp {
        Stamp(self.paths().map(|f| identity(&f.path)).collect())
    }
}

/// On a plaintext endpoint the TLS variables do nothing: says so, since
/// whoever set them meant TLS (`http://` where `https://` was meant, or
/// `OTEL_EXPORTER_OTLP_INSECURE=true` left over).
pub fn warn_if_configured() {
    let set: Vec<&str> =
        [CA, CLIENT_CERT, CLIENT_KEY].into_iter().filter_map(|(t, g)| traces_or_general(t, g)).map(|(var, _)| var).collect();
    if !set.is_empty() {
        warn!(variables = ?set, "the OTLP endpoint is plaintext: these TLS variables are ignored");
    }
}

impl File {
    fn error(&self, e: &TlsError) -> OtelError {
        OtelError::File { var: self.var, value: self.path.display().to_string(), reason: e.to_string() }
    }
}

/// The other variable of the pair, with the same prefix as the one set.
fn partner(set: &str, (set_traces, _): (&str, &str), (traces, general): (&'static str, &'static str)) -> &'static str {
    if set == set_traces { traces } else { general }
}

/// What identifies a file's version, symlinks followed: a swapped
/// symlink or a renamed-over file has a new inode; an edit in place a new
/// size or modification time. `None`: unreadable now.
type FileId = Option<(u64, u64, u64, i64, i64, i64)>;

#[derive(Debug, Default, PartialEq, Eq)]
struct Stamp(Vec<FileId>);

fn identity(path: &Path) -> FileId {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec(), m.ctime_nsec()))
}

/// The system's CA certificates wherever this system keeps them
/// (rustls-native-certs: `SSL_CERT_FILE`/`SSL_CERT_DIR`, then each
/// distribution's bundle), else the Mozilla roots built into the binary.
/// outrider ships in a `FROM scratch` image and is copied into others
/// (wrap mode): an image without a bundle must still reach a managed
/// backend with a public certificate.
fn system_roots() -> (Arc<RootCertStore>, SystemRoots) {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(found.certs);
    if added > 0 {
        return (Arc::new(roots), SystemRoots::Found(added));
    }
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let why = found.errors.first().map_or_else(|| "none found".to_owned(), ToString::to_string);
    (Arc::new(roots), SystemRoots::Bundled(why))
}

/// Where the roots came from, for the start-up log.
enum SystemRoots {
    /// This many from the system.
    Found(usize),
    /// The bundled ones, and why.
    Bundled(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_over_file_has_a_new_identity() {
        let dir = std::env::temp_dir().join(format!("outrider-collector-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, "one").unwrap();
        let before = identity(&path);
        assert!(before.is_some());
        assert_eq!(identity(&path), before, "unchanged: the same identity");
        let tmp = dir.join("ca.pem.tmp");
        std::fs::write(&tmp, "one").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(identity(&path), before, "same content, new file: noticed");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(identity(&path), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_partner_variable_has_the_same_prefix() {
        assert_eq!(partner(CLIENT_CERT.0, CLIENT_CERT, CLIENT_KEY), CLIENT_KEY.0);
        assert_eq!(partner(CLIENT_CERT.1, CLIENT_CERT, CLIENT_KEY), CLIENT_KEY.1);
        assert_eq!(partner(CLIENT_KEY.1, CLIENT_KEY, CLIENT_CERT), CLIENT_CERT.1);
    }
}
