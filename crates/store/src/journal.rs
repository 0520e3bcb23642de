//! `Journal`: a write-ahead log on one pre-allocated local file, for bytes that must be durable
//! sooner than an object can be made so.
//!
//! Making a new object durable on a local directory takes three rounds of fsync (the bytes and
//! the retention file, the retention file's name, the object's name). Appending to a file whose
//! blocks are already allocated and written takes one `fdatasync`, which commits no metadata —
//! what `pg_receivewal --synchronous` pays per write, since it pads each segment file with
//! zeros when it creates it. The collector's synchronous mode appends each WAL piece here
//! before it tells PostgreSQL the WAL is flushed, and folds the journal's pieces into ordinary
//! objects a little later; after a crash it stores as objects whatever the journal holds.
//!
//! Layout: a 24-byte header (`HFJOURN1`, the generation as u64 LE, and the offset of the first
//! live frame as u64 LE) and frames from byte 24: `HFJF`, the generation (u64 LE), the length
//! (u32 LE), the first 16 bytes of BLAKE3 over generation, length and content, then the content.
//! [`Journal::release_before`] moves the first live frame forward (frames before it are stored
//! elsewhere), or, when nothing is left, starts a new generation and appends from byte 24 again;
//! either is one header write, made durable by the next append's `fdatasync`. Frames of an older generation left further on are
//! never read back, and a frame torn by a crash fails its hash, which ends the journal there. The journal is not an object: it is overwritten in place, never
//! listed, and holds nothing the store does not also get as objects; callers seal what they write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::backend::StoreError;

const FILE_MAGIC: &[u8; 8] = b"HFJOURN1";
const FRAME_MAGIC: &[u8; 4] = b"HFJF";
const HEADER: u64 = 24;
const FRAME_HEADER: u64 = 4 + 8 + 4 + 16;

/// An append-only log on one pre-allocated file (see the module docs).
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    capacity: u64,
    generation: u64,
    offset: u64,
}

fn header(generation: u64, live_from: u64) -> [u8; HEADER as usize] {
    let mut head = [0u8; HEADER as usize];
    head[..8].copy_from_slice(FILE_MAGIC);
    head[8..16].copy_from_slice(&generation.to_le_bytes());
    head[16..].copy_from_slice(&live_from.to_le_bytes());
    head
}

fn frame_hash(generation: u64, content: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&generation.to_le_bytes());
    h.update(&(content.len() as u32).to_le_bytes());
    h.update(content);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

impl Journal {
    /// Opens the journal at `path`, creating it `capacity` bytes long (written with zeros and
    /// fsynced, so that appends allocate nothing) if it does not exist. Returns it with the
    /// frames of its current generation, oldest first: what was appended and not yet reset.
    /// Appends continue after them.
    pub fn open(path: &Path, capacity: u64) -> Result<(Journal, Vec<Vec<u8>>), StoreError> {
        let io = |what: &str, e: io::Error| StoreError::io(format!("{what} {}", path.display()), e);
        if !path.exists() {
            Self::create(path, capacity)?;
        }
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| io("opening", e))?;
        let len = file.metadata().map_err(|e| io("reading", e))?.len();
        let mut head = [0u8; HEADER as usize];
        file.read_exact_at(&mut head, 0).map_err(|e| io("reading", e))?;
        if &head[..8] != FILE_MAGIC {
            return Err(io("reading", io::Error::other("not a holdfast journal")));
        }
        let generation = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let live_from = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes")).clamp(HEADER, len);
        let mut frames = Vec::new();
        let mut offset = live_from;
        while offset + FRAME_HEADER <= len {
            let mut fh = [0u8; FRAME_HEADER as usize];
            file.read_exact_at(&mut fh, offset).map_err(|e| io("reading", e))?;
            let gen_ = u64::from_le_bytes(fh[4..12].try_into().expect("8 bytes"));
            let n = u32::from_le_bytes(fh[12..16].try_into().expect("4 bytes")) as u64;
            if &fh[..4] != FRAME_MAGIC || gen_ != generation || offset + FRAME_HEADER + n > len {
                break;
            }
            let mut content = vec![0u8; n as usize];
            file.read_exact_at(&mut content, offset + FRAME_HEADER).map_err(|e| io("reading", e))?;
            if fh[16..32] != frame_hash(generation, &content) {
                break; // torn by a crash: the journal ends here
            }
            frames.push(content);
            offset += FRAME_HEADER + n;
        }
        let journal = Journal { file, path: path.to_path_buf(), capacity: len, generation, offset };
        Ok((journal, frames))
    }

    /// Writes a zero-filled journal next to `path`, fsyncs it, and names it (directory fsynced).
    fn create(path: &Path, capacity: u64) -> Result<(), StoreError> {
        let dir = path.parent().expect("journal path has a parent");
        fs::create_dir_all(dir).map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        // A fixed name: one left by a failed creation is overwritten by the next one, never
        // removed (nothing but retention removes files in a store's directory).
        let tmp = path.with_extension("new");
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            f.write_all(&header(1, HEADER))?;
            let zeros = vec![0u8; 1 << 20];
            let mut left = capacity.max(HEADER + FRAME_HEADER) - HEADER;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            f.sync_all()?;
            fs::rename(&tmp, path)
        };
        write().map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
        crate::local::sync_dir(dir)
    }

    /// Whether a frame of `len` content bytes still fits.
    pub fn fits(&self, len: usize) -> bool {
        self.fits_all(&[len])
    }

    /// Whether frames of these content lengths still fit, one after the other.
    pub fn fits_all(&self, lens: &[usize]) -> bool {
        let need: u64 = lens.iter().map(|&n| FRAME_HEADER + n as u64).sum();
        self.offset + need <= self.capacity
    }

    /// The most content one frame can hold in an empty journal.
    pub fn max_frame(&self) -> usize {
        (self.capacity - HEADER - FRAME_HEADER) as usize
    }

    /// Appends one frame and makes it durable (`fdatasync`) before returning.
    pub fn append(&mut self, content: &[u8]) -> Result<(), StoreError> {
        self.append_all(&[content]).map(|_| ())
    }

    /// Appends frames with one write and makes them durable with one `fdatasync` before
    /// returning: a group commit. A crash leaves a prefix of them (a torn frame ends the
    /// journal), never a later frame without an earlier one. Returns the [`Journal::mark`] after
    /// each frame, for releasing frames one by one.
    pub fn append_all(&mut self, contents: &[&[u8]]) -> Result<Vec<u64>, StoreError> {
        let lens: Vec<usize> = contents.iter().map(|c| c.len()).collect();
        if !self.fits_all(&lens) {
            return Err(StoreError::io(
                format!("appending to {}", self.path.display()),
                io::Error::other(format!("the journal is full ({} bytes)", self.capacity)),
            ));
        }
        let total: usize = lens.iter().map(|n| FRAME_HEADER as usize + n).sum();
        let mut frames = Vec::with_capacity(total);
        let mut marks = Vec::with_capacity(contents.len());
        for content in contents {
            frames.extend_from_slice(FRAME_MAGIC);
            frames.extend_from_slice(&self.generation.to_le_bytes());
            frames.extend_from_slice(&(content.len() as u32).to_le_bytes());
            frames.extend_from_slice(&frame_hash(self.generation, content));
            frames.extend_from_slice(content);
            marks.push(self.offset + frames.len() as u64);
        }
        self.file
            .write_all_at(&frames, self.offset)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| StoreError::io(format!("appending to {}", self.path.display()), e))?;
        self.offset += frames.len() as u64;
        Ok(marks)
    }

    /// Where the next frame goes: a mark for [`Journal::release_before`].
    pub fn mark(&self) -> u64 {
        self.offset
    }

    /// Forgets the frames appended before `mark` (taken with [`Journal::mark`]; call once they
    /// are stored elsewhere). When that is every frame, the journal is emptied (a new
    /// generation, appends from the start again).
    ///
    /// The header write is not synced by itself: the next append's `fdatasync` makes it durable
    /// with the frame (it flushes the whole file), before anything new is acknowledged. A crash
    /// before that may read released frames back — callers must tolerate frames they already
    /// stored (the collector skips WAL its objects hold) — but never a frame of the new
    /// generation without its header. So releasing costs the appends no fsync.
    pub fn release_before(&mut self, mark: u64) -> Result<(), StoreError> {
        let (generation, live_from) = if mark >= self.offset {
            (self.generation + 1, HEADER)
        } else {
            (self.generation, mark.max(HEADER))
        };
        self.file
            .write_all_at(&header(generation, live_from), 0)
            .map_err(|e| StoreError::io(format!("resetting {}", self.path.display()), e))?;
        if generation != self.generation {
            self.generation = generation;
            self.offset = HEADER;
        }
        Ok(())
    }

    /// Empties the journal (see [`Journal::release_before`]).
    pub fn reset(&mut self) -> Result<(), StoreError> {
        self.release_before(self.offset)
    }

    /// Whether nothing has been appended since the last reset.
    pub fn is_empty(&self) -> bool {
        self.offset == HEADER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_reopening_and_a_reset_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j/main.journal");
        let (mut j, frames) = Journal::open(&path, 4096).unwrap();
        assert!(frames.is_empty() && j.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096, "pre-allocated");
        j.append(b"one").unwrap();
        j.append(&[7u8; 1000]).unwrap();
        drop(j);
        let (mut j, frames) = Journal::open(&path, 4096).unwrap();
        assert_eq!(frames, vec![b"one".to_vec(), vec![7u8; 1000]]);
        // Appends go on after what was found.
        j.append(b"three").unwrap();
        drop(j);
        let (mut j, frames) = Journal::open(&path, 4096).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2], b"three");
        // After a reset, a shorter new frame does not bring the old ones back.
        j.reset().unwrap();
        j.append(b"four").unwrap();
        drop(j);
        let (mut j, frames) = Journal::open(&path, 4096).unwrap();
        assert_eq!(frames, vec![b"four".to_vec()]);
        // Releasing part of it: only later frames are read back, and appends go on after them.
        j.append(b"five").unwrap();
        let mark = j.mark();
        j.append(b"six").unwrap();
        j.release_before(mark).unwrap();
        drop(j);
        let (mut j, frames) = Journal::open(&path, 4096).unwrap();
        assert_eq!(frames, vec![b"six".to_vec()]);
        j.append(b"seven").unwrap();
        drop(j);
        let (mut j, frames) = Journal::open(&path, 4096).unwrap();
        assert_eq!(frames, vec![b"six".to_vec(), b"seven".to_vec()]);
        j.release_before(j.mark()).unwrap();
        assert!(j.is_empty(), "releasing everything empties it");
        assert!(!j.fits(4096));
        j.append(b"x").unwrap();
        assert!(j.append(&vec![0u8; j.max_frame()]).is_err(), "a full journal refuses, it never wraps");
        // Several frames in one append (one write, one fdatasync) read back as separate frames,
        // in order; a group that does not fit entirely writes none of them.
        let before = j.mark();
        let marks = j.append_all(&[b"eight", b"nine"]).unwrap();
        assert_eq!(marks, vec![before + FRAME_HEADER + 5, before + 2 * FRAME_HEADER + 9]);
        assert_eq!(j.mark(), marks[1]);
        let room = (4096 - j.mark() - 2 * FRAME_HEADER) as usize;
        assert!(j.append_all(&[b"ten", &vec![1u8; room]]).is_err());
        drop(j);
        let (_, frames) = Journal::open(&path, 4096).unwrap();
        assert_eq!(frames, vec![b"x".to_vec(), b"eight".to_vec(), b"nine".to_vec()]);
    }

    #[test]
    fn a_torn_frame_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("main.journal");
        let (mut j, _) = Journal::open(&path, 4096).unwrap();
        j.append(b"whole").unwrap();
        j.append(b"torn by a crash").unwrap();
        drop(j);
        // Flip a byte of the second frame's content, as a write cut short would leave it.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = (HEADER + FRAME_HEADER + 5 + FRAME_HEADER + 3) as usize;
        bytes[at] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let (_, frames) = Journal::open(&path, 4096).unwrap();
        assert_eq!(frames, vec![b"whole".to_vec()]);
    }
}
