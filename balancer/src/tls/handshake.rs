//! The TLS handshake on a client socket, by rustls' unbuffered API, and
//! the hand-over to [`super::record`]: once the handshake is done rustls
//! gives up the traffic keys and keeps only what a key update needs.
//!
//! The handshake's buffers live in this function's future only, which the
//! caller boxes: after it, a connection keeps its [`Session`].

use std::io;
use std::sync::Arc;

use rustls::ProtocolVersion;
use rustls::ServerConfig;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::ConnectionState;
use rustls::unbuffered::EncodeError;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::record::MAX_RECORD;
use super::record::RecordError;
use super::record::RecordLayer;
use super::record::TrafficKey;
use super::record::Version;

/// The most handshake bytes a client may have sent that are not yet
/// processed (a ClientHello split over many records, say).
const MAX_PENDING_HANDSHAKE: usize = 4 * MAX_RECORD;

/// Why a handshake did not give a session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or closed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// rustls refused what the client sent (it sent the client an alert).
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The keys could not be taken over.
    #[error("record layer: {0}")]
    Record(#[from] RecordError),
    /// The client sent more unprocessed handshake bytes than allowed.
    #[error("more than {MAX_PENDING_HANDSHAKE} bytes of handshake pending")]
    TooLarge,
    /// The client closed before the handshake was done.
    #[error("the client closed during the handshake")]
    Closed,
}

/// A connection after its handshake: the socket, the record keys, and
/// what the client sent past the handshake.
pub struct Session {
    /// The client's socket.
    pub socket: TcpStream,
    /// The keys and sequence numbers.
    pub layer: RecordLayer,
    /// What computes the next keys on a KeyUpdate (TLS 1.3 only; boxed:
    /// an idle connection carries only a pointer's worth inline).
    pub rekey: Option<Box<KernelConnection<ServerConnectionData>>>,
    /// Application data rustls already opened (sent with the client's
    /// last handshake flight), for the node first.
    pub opened: Vec<u8>,
    /// Bytes read after the handshake that do not yet make a whole
    /// record, for the record layer.
    pub unread: Vec<u8>,
}

/// Makes the handshake on `socket` with `config` (which must allow secret
/// extraction) and hands the keys to a [`RecordLayer`].
pub async fn accept(config: Arc<ServerConfig>, mut socket: TcpStream) -> Result<Session, HandshakeError> {
    let mut conn = UnbufferedServerConnection::new(config)?;
    let mut incoming = vec![0u8; 4096];
    let mut used = 0;
    let mut outgoing: Vec<u8> = Vec::new();
    let mut opened: Vec<u8> = Vec::new();
    loop {
        let status = conn.process_tls_records(&mut incoming[..used]);
        let mut discard = status.discard;
        let mut need_bytes = false;
        let mut done = false;
        let state = match status.state {
            Ok(state) => state,
            Err(e) => {
                send_alert(&mut conn, &mut socket).await;
                return Err(e.into());
            }
        };
        match state {
            ConnectionState::EncodeTlsData(mut encode) => {
                let at = outgoing.len();
                outgoing.resize(at + 4096, 0);
                let n = match encode.encode(&mut outgoing[at..]) {
                    Ok(n) => n,
                    Err(EncodeError::InsufficientSize(e)) => {
                        outgoing.resize(at + e.required_size, 0);
                        encode.encode(&mut outgoing[at..]).map_err(|e| io::Error::other(e.to_string()))?
                    }
                    Err(e) => return Err(io::Error::other(e.to_string()).into()),
                };
                outgoing.truncate(at + n);
            }
            ConnectionState::TransmitTlsData(transmit) => {
                socket.write_all(&outgoing).await?;
                outgoing.clear();
                transmit.done();
            }
            ConnectionState::BlockedHandshake => need_bytes = true,
            ConnectionState::ReadTraffic(mut read) => {
                while let Some(record) = read.next_record() {
                    let record = record?;
                    discard += record.discard;
                    if opened.len() + record.payload.len() > MAX_PENDING_HANDSHAKE {
                        return Err(HandshakeError::TooLarge);
                    }
                    opened.extend_from_slice(record.payload);
                }
            }
            ConnectionState::WriteTraffic(_) => {
                // Every record rustls made has been transmitted already
                // (TransmitTlsData comes first); flushed here all the same,
                // as the keys change hands next.
                if !outgoing.is_empty() {
                    socket.write_all(&outgoing).await?;
                    outgoing.clear();
                }
                done = true;
            }
            // Early data is off (`max_early_data_size` 0); a close now
            // leaves nothing to relay.
            _ => return Err(HandshakeError::Closed),
        }
        if discard > 0 {
            incoming.copy_within(discard..used, 0);
            used -= discard;
        }
        if done {
            break;
        }
        if need_bytes {
            if used == incoming.len() {
                if incoming.len() >= MAX_PENDING_HANDSHAKE {
                    return Err(HandshakeError::TooLarge);
                }
                incoming.resize(incoming.len() * 2, 0);
            }
            match socket.read(&mut incoming[used..]).await? {
                0 => return Err(HandshakeError::Closed),
                n => used += n,
            }
        }
    }
    incoming.truncate(used);
    let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
    let version = match kernel.protocol_version() {
        ProtocolVersion::TLSv1_3 => Version::Tls13,
        _ => Version::Tls12,
    };
    let (rx_seq, rx) = secrets.rx;
    let (tx_seq, tx) = secrets.tx;
    let layer = RecordLayer::new(version, TrafficKey::new(rx_seq, rx)?, TrafficKey::new(tx_seq, tx)?);
    // TLS 1.2 has no key update: nothing left to compute.
    let rekey = (version == Version::Tls13).then(|| Box::new(kernel));
    Ok(Session { socket, layer, rekey, opened, unread: incoming })
}

/// Writes the alert rustls queued on an error (best effort: the client
/// learns why), within the caller's timeout.
async fn send_alert(conn: &mut UnbufferedServerConnection, socket: &mut TcpStream) {
    let status = conn.process_tls_records(&mut []);
    if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
        let mut out = [0u8; 64];
        if let Ok(n) = encode.encode(&mut out) {
            let _ = socket.write_all(&out[..n]).await;
        }
    }
}
