//! A message being received: its bytes go to the current segment as they
//! arrive, in records of [`STAGE_RECORD`] octets, so a session holds at most
//! one record's worth of them (two while the data stage reads a message
//! that fits in one: it reads a copy, and the message is still written as
//! a single record). [`StagedMessage::commit`] adds the header prefix
//! (trace fields, signatures, an edited header section) as records of its
//! own — in the same record as a message that fits in one — writes the
//! index entry and waits for the group commit.
//! A staging dropped without commit leaves dead records behind, which the
//! segment's reclamation handles like those of a delivered message.

use crate::reader::MessageReader;
use crate::segment::{Extent, Location, MAX_PAYLOAD};
use crate::{Envelope, QueueId, Spool, SpoolError};

/// Size of the records a staged message is written in: the memory a
/// receiving session keeps for its message.
pub const STAGE_RECORD: usize = 256 << 10;

const _: () = assert!(STAGE_RECORD <= MAX_PAYLOAD);

/// A message whose bytes are being written to the spool; see the module
/// docs. Not durable, and not in the queue, until committed.
pub struct StagedMessage {
    spool: Spool,
    id: QueueId,
    /// Records written so far, in message order.
    location: Location,
    /// Bytes not yet written as a record; never more than `STAGE_RECORD`.
    buf: Vec<u8>,
    /// Octets written or buffered.
    len: u64,
}

impl std::fmt::Debug for StagedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedMessage")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl StagedMessage {
    pub(crate) fn new(spool: Spool, id: QueueId) -> Self {
        StagedMessage {
            spool,
            id,
            location: Location::default(),
            buf: Vec::new(),
            len: 0,
        }
    }

    /// The queue id the message will have.
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Octets written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends message bytes; a full record goes to the segment at once.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), SpoolError> {
        self.len += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = STAGE_RECORD - self.buf.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(now);
            bytes = rest;
            if self.buf.len() == STAGE_RECORD {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SpoolError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let extent = self.spool.segments().append_one(self.id, &self.buf)?;
        self.location.extents.push(extent);
        self.buf.clear();
        Ok(())
    }

    /// A reader over everything written so far: positioned reads from the
    /// segment once a record was written (what is buffered is written
    /// first), else from a copy of the buffer, so a small message still
    /// goes to the segment as the one record `commit` writes.
    pub fn reader(&mut self) -> Result<MessageReader, SpoolError> {
        if self.location.extents.is_empty() {
            return Ok(MessageReader::held(self.id, self.buf.as_slice().into()));
        }
        self.flush()?;
        Ok(MessageReader::new(
            std::sync::Arc::clone(self.spool.segments()),
            self.id,
            self.location.clone(),
        ))
    }

    /// Queues the message as `prefix` followed by the written bytes from
    /// octet `skip` on, and returns once it is durable (group commit).
    /// If the future is dropped first, nothing stays queued.
    pub async fn commit(
        mut self,
        envelope: Envelope,
        prefix: &[u8],
        skip: u64,
    ) -> Result<QueueId, SpoolError> {
        let segments = std::sync::Arc::clone(self.spool.segments());
        let mut location = Location::default();
        let result = if self.location.extents.is_empty() {
            // Small message, still all in the buffer: one record in all.
            let start = usize::try_from(skip)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let mut whole = Vec::with_capacity(prefix.len() + self.buf.len() - start);
            whole.extend_from_slice(prefix);
            whole.extend_from_slice(&self.buf[start..]);
            self.buf = Vec::new();
            append_all(&segments, self.id, &whole, &mut location)
        } else {
            append_all(&segments, self.id, prefix, &mut location)
                .and_then(|()| self.flush())
                .map(|()| {
                    let (kept, skipped) = skip_prefix(std::mem::take(&mut self.location), skip);
                    segments.release(&skipped);
                    location.extents.extend(kept.extents);
                })
        };
        if let Err(e) = result {
            segments.release(&location);
            return Err(e);
        }
        let spool = self.spool.clone();
        spool.store(self.id, envelope, location).await
    }
}

impl Drop for StagedMessage {
    fn drop(&mut self) {
        // Committed stagings have handed their records on.
        if !self.location.extents.is_empty() {
            self.spool.segments().release(&self.location);
        }
    }
}

/// Writes `bytes` as records of at most `STAGE_RECORD` octets.
fn append_all(
    segments: &crate::segment::Segments,
    id: QueueId,
    bytes: &[u8],
    location: &mut Location,
) -> Result<(), SpoolError> {
    for chunk in bytes.chunks(STAGE_RECORD) {
        location.extents.push(segments.append_one(id, chunk)?);
    }
    Ok(())
}

/// Splits `location` into what is left once its first `skip` octets are
/// left out, and the records that hold none of it any more.
fn skip_prefix(location: Location, mut skip: u64) -> (Location, Location) {
    let mut kept = Location::default();
    let mut skipped = Location::default();
    for extent in location.extents {
        let len = u64::from(extent.len);
        if skip >= len {
            skip -= len;
            skipped.extents.push(extent);
            continue;
        }
        // `skip < len <= u32::MAX` here.
        let part = u32::try_from(skip).unwrap_or(extent.len);
        skip = 0;
        kept.extents.push(Extent {
            skip: part,
            ..extent
        });
    }
    (kept, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(segment: u64, len: u32) -> Extent {
        Extent {
            segment,
            offset: 16,
            len,
            crc: 0,
            skip: 0,
        }
    }

    #[test]
    fn skipping_drops_whole_records_and_cuts_into_the_next() {
        let location = Location {
            extents: vec![extent(1, 10), extent(2, 10), extent(3, 10)],
        };
        let (kept, skipped) = skip_prefix(location.clone(), 14);
        assert_eq!(skipped.extents, vec![extent(1, 10)]);
        assert_eq!(kept.extents.len(), 2);
        assert_eq!(kept.extents[0].skip, 4);
        assert_eq!(kept.len(), 16);
        let (kept, skipped) = skip_prefix(location, 0);
        assert_eq!(kept.len(), 30);
        assert!(skipped.extents.is_empty());
    }
}
