//! Queue ids: the key of every spooled message, in `entries` and `messages`.
//!
//! An id packs the enqueue second (high 32 bits) with the low 32 bits of
//! sled's persistent id generator, so ids sort by arrival, stay unique across
//! restarts (the generator never repeats inside one database) and even across
//! a re-created spool directory unless two ids share a second. Operators see
//! them as 16 lowercase hex digits, in logs, trace headers and the queue CLI.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Identifies one message in the spool.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct QueueId(u64);

impl QueueId {
    /// The raw value, as stored (big-endian) in the spool's keys.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Rebuilds an id from its raw value.
    pub fn from_u64(v: u64) -> Self {
        QueueId(v)
    }

    /// The sled key: big-endian so that key order is id order.
    pub(crate) fn to_key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// Reads a sled key back; `None` when it is not 8 bytes long.
    pub(crate) fn from_key(key: &[u8]) -> Option<Self> {
        let bytes: [u8; 8] = key.try_into().ok()?;
        Some(QueueId(u64::from_be_bytes(bytes)))
    }

    /// Mixes the clock with a generator value into a candidate id.
    pub(crate) fn compose(unix_seconds: u64, generated: u64) -> Self {
        // Seconds fit 32 bits until 2106; the mask only guards a broken clock.
        QueueId(((unix_seconds & 0xffff_ffff) << 32) | (generated & 0xffff_ffff))
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A string that is not 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid queue id {input:?}: expected 16 hexadecimal digits")]
pub struct ParseQueueIdError {
    /// What was given, for the operator's error message.
    pub input: String,
}

impl FromStr for QueueId {
    type Err = ParseQueueIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseQueueIdError {
            input: s.to_string(),
        };
        // from_str_radix alone would also accept a sign or a short id.
        // Upper case is accepted: operators paste ids from anywhere.
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        u64::from_str_radix(s, 16).map(QueueId).map_err(|_| err())
    }
}

impl serde::Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Hands out strictly increasing ids within one process, so that ids stay
/// ordered even if the wall clock steps backwards.
#[derive(Debug)]
pub(crate) struct IdSequence {
    /// The highest id issued or found in the spool.
    last: AtomicU64,
}

impl IdSequence {
    pub(crate) fn new(highest_existing: u64) -> Self {
        IdSequence {
            last: AtomicU64::new(highest_existing),
        }
    }

    /// Returns `candidate`, or one past the last id if the candidate is not
    /// above it.
    pub(crate) fn next(&self, candidate: QueueId) -> QueueId {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let id = if candidate.0 > last {
                candidate.0
            } else {
                last.wrapping_add(1)
            };
            match self
                .last
                .compare_exchange_weak(last, id, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return QueueId(id),
                Err(actual) => last = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = QueueId::from_u64(0x0123_4567_89ab_cdef);
        assert_eq!(id.to_string(), "0123456789abcdef");
        assert_eq!("0123456789abcdef".parse::<QueueId>().unwrap(), id);
        assert_eq!("0123456789ABCDEF".parse::<QueueId>().unwrap(), id);
        assert_eq!(QueueId::from_u64(1).to_string(), "0000000000000001");
    }

    #[test]
    fn parse_rejects_malformed_ids() {
        for bad in [
            "",
            "123",
            "0123456789abcdeg",
            "+123456789abcdef",
            "0123456789abcdef0",
        ] {
            let err = bad.parse::<QueueId>().unwrap_err();
            assert_eq!(err.input, bad);
        }
    }

    #[test]
    fn serializes_as_hex_string() {
        let id = QueueId::from_u64(0xff);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"00000000000000ff\"");
        assert_eq!(serde_json::from_str::<QueueId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<QueueId>("\"zz\"").is_err());
    }

    #[test]
    fn compose_orders_by_second_then_generator() {
        let a = QueueId::compose(1_700_000_000, 5);
        let b = QueueId::compose(1_700_000_000, 6);
        let c = QueueId::compose(1_700_000_001, 0);
        assert!(a < b && b < c);
        assert_eq!(QueueId::from_key(&a.to_key()), Some(a));
        assert_eq!(QueueId::from_key(&[1, 2, 3]), None);
    }

    #[test]
    fn sequence_stays_increasing_when_the_clock_goes_back() {
        let seq = IdSequence::new(0);
        let first = seq.next(QueueId::compose(1_700_000_010, 1));
        let earlier_clock = seq.next(QueueId::compose(1_700_000_000, 2));
        assert!(earlier_clock > first);
        let later = seq.next(QueueId::compose(1_700_000_020, 3));
        assert_eq!(later, QueueId::compose(1_700_000_020, 3));
    }
}
