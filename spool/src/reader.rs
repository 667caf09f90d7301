//! Reading a message's bytes without loading it whole: positioned reads
//! from its segment records, one record (at most 1 MiB) in memory at a time,
//! each checked against its checksum when it is loaded. A message still
//! being received and small enough to be held whole is read from memory.

use std::sync::Arc;

use crate::segment::{Location, Segments};
use crate::{QueueId, SpoolError};

/// A message's bytes in the spool, read by offset. Also an [`std::io::Read`]
/// from its own position, for copying the message out in order.
pub struct MessageReader {
    id: QueueId,
    source: Source,
    /// Where `Read` continues.
    position: u64,
}

enum Source {
    /// Bytes not yet written to a segment (a small message being received).
    Held(Arc<[u8]>),
    Records(Records),
}

/// The records of a message in its segments.
struct Records {
    segments: Arc<Segments>,
    location: Location,
    /// Message offset at which each extent starts.
    starts: Vec<u64>,
    /// The record last loaded: (extent index, its whole payload).
    loaded: Option<(usize, Vec<u8>)>,
}

impl std::fmt::Debug for MessageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageReader")
            .field("id", &self.id)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl MessageReader {
    pub(crate) fn new(segments: Arc<Segments>, id: QueueId, location: Location) -> Self {
        let mut starts = Vec::with_capacity(location.extents.len());
        let mut at = 0;
        for extent in &location.extents {
            starts.push(at);
            at += extent.message_len();
        }
        let records = Records {
            segments,
            location,
            starts,
            loaded: None,
        };
        MessageReader {
            id,
            source: Source::Records(records),
            position: 0,
        }
    }

    /// A reader of bytes held in memory.
    pub(crate) fn held(id: QueueId, bytes: Arc<[u8]>) -> Self {
        MessageReader {
            id,
            source: Source::Held(bytes),
            position: 0,
        }
    }

    /// The message's length in octets.
    pub fn len(&self) -> u64 {
        match &self.source {
            Source::Held(bytes) => bytes.len() as u64,
            Source::Records(records) => records.location.len(),
        }
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader of the same bytes from the start, with nothing loaded.
    pub fn fresh(&self) -> MessageReader {
        match &self.source {
            Source::Held(bytes) => MessageReader::held(self.id, Arc::clone(bytes)),
            Source::Records(records) => MessageReader::new(
                Arc::clone(&records.segments),
                self.id,
                records.location.clone(),
            ),
        }
    }

    /// Fills `out` from `offset` on; returns how many octets it read (fewer
    /// only at the end of the message).
    pub fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, SpoolError> {
        match &mut self.source {
            Source::Held(bytes) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let n = out.len().min(bytes.len() - start);
                out[..n].copy_from_slice(&bytes[start..start + n]);
                Ok(n)
            }
            Source::Records(records) => records.read_at(self.id, offset, out),
        }
    }

    /// The whole message in one allocation (for what needs it whole).
    pub fn read_all(&mut self) -> Result<Vec<u8>, SpoolError> {
        let len = usize::try_from(self.len()).map_err(|_| SpoolError::Corrupt {
            id: self.id,
            reason: "message length does not fit in memory".into(),
        })?;
        let mut out = vec![0u8; len];
        let n = self.read_at(0, &mut out)?;
        out.truncate(n);
        Ok(out)
    }
}

impl Records {
    fn read_at(&mut self, id: QueueId, offset: u64, out: &mut [u8]) -> Result<usize, SpoolError> {
        let mut filled = 0;
        // The extent holding `offset`: the last one starting at or before it.
        let mut index = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        while filled < out.len() && index < self.location.extents.len() {
            let extent = self.location.extents[index];
            let start = self.starts[index];
            let at = offset + filled as u64;
            if at >= start + extent.message_len() {
                index += 1;
                continue;
            }
            let within = (at - start) as usize + extent.skip as usize;
            let payload = self.load(id, index)?;
            let n = (out.len() - filled).min(payload.len() - within);
            out[filled..filled + n].copy_from_slice(&payload[within..within + n]);
            filled += n;
            index += 1;
        }
        Ok(filled)
    }

    /// The payload of extent `index`, read and checked unless it is the one
    /// loaded last.
    fn load(&mut self, id: QueueId, index: usize) -> Result<&[u8], SpoolError> {
        let cached = matches!(&self.loaded, Some((i, _)) if *i == index);
        if !cached {
            let mut payload = match self.loaded.take() {
                Some((_, buf)) => buf,
                None => Vec::new(),
            };
            self.segments
                .read_record(id, &self.location.extents[index], &mut payload)?;
            self.loaded = Some((index, payload));
        }
        match &self.loaded {
            Some((_, payload)) => Ok(payload),
            None => Ok(&[]),
        }
    }
}

impl std::io::Read for MessageReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self
            .read_at(self.position, buf)
            .map_err(std::io::Error::other)?;
        self.position += n as u64;
        Ok(n)
    }
}
