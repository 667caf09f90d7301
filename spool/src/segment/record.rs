//! The on-disk record: one chunk of one message's bytes in a segment file.
//!
//! ```text
//! 0..4    magic  b"SLR1"
//! 4..12   id     queue id, u64 big-endian
//! 12..16  len    payload length, u32 big-endian
//! 16..20  crc    CRC-32 of bytes 4..16 and the payload, u32 big-endian
//! 20..    payload
//! ```
//!
//! The checksum covers the id and length as well as the bytes, so a record
//! moved, cut short or overwritten by another's is told apart from a good one.

/// Marks the start of every record.
const MAGIC: [u8; 4] = *b"SLR1";

/// Bytes before the payload.
pub(crate) const HEADER_LEN: u64 = 20;

/// Largest payload of one record: a message is written as records of at most
/// this size, so a record's length fits its header and memory per write stays
/// bounded.
pub(crate) const MAX_PAYLOAD: usize = 1 << 20;

/// The fields of a record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) id: u64,
    pub(crate) len: u32,
    pub(crate) crc: u32,
}

impl Header {
    /// The header of a record holding `payload` for message `id`.
    pub(crate) fn for_payload(id: u64, payload: &[u8]) -> Header {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        Header {
            id,
            len,
            crc: checksum(id, len, payload),
        }
    }

    pub(crate) fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..12].copy_from_slice(&self.id.to_be_bytes());
        out[12..16].copy_from_slice(&self.len.to_be_bytes());
        out[16..20].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// `None` unless `raw` starts with the record magic.
    pub(crate) fn decode(raw: &[u8; HEADER_LEN as usize]) -> Option<Header> {
        if raw[0..4] != MAGIC {
            return None;
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&raw[4..12]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&raw[12..16]);
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&raw[16..20]);
        Some(Header {
            id: u64::from_be_bytes(id),
            len: u32::from_be_bytes(len),
            crc: u32::from_be_bytes(crc),
        })
    }

    /// Whether `payload` is what this header was written for.
    pub(crate) fn matches(&self, payload: &[u8]) -> bool {
        payload.len() == self.len as usize && checksum(self.id, self.len, payload) == self.crc
    }

    /// Header and payload together.
    pub(crate) fn record_len(&self) -> u64 {
        HEADER_LEN + u64::from(self.len)
    }
}

fn checksum(id: u64, len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&id.to_be_bytes());
    hasher.update(&len.to_be_bytes());
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_checks_its_payload() {
        let header = Header::for_payload(42, b"hello");
        let decoded = Header::decode(&header.encode()).unwrap();
        assert_eq!(decoded, header);
        assert!(decoded.matches(b"hello"));
        assert!(!decoded.matches(b"hellO"));
        assert!(!decoded.matches(b"hell"));
        assert_eq!(decoded.record_len(), HEADER_LEN + 5);
    }

    #[test]
    fn the_checksum_binds_id_and_length() {
        let a = Header::for_payload(1, b"same");
        let b = Header::for_payload(2, b"same");
        assert_ne!(a.crc, b.crc);
        let mut moved = a;
        moved.id = 2;
        assert!(!moved.matches(b"same"));
    }

    #[test]
    fn zeros_are_not_a_header() {
        assert_eq!(Header::decode(&[0u8; HEADER_LEN as usize]), None);
    }
}
