//! TLS on the client port (`--tls-cert`, `--tls-key`), with rustls.
//!
//! The handshake runs in the connection's own task, after the connection
//! caps admitted it; then the connection is served exactly as a plain one
//! (lanes, pipelining, budget), over the encrypted stream's halves. A
//! client that does not open with a TLS handshake record (a plain-TCP
//! client sending a frame) is closed without a byte written: no plaintext
//! answer, not even a TLS alert.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use walrus_backends::tcp::tls::{opens_with_tls, server_config};

/// The client port's certificate and key, ready to accept handshakes.
#[derive(Clone)]
pub struct ClientTls {
    acceptor: TlsAcceptor,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// The certificate chain (PEM, leaf first) and private key (PEM) the
    /// client port presents. Clients verify it against the CA that signed
    /// it and the name they connect to.
    pub fn from_files(cert: &Path, key: &Path) -> anyhow::Result<ClientTls> {
        let config = server_config(cert, key, None)?;
        Ok(ClientTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The server side of the handshake, within `limit`. `None` (and the
    /// connection dropped, so closed) when the client speaks no TLS, fails
    /// the handshake or takes too long.
    pub(super) async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        limit: Duration,
    ) -> Option<TlsStream<TcpStream>> {
        let handshake = async {
            if !opens_with_tls(&stream).await? {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "it sent something else than a TLS handshake (a plain-TCP client?)",
                ));
            }
            self.acceptor.accept(stream).await
        };
        match tokio::time::timeout(limit, handshake).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                tracing::debug!(%peer, "closing a client connection before TLS: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "closing a client connection: no TLS handshake in time");
                None
            }
        }
    }
}
