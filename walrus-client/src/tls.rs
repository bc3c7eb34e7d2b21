//! TLS to a client port served with `--tls-cert`/`--tls-key` (rustls, ring:
//! no OpenSSL). The client verifies the server's certificate against a CA
//! file and checks that it names the host connected to (or the name given
//! with [`TlsConfig::with_server_name`]).
//!
//! ```no_run
//! use walrus_client::{Client, TlsConfig};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = TlsConfig::from_ca_file("/etc/walrus/ca.pem")?;
//! let client = Client::new("127.0.0.1:9091").with_tls(tls);
//! client.put("logs", "hello over TLS").await?;
//! // Blocking: walrus_client::blocking::Client::wrap(client)
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How to reach a TLS client port: the CA that signed the server's
/// certificate, and optionally the name to expect in it.
#[derive(Clone)]
pub struct TlsConfig {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Trusts the CA certificates of a PEM file (and nothing else: not the
    /// system's roots).
    pub fn from_ca_file(path: impl AsRef<Path>) -> io::Result<TlsConfig> {
        let path = path.as_ref();
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        let pem = std::fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read the CA file {}: {e}", path.display()),
            )
        })?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| invalid(format!("{} is not valid PEM: {e}", path.display())))?;
            roots.add(cert).map_err(|e| {
                invalid(format!(
                    "{} holds a certificate that is not a usable CA: {e}",
                    path.display()
                ))
            })?;
        }
        if roots.is_empty() {
            return Err(invalid(format!(
                "{} holds no certificate (expected PEM blocks `-----BEGIN CERTIFICATE-----`)",
                path.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("no TLS version available: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConfig {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: None,
        })
    }

    /// Expects `name` (a DNS name or an IP address) in the server's
    /// certificate, whatever address is connected to. Without it, the host
    /// of each address is expected.
    pub fn with_server_name(mut self, name: &str) -> io::Result<TlsConfig> {
        self.server_name = Some(parse_name(name)?);
        Ok(self)
    }

    /// The handshake on `tcp`, a connection to `addr` (`host:port`).
    async fn handshake(&self, tcp: TcpStream, addr: &str) -> io::Result<Stream> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
                parse_name(host.trim_start_matches('[').trim_end_matches(']'))?
            }
        };
        let tls = self.connector.connect(name, tcp).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("TLS handshake failed: {e} (is the server's certificate signed by the CA given, and for this name?)"),
            )
        })?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

fn parse_name(name: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(name.to_string()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is neither a DNS name nor an IP address a certificate can name"),
        )
    })
}

/// Connects to the client port at `addr` (`host:port`), with TCP_NODELAY
/// (frames are written whole), then does the TLS handshake if `tls` is
/// given. For tools that frame requests themselves (walrus-bench); the
/// [`crate::Client`] connects with it too.
pub async fn connect(addr: &str, tls: Option<&TlsConfig>) -> io::Result<Stream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(Stream::Plain(tcp)),
        Some(tls) => tls.handshake(tcp, addr).await,
    }
}

/// A connection to a client port: plain TCP, or TLS over it. Flush after
/// writing: TLS may hold encrypted bytes until then (on plain TCP a flush
/// costs nothing).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket under the connection.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
