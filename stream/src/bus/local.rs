//! `local://PATH`: the embedded bus, a durable partitioned log in a directory.
//!
//! ```text
//! PATH/bus.json                      {"partitions": N}: fixed when the bus is created
//! PATH/id                            the log's identity (16 hex digits), made with the bus
//! PATH/LOCK                          held (flock) by the one process producing
//! PATH/p-0003/00000000000000000000.log   segments of partition 3, named by first offset
//! PATH/consumers/<group>/p-0003      the stored position of a consumer group
//! ```
//!
//! A segment is a sequence of records `[len u32][crc32 u32][offset u64][append ms i64]
//! [key len u32][key][value]` (little-endian; the CRC covers everything after itself). Segments
//! roll at 64 MiB. Readers in any process read while the writer appends: a record is returned
//! only when it is complete and its CRC matches, so a half-written tail is never seen. After a
//! crash (even `kill -9` mid-write) the next producer cuts the last segment at its last whole
//! record before appending, so a torn tail is detected and cut, never returned.
//!
//! Durability: with `?fsync=always` (the default) a produce returns after `fdatasync`;
//! with `?fsync=never`, after the write reaches the page cache (survives a process crash,
//! not a power cut).
//!
//! One file (~780 lines), on purpose: the segment format, the recovery of a torn tail, the produce
//! path and the fetch path share the segments and their locks, and together keep one invariant (no
//! gap, no duplicate, nothing acknowledged lost); they are reviewed as one.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{Bus, Position, Record, partition_for};
use tandem_common::bus::{Error, Result};

/// Bytes after which a segment is sealed and the next one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 8;
const BODY_FIXED: usize = 20;
/// How often a waiting fetch looks for records appended by another process (records appended
/// by this process wake it at once). An idle look is two `stat`s (`Inner::nothing_new`); 5 ms keeps
/// a `tandem serve` → `tandem stream run` hop well inside the freshness budget.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    partitions: u32,
}

/// The embedded bus. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

/// The most record bytes one fetch hands out (at least one record, whatever its size): a
/// consumer's memory per fetch is bounded by bytes, not only by its count of records (4,096
/// records of 440 KB each were 1.8 GB).
pub const FETCH_BYTES: usize = 8 << 20;

struct Inner {
    dir: PathBuf,
    partitions: u32,
    /// The log's identity (`PATH/id`).
    id: String,
    fsync: bool,
    segment_bytes: u64,
    /// Opened at the first produce: the lock and each partition's open segment.
    writer: Mutex<Option<Writer>>,
    notify: Vec<Notify>,
    /// Per partition: where reads ended, next offset → (segment base, byte position).
    cursors: Vec<Mutex<HashMap<u64, (u64, u64)>>>,
    /// Tests: bytes the disk has left (a write past them writes what fits, then fails).
    #[cfg(test)]
    space: Mutex<Option<u64>>,
}

struct Writer {
    _lock: File,
    parts: Vec<PartWriter>,
}

struct PartWriter {
    file: File,
    base: u64,
    next: u64,
    size: u64,
}

impl LocalBus {
    /// Opens `local://PATH[?fsync=always|never]`.
    pub fn open_url(url: &str, partitions: u32) -> Result<LocalBus> {
        let rest = url
            .strip_prefix("local://")
            .ok_or_else(|| Error::Config(format!("bus `{url}`: expected local://PATH")))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut fsync = true;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv {
                "fsync=always" => fsync = true,
                "fsync=never" => fsync = false,
                other => {
                    return Err(Error::Config(format!(
                        "bus `{url}`: unknown option `{other}`; expected fsync=always or fsync=never"
                    )));
                }
            }
        }
        if path.is_empty() {
            return Err(Error::Config(format!("bus `{url}`: local:// needs a path")));
        }
        Self::open(Path::new(path), partitions, fsync, DEFAULT_SEGMENT_BYTES)
    }

    /// Opens (creating if needed) the bus in `dir`. A bus keeps the partition count it was
    /// created with; opening it with another count is an error.
    pub fn open(dir: &Path, partitions: u32, fsync: bool, segment_bytes: u64) -> Result<LocalBus> {
        if partitions == 0 {
            return Err(Error::Config("a bus needs at least one partition".into()));
        }
        fs::create_dir_all(dir)?;
        let meta_path = dir.join("bus.json");
        match fs::read(&meta_path) {
            Ok(bytes) => {
                let meta: Meta = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Corrupt(format!("{}: {e}", meta_path.display())))?;
                if meta.partitions != partitions {
                    return Err(Error::Config(format!(
                        "the bus at {} has {} partitions, not {partitions}; \
                         a bus cannot be repartitioned in place",
                        dir.display(),
                        meta.partitions
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(
                    &meta_path,
                    &serde_json::to_vec(&Meta { partitions })
                        .map_err(|e| Error::Internal(e.to_string()))?,
                )?;
            }
            Err(e) => return Err(e.into()),
        }
        for p in 0..partitions {
            fs::create_dir_all(part_dir(dir, p))?;
        }
        let id = read_or_make_id(dir)?;
        Ok(LocalBus {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                partitions,
                id,
                fsync,
                segment_bytes,
                writer: Mutex::new(None),
                notify: (0..partitions).map(|_| Notify::new()).collect(),
                cursors: (0..partitions)
                    .map(|_| Mutex::new(HashMap::new()))
                    .collect(),
                #[cfg(test)]
                space: Mutex::new(None),
            }),
        })
    }

    /// The bus directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn check_partition(&self, partition: u32) -> Result<()> {
        if partition < self.inner.partitions {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "partition {partition} does not exist; the bus has {}",
                self.inner.partitions
            )))
        }
    }
}

/// The bus's identity in `dir/id`, made when missing (a bus made before identities gets one
/// at its first open). The file is created exclusively, so processes opening the bus at once
/// agree on the first one written.
fn read_or_make_id(dir: &Path) -> Result<String> {
    let path = dir.join("id");
    loop {
        match fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
            // Another process is writing it.
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                let seed = super::fnv1a(&[
                    &nanos.to_le_bytes(),
                    &std::process::id().to_le_bytes(),
                    dir.as_os_str().as_encoded_bytes(),
                ]);
                match OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(mut f) => {
                        let id = format!("{seed:016x}");
                        f.write_all(id.as_bytes())?;
                        f.sync_all()?;
                        return Ok(id);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn part_dir(dir: &Path, p: u32) -> PathBuf {
    dir.join(format!("p-{p:04}"))
}

fn segment_path(dir: &Path, p: u32, base: u64) -> PathBuf {
    part_dir(dir, p).join(format!("{base:020}.log"))
}

/// Segment base offsets of a partition, ascending.
fn segments(dir: &Path, p: u32) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(part_dir(dir, p))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name
            .strip_suffix(".log")
            .and_then(|b| b.parse::<u64>().ok())
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)?;
    Ok(())
}

fn encode(out: &mut Vec<u8>, offset: u64, ts: i64, key: &[u8], value: &[u8]) {
    let body_len = BODY_FIXED + key.len() + value.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One whole record at the start of `buf`: (offset, ts, key range, value range, length).
/// `None` when `buf` does not start with a whole record whose CRC matches.
struct Decoded {
    offset: u64,
    ts: i64,
    key: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
    len: usize,
}

fn decode(buf: &[u8]) -> Option<Decoded> {
    if buf.len() < HEADER + BODY_FIXED {
        return None;
    }
    let body_len = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    if body_len < BODY_FIXED || buf.len() < HEADER + body_len {
        return None;
    }
    let body = &buf[HEADER..HEADER + body_len];
    if crc32fast::hash(body) != crc {
        return None;
    }
    let offset = u64::from_le_bytes(body[0..8].try_into().ok()?);
    let ts = i64::from_le_bytes(body[8..16].try_into().ok()?);
    let key_len = u32::from_le_bytes(body[16..20].try_into().ok()?) as usize;
    if BODY_FIXED + key_len > body_len {
        return None;
    }
    let k = HEADER + BODY_FIXED;
    Some(Decoded {
        offset,
        ts,
        key: k..k + key_len,
        value: k + key_len..HEADER + body_len,
        len: HEADER + body_len,
    })
}

/// Whether `buf` starts with a record whose bytes are all there but do not check out, with more
/// bytes after it: not a tail being written (which a reader waits for) but a damaged log.
fn corrupt_before_more(buf: &[u8]) -> bool {
    if buf.len() < HEADER + BODY_FIXED {
        return false;
    }
    let body_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    buf.len() > HEADER + body_len.max(BODY_FIXED) && decode(buf).is_none()
}

/// Scans a segment from its start: (valid length, records, whether a damaged record with more
/// data after it ends them) — stops at the first record that is incomplete, fails its CRC, or
/// breaks the offset sequence.
fn scan_valid(file: &mut File, base: u64) -> Result<(u64, u64, bool)> {
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let (mut pos, mut n) = (0usize, 0u64);
    while let Some(d) = decode(&buf[pos..]) {
        if d.offset != base + n {
            return Ok((pos as u64, n, true));
        }
        pos += d.len;
        n += 1;
    }
    Ok((pos as u64, n, corrupt_before_more(&buf[pos..])))
}

impl Inner {
    /// Takes the producer lock and recovers every partition's tail.
    fn open_writer(&self) -> Result<Writer> {
        use fs4::fs_std::FileExt as _;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("LOCK"))?;
        if !lock.try_lock_exclusive()? {
            return Err(Error::Config(format!(
                "another process is producing to the bus at {}; a local:// bus has one producer process",
                self.dir.display()
            )));
        }
        let mut parts = Vec::with_capacity(self.partitions as usize);
        for p in 0..self.partitions {
            let bases = segments(&self.dir, p)?;
            let base = bases.last().copied().unwrap_or(0);
            let path = segment_path(&self.dir, p, base);
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .append(true)
                .open(&path)?;
            let len = file.metadata()?.len();
            let (valid, n, damaged) = scan_valid(&mut file, base)?;
            if damaged {
                // Not a torn tail (a crash leaves one at the end only): cutting would drop the
                // records after the damage, acknowledged ones among them.
                return Err(Error::Corrupt(format!(
                    "partition {p}: segment {} is damaged at byte {valid} (offset {}) with data after it; it is left as it is",
                    path.display(),
                    base + n
                )));
            }
            if valid < len {
                tracing::warn!(
                    partition = p,
                    segment = %path.display(),
                    cut_bytes = len - valid,
                    "Cut a torn tail left by an interrupted write."
                );
                file.set_len(valid)?;
                file.sync_all()?;
            }
            parts.push(PartWriter {
                file,
                base,
                next: base + n,
                size: valid,
            });
        }
        Ok(Writer { _lock: lock, parts })
    }

    fn produce_blocking(&self, records: Vec<(Bytes, Bytes)>) -> Result<Vec<Position>> {
        let mut guard = self
            .writer
            .lock()
            .map_err(|_| Error::Internal("bus writer lock poisoned".into()))?;
        if guard.is_none() {
            *guard = Some(self.open_writer()?);
        }
        let writer = guard.as_mut().expect("opened above");
        let placed = match self.write_records(writer, &records) {
            Ok(placed) => placed,
            Err(e) => {
                // The writer is dropped: the next produce reopens every partition's tail, cuts
                // what this one tore and appends after the last whole record, at the offset
                // that follows it. (Kept, it would append after the torn bytes, where no reader
                // gets past them and a restart cuts everything after them.) Whole records this
                // produce wrote before failing stay: readers may have read them already, so
                // their offsets are never given again; none is acknowledged, and the client's
                // retry is a duplicate by event id, which the speed layer and the batch skip.
                *guard = None;
                return Err(e);
            }
        };
        drop(guard);
        let mut touched = vec![false; self.partitions as usize];
        for pos in &placed {
            touched[pos.partition as usize] = true;
        }
        for (p, _) in touched.iter().enumerate().filter(|(_, t)| **t) {
            self.notify[p].notify_waiters();
        }
        Ok(placed)
    }

    /// Appends `records` to their partitions' open segments: their positions.
    fn write_records(
        &self,
        writer: &mut Writer,
        records: &[(Bytes, Bytes)],
    ) -> Result<Vec<Position>> {
        let ts = tandem_common::event::now_ms();
        let mut by_part: Vec<Vec<usize>> = vec![Vec::new(); self.partitions as usize];
        for (i, (key, _)) in records.iter().enumerate() {
            by_part[partition_for(key, self.partitions) as usize].push(i);
        }
        let mut placed = vec![
            Position {
                partition: 0,
                offset: 0
            };
            records.len()
        ];
        let mut buf = Vec::new();
        for (p, idx) in by_part.iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            let pw = &mut writer.parts[p];
            buf.clear();
            for &i in idx {
                if pw.size + buf.len() as u64 >= self.segment_bytes && !buf.is_empty() {
                    self.append(pw, &buf)?;
                    buf.clear();
                }
                if pw.size >= self.segment_bytes {
                    self.roll(p as u32, pw)?;
                }
                let (key, value) = &records[i];
                encode(&mut buf, pw.next, ts, key, value);
                placed[i] = Position {
                    partition: p as u32,
                    offset: pw.next,
                };
                pw.next += 1;
            }
            self.append(pw, &buf)?;
        }
        Ok(placed)
    }

    fn append(&self, pw: &mut PartWriter, buf: &[u8]) -> Result<()> {
        #[cfg(test)]
        if let Some(left) = self
            .space
            .lock()
            .ok()
            .as_deref_mut()
            .and_then(Option::as_mut)
        {
            if (buf.len() as u64) > *left {
                pw.file.write_all(&buf[..*left as usize])?;
                *left = 0;
                return Err(std::io::Error::from_raw_os_error(28).into()); // ENOSPC
            }
            *left -= buf.len() as u64;
        }
        pw.file.write_all(buf)?;
        if self.fsync {
            pw.file.sync_data()?;
        }
        pw.size += buf.len() as u64;
        Ok(())
    }

    fn roll(&self, p: u32, pw: &mut PartWriter) -> Result<()> {
        pw.file.sync_all()?;
        let path = segment_path(&self.dir, p, pw.next);
        pw.file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&path)?;
        pw.base = pw.next;
        pw.size = 0;
        Ok(())
    }

    /// Whether a read at `offset` would surely find nothing: a read ended there (its cursor
    /// is cached), no whole record has been appended to that segment since, and no segment
    /// starts at `offset`. Two `stat`s of local files, so a waiting fetch polls on its async
    /// thread instead of hopping to the blocking pool (and listing the directory) every POLL.
    fn nothing_new(&self, p: u32, offset: u64) -> bool {
        let cached = self.cursors[p as usize]
            .lock()
            .ok()
            .and_then(|c| c.get(&offset).copied());
        let Some((base, pos)) = cached else {
            return false;
        };
        // A segment not there yet (an empty partition's first) has had nothing appended.
        let grown = match fs::metadata(segment_path(&self.dir, p, base)) {
            Ok(m) => m.len() >= pos + HEADER as u64,
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        };
        !grown && (base == offset || !segment_path(&self.dir, p, offset).exists())
    }

    fn read_blocking(&self, p: u32, offset: u64, max: usize) -> Result<Vec<Record>> {
        let bases = segments(&self.dir, p)?;
        let Some(seg_idx) = bases.iter().rposition(|b| *b <= offset) else {
            if bases.is_empty()
                && offset == 0
                && let Ok(mut c) = self.cursors[p as usize].lock()
            {
                // An empty partition: its first segment will start at 0 (see `nothing_new`).
                c.insert(0, (0, 0));
            }
            return Ok(Vec::new());
        };
        let cached = self.cursors[p as usize]
            .lock()
            .ok()
            .and_then(|c| c.get(&offset).copied());
        let (mut base, mut pos, mut seg_idx) = match cached {
            Some((base, pos)) => (
                base,
                pos,
                bases.iter().position(|b| *b == base).unwrap_or(seg_idx),
            ),
            None => (bases[seg_idx], 0, seg_idx),
        };
        let mut out = Vec::new();
        let mut taken = 0;
        let mut next = if cached.is_some() { offset } else { base };
        let mut buf = vec![0u8; 256 << 10];
        'segments: loop {
            let file = match File::open(segment_path(&self.dir, p, base)) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(e.into()),
            };
            loop {
                let n = read_at_least(&file, &mut buf, pos)?;
                let mut at = 0;
                let mut progressed = false;
                while let Some(d) = decode(&buf[at..n]) {
                    if d.offset != next {
                        return Err(Error::Corrupt(format!(
                            "partition {p}: expected offset {next} at byte {} of segment {base}, found {}",
                            pos + at as u64,
                            d.offset
                        )));
                    }
                    if next >= offset {
                        taken += d.len;
                        out.push(Record {
                            partition: p,
                            offset: d.offset,
                            timestamp_ms: d.ts,
                            key: Bytes::copy_from_slice(&buf[at..][d.key.clone()]),
                            value: Bytes::copy_from_slice(&buf[at..][d.value.clone()]),
                        });
                    }
                    next += 1;
                    at += d.len;
                    progressed = true;
                    if out.len() >= max || taken >= FETCH_BYTES {
                        pos += at as u64;
                        break 'segments;
                    }
                }
                if corrupt_before_more(&buf[at..n]) {
                    return Err(Error::Corrupt(format!(
                        "partition {p}: the record at byte {} of segment {base} (offset {next}) is damaged and more data follows it",
                        pos + at as u64
                    )));
                }
                pos += at as u64;
                if progressed && n == buf.len() {
                    continue; // the buffer was full: read on
                }
                if !progressed && n >= HEADER {
                    // A record larger than the buffer: grow it and read again.
                    let body_len =
                        u32::from_le_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
                    if HEADER + body_len > buf.len() && n == buf.len() {
                        buf.resize(HEADER + body_len, 0);
                        continue;
                    }
                }
                // No more whole records here: move on if a newer segment starts where we are.
                if seg_idx + 1 < bases.len() && bases[seg_idx + 1] == next {
                    seg_idx += 1;
                    base = bases[seg_idx];
                    pos = 0;
                    continue 'segments;
                }
                break 'segments;
            }
        }
        if let Ok(mut c) = self.cursors[p as usize].lock() {
            if c.len() > 1024 {
                c.clear();
            }
            c.insert(next, (base, pos));
        }
        Ok(out)
    }
}

/// Reads into `buf` from `pos` until it is full or the file ends; returns the bytes read.
fn read_at_least(file: &File, buf: &mut [u8], pos: u64) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = file.read_at(&mut buf[n..], pos + n as u64)?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

fn check_group(group: &str) -> Result<()> {
    if !group.is_empty()
        && group.len() <= 64
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !group.starts_with('.')
    {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "consumer group `{group}`: use 1–64 of A-Z a-z 0-9 - _ ."
        )))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("bus task failed: {e}")))?
}

#[async_trait]
impl Bus for LocalBus {
    fn partitions(&self) -> u32 {
        self.inner.partitions
    }

    async fn produce(&self, records: Vec<(Bytes, Bytes)>) -> Result<Vec<Position>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        blocking(move || inner.produce_blocking(records)).await
    }

    async fn fetch(
        &self,
        partition: u32,
        offset: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>> {
        self.check_partition(partition)?;
        let deadline = Instant::now() + wait;
        loop {
            // Register for a wake-up before reading, so a produce in between is not missed.
            let notified = self.inner.notify[partition as usize].notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let records = if self.inner.nothing_new(partition, offset) {
                Vec::new()
            } else {
                let inner = self.inner.clone();
                blocking(move || inner.read_blocking(partition, offset, max.max(1))).await?
            };
            let now = Instant::now();
            if !records.is_empty() || now >= deadline {
                return Ok(records);
            }
            let nap = POLL.min(deadline - now);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn end_offset(&self, partition: u32) -> Result<u64> {
        self.check_partition(partition)?;
        if let Ok(guard) = self.inner.writer.lock()
            && let Some(w) = guard.as_ref()
        {
            return Ok(w.parts[partition as usize].next);
        }
        let inner = self.inner.clone();
        blocking(move || {
            let bases = segments(&inner.dir, partition)?;
            let Some(&base) = bases.last() else {
                return Ok(0);
            };
            let mut file = File::open(segment_path(&inner.dir, partition, base))?;
            Ok(base + scan_valid(&mut file, base)?.1)
        })
        .await
    }

    async fn log_id(&self, partition: u32) -> Result<Option<String>> {
        self.check_partition(partition)?;
        Ok(Some(self.inner.id.clone()))
    }

    async fn committed(&self, group: &str, partition: u32) -> Result<Option<u64>> {
        check_group(group)?;
        self.check_partition(partition)?;
        let path = self
            .inner
            .dir
            .join("consumers")
            .join(group)
            .join(format!("p-{partition:04}"));
        match fs::read_to_string(&path) {
            Ok(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn commit(&self, group: &str, partition: u32, next_offset: u64) -> Result<()> {
        check_group(group)?;
        self.check_partition(partition)?;
        let dir = self.inner.dir.join("consumers").join(group);
        blocking(move || {
            fs::create_dir_all(&dir)?;
            write_atomic(
                &dir.join(format!("p-{partition:04}")),
                next_offset.to_string().as_bytes(),
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests;
