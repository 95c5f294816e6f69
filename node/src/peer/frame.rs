//! Length-prefixed frames on a byte stream (a QUIC stream in practice):
//! a `u32` big-endian length, then that many bytes.
//!
//! The length is checked against the caller's limit before anything is
//! allocated, and the body buffer grows with the bytes that actually arrive,
//! so a peer that announces a large frame and sends nothing costs nothing.

use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;

/// The default largest frame: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// The body buffer starts at most this large and doubles as data arrives.
const INITIAL_BUFFER: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced (or offered) length is over the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The length announced by the peer or passed by the caller.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes received (of the header or of the body).
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The stream failed (connection lost, stream reset, ...).
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame of at most `max` bytes. `Ok(None)` when the stream ended
/// cleanly before a new frame began.
pub async fn read_frame<R>(reader: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        let n = reader.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(FrameError::Truncated { got, expected: header.len() }) };
        }
        got += n;
    }
    let announced = u32::from_be_bytes(header);
    let len = usize::try_from(announced).unwrap_or(usize::MAX);
    if len > max {
        return Err(FrameError::TooLarge { len: u64::from(announced), max });
    }
    let mut body = Vec::with_capacity(len.min(INITIAL_BUFFER));
    while body.len() < len {
        // Grow by what is already there (at most doubling), never past `len`.
        let start = body.len();
        let end = len.min(start.saturating_mul(2).max(INITIAL_BUFFER));
        body.resize(end, 0);
        let mut filled = start;
        while filled < end {
            let n = reader.read(&mut body[filled..end]).await?;
            if n == 0 {
                return Err(FrameError::Truncated { got: filled, expected: len });
            }
            filled += n;
        }
    }
    Ok(Some(body))
}

/// Writes `data` as one frame.
pub async fn write_frame<W>(writer: &mut W, data: &[u8]) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    write_frame_parts(writer, &[data]).await
}

/// Writes the concatenation of `parts` as one frame, without copying them
/// together first.
pub async fn write_frame_parts<W>(writer: &mut W, parts: &[&[u8]]) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(total).map_err(|_| FrameError::TooLarge { len: total as u64, max: u32::MAX as usize })?;
    writer.write_all(&len.to_be_bytes()).await?;
    for part in parts {
        writer.write_all(part).await?;
    }
    Ok(())
}
