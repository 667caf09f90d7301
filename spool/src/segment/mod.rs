//! Message bytes in append-only segment files, `segments/<16 hex digits>.seg`
//! in the spool directory. Each message is written as one or more
//! checksummed records ([`record`]) at the end of the current segment; the
//! `messages` tree keeps only where they are ([`Location`]).
//!
//! - A segment rolls at the size limit; the new file's name is made durable
//!   with the next sync of the directory.
//! - Writes are not synced here: [`Segments::sync_pending`] fdatasyncs every
//!   segment written since its last call (and the directory if names changed)
//!   — the committer calls it before sled's flush, once per group commit.
//! - A segment is deleted once no live message has a record in it and it is
//!   not the one being written.
//! - At open every segment is scanned ([`scan`]): good records are listed
//!   for the spool to check its index against, a torn tail is truncated, and
//!   writing continues in a new segment.

pub(crate) mod location;
pub(crate) mod record;
mod scan;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

pub(crate) use location::{Extent, Location};
pub(crate) use record::MAX_PAYLOAD;
use record::{Header, HEADER_LEN};
pub(crate) use scan::GoodRecords;

use crate::error::SyncError;
use crate::{durable, QueueId, SpoolError};

/// Name of the directory holding the segment files.
pub(crate) const SEGMENTS_DIR: &str = "segments";

/// Start of every segment file; the segment number follows as a u64.
const SEGMENT_MAGIC: [u8; 8] = *b"SLUSEG01";
/// Bytes before the first record.
const SEGMENT_HEADER_LEN: u64 = 16;

/// Default size at which a segment rolls.
pub const DEFAULT_SEGMENT_LIMIT: u64 = 64 << 20;

/// The segment files of one spool.
pub(crate) struct Segments {
    dir: PathBuf,
    /// Size after which the next record goes into a new segment.
    limit: u64,
    /// The segment being appended to. Held across a message's writes, so a
    /// message's records are contiguous.
    writer: Mutex<Writer>,
    /// Every segment file by number, shared by readers (positioned reads
    /// need no lock) and kept open until the segment is reclaimed.
    files: RwLock<HashMap<u64, Arc<File>>>,
    /// Live records per segment and which segment is current, under one
    /// lock so that a roll and a release agree on when a segment may go.
    live: Mutex<Live>,
    /// What the next sync must cover.
    pending: Mutex<Pending>,
}

struct Writer {
    segment: u64,
    file: Arc<File>,
    /// Offset of the next record.
    end: u64,
}

#[derive(Default)]
struct Live {
    counts: HashMap<u64, u64>,
    current: u64,
}

#[derive(Default)]
struct Pending {
    /// Segments written since the last sync.
    files: HashMap<u64, Arc<File>>,
    /// Whether a segment was created or removed since the last sync.
    dir: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding it leaves plain data behind; go on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn segment_name(segment: u64) -> String {
    format!("{segment:016x}.seg")
}

/// The segment number of a file name this module wrote.
fn segment_number(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

impl Segments {
    /// Opens (creates) `<spool>/segments`, scans every segment and starts a
    /// new one to write to. Returns the good records found, for the spool to
    /// check its index against.
    pub(crate) fn open(
        spool_dir: &Path,
        limit: u64,
    ) -> Result<(Segments, GoodRecords), SpoolError> {
        let dir = spool_dir.join(SEGMENTS_DIR);
        durable::create_dir_all(&dir).map_err(SpoolError::io_at(&dir))?;
        let mut numbers = Vec::new();
        for item in std::fs::read_dir(&dir).map_err(SpoolError::io_at(&dir))? {
            let item = item.map_err(SpoolError::io_at(&dir))?;
            let name = item.file_name();
            match name.to_str().and_then(segment_number) {
                Some(n) => numbers.push(n),
                None => {
                    tracing::warn!(file = ?name, dir = %dir.display(), "ignoring a file that is not a segment")
                }
            }
        }
        numbers.sort_unstable();

        let mut files = HashMap::new();
        let mut good = GoodRecords::default();
        let mut removed_any = false;
        for &n in &numbers {
            let path = dir.join(segment_name(n));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(SpoolError::io_at(&path))?;
            match scan::segment(&file, &path, n, &mut good).map_err(SpoolError::io_at(&path))? {
                scan::Outcome::Usable => {
                    files.insert(n, Arc::new(file));
                }
                scan::Outcome::Empty => {
                    // Created just before a crash, header not yet written.
                    std::fs::remove_file(&path).map_err(SpoolError::io_at(&path))?;
                    removed_any = true;
                }
                scan::Outcome::Foreign => {
                    tracing::error!(path = %path.display(), "segment has no valid header; left alone");
                }
            }
        }

        let next = numbers.last().map_or(1, |n| n + 1);
        let file = create_segment(&dir, next)?;
        durable::sync_dir(&dir).map_err(SpoolError::io_at(&dir))?;
        let file = Arc::new(file);
        files.insert(next, Arc::clone(&file));
        let counts = files.keys().map(|&n| (n, 0)).collect();
        let segments = Segments {
            dir,
            limit: limit.max(SEGMENT_HEADER_LEN + HEADER_LEN + 1),
            writer: Mutex::new(Writer {
                segment: next,
                file,
                end: SEGMENT_HEADER_LEN,
            }),
            files: RwLock::new(files),
            live: Mutex::new(Live {
                counts,
                current: next,
            }),
            pending: Mutex::new(Pending {
                files: HashMap::new(),
                dir: removed_any,
            }),
        };
        Ok((segments, good))
    }

    /// Appends `bytes` as the records of message `id`; returns where they
    /// are. Not durable until the next [`Segments::sync_pending`].
    pub(crate) fn append(&self, id: QueueId, bytes: &[u8]) -> Result<Location, SpoolError> {
        let mut location = Location::default();
        let mut writer = lock(&self.writer);
        for chunk in bytes.chunks(MAX_PAYLOAD) {
            match self.append_record(&mut writer, id, chunk) {
                Ok(extent) => location.extents.push(extent),
                Err(e) => {
                    drop(writer);
                    self.release(&location);
                    return Err(e);
                }
            }
        }
        Ok(location)
    }

    /// Appends one record of message `id` (at most [`MAX_PAYLOAD`] octets).
    /// Records of messages staged concurrently interleave; each message's
    /// location lists its own. Not durable until the next
    /// [`Segments::sync_pending`].
    pub(crate) fn append_one(&self, id: QueueId, payload: &[u8]) -> Result<Extent, SpoolError> {
        let mut writer = lock(&self.writer);
        self.append_record(&mut writer, id, payload)
    }

    fn append_record(
        &self,
        writer: &mut Writer,
        id: QueueId,
        payload: &[u8],
    ) -> Result<Extent, SpoolError> {
        let header = Header::for_payload(id.as_u64(), payload);
        if writer.end > SEGMENT_HEADER_LEN && writer.end + header.record_len() > self.limit {
            self.roll(writer)?;
        }
        let offset = writer.end;
        let write = |buf: &[u8], at: u64| {
            writer
                .file
                .write_all_at(buf, at)
                .map_err(|source| SpoolError::Segment {
                    path: self.path(writer.segment),
                    source,
                })
        };
        write(&header.encode(), offset)?;
        write(payload, offset + HEADER_LEN)?;
        writer.end += header.record_len();
        lock(&self.pending)
            .files
            .entry(writer.segment)
            .or_insert_with(|| Arc::clone(&writer.file));
        *lock(&self.live).counts.entry(writer.segment).or_insert(0) += 1;
        Ok(Extent {
            segment: writer.segment,
            offset,
            len: header.len,
            crc: header.crc,
            skip: 0,
        })
    }

    /// Starts the next segment; the one left behind goes if nothing in it
    /// is live.
    fn roll(&self, writer: &mut Writer) -> Result<(), SpoolError> {
        let next = writer.segment + 1;
        let file = create_segment(&self.dir, next)?;
        let file = Arc::new(file);
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(next, Arc::clone(&file));
        {
            let mut pending = lock(&self.pending);
            pending.files.insert(next, Arc::clone(&file));
            pending.dir = true;
        }
        let previous = writer.segment;
        *writer = Writer {
            segment: next,
            file,
            end: SEGMENT_HEADER_LEN,
        };
        let mut live = lock(&self.live);
        live.current = next;
        live.counts.entry(next).or_insert(0);
        if live.counts.get(&previous) == Some(&0) {
            live.counts.remove(&previous);
            drop(live);
            self.reclaim(previous);
        }
        Ok(())
    }

    /// Reads a message back whole, checking every record against its
    /// location.
    pub(crate) fn read(&self, id: QueueId, location: &Location) -> Result<Vec<u8>, SpoolError> {
        let total = usize::try_from(location.len()).map_err(|_| SpoolError::Corrupt {
            id,
            reason: "message length does not fit in memory".into(),
        })?;
        let mut out = Vec::with_capacity(total);
        let mut payload = Vec::new();
        for extent in &location.extents {
            self.read_record(id, extent, &mut payload)?;
            out.extend_from_slice(&payload[extent.skip as usize..]);
        }
        Ok(out)
    }

    /// Reads one record's whole payload into `out` and checks it against
    /// its extent.
    pub(crate) fn read_record(
        &self,
        id: QueueId,
        extent: &Extent,
        out: &mut Vec<u8>,
    ) -> Result<(), SpoolError> {
        let corrupt = |reason: String| SpoolError::Corrupt { id, reason };
        let file = self
            .files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&extent.segment)
            .cloned()
            .ok_or_else(|| corrupt(format!("segment {} is gone", extent.segment)))?;
        let io = |source| SpoolError::Segment {
            path: self.path(extent.segment),
            source,
        };
        let mut raw = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut raw, extent.offset).map_err(io)?;
        let header = Header::decode(&raw)
            .ok_or_else(|| corrupt(format!("no record at {}:{}", extent.segment, extent.offset)))?;
        let expected = Header {
            id: id.as_u64(),
            len: extent.len,
            crc: extent.crc,
        };
        if header != expected || extent.skip > extent.len {
            return Err(corrupt(format!(
                "record at {}:{} is not this message's",
                extent.segment, extent.offset
            )));
        }
        out.resize(extent.len as usize, 0);
        file.read_exact_at(out, extent.offset + HEADER_LEN)
            .map_err(io)?;
        if !header.matches(out) {
            return Err(corrupt(format!(
                "record at {}:{} fails its checksum",
                extent.segment, extent.offset
            )));
        }
        Ok(())
    }

    /// Counts a recovered message's records as live (at open).
    pub(crate) fn retain(&self, location: &Location) {
        let mut live = lock(&self.live);
        for extent in &location.extents {
            *live.counts.entry(extent.segment).or_insert(0) += 1;
        }
    }

    /// A message's records are no longer needed; segments left with nothing
    /// live (other than the current one) are deleted.
    pub(crate) fn release(&self, location: &Location) {
        let mut emptied = Vec::new();
        {
            let mut live = lock(&self.live);
            for extent in &location.extents {
                let Some(count) = live.counts.get_mut(&extent.segment) else {
                    continue;
                };
                *count = count.saturating_sub(1);
                if *count == 0 && extent.segment != live.current {
                    live.counts.remove(&extent.segment);
                    emptied.push(extent.segment);
                }
            }
        }
        for segment in emptied {
            self.reclaim(segment);
        }
    }

    /// Deletes every segment that holds nothing live (at open, once the
    /// index has been checked).
    pub(crate) fn reclaim_unused(&self) {
        let unused: Vec<u64> = {
            let mut live = lock(&self.live);
            let current = live.current;
            let unused = live
                .counts
                .iter()
                .filter(|&(&n, &c)| c == 0 && n != current)
                .map(|(&n, _)| n)
                .collect::<Vec<_>>();
            for n in &unused {
                live.counts.remove(n);
            }
            unused
        };
        for segment in unused {
            self.reclaim(segment);
        }
    }

    fn reclaim(&self, segment: u64) {
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&segment);
        let path = self.path(segment);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::debug!(segment, "segment reclaimed");
                lock(&self.pending).dir = true;
            }
            Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot remove segment"),
        }
    }

    /// fdatasyncs every segment written since the last call, and the
    /// directory if a segment was created or removed: afterwards everything
    /// appended before the call is on disk.
    pub(crate) fn sync_pending(&self) -> Result<(), SyncError> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        for (segment, file) in pending.files {
            file.sync_data()
                .map_err(|e| SyncError::file(self.path(segment), e))?;
        }
        if pending.dir {
            durable::sync_dir(&self.dir).map_err(|e| SyncError::file(self.dir.clone(), e))?;
        }
        Ok(())
    }

    /// Number of segment files.
    pub(crate) fn count(&self) -> usize {
        self.files.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(segment_name(segment))
    }
}

/// Creates segment `n` (never over an existing file) with its header.
fn create_segment(dir: &Path, n: u64) -> Result<File, SpoolError> {
    let path = dir.join(segment_name(n));
    let io = |source| SpoolError::Segment {
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io)?;
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..].copy_from_slice(&n.to_be_bytes());
    file.write_all_at(&header, 0).map_err(io)?;
    Ok(file)
}
