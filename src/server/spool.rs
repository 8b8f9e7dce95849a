//! Buffers that stay in memory up to a limit and then move to an anonymous temporary
//! file: request bodies being received (`inbuf_overflow`) and response bytes that a slow
//! client has not read yet (`outbuf_overflow`).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::budget::Budgets;

/// A complete request body, ready for the application.
#[derive(Clone, Debug)]
pub enum Body {
    Empty,
    Memory(Bytes),
    /// Spilled to an anonymous temporary file (already unlinked).
    File {
        file: Arc<File>,
        len: u64,
    },
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Memory(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads up to `buf.len()` bytes at `pos`; 0 at the end.
    pub fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Empty => Ok(0),
            Body::Memory(b) => {
                let start = usize::try_from(pos).unwrap_or(usize::MAX).min(b.len());
                let n = buf.len().min(b.len() - start);
                buf[..n].copy_from_slice(&b[start..start + n]);
                Ok(n)
            }
            Body::File { file, len } => {
                if pos >= *len {
                    return Ok(0);
                }
                let want = buf
                    .len()
                    .min(usize::try_from(*len - pos).unwrap_or(usize::MAX));
                file.read_at(&mut buf[..want], pos)
            }
        }
    }
}

/// Body buffers up to this size are kept for reuse...
const POOL_BUFFER_MAX: usize = 256 * 1024;
/// ...and this many of them at most.
const POOL_SIZE: usize = 32;

/// Memory of finished request bodies, kept for the next ones: a fresh buffer costs a
/// page fault per 4 KiB the first time it is written, which for mid-sized bodies is
/// more than the rest of receiving them.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer with room for at least `capacity` bytes, reused if one is free.
fn pooled_buffer(capacity: usize) -> Vec<u8> {
    if capacity == 0 || capacity > POOL_BUFFER_MAX {
        return Vec::with_capacity(capacity);
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    match pool.iter().position(|b| b.capacity() >= capacity) {
        Some(i) => pool.swap_remove(i),
        None => {
            drop(pool);
            Vec::with_capacity(capacity)
        }
    }
}

/// Returns a buffer to the pool (or frees it, if it is too big or the pool is full).
fn recycle(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > POOL_BUFFER_MAX {
        return;
    }
    buffer.clear();
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOL_SIZE {
        pool.push(buffer);
    }
}

/// A body buffer that goes back to the pool, and its bytes to the memory budget, when
/// the last `Bytes` over it is dropped.
struct Pooled {
    buffer: Vec<u8>,
    budgets: Arc<Budgets>,
    /// Bytes of the budget this buffer holds (its capacity).
    reserved: u64,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.budgets.inbuf_memory.give(self.reserved);
        recycle(std::mem::take(&mut self.buffer));
    }
}

/// Small pieces of a body in a file (the chunks of a chunked body) are staged and
/// written in batches of up to this size...
const FILE_STAGING: usize = 64 * 1024;
/// ...and pieces at least this large are written as they come.
const DIRECT_WRITE: usize = 8 * 1024;

/// Collects a request body as it is decoded: in memory while it stays under
/// `inbuf_overflow` and the server-wide memory budget lets it, otherwise in a
/// temporary file.
pub struct BodySpool {
    /// The body while in memory; once in a file, what is staged for the next write.
    mem: Vec<u8>,
    file: Option<File>,
    len: u64,
    /// The largest body kept in memory: `inbuf_overflow`, or 0 when the memory budget
    /// had no room for this one.
    overflow: usize,
    budgets: Arc<Budgets>,
    /// Bytes of the memory budget `mem` holds while the body is in memory (its capacity).
    reserved: u64,
}

impl BodySpool {
    /// `overflow`: the size at which the body moves to a temporary file.
    /// `expected`: the Content-Length, when known, to size the memory buffer once.
    /// `budgets`: the server's; a body that does not fit in what is left of the memory
    /// for request bodies goes to a file from the start.
    pub fn new(overflow: usize, expected: Option<u64>, budgets: &Arc<Budgets>) -> BodySpool {
        let initial = expected
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n < overflow)
            .unwrap_or(0);
        let mut spool = BodySpool {
            mem: Vec::new(),
            file: None,
            len: 0,
            overflow,
            budgets: budgets.clone(),
            reserved: 0,
        };
        if initial > 0 {
            if budgets.inbuf_memory.try_take(initial as u64) {
                spool.mem = pooled_buffer(initial);
                spool.reserved = initial as u64;
                spool.reserve_capacity();
            } else {
                spool.overflow = 0;
            }
        }
        spool
    }

    /// Accounts for the buffer's real capacity (a reused buffer may be larger).
    fn reserve_capacity(&mut self) {
        let capacity = self.mem.capacity() as u64;
        if capacity > self.reserved {
            self.budgets.inbuf_memory.take(capacity - self.reserved);
            self.reserved = capacity;
        }
    }

    /// Gives the memory budget back everything this spool holds.
    fn release(&mut self) {
        self.budgets.inbuf_memory.give(self.reserved);
        self.reserved = 0;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory buffer, to receive up to `want` more bytes into directly, if the body
    /// stays in memory with them and the buffer already has the room (reserved).
    pub fn memory_for(&mut self, want: usize) -> Option<&mut Vec<u8>> {
        let room = self.mem.capacity() - self.mem.len();
        (self.file.is_none() && self.mem.len() + want < self.overflow && room >= want)
            .then_some(&mut self.mem)
    }

    /// Accounts for `n` bytes received straight into the buffer from `memory_for`.
    pub fn received_in_memory(&mut self, n: usize) {
        self.len += n as u64;
    }

    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.len += data.len() as u64;
        if self.file.is_none() && !self.grow_in_memory(data.len()) {
            self.file = Some(tempfile::tempfile()?);
            self.release();
            // What was in memory becomes the first staged write; the buffer itself
            // is not kept.
            self.flush_staging()?;
            self.mem = Vec::new();
        }
        match self.file.as_mut() {
            // Large pieces (what one read of a Content-Length body gives) go straight
            // to the file: no staging memory, no copy.
            Some(file) if self.mem.is_empty() && data.len() >= DIRECT_WRITE => file.write_all(data),
            Some(_) => {
                self.mem.extend_from_slice(data);
                if self.mem.len() >= FILE_STAGING {
                    self.flush_staging()?;
                }
                Ok(())
            }
            None => {
                self.mem.extend_from_slice(data);
                Ok(())
            }
        }
    }

    /// Makes room in memory for `more` bytes, within `overflow` and the budget.
    fn grow_in_memory(&mut self, more: usize) -> bool {
        let needed = self.mem.len() + more;
        if needed >= self.overflow {
            return false;
        }
        if needed <= self.mem.capacity() {
            return true;
        }
        let capacity = needed.max(self.mem.capacity() * 2).min(self.overflow);
        let extra = (capacity - self.mem.capacity()) as u64;
        if !self.budgets.inbuf_memory.try_take(extra) {
            return false;
        }
        self.reserved += extra;
        self.mem.reserve_exact(capacity - self.mem.len());
        self.reserve_capacity();
        true
    }

    /// Ends a batch of received bytes: what is staged for the file is written now, so
    /// that a client that stops sending pins no staging memory. (A batch is one
    /// `recv` of up to 64 KiB, so this costs no extra writes for large pieces; the
    /// staging buffer is kept for the next batch.)
    pub fn end_batch(&mut self) -> io::Result<()> {
        if self.file.is_some() && !self.mem.is_empty() {
            self.flush_staging()?;
        }
        Ok(())
    }

    fn flush_staging(&mut self) -> io::Result<()> {
        if let Some(file) = self.file.as_mut() {
            file.write_all(&self.mem)?;
            self.mem.clear();
        }
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<Body> {
        if self.file.is_some() {
            self.flush_staging()?;
        }
        let mem = std::mem::take(&mut self.mem);
        Ok(match self.file.take() {
            Some(file) => Body::File {
                file: Arc::new(file),
                len: self.len,
            },
            None if self.len == 0 => {
                recycle(mem);
                Body::Empty
            }
            None => {
                let reserved = std::mem::take(&mut self.reserved);
                Body::Memory(Bytes::from_owner(Pooled {
                    buffer: mem,
                    budgets: self.budgets.clone(),
                    reserved,
                }))
            }
        })
    }
}

impl Drop for BodySpool {
    fn drop(&mut self) {
        self.release();
    }
}

/// Response bytes waiting for a slow client, in an anonymous temporary file used as a
/// queue: appended at the end, read from the front, reset when drained.
///
/// Its pending bytes count against the server's budget for spilled output.
pub struct SpillFile {
    file: File,
    read_pos: u64,
    write_pos: u64,
    budgets: Arc<Budgets>,
}

impl SpillFile {
    pub fn new(budgets: &Arc<Budgets>) -> io::Result<SpillFile> {
        Ok(SpillFile {
            file: tempfile::tempfile()?,
            read_pos: 0,
            write_pos: 0,
            budgets: budgets.clone(),
        })
    }

    /// Bytes written and not yet read back.
    pub fn pending(&self) -> u64 {
        self.write_pos - self.read_pos
    }

    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.write_pos)?;
        self.write_pos += data.len() as u64;
        self.budgets.outbuf_spill.take(data.len() as u64);
        Ok(())
    }

    /// Reads the next bytes from the front (at most `max`).
    pub fn read_front(&mut self, max: usize) -> io::Result<Bytes> {
        let want = max.min(usize::try_from(self.pending()).unwrap_or(usize::MAX));
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            let n = self
                .file
                .read_at(&mut buf[filled..], self.read_pos + filled as u64)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            filled += n;
        }
        self.read_pos += want as u64;
        self.budgets.outbuf_spill.give(want as u64);
        if self.read_pos == self.write_pos {
            // Drained: start again at the front so the file does not grow forever.
            self.file.set_len(0)?;
            self.read_pos = 0;
            self.write_pos = 0;
        }
        Ok(Bytes::from(buf))
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        self.budgets.outbuf_spill.give(self.pending());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unlimited() -> Arc<Budgets> {
        Budgets::unlimited()
    }

    fn inbuf(limit: u64) -> Arc<Budgets> {
        Budgets::new(limit, u64::MAX, u64::MAX)
    }

    #[test]
    fn a_body_that_the_budget_cannot_hold_goes_to_a_file() {
        let budgets = inbuf(100);
        let budget = &budgets.inbuf_memory;
        let mut first = BodySpool::new(1000, Some(80), &budgets);
        first.append(&[b'a'; 80]).unwrap();
        let kept = first.finish().unwrap();
        assert!(matches!(kept, Body::Memory(_)));
        assert!(budget.used() >= 80);
        // 80 of 100 used: a second body of 80 does not fit and is spilled at once.
        let mut second = BodySpool::new(1000, Some(80), &budgets);
        second.append(&[b'b'; 80]).unwrap();
        assert!(matches!(
            second.finish().unwrap(),
            Body::File { len: 80, .. }
        ));
        // Dropping the first body gives its memory back.
        drop(kept);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_growing_chunked_body_moves_to_a_file_when_the_budget_runs_out() {
        let budgets = inbuf(64);
        let budget = &budgets.inbuf_memory;
        let mut spool = BodySpool::new(1000, None, &budgets);
        for _ in 0..10 {
            spool.append(b"0123456789").unwrap();
        }
        spool.end_batch().unwrap();
        assert_eq!(budget.used(), 0, "a body in a file holds no memory budget");
        let body = spool.finish().unwrap();
        assert!(matches!(body, Body::File { len: 100, .. }));
        let mut buf = [0u8; 10];
        assert_eq!(body.read_at(90, &mut buf).unwrap(), 10);
        assert_eq!(&buf, b"0123456789");
    }

    #[test]
    fn an_abandoned_body_gives_its_memory_back() {
        let budgets = inbuf(1 << 20);
        let budget = &budgets.inbuf_memory;
        let mut spool = BodySpool::new(1 << 19, Some(1000), &budgets);
        spool.append(&[0; 500]).unwrap();
        assert!(budget.used() >= 1000);
        drop(spool);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn spilled_output_counts_against_its_budget_until_read() {
        let budgets = Budgets::new(u64::MAX, u64::MAX, 1 << 20);
        let budget = &budgets.outbuf_spill;
        let mut spill = SpillFile::new(&budgets).unwrap();
        spill.append(&[1; 300]).unwrap();
        assert_eq!(budget.used(), 300);
        spill.read_front(100).unwrap();
        assert_eq!(budget.used(), 200);
        drop(spill);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn small_body_stays_in_memory() {
        let mut spool = BodySpool::new(10, Some(3), &unlimited());
        spool.append(b"abc").unwrap();
        match spool.finish().unwrap() {
            Body::Memory(b) => assert_eq!(&b[..], b"abc"),
            other => panic!("expected memory, got {other:?}"),
        }
    }

    #[test]
    fn large_body_moves_to_file() {
        let mut spool = BodySpool::new(10, None, &unlimited());
        for _ in 0..10_000 {
            spool.append(b"0123456789").unwrap();
        }
        let body = spool.finish().unwrap();
        assert!(matches!(body, Body::File { len: 100_000, .. }));
        let mut buf = [0u8; 12];
        assert_eq!(body.read_at(99_995, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"56789");
        assert_eq!(body.read_at(100_000, &mut buf).unwrap(), 0);
    }

    #[test]
    fn empty_body() {
        assert!(matches!(
            BodySpool::new(10, None, &unlimited()).finish().unwrap(),
            Body::Empty
        ));
    }

    #[test]
    fn spill_file_is_a_queue() {
        let mut spill = SpillFile::new(&unlimited()).unwrap();
        spill.append(b"hello ").unwrap();
        spill.append(b"world").unwrap();
        assert_eq!(&spill.read_front(4).unwrap()[..], b"hell");
        assert_eq!(spill.pending(), 7);
        assert_eq!(&spill.read_front(100).unwrap()[..], b"o world");
        assert_eq!(spill.pending(), 0);
        spill.append(b"again").unwrap();
        assert_eq!(&spill.read_front(100).unwrap()[..], b"again");
    }
}
