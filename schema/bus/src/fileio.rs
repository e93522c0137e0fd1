//! Image data between files and the network, at the disk's speed.
//!
//! [`HashingFile`] writes a stream of data to a file while hashing it (SHA-256), as dcmgr
//! receives image data and hosts fetch it. The write and the hash each run on a thread of
//! their own, fed the same blocks: SHA-256 (SHA-NI) and the disk run at about the same
//! speed, so done one after the other on the receiving task they halve the throughput.
//! Network frames are gathered into 1 MiB blocks: one `write` and one hash update per
//! MiB. The file is synced once, at the end.
//!
//! [`read_stream`] is a file as a stream of 1 MiB blocks read ahead by a thread of its
//! own (a tokio file reads one small buffer at a time and copies it once more).

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use tokio::sync::mpsc;

/// Data read ahead per block.
const BLOCK: usize = 1 << 20;
/// Data gathered before it goes to the writer and the hasher.
const GATHER: usize = 4 << 20;
/// Blocks in flight per thread: enough to ride out a slow write, a few MiB of memory.
const IN_FLIGHT: usize = 4;

pub struct HashingFile {
    buf: BytesMut,
    writer: Option<(mpsc::Sender<Bytes>, std::thread::JoinHandle<io::Result<std::fs::File>>)>,
    hasher: Option<(mpsc::Sender<Bytes>, std::thread::JoinHandle<Sha256>)>,
}

impl HashingFile {
    /// Writes to `file` (opened for writing, or appending after data already hashed into
    /// `hash`).
    pub fn new(file: std::fs::File, hash: Sha256) -> io::Result<HashingFile> {
        let (wtx, mut wrx) = mpsc::channel::<Bytes>(IN_FLIGHT);
        let writer = std::thread::Builder::new().name("vdc-write".into()).spawn(move || {
            let mut file = file;
            while let Some(b) = wrx.blocking_recv() {
                file.write_all(&b)?;
            }
            Ok(file)
        })?;
        let (htx, mut hrx) = mpsc::channel::<Bytes>(IN_FLIGHT);
        let hasher = std::thread::Builder::new().name("vdc-sha256".into()).spawn(move || {
            let mut hash = hash;
            while let Some(b) = hrx.blocking_recv() {
                hash.update(&b);
            }
            hash
        })?;
        Ok(HashingFile { buf: BytesMut::new(), writer: Some((wtx, writer)), hasher: Some((htx, hasher)) })
    }

    pub async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        // A whole block with nothing gathered goes as it is, without a copy. Smaller
        // frames are gathered: each block wakes two threads, which costs more than a copy.
        if self.buf.is_empty() && chunk.len() >= GATHER {
            return self.send(chunk).await;
        }
        if self.buf.capacity() - self.buf.len() < chunk.len() {
            // Room for a whole block at once: growing frame by frame would copy it often.
            self.buf.reserve(GATHER.max(chunk.len()));
        }
        self.buf.extend_from_slice(&chunk);
        if self.buf.len() >= GATHER {
            let block = self.buf.split().freeze();
            self.send(block).await?;
        }
        Ok(())
    }

    async fn send(&mut self, block: Bytes) -> io::Result<()> {
        let (htx, _) = self.hasher.as_ref().expect("open until finished");
        // The hasher stops only when its sender is dropped.
        let _ = htx.send(block.clone()).await;
        let (wtx, _) = self.writer.as_ref().expect("open until finished");
        if wtx.send(block).await.is_err() {
            // The writer stopped on an error: that error is the answer.
            self.join_writer().await?;
            return Err(io::Error::other("the writing thread stopped"));
        }
        Ok(())
    }

    async fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let block = self.buf.split().freeze();
            self.send(block).await?;
        }
        Ok(())
    }

    async fn join_writer(&mut self) -> io::Result<std::fs::File> {
        let (tx, thread) = self.writer.take().expect("joined once");
        drop(tx);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(io::Error::other)?
            .map_err(|_| io::Error::other("the writing thread failed"))?
    }

    /// Writes what is left, syncs the file to disk and returns the SHA-256 (hex) of all
    /// the data (with what was in the file before).
    pub async fn finish(mut self) -> io::Result<String> {
        self.flush_buf().await?;
        let file = self.join_writer().await?;
        tokio::task::spawn_blocking(move || file.sync_all()).await.map_err(io::Error::other)??;
        let (tx, thread) = self.hasher.take().expect("finished once");
        drop(tx);
        let hash = tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(io::Error::other)?
            .map_err(|_| io::Error::other("the hashing thread failed"))?;
        Ok(hex::encode(hash.finalize()))
    }

    /// Writes what arrived so far (for a later resume), without syncing or hashing it.
    pub async fn stop(mut self) -> io::Result<()> {
        self.flush_buf().await?;
        self.join_writer().await.map(drop)
    }
}

/// Up to `len` bytes of `file` from where it stands, in blocks read ahead on a thread.
/// The thread stops when the stream is dropped.
pub fn read_stream(file: std::fs::File, len: u64) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(IN_FLIGHT);
    let spawned = std::thread::Builder::new().name("vdc-read".into()).spawn(move || {
        let mut file = file.take(len);
        loop {
            // read_to_end fills the spare capacity as it is: no zeroing, no copy into Bytes.
            let mut block = Vec::with_capacity(BLOCK);
            match (&mut file).take(BLOCK as u64).read_to_end(&mut block) {
                Ok(0) => return,
                Ok(_) => {
                    if tx.blocking_send(Ok(Bytes::from(block))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let failed = spawned.err();
    futures::stream::unfold((rx, failed), |(mut rx, failed)| async move {
        if let Some(e) = failed {
            return Some((Err(e), (rx, None)));
        }
        rx.recv().await.map(|b| (b, (rx, None)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_and_large_chunks_are_written_in_order_and_hashed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        // Resuming: the first 1000 bytes are in the file already and hashed.
        std::fs::write(&path, &data[..1000]).unwrap();
        let mut hash = Sha256::new();
        hash.update(&data[..1000]);
        let file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        let mut w = HashingFile::new(file, hash).unwrap();
        let mut at = 1000;
        for size in [10, 70_000, 3 << 20, 5, 1 << 20].into_iter().cycle() {
            let end = (at + size).min(data.len());
            w.write(Bytes::copy_from_slice(&data[at..end])).await.unwrap();
            at = end;
            if at == data.len() {
                break;
            }
        }
        assert_eq!(w.finish().await.unwrap(), hex::encode(Sha256::digest(&data)));
        assert!(std::fs::read(&path).unwrap() == data);

        // Read back from an offset, up to a length.
        use futures::TryStreamExt;
        let mut f = std::fs::File::open(&path).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(7)).unwrap();
        let blocks: Vec<Bytes> = read_stream(f, 3_000_000).try_collect().await.unwrap();
        assert!(blocks.iter().all(|b| b.len() <= BLOCK));
        assert!(blocks.concat() == data[7..3_000_007]);
    }
}
