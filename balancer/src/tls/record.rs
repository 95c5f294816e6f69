//! The TLS record layer after the handshake: sealing and opening records
//! with the traffic keys rustls hands over (its kernel-connection API, the
//! one kTLS uses). No I/O.
//!
//! Why not keep rustls' connection: it holds about 9 KiB per connection
//! for as long as the connection lives (its state, buffers and expanded
//! keys), and the balancer keeps tens of thousands of mostly idle
//! WebSockets. Here an idle connection keeps the key bytes, IVs and
//! sequence numbers (under 200 bytes); the expanded AEAD key is made for
//! each batch of records ([`RecordLayer::opener`], [`RecordLayer::sealer`])
//! and dropped with it. The AEAD itself is ring's, as in rustls.
//!
//! TLS 1.3 (RFC 8446 §5) and TLS 1.2 AEAD records (RFC 5246 §6.2.3.3,
//! RFC 5288, RFC 7905) with the suites rustls offers: AES-128-GCM,
//! AES-256-GCM, ChaCha20-Poly1305.

use std::ops::Range;

use ring::aead;
use rustls::ConnectionTrafficSecrets;
use zeroize::Zeroize;

/// Bytes of a record header: type, version, length.
pub const HEADER: usize = 5;
/// The most plaintext one record carries (2^14).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// The most a sealed record adds to its plaintext: header, TLS 1.2's
/// explicit nonce or TLS 1.3's content type, and the tag.
pub const MAX_OVERHEAD: usize = HEADER + GCM_EXPLICIT_NONCE + TAG;
/// The longest record a peer may send, header included (TLS 1.2 allows
/// 2^14 + 2048 bytes of ciphertext; TLS 1.3 only 2^14 + 256).
pub const MAX_RECORD: usize = HEADER + MAX_PLAINTEXT + 2048;

const TAG: usize = 16;
const GCM_EXPLICIT_NONCE: usize = 8;
const LEGACY_VERSION: [u8; 2] = [0x03, 0x03];

/// A record's content type (RFC 8446 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    /// `change_cipher_spec`, never valid after the handshake.
    ChangeCipherSpec = 20,
    /// `alert`.
    Alert = 21,
    /// `handshake`: after the handshake only a KeyUpdate (TLS 1.3).
    Handshake = 22,
    /// `application_data`.
    ApplicationData = 23,
}

/// Alert descriptions this layer sends or understands (RFC 8446 §6).
pub mod alert {
    /// The sender closes its side.
    pub const CLOSE_NOTIFY: u8 = 0;
    /// A record of a type not allowed here.
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    /// A record failed authentication.
    pub const BAD_RECORD_MAC: u8 = 20;
    /// A record longer than allowed.
    pub const RECORD_OVERFLOW: u8 = 22;
    /// A message that does not parse.
    pub const DECODE_ERROR: u8 = 50;
    /// The sender cancels the handshake; a close_notify follows.
    pub const USER_CANCELED: u8 = 90;
    /// Renegotiation (TLS 1.2) refused.
    pub const NO_RENEGOTIATION: u8 = 100;
}

/// The protocol version the handshake settled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// TLS 1.2: the content type is in the clear, AAD built from the sequence number.
    Tls12,
    /// TLS 1.3: every record looks like application data; the type is inside.
    Tls13,
}

/// Why a record could not be opened or sealed; each maps to the alert a
/// peer is sent before the connection closes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Authentication failed: a wrong key, a changed byte, a replay.
    #[error("a record failed authentication")]
    BadRecordMac,
    /// Longer than the protocol allows.
    #[error("a record of {0} bytes is longer than allowed")]
    Overflow(usize),
    /// A type or message not allowed after the handshake.
    #[error("unexpected {0} after the handshake")]
    Unexpected(&'static str),
    /// A message that does not parse.
    #[error("a malformed {0}")]
    Decode(&'static str),
    /// The peer sent a fatal alert (its description).
    #[error("the peer sent alert {0}")]
    PeerAlert(u8),
    /// The sequence numbers of a key ran out; the connection must end.
    #[error("the traffic key's sequence numbers ran out")]
    Exhausted,
    /// A suite this layer does not know.
    #[error("cipher suite not supported by the record layer")]
    Unsupported,
}

impl RecordError {
    /// The alert description to send the peer for this error; `None` when
    /// the peer ended it with its own alert.
    pub fn alert(&self) -> Option<u8> {
        match self {
            Self::BadRecordMac => Some(alert::BAD_RECORD_MAC),
            Self::Overflow(_) => Some(alert::RECORD_OVERFLOW),
            Self::Unexpected("renegotiation") => Some(alert::NO_RENEGOTIATION),
            Self::Unexpected(_) => Some(alert::UNEXPECTED_MESSAGE),
            Self::Decode(_) => Some(alert::DECODE_ERROR),
            Self::PeerAlert(_) => None,
            // internal_error
            Self::Exhausted | Self::Unsupported => Some(80),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes128Gcm => &aead::AES_128_GCM,
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// Records one key may seal before it must be replaced: AES-GCM's
    /// confidentiality limit (RFC 8446 §5.5, as rustls applies it), none
    /// that matters for ChaCha20-Poly1305.
    fn record_limit(self) -> u64 {
        match self {
            Self::Aes128Gcm | Self::Aes256Gcm => 1 << 24,
            Self::Chacha20Poly1305 => u64::MAX,
        }
    }
}

/// One direction's traffic key as bytes, with its IV and next sequence
/// number; zeroed when dropped.
pub struct TrafficKey {
    cipher: Cipher,
    key: [u8; 32],
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl TrafficKey {
    /// The key rustls extracted, starting at sequence number `seq`.
    pub fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Self, RecordError> {
        let (cipher, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (Cipher::Chacha20Poly1305, key, iv),
            _ => return Err(RecordError::Unsupported),
        };
        let (key, iv) = (key.as_ref(), iv.as_ref());
        if key.len() != cipher.algorithm().key_len() || iv.len() != aead::NONCE_LEN {
            return Err(RecordError::Unsupported);
        }
        let mut traffic = Self { cipher, key: [0; 32], iv: [0; aead::NONCE_LEN], seq };
        traffic.key[..key.len()].copy_from_slice(key);
        traffic.iv.copy_from_slice(iv);
        Ok(traffic)
    }

    fn expand(&self) -> aead::LessSafeKey {
        let bytes = &self.key[..self.cipher.algorithm().key_len()];
        // The length was checked in `new`, so ring cannot refuse it.
        let unbound = aead::UnboundKey::new(self.cipher.algorithm(), bytes).expect("key length checked in new");
        aead::LessSafeKey::new(unbound)
    }

    /// The per-record nonce: the IV with the sequence number XORed into
    /// its last 8 bytes (RFC 8446 §5.3; TLS 1.2 ChaCha20 and rustls'
    /// TLS 1.2 GCM explicit nonces likewise).
    fn nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    /// Takes the next sequence number, or fails when they ran out.
    fn advance(&mut self) -> Result<u64, RecordError> {
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or(RecordError::Exhausted)?;
        Ok(seq)
    }
}

impl Drop for TrafficKey {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

/// Both directions' keys of one connection.
pub struct RecordLayer {
    version: Version,
    /// Opens what the peer sends.
    rx: TrafficKey,
    /// Seals what the peer is sent.
    tx: TrafficKey,
}

/// What one record held, once opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Application data: where its plaintext now is in the buffer.
    Data(Range<usize>),
    /// The peer closes its side (`close_notify`).
    CloseNotify,
    /// The peer changed its sending key (TLS 1.3 KeyUpdate); `requested`:
    /// it asks for ours to change too.
    KeyUpdate {
        /// The peer asked for an update of the other direction.
        requested: bool,
    },
    /// Nothing to act on (a warning alert such as `user_canceled`).
    Nothing,
}

impl RecordLayer {
    /// A layer for `version` with the peer's key `rx` and ours `tx`.
    pub fn new(version: Version, rx: TrafficKey, tx: TrafficKey) -> Self {
        Self { version, rx, tx }
    }

    /// The negotiated version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// An opener for the records the peer sends, until the next KeyUpdate.
    pub fn opener(&mut self) -> Opener<'_> {
        Opener { key: self.rx.expand(), traffic: &mut self.rx, version: self.version }
    }

    /// A sealer for what the peer is sent, until our next key change.
    pub fn sealer(&mut self) -> Sealer<'_> {
        Sealer { key: self.tx.expand(), traffic: &mut self.tx, version: self.version }
    }

    /// Replaces the peer's key after its KeyUpdate.
    pub fn set_rx(&mut self, rx: TrafficKey) {
        self.rx = rx;
    }

    /// Replaces our key (after sealing our KeyUpdate with the old one).
    pub fn set_tx(&mut self, tx: TrafficKey) {
        self.tx = tx;
    }

    /// Our key has sealed as many records as it safely may: TLS 1.3 must
    /// update it, TLS 1.2 must end the connection.
    pub fn tx_worn_out(&self) -> bool {
        self.tx.seq >= self.tx.cipher.record_limit()
    }
}

/// Opens records with one expanded key.
pub struct Opener<'a> {
    key: aead::LessSafeKey,
    traffic: &'a mut TrafficKey,
    version: Version,
}

impl Opener<'_> {
    /// Opens the first record of `buf` in place. `Ok(None)` while `buf`
    /// does not hold all of it yet; otherwise the bytes it took and what
    /// it held (plaintext ranges are within `buf`).
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Option<(usize, Opened)>, RecordError> {
        let Some(len) = body_len(buf) else { return Ok(None) };
        let max = match self.version {
            Version::Tls13 => MAX_PLAINTEXT + 256,
            Version::Tls12 => MAX_PLAINTEXT + 2048,
        };
        if len > max {
            return Err(RecordError::Overflow(len));
        }
        let total = HEADER + len;
        if buf.len() < total {
            return Ok(None);
        }
        let (typ, plain) = match self.version {
            Version::Tls13 => self.open_tls13(&mut buf[..total])?,
            Version::Tls12 => self.open_tls12(&mut buf[..total])?,
        };
        if plain.len() > MAX_PLAINTEXT {
            return Err(RecordError::Overflow(plain.len()));
        }
        let opened = match typ {
            ContentType::ApplicationData => Opened::Data(plain),
            ContentType::Alert => read_alert(&buf[plain])?,
            ContentType::Handshake if self.version == Version::Tls13 => read_key_update(&buf[plain])?,
            ContentType::Handshake => return Err(RecordError::Unexpected("renegotiation")),
            ContentType::ChangeCipherSpec => return Err(RecordError::Unexpected("change_cipher_spec")),
        };
        Ok(Some((total, opened)))
    }

    /// TLS 1.3: every record is `application_data` outside; the real type
    /// is the last non-zero byte of the plaintext, zeros after it padding.
    fn open_tls13(&mut self, record: &mut [u8]) -> Result<(ContentType, Range<usize>), RecordError> {
        if record[0] != ContentType::ApplicationData as u8 {
            return Err(RecordError::Unexpected("plaintext record"));
        }
        if record.len() < HEADER + TAG + 1 {
            return Err(RecordError::Decode("record shorter than its tag"));
        }
        let nonce = aead::Nonce::assume_unique_for_key(self.traffic.nonce());
        let (header, body) = record.split_at_mut(HEADER);
        let aad = aead::Aad::from(<[u8; HEADER]>::try_from(&*header).expect("split at HEADER"));
        let plain = self.key.open_in_place(nonce, aad, body).map_err(|_| RecordError::BadRecordMac)?;
        self.traffic.advance()?;
        let Some(end) = plain.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::Unexpected("record without a content type"));
        };
        let typ = content_type(plain[end])?;
        Ok((typ, HEADER..HEADER + end))
    }

    /// TLS 1.2: the type is in the header and in the AAD, with the
    /// sequence number and the plaintext's length; GCM records start with
    /// the 8 explicit bytes of their nonce.
    fn open_tls12(&mut self, record: &mut [u8]) -> Result<(ContentType, Range<usize>), RecordError> {
        let typ = content_type(record[0])?;
        let explicit = match self.traffic.cipher {
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => GCM_EXPLICIT_NONCE,
            Cipher::Chacha20Poly1305 => 0,
        };
        if record.len() < HEADER + explicit + TAG {
            return Err(RecordError::Decode("record shorter than its tag"));
        }
        let mut nonce = self.traffic.nonce();
        if explicit > 0 {
            nonce[4..].copy_from_slice(&record[HEADER..HEADER + explicit]);
        }
        let plain_len = record.len() - HEADER - explicit - TAG;
        let aad = tls12_aad(self.traffic.seq, record[0], [record[1], record[2]], plain_len);
        let start = HEADER + explicit;
        let nonce = aead::Nonce::assume_unique_for_key(nonce);
        let plain = self
            .key
            .open_in_place(nonce, aead::Aad::from(aad), &mut record[start..])
            .map_err(|_| RecordError::BadRecordMac)?;
        debug_assert_eq!(plain.len(), plain_len);
        self.traffic.advance()?;
        Ok((typ, start..start + plain_len))
    }
}

/// Whether `buf` starts with a whole record, or with a header longer
/// than any version allows (which opening refuses): only then is an
/// opener worth making.
pub fn has_whole_record(buf: &[u8]) -> bool {
    body_len(buf).is_some_and(|len| len > MAX_RECORD - HEADER || buf.len() >= HEADER + len)
}

/// The body length the record at the start of `buf` declares, once its
/// header is there.
fn body_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..HEADER)?;
    Some(usize::from(u16::from_be_bytes([header[3], header[4]])))
}

/// Seals records with one expanded key.
pub struct Sealer<'a> {
    key: aead::LessSafeKey,
    traffic: &'a mut TrafficKey,
    version: Version,
}

impl Sealer<'_> {
    /// Seals `plain` (at most [`MAX_PLAINTEXT`] bytes) as one record of
    /// type `typ` into the start of `out`, which needs `plain.len()` +
    /// [`MAX_OVERHEAD`] bytes; returns the record's length.
    pub fn seal(&mut self, typ: ContentType, plain: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        if plain.len() > MAX_PLAINTEXT {
            return Err(RecordError::Overflow(plain.len()));
        }
        let nonce = self.traffic.nonce();
        let (body_start, sealed_len, outer, aad) = match self.version {
            Version::Tls13 => {
                let sealed = plain.len() + 1;
                let header = header(ContentType::ApplicationData as u8, sealed + TAG);
                out[..HEADER].copy_from_slice(&header);
                out[HEADER + plain.len()] = typ as u8;
                (HEADER, sealed, sealed + TAG, aead::Aad::from(Aad::Header(header)))
            }
            Version::Tls12 => {
                let explicit = match self.traffic.cipher {
                    Cipher::Aes128Gcm | Cipher::Aes256Gcm => GCM_EXPLICIT_NONCE,
                    Cipher::Chacha20Poly1305 => 0,
                };
                out[..HEADER].copy_from_slice(&header(typ as u8, explicit + plain.len() + TAG));
                out[HEADER..HEADER + explicit].copy_from_slice(&nonce[4..4 + explicit]);
                let aad = tls12_aad(self.traffic.seq, typ as u8, LEGACY_VERSION, plain.len());
                (HEADER + explicit, plain.len(), explicit + plain.len() + TAG, aead::Aad::from(Aad::Tls12(aad)))
            }
        };
        out[body_start..body_start + plain.len()].copy_from_slice(plain);
        self.traffic.advance()?;
        let nonce = aead::Nonce::assume_unique_for_key(nonce);
        let body = &mut out[body_start..body_start + sealed_len];
        let tag = self.key.seal_in_place_separate_tag(nonce, aad, body).map_err(|_| RecordError::Exhausted)?;
        out[body_start + sealed_len..body_start + sealed_len + TAG].copy_from_slice(tag.as_ref());
        Ok(HEADER + outer)
    }
}

/// The two shapes of additional data, so `seal` builds one `Aad` type.
enum Aad {
    Header([u8; HEADER]),
    Tls12([u8; 13]),
}

impl AsRef<[u8]> for Aad {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::Header(h) => h,
            Self::Tls12(a) => a,
        }
    }
}

fn header(typ: u8, len: usize) -> [u8; HEADER] {
    let len = u16::try_from(len).expect("a record's length fits in 16 bits").to_be_bytes();
    [typ, LEGACY_VERSION[0], LEGACY_VERSION[1], len[0], len[1]]
}

/// TLS 1.2's additional data: seq_num, type, version, length (RFC 5246 §6.2.3.3).
fn tls12_aad(seq: u64, typ: u8, version: [u8; 2], plain_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9..11].copy_from_slice(&version);
    aad[11..].copy_from_slice(&(plain_len as u16).to_be_bytes());
    aad
}

fn content_type(byte: u8) -> Result<ContentType, RecordError> {
    match byte {
        20 => Ok(ContentType::ChangeCipherSpec),
        21 => Ok(ContentType::Alert),
        22 => Ok(ContentType::Handshake),
        23 => Ok(ContentType::ApplicationData),
        _ => Err(RecordError::Unexpected("content type")),
    }
}

/// An alert: `close_notify` ends the peer's side, `user_canceled` is
/// followed by one, anything else is fatal.
fn read_alert(payload: &[u8]) -> Result<Opened, RecordError> {
    match payload {
        [_, alert::CLOSE_NOTIFY] => Ok(Opened::CloseNotify),
        [1, alert::USER_CANCELED] => Ok(Opened::Nothing),
        [_, description] => Err(RecordError::PeerAlert(*description)),
        _ => Err(RecordError::Decode("alert")),
    }
}

/// The only handshake message a TLS 1.3 client may send after the
/// handshake is a KeyUpdate, alone and last in its record (a message
/// must not span a key change).
fn read_key_update(payload: &[u8]) -> Result<Opened, RecordError> {
    const KEY_UPDATE: u8 = 24;
    match payload {
        [KEY_UPDATE, 0, 0, 1, request] => match request {
            0 => Ok(Opened::KeyUpdate { requested: false }),
            1 => Ok(Opened::KeyUpdate { requested: true }),
            _ => Err(RecordError::Decode("key_update")),
        },
        [KEY_UPDATE, ..] => Err(RecordError::Decode("key_update")),
        _ => Err(RecordError::Unexpected("handshake message")),
    }
}

/// Our KeyUpdate message, not asking the peer to update (RFC 8446 §4.6.3).
pub const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [24, 0, 0, 1, 0];
/// A `close_notify` alert's payload.
pub const CLOSE_NOTIFY: [u8; 2] = [1, alert::CLOSE_NOTIFY];

/// A fatal alert's payload.
pub fn fatal(description: u8) -> [u8; 2] {
    [2, description]
}

#[cfg(test)]
mod tests {
    use rustls::crypto::cipher::AeadKey;
    use rustls::crypto::cipher::Iv;

    use super::*;

    fn key(byte: u8, chacha: bool, seq: u64) -> TrafficKey {
        let (key, iv) = (AeadKey::from([byte; 32]), Iv::new([byte ^ 0x5a; 12]));
        let secrets = if chacha {
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
        } else {
            ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        };
        TrafficKey::new(seq, secrets).expect("a 32-byte key")
    }

    /// Two ends of one connection: what one seals the other opens.
    fn pair(version: Version, chacha: bool) -> (RecordLayer, RecordLayer) {
        let ours = RecordLayer::new(version, key(1, chacha, 0), key(2, chacha, 0));
        let theirs = RecordLayer::new(version, key(2, chacha, 0), key(1, chacha, 0));
        (ours, theirs)
    }

    fn seal(layer: &mut RecordLayer, typ: ContentType, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; plain.len() + MAX_OVERHEAD];
        let n = layer.sealer().seal(typ, plain, &mut out).expect("seal");
        out.truncate(n);
        out
    }

    const SHAPES: [(Version, bool); 4] =
        [(Version::Tls13, false), (Version::Tls13, true), (Version::Tls12, false), (Version::Tls12, true)];

    #[test]
    fn records_open_in_order_with_their_plaintext_in_place() {
        for (version, chacha) in SHAPES {
            let (mut ours, mut theirs) = pair(version, chacha);
            let plains: Vec<Vec<u8>> =
                [0usize, 1, 100, MAX_PLAINTEXT].iter().map(|&n| (0..n).map(|i| (i % 251) as u8).collect()).collect();
            let mut wire: Vec<u8> =
                plains.iter().flat_map(|p| seal(&mut theirs, ContentType::ApplicationData, p)).collect();
            let mut opener = ours.opener();
            let mut at = 0;
            for plain in &plains {
                let (used, opened) = opener.open(&mut wire[at..]).expect("open").expect("whole");
                let Opened::Data(range) = opened else { panic!("{version:?}: {opened:?}") };
                assert_eq!(&wire[at + range.start..at + range.end], &plain[..], "{version:?} chacha {chacha}");
                at += used;
            }
            assert_eq!(at, wire.len());
            assert_eq!(opener.open(&mut wire[at..]).expect("empty"), None);
        }
    }

    #[test]
    fn a_record_not_yet_whole_waits_for_more_bytes() {
        for (version, chacha) in SHAPES {
            let (mut ours, mut theirs) = pair(version, chacha);
            let mut wire = seal(&mut theirs, ContentType::ApplicationData, b"hello");
            for cut in [0, 3, HEADER, wire.len() - 1] {
                assert_eq!(ours.opener().open(&mut wire[..cut]).expect("no error"), None, "cut at {cut}");
            }
            let (used, opened) = ours.opener().open(&mut wire).expect("open").expect("whole");
            assert_eq!(used, wire.len());
            let Opened::Data(range) = opened else { panic!("{opened:?}") };
            assert_eq!(&wire[range], b"hello", "{version:?} chacha {chacha}");
        }
    }

    #[test]
    fn a_whole_record_is_told_from_its_start_and_an_overlong_header_at_once() {
        let (_, mut theirs) = pair(Version::Tls13, false);
        let wire = seal(&mut theirs, ContentType::ApplicationData, b"hello");
        assert!(!has_whole_record(&wire[..HEADER - 1]));
        assert!(!has_whole_record(&wire[..wire.len() - 1]));
        assert!(has_whole_record(&wire));
        assert!(has_whole_record(&[23, 3, 3, 0xff, 0xff]), "refused by open, not waited for");
    }

    #[test]
    fn a_changed_byte_or_a_replay_fails_authentication() {
        for (version, chacha) in SHAPES {
            let (mut ours, mut theirs) = pair(version, chacha);
            let wire = seal(&mut theirs, ContentType::ApplicationData, b"pay me");
            for at in [0, 1, 2, HEADER, wire.len() - 1] {
                let mut bad = wire.clone();
                bad[at] ^= 1;
                let r = ours.opener().open(&mut bad);
                assert!(r.is_err(), "{version:?} byte {at} changed: {r:?}");
            }
            let mut good = wire.clone();
            assert!(matches!(ours.opener().open(&mut good), Ok(Some(_))), "{version:?}");
            let mut replay = wire.clone();
            assert_eq!(ours.opener().open(&mut replay), Err(RecordError::BadRecordMac), "{version:?} replayed");
        }
    }

    #[test]
    fn alerts_and_key_updates_are_told_apart_from_data() {
        let (mut ours, mut theirs) = pair(Version::Tls13, false);
        let mut wire = seal(&mut theirs, ContentType::Handshake, &[24, 0, 0, 1, 1]);
        assert_eq!(
            ours.opener().open(&mut wire).expect("open").map(|o| o.1),
            Some(Opened::KeyUpdate { requested: true })
        );
        let mut wire = seal(&mut theirs, ContentType::Alert, &CLOSE_NOTIFY);
        assert_eq!(ours.opener().open(&mut wire).expect("open").map(|o| o.1), Some(Opened::CloseNotify));
        let mut wire = seal(&mut theirs, ContentType::Alert, &[1, alert::USER_CANCELED]);
        assert_eq!(ours.opener().open(&mut wire).expect("open").map(|o| o.1), Some(Opened::Nothing));
        let mut wire = seal(&mut theirs, ContentType::Alert, &fatal(alert::DECODE_ERROR));
        assert_eq!(ours.opener().open(&mut wire), Err(RecordError::PeerAlert(alert::DECODE_ERROR)));
        let mut wire = seal(&mut theirs, ContentType::Handshake, &[4, 0, 0, 0]);
        assert_eq!(ours.opener().open(&mut wire), Err(RecordError::Unexpected("handshake message")));
        let mut wire = seal(&mut theirs, ContentType::ChangeCipherSpec, &[1]);
        assert_eq!(ours.opener().open(&mut wire), Err(RecordError::Unexpected("change_cipher_spec")));
        // TLS 1.2: a handshake message after the handshake is a renegotiation.
        let (mut ours, mut theirs) = pair(Version::Tls12, false);
        let mut wire = seal(&mut theirs, ContentType::Handshake, &[1, 0, 0, 0]);
        assert_eq!(ours.opener().open(&mut wire), Err(RecordError::Unexpected("renegotiation")));
    }

    #[test]
    fn oversized_and_plaintext_records_are_refused() {
        let (mut ours, _) = pair(Version::Tls13, false);
        let mut huge = vec![0u8; HEADER];
        huge[0] = 23;
        huge[3..5].copy_from_slice(&((MAX_PLAINTEXT + 257) as u16).to_be_bytes());
        assert_eq!(ours.opener().open(&mut huge), Err(RecordError::Overflow(MAX_PLAINTEXT + 257)));
        let mut plain_alert = vec![21, 3, 3, 0, 2, 1, 0];
        assert_eq!(ours.opener().open(&mut plain_alert), Err(RecordError::Unexpected("plaintext record")));
        let mut short = vec![23, 3, 3, 0, 3, 1, 2, 3];
        assert!(matches!(ours.opener().open(&mut short), Err(RecordError::Decode(_))));
    }

    #[test]
    fn a_key_wears_out_at_the_aes_gcm_limit_only() {
        let near = RecordLayer::new(Version::Tls13, key(1, false, 0), key(2, false, (1 << 24) - 1));
        assert!(!near.tx_worn_out());
        let mut near = near;
        let _ = seal(&mut near, ContentType::ApplicationData, b"x");
        assert!(near.tx_worn_out(), "2^24 records sealed with AES-GCM");
        let chacha = RecordLayer::new(Version::Tls13, key(1, true, 0), key(2, true, 1 << 40));
        assert!(!chacha.tx_worn_out());
    }
}
