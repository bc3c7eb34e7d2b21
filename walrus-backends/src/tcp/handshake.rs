//! Proof of the cluster secret (`--cluster-secret-file`) when an
//! inter-node connection opens, before any frame.
//!
//! A mutual challenge–response with HMAC-SHA256, so the secret never
//! crosses the wire and a recorded handshake cannot be replayed (each side
//! brings a fresh random nonce):
//!
//! ```text
//! dialer   → acceptor  HELLO (b"WALRUS-AUTH\x01")  nonce_d (32 bytes)
//! acceptor → dialer    nonce_a (32)  HMAC(secret, "acceptor" ‖ nonce_d ‖ nonce_a)
//! dialer   → acceptor  HMAC(secret, "dialer" ‖ nonce_d ‖ nonce_a)
//! acceptor → dialer    ACCEPTED (1 byte)
//! ```
//!
//! The two labels keep one side's proof from being reflected as the
//! other's. The dialer checks the acceptor's proof before giving its own,
//! so a process without the secret learns nothing from a node it tricks
//! into dialling it. A node without a secret reads HELLO's first four
//! bytes as a frame length far over any limit and closes the connection;
//! a node with a secret that receives an ordinary frame instead of HELLO
//! closes it too: secret and no secret never mix.
//!
//! The handshake proves who opened the connection; it does not protect
//! the frames after it against someone who can rewrite packets on the
//! path. For that, run the node port over TLS: the handshake is generic
//! over the stream and runs inside it just the same.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use walrus_core::Secret;

use super::TcpConfig;

/// Opens every authenticated connection; also tells a peer speaking
/// another version of the handshake apart.
pub const HELLO: [u8; 12] = *b"WALRUS-AUTH\x01";
const NONCE: usize = 32;
const PROOF: usize = 32;
const ACCEPTED: u8 = 1;

/// Why a handshake failed. The texts never contain the secret.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the connection failed during the cluster-secret handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the peer did not start the cluster-secret handshake (does it run without \
         --cluster-secret-file, or an older version?)"
    )]
    NoHello,
    #[error(
        "the peer does not know this cluster's secret (its --cluster-secret-file differs \
         or it has none)"
    )]
    WrongSecret,
    #[error(
        "the peer closed the connection during the cluster-secret handshake (it runs \
         without --cluster-secret-file, or with another secret)"
    )]
    Refused,
}

fn proof(secret: &Secret, label: &[u8], dialer: &[u8], acceptor: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose())
        .expect("HMAC takes a key of any length");
    mac.update(label);
    mac.update(dialer);
    mac.update(acceptor);
    mac
}

/// An EOF from the peer mid-handshake means it refused us.
fn refused_on_eof(e: std::io::Error) -> HandshakeError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            HandshakeError::Refused
        }
        _ => HandshakeError::Io(e),
    }
}

/// The dialling side: proves the secret to the acceptor and checks that
/// the acceptor knows it too. The caller bounds it with a timeout.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &Secret,
) -> Result<(), HandshakeError> {
    let nonce_d: [u8; NONCE] = rand::random();
    let mut hello = Vec::with_capacity(HELLO.len() + NONCE);
    hello.extend_from_slice(&HELLO);
    hello.extend_from_slice(&nonce_d);
    stream.write_all(&hello).await?;
    stream.flush().await?;

    let mut reply = [0u8; NONCE + PROOF];
    stream
        .read_exact(&mut reply)
        .await
        .map_err(refused_on_eof)?;
    let (nonce_a, their_proof) = reply.split_at(NONCE);
    proof(secret, b"acceptor", &nonce_d, nonce_a)
        .verify_slice(their_proof)
        .map_err(|_| HandshakeError::WrongSecret)?;

    let ours = proof(secret, b"dialer", &nonce_d, nonce_a)
        .finalize()
        .into_bytes();
    stream.write_all(&ours).await?;
    stream.flush().await?;
    let mut verdict = [0u8; 1];
    stream
        .read_exact(&mut verdict)
        .await
        .map_err(refused_on_eof)?;
    if verdict[0] != ACCEPTED {
        return Err(HandshakeError::Refused);
    }
    Ok(())
}

/// The accepting side: checks that the dialer knows the secret, proving
/// it knows it too. On `Err` the caller closes the connection without
/// reading anything more from it. The caller bounds it with a timeout.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &Secret,
) -> Result<(), HandshakeError> {
    let mut hello = [0u8; HELLO.len() + NONCE];
    stream.read_exact(&mut hello[..HELLO.len()]).await?;
    if hello[..HELLO.len()] != HELLO {
        return Err(HandshakeError::NoHello);
    }
    stream.read_exact(&mut hello[HELLO.len()..]).await?;
    let nonce_d = &hello[HELLO.len()..];

    let nonce_a: [u8; NONCE] = rand::random();
    let ours = proof(secret, b"acceptor", nonce_d, &nonce_a)
        .finalize()
        .into_bytes();
    let mut reply = Vec::with_capacity(NONCE + PROOF);
    reply.extend_from_slice(&nonce_a);
    reply.extend_from_slice(&ours);
    stream.write_all(&reply).await?;
    stream.flush().await?;

    let mut their_proof = [0u8; PROOF];
    stream
        .read_exact(&mut their_proof)
        .await
        .map_err(refused_on_eof)?;
    proof(secret, b"dialer", nonce_d, &nonce_a)
        .verify_slice(&their_proof)
        .map_err(|_| HandshakeError::WrongSecret)?;
    stream.write_all(&[ACCEPTED]).await?;
    stream.flush().await?;
    Ok(())
}

/// The transport's dialling side: with a cluster secret configured, runs
/// [`dial`] within the connect timeout and hands the stream back;
/// without one, hands it back untouched. `Err` says why the peer is not
/// usable (the caller counts it as a failed dial).
pub(crate) async fn prove<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    config: &TcpConfig,
    addr: &str,
) -> Result<S, String> {
    let Some(secret) = &config.cluster_secret else {
        return Ok(stream);
    };
    match tokio::time::timeout(config.connect_timeout, dial(&mut stream, secret)).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => {
            tracing::warn!(%addr, "cannot use the connection to a peer: {e}");
            Err(e.to_string())
        }
        Err(_) => Err(format!(
            "no cluster-secret handshake within {} ms",
            config.connect_timeout.as_millis()
        )),
    }
}

/// The transport's accepting side: with a cluster secret configured, runs
/// [`accept`] within the stall timeout; false (logged, never with the
/// secret) when the peer failed it and the connection must be closed.
/// Without a secret, true at once.
pub(crate) async fn check<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    config: &TcpConfig,
    peer: &(dyn std::fmt::Display + Sync),
) -> bool {
    let Some(secret) = &config.cluster_secret else {
        return true;
    };
    match tokio::time::timeout(config.stall_timeout, accept(stream, secret)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(%peer, "refused a node connection: {e}");
            false
        }
        Err(_) => {
            tracing::warn!(
                %peer,
                "refused a node connection: no cluster-secret handshake within {} ms",
                config.stall_timeout.as_millis()
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(dialer: &Secret, acceptor: &Secret) -> (Result<(), String>, Result<(), String>) {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (d, s) = tokio::join!(
            async {
                let r = dial(&mut a, dialer).await.map_err(|e| e.to_string());
                drop(a); // a refused dialer hangs up, as the transport does
                r
            },
            async {
                let r = accept(&mut b, acceptor).await.map_err(|e| e.to_string());
                drop(b);
                r
            }
        );
        (d, s)
    }

    #[tokio::test]
    async fn given_the_same_secret_should_accept_on_both_sides() {
        let s = Secret::new("the-cluster-secret");
        assert_eq!(run(&s, &s.clone()).await, (Ok(()), Ok(())));
    }

    #[tokio::test]
    async fn given_different_secrets_should_refuse_on_both_sides_without_naming_them() {
        let (d, s) = run(&Secret::new("alpha-one"), &Secret::new("alpha-two")).await;
        let (d, s) = (d.unwrap_err(), s.unwrap_err());
        assert!(d.contains("does not know this cluster's secret"), "{d}");
        assert!(s.contains("closed the connection"), "{s}");
        assert!(!format!("{d}{s}").contains("alpha-"), "{d} {s}");
    }

    #[tokio::test]
    async fn given_a_replayed_dialer_proof_should_refuse_it() {
        let secret = Secret::new("the-cluster-secret");
        // Record a good handshake's dialer side...
        let (mut a, mut b) = tokio::io::duplex(1024);
        let recorded = tokio::spawn({
            let secret = secret.clone();
            async move {
                accept(&mut b, &secret).await.unwrap();
            }
        });
        let nonce_d = [7u8; NONCE];
        a.write_all(&HELLO).await.unwrap();
        a.write_all(&nonce_d).await.unwrap();
        let mut reply = [0u8; NONCE + PROOF];
        a.read_exact(&mut reply).await.unwrap();
        let proof_d = proof(&secret, b"dialer", &nonce_d, &reply[..NONCE])
            .finalize()
            .into_bytes();
        a.write_all(&proof_d).await.unwrap();
        recorded.await.unwrap();

        // ...and play it back without the secret: the acceptor's new nonce
        // makes the old proof worthless.
        let (mut a, mut b) = tokio::io::duplex(1024);
        let replay = tokio::spawn(async move {
            a.write_all(&HELLO).await.unwrap();
            a.write_all(&nonce_d).await.unwrap();
            let mut reply = [0u8; NONCE + PROOF];
            a.read_exact(&mut reply).await.unwrap();
            a.write_all(&proof_d).await.unwrap();
            a
        });
        let r = accept(&mut b, &secret).await;
        assert!(matches!(r, Err(HandshakeError::WrongSecret)), "{r:?}");
        drop(replay.await.unwrap());
    }

    #[tokio::test]
    async fn given_an_ordinary_frame_instead_of_hello_should_refuse_it() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 20, b'W', b'N', 1, 1, 0, 0, 0, 0])
            .await
            .unwrap();
        let r = accept(&mut b, &Secret::new("the-cluster-secret")).await;
        assert!(matches!(r, Err(HandshakeError::NoHello)), "{r:?}");
    }
}
