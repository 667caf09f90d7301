//! Recovery of one segment at open: walk its records, keep the ones whose
//! checksum holds, skip a damaged one when its length still leads to the
//! next, and truncate the file where the chain ends (a torn tail: a write
//! cut short by a crash).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::record::{Header, HEADER_LEN, MAX_PAYLOAD};
use super::{SEGMENT_HEADER_LEN, SEGMENT_MAGIC};

/// Records that checked out, by (segment, offset).
#[derive(Debug, Default)]
pub(crate) struct GoodRecords {
    pub(crate) records: HashMap<(u64, u64), Header>,
    /// Records whose checksum failed.
    pub(crate) damaged: usize,
    /// Bytes cut off torn tails.
    pub(crate) truncated: u64,
}

/// What a segment file turned out to be.
pub(crate) enum Outcome {
    /// A segment; its good records were added.
    Usable,
    /// Shorter than its header: created just before a crash.
    Empty,
    /// A header that is not a segment's, or not this number's.
    Foreign,
}

pub(crate) fn segment(
    file: &File,
    path: &Path,
    number: u64,
    good: &mut GoodRecords,
) -> io::Result<Outcome> {
    let size = file.metadata()?.len();
    if size < SEGMENT_HEADER_LEN {
        return Ok(Outcome::Empty);
    }
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)?;
    if header[..8] != SEGMENT_MAGIC || header[8..] != number.to_be_bytes() {
        return Ok(Outcome::Foreign);
    }

    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut skip = [0u8; SEGMENT_HEADER_LEN as usize];
    reader.read_exact(&mut skip)?;
    let mut offset = SEGMENT_HEADER_LEN;
    let mut payload = Vec::new();
    while offset + HEADER_LEN <= size {
        let mut raw = [0u8; HEADER_LEN as usize];
        reader.read_exact(&mut raw)?;
        let Some(record) = Header::decode(&raw) else {
            break;
        };
        if record.len as usize > MAX_PAYLOAD || offset + record.record_len() > size {
            break;
        }
        payload.resize(record.len as usize, 0);
        reader.read_exact(&mut payload)?;
        if record.matches(&payload) {
            good.records.insert((number, offset), record);
        } else {
            good.damaged += 1;
            tracing::error!(path = %path.display(), offset, id = record.id, "segment record fails its checksum");
        }
        offset += record.record_len();
    }
    if offset < size {
        tracing::warn!(
            path = %path.display(),
            offset,
            bytes = size - offset,
            "truncating the torn tail of a segment"
        );
        file.set_len(offset)?;
        file.sync_all()?;
        good.truncated += size - offset;
    }
    Ok(Outcome::Usable)
}
