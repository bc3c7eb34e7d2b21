//! TLS on the inter-node port, with rustls (ring as the crypto provider:
//! it builds with a C compiler alone, no OpenSSL, cmake or nasm).
//!
//! Mutual: each node presents its certificate and verifies the other's
//! against the cluster's CA, in both directions. The side that dials also
//! checks that the peer's certificate names the host it dialled (the
//! `host` of the peer's advertised `host:port`, a DNS name or an IP
//! address). So a process without a certificate the CA signed cannot join,
//! vote, forward or read: its connections end in the handshake, before
//! any frame is read.
//!
//! The PEM loaders here are the server's too (the client port's
//! certificate and key).

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::writer::FrameWriter;
use socket2::SockRef;
use tokio::io::ReadHalf;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// The one crypto provider of every TLS config here, named rather than
/// left to the process default, which is ambiguous when another crate
/// enables a second provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file (a chain: the leaf first).
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the certificate file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a valid PEM file", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{} holds no certificate (expected PEM blocks `-----BEGIN CERTIFICATE-----`)",
            path.display()
        );
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the private key file {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).with_context(|| {
        format!(
            "{} holds no usable private key (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` \
             or `EC PRIVATE KEY` block)",
            path.display()
        )
    })
}

/// The CA certificates of a PEM file, as trust roots.
pub fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).with_context(|| {
            format!(
                "{} holds a certificate that is not a usable CA",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// A server config for `cert_path` and `key_path`, verifying clients with
/// `client_roots` when given. No session tickets: a client must be able to
/// take any byte the server sends unasked as the connection ending (see
/// walrus-client's check of a kept connection).
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    client_roots: Option<RootCertStore>,
) -> anyhow::Result<ServerConfig> {
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("the crypto provider supports no TLS version")?;
    let builder = match client_roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .context("cannot build the peer certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "the key {} does not fit the certificate {} (or is of a kind rustls does not take)",
            key_path.display(),
            cert_path.display()
        )
    })?;
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// TLS of one node's inter-node connections, both ways.
#[derive(Clone)]
pub struct NodeTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeTls")
    }
}

impl NodeTls {
    /// This node's certificate chain and key (presented on both sides of
    /// every connection) and the CA that signs every node's certificate.
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<NodeTls> {
        let roots = load_roots(ca)?;
        let server = server_config(cert, key, Some(roots.clone()))?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("the crypto provider supports no TLS version")?
            .with_root_certificates(roots)
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .with_context(|| {
                format!(
                    "the key {} does not fit the certificate {}",
                    key.display(),
                    cert.display()
                )
            })?;
        Ok(NodeTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The server side of the handshake on an accepted connection, within
    /// `limit`; then the connection's frame reader and writer.
    pub(crate) async fn accept(&self, stream: TcpStream, limit: Duration) -> io::Result<Framed> {
        let handshake = async {
            if !opens_with_tls(&stream).await? {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the peer sent something else than a TLS handshake (a node without \
                     --node-tls-ca?)",
                ));
            }
            self.acceptor.accept(stream).await
        };
        let tls = within(limit, handshake).await?;
        split(TlsStream::Server(tls))
    }

    /// The client side of the handshake with the node dialled at `addr`
    /// (`host:port`, whose certificate must name `host`), within `limit`;
    /// then the connection's frame reader and writer.
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        addr: &str,
        limit: Duration,
    ) -> io::Result<Framed> {
        let name = server_name(addr)?;
        let tls = within(limit, self.connector.connect(name, stream)).await?;
        split(TlsStream::Client(tls))
    }
}

/// The reading half of a TLS connection and its frame writer.
pub(crate) type Framed = (ReadHalf<TlsStream<TcpStream>>, Arc<FrameWriter>);

async fn within<T>(
    limit: Duration,
    handshake: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(io::Error::new(
            e.kind(),
            format!("TLS handshake failed: {e}"),
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake not done within {} ms", limit.as_millis()),
        )),
    }
}

fn split(stream: TlsStream<TcpStream>) -> io::Result<Framed> {
    let socket = SockRef::from(stream.get_ref().0).try_clone()?;
    let (read, write) = tokio::io::split(stream);
    Ok((read, FrameWriter::with_stream(write, socket)))
}

/// Whether the peer's first byte (waited for, not taken) starts a TLS
/// handshake record. What sends anything else (a plain-TCP client's frame)
/// is to be closed without an answer: handing it to rustls would write a
/// TLS alert back.
pub async fn opens_with_tls(stream: &TcpStream) -> io::Result<bool> {
    /// The content type of a TLS handshake record (a ClientHello).
    const HANDSHAKE: u8 = 22;
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    Ok(n == 1 && first[0] == HANDSHAKE)
}

/// The name a certificate must carry to be `addr`'s (`host:port`,
/// `[v6]:port`): the host, as an IP address or a DNS name.
pub fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{host}` (of {addr}) is neither a DNS name nor an IP address a certificate can name"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_addresses_should_take_their_host_as_the_certificate_name() {
        let name = |a: &str| server_name(a).map(|n| n.to_str().into_owned());
        assert_eq!(name("127.0.0.1:9191").unwrap(), "127.0.0.1");
        assert_eq!(
            name("node-1.walrus.internal:9191").unwrap(),
            "node-1.walrus.internal"
        );
        assert_eq!(name("[::1]:9191").unwrap(), "::1");
        assert!(name("bad host:1").is_err());
    }
}
