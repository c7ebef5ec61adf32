//! A disk with a volatile write cache, served to QEMU over NBD: writes are acknowledged at
//! once but kept in memory until the guest flushes; a flush writes them to the image file
//! and syncs it. Pulling the power (`PowerCut::cut`) throws away a random part of what was
//! not flushed, in any order, as a real disk's cache can. This is what `cache=none` on a
//! plain file cannot show: there every write QEMU completes reaches the host and stays.
//!
//! The protocol subset QEMU needs (fixed newstyle handshake, NBD_OPT_GO or
//! NBD_OPT_EXPORT_NAME, then READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and DISC with simple
//! replies), on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY: u64 = 0x0003_e889_0455_65a9;
const REQUEST: u32 = 0x2560_9513;
const SIMPLE_REPLY: u32 = 0x6744_6698;

/// Unflushed writes, by byte offset (later writes replace earlier ones at the same offset;
/// overlapping writes are kept in order).
#[derive(Debug, Default)]
struct Cache {
    writes: Vec<(u64, Vec<u8>)>,
}

/// The shared state of one served disk.
#[derive(Debug)]
pub struct Disk {
    file: std::fs::File,
    size: u64,
    cache: Mutex<Cache>,
    /// Counts, for the report.
    pub stats: Mutex<Stats>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub writes: u64,
    pub flushes: u64,
    /// Unflushed writes at the last cut, and how many of them were lost.
    pub pending_at_cut: usize,
    pub lost_at_cut: usize,
}

impl Disk {
    pub fn open(path: &Path) -> Result<Arc<Disk>> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Arc::new(Disk { file, size, cache: Mutex::new(Cache::default()), stats: Mutex::new(Stats::default()) }))
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for (at, data) in &cache.writes {
            let (start, end) = (*at, at + data.len() as u64);
            if end <= offset || start >= offset + len as u64 {
                continue;
            }
            let from = start.max(offset);
            let to = end.min(offset + len as u64);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - start) as usize..(to - start) as usize]);
        }
        Ok(buf)
    }

    fn write(&self, offset: u64, data: Vec<u8>) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).writes.push((offset, data));
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).writes += 1;
    }

    fn flush(&self) -> Result<()> {
        let writes = std::mem::take(&mut self.cache.lock().unwrap_or_else(|e| e.into_inner()).writes);
        for (at, data) in &writes {
            self.file.write_all_at(data, *at)?;
        }
        self.file.sync_data()?;
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).flushes += 1;
        Ok(())
    }

    /// The power goes: each unflushed write reaches the disk or not, at random (`keep`
    /// decides for each, in the order they were written).
    pub fn cut(&self, mut keep: impl FnMut() -> bool) -> Result<()> {
        let writes = std::mem::take(&mut self.cache.lock().unwrap_or_else(|e| e.into_inner()).writes);
        let mut lost = 0;
        for (at, data) in &writes {
            if keep() {
                self.file.write_all_at(data, *at)?;
            } else {
                lost += 1;
            }
        }
        self.file.sync_data()?;
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.pending_at_cut = writes.len();
        s.lost_at_cut = lost;
        Ok(())
    }
}

/// Serves `disk` to one client at a time on 127.0.0.1; returns the port.
pub fn serve(disk: Arc<Disk>) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let disk = disk.clone();
            std::thread::spawn(move || {
                if let Err(e) = session(&disk, stream) {
                    // A killed QEMU ends its connection mid-request: expected at a cut.
                    let _ = e;
                }
            });
        }
    });
    Ok(port)
}

fn read_u32(s: &mut TcpStream) -> Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut TcpStream) -> Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn option_reply(s: &mut TcpStream, option: u32, kind: u32, data: &[u8]) -> Result<()> {
    let mut out = OPT_REPLY.to_be_bytes().to_vec();
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    s.write_all(&out)?;
    Ok(())
}

/// Transmission flags: has flags, can flush, can trim, can write zeroes.
const TRANSMISSION: u16 = 1 | 4 | 32 | 64;

fn session(disk: &Disk, mut s: TcpStream) -> Result<()> {
    s.set_nodelay(true)?;
    // Handshake: fixed newstyle, no zeroes.
    let mut hello = NBDMAGIC.to_be_bytes().to_vec();
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&3u16.to_be_bytes());
    s.write_all(&hello)?;
    let client_flags = read_u32(&mut s)?;
    let no_zeroes = client_flags & 2 != 0;
    loop {
        if read_u64(&mut s)? != IHAVEOPT {
            bail!("bad option magic");
        }
        let option = read_u32(&mut s)?;
        let len = read_u32(&mut s)? as usize;
        if len > 4096 {
            bail!("option too long");
        }
        let mut data = vec![0u8; len];
        s.read_exact(&mut data)?;
        match option {
            // NBD_OPT_EXPORT_NAME: the export, no reply header.
            1 => {
                let mut out = disk.size.to_be_bytes().to_vec();
                out.extend_from_slice(&TRANSMISSION.to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&out)?;
                break;
            }
            // NBD_OPT_GO / NBD_OPT_INFO: NBD_INFO_EXPORT, then ACK.
            6 | 7 => {
                let mut info = 0u16.to_be_bytes().to_vec();
                info.extend_from_slice(&disk.size.to_be_bytes());
                info.extend_from_slice(&TRANSMISSION.to_be_bytes());
                option_reply(&mut s, option, 3, &info)?;
                option_reply(&mut s, option, 1, &[])?;
                if option == 7 {
                    break;
                }
            }
            // NBD_OPT_ABORT.
            2 => {
                option_reply(&mut s, option, 1, &[])?;
                return Ok(());
            }
            // Anything else (structured replies, meta contexts, TLS): unsupported.
            _ => option_reply(&mut s, option, (1 << 31) | 1, &[])?,
        }
    }
    loop {
        if read_u32(&mut s)? != REQUEST {
            bail!("bad request magic");
        }
        let mut head = [0u8; 24];
        s.read_exact(&mut head)?;
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let handle = &head[4..12];
        let offset = u64::from_be_bytes(head[12..20].try_into().context("offset")?);
        let len = u32::from_be_bytes(head[20..24].try_into().context("length")?) as usize;
        let in_range = offset.checked_add(len as u64).is_some_and(|end| end <= disk.size);
        let mut reply = SIMPLE_REPLY.to_be_bytes().to_vec();
        match kind {
            // READ
            0 => {
                if !in_range {
                    reply.extend_from_slice(&22u32.to_be_bytes());
                    reply.extend_from_slice(handle);
                } else {
                    let data = disk.read(offset, len)?;
                    reply.extend_from_slice(&0u32.to_be_bytes());
                    reply.extend_from_slice(handle);
                    reply.extend_from_slice(&data);
                }
            }
            // WRITE, WRITE_ZEROES, TRIM (trim reads back as zeroes here).
            1 | 4 | 6 => {
                let data = if kind == 1 {
                    let mut d = vec![0u8; len];
                    s.read_exact(&mut d)?;
                    d
                } else {
                    vec![0u8; len]
                };
                let error = if in_range {
                    disk.write(offset, data);
                    0u32
                } else {
                    22
                };
                reply.extend_from_slice(&error.to_be_bytes());
                reply.extend_from_slice(handle);
            }
            // DISC
            2 => return Ok(()),
            // FLUSH
            3 => {
                disk.flush()?;
                reply.extend_from_slice(&0u32.to_be_bytes());
                reply.extend_from_slice(handle);
            }
            _ => {
                reply.extend_from_slice(&22u32.to_be_bytes());
                reply.extend_from_slice(handle);
            }
        }
        s.write_all(&reply)?;
    }
}
