//! Where a message's bytes are: the list of records ([`Extent`]s) holding
//! them, in order. This small value is what the `messages` tree stores per
//! message; the bytes themselves are in segment files.
//!
//! A message stored with a header prefix lists the prefix's records first,
//! then the received message's records; an extent may leave out the start
//! of its payload (`skip`), which is how the received header section is
//! replaced by an edited one without copying the body.
//!
//! Encoding: a version byte (2), the extent count as u32, then per extent
//! the segment number (u64), the record's offset in it (u64), the payload
//! length (u32), the record's checksum (u32) and the skipped payload
//! octets (u32), all big-endian. Version 1 (no skip) still decodes.

/// One record of a message: which segment, where in it, and what it must
/// check out as when read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    /// Segment number (the file name).
    pub(crate) segment: u64,
    /// Offset of the record header in the segment file.
    pub(crate) offset: u64,
    /// Payload length.
    pub(crate) len: u32,
    /// The record's checksum, to match against what is read.
    pub(crate) crc: u32,
    /// Leading payload octets that are not part of the message.
    pub(crate) skip: u32,
}

impl Extent {
    /// Octets this extent adds to the message.
    pub(crate) fn message_len(&self) -> u64 {
        u64::from(self.len.saturating_sub(self.skip))
    }
}

/// Every record of one message, in message order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) extents: Vec<Extent>,
}

const VERSION: u8 = 2;
const EXTENT_LEN: usize = 28;
const V1_EXTENT_LEN: usize = 24;

impl Location {
    /// Total message length.
    pub(crate) fn len(&self) -> u64 {
        self.extents.iter().map(Extent::message_len).sum()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + EXTENT_LEN * self.extents.len());
        out.push(VERSION);
        let count = u32::try_from(self.extents.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for e in &self.extents {
            out.extend_from_slice(&e.segment.to_be_bytes());
            out.extend_from_slice(&e.offset.to_be_bytes());
            out.extend_from_slice(&e.len.to_be_bytes());
            out.extend_from_slice(&e.crc.to_be_bytes());
            out.extend_from_slice(&e.skip.to_be_bytes());
        }
        out
    }

    /// `None` if `raw` is not a location this version wrote.
    pub(crate) fn decode(raw: &[u8]) -> Option<Location> {
        let (&version, rest) = raw.split_first()?;
        let extent_len = match version {
            VERSION => EXTENT_LEN,
            1 => V1_EXTENT_LEN,
            _ => return None,
        };
        if rest.len() < 4 {
            return None;
        }
        let (count, body) = rest.split_at(4);
        let count = u32::from_be_bytes(count.try_into().ok()?) as usize;
        if body.len() != count.checked_mul(extent_len)? {
            return None;
        }
        let extents: Vec<Extent> = body
            .chunks_exact(extent_len)
            .map(|c| Extent {
                segment: be_u64(&c[0..8]),
                offset: be_u64(&c[8..16]),
                len: be_u32(&c[16..20]),
                crc: be_u32(&c[20..24]),
                skip: if extent_len == EXTENT_LEN {
                    be_u32(&c[24..28])
                } else {
                    0
                },
            })
            .collect();
        if extents.iter().any(|e| e.skip > e.len) {
            return None;
        }
        Some(Location { extents })
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let location = Location {
            extents: vec![
                Extent {
                    segment: 3,
                    offset: 16,
                    len: 1 << 20,
                    crc: 7,
                    skip: 0,
                },
                Extent {
                    segment: 4,
                    offset: 16,
                    len: 5,
                    crc: u32::MAX,
                    skip: 2,
                },
            ],
        };
        assert_eq!(Location::decode(&location.encode()), Some(location.clone()));
        assert_eq!(location.len(), (1 << 20) + 3);
    }

    #[test]
    fn version_one_still_decodes() {
        let mut raw = vec![1u8];
        raw.extend_from_slice(&1u32.to_be_bytes());
        raw.extend_from_slice(&3u64.to_be_bytes());
        raw.extend_from_slice(&16u64.to_be_bytes());
        raw.extend_from_slice(&5u32.to_be_bytes());
        raw.extend_from_slice(&9u32.to_be_bytes());
        let location = Location::decode(&raw).unwrap();
        assert_eq!(location.extents[0].skip, 0);
        assert_eq!(location.len(), 5);
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        assert_eq!(Location::decode(b""), None);
        assert_eq!(Location::decode(b"raw message bytes"), None);
        let mut truncated = Location {
            extents: vec![Extent {
                segment: 1,
                offset: 16,
                len: 1,
                crc: 1,
                skip: 0,
            }],
        }
        .encode();
        truncated.pop();
        assert_eq!(Location::decode(&truncated), None);
    }
}
