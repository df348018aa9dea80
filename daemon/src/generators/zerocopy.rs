//! Moving stream payload without copying it through user space, where the kernel allows:
//! the sender `sendfile`s from a memfd holding one message (no user-to-kernel copy), and the
//! receiver `splice`s from the socket into a pipe drained into /dev/null (no kernel-to-user
//! copy). A throughput test measures the network path, not memcpy; `cargo xtask bench
//! generators` shows what it buys against iperf3. Either side falls back to plain
//! `write`/`read` when these calls are unavailable.

use std::{
    fs::File,
    io::{self, Write as _},
    net::TcpStream,
    os::fd::OwnedFd,
};

use nix::{
    fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice},
    sys::{
        memfd::{MFdFlags, memfd_create},
        sendfile::sendfile,
    },
};

/// Bytes moved per splice: the pipe is enlarged to hold this much.
const PIPE_BYTES: usize = 1 << 20;

/// One message's payload in a memfd, sent with `sendfile`.
#[derive(Debug)]
pub struct FilePayload {
    file: OwnedFd,
    size: usize,
}

impl FilePayload {
    /// A payload of `size` bytes.
    pub fn new(size: usize) -> io::Result<Self> {
        let fd = memfd_create(c"sonde-payload", MFdFlags::MFD_CLOEXEC)?;
        let mut file = File::from(fd);
        let chunk = vec![0x5d_u8; size.min(1 << 20)];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            file.write_all(&chunk[..n])?;
            left -= n;
        }
        Ok(Self {
            file: file.into(),
            size,
        })
    }

    /// The payload's length.
    pub fn len(&self) -> usize {
        self.size
    }

    /// Whether the payload is empty (never: sizes start at 1).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Sends what the socket takes of the payload from `offset` on, in one call: the bytes
    /// sent (`WouldBlock` when a non-blocking socket is full).
    pub fn send_from(&self, socket: &TcpStream, offset: usize) -> io::Result<usize> {
        let mut at = libc::off_t::try_from(offset).unwrap_or(libc::off_t::MAX);
        let left = self.size.saturating_sub(offset);
        sendfile(socket, &self.file, Some(&mut at), left).map_err(io::Error::from)
    }
}

/// A pipe to /dev/null that received bytes are spliced through.
#[derive(Debug)]
pub struct Discard {
    read: OwnedFd,
    write: OwnedFd,
    null: File,
}

impl Discard {
    /// A discarding sink.
    pub fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let size = libc::c_int::try_from(PIPE_BYTES).unwrap_or(libc::c_int::MAX);
        // A larger pipe moves more per call; the default (64 KiB) still works.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(size));
        let null = File::options().write(true).open("/dev/null")?;
        Ok(Self { read, write, null })
    }

    /// Receives what the socket has and drops it: the number of bytes, 0 at end of stream
    /// (`WouldBlock` when a non-blocking socket has nothing).
    pub fn receive(&self, socket: &TcpStream) -> io::Result<usize> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_MORE;
        let n = splice(socket, None, &self.write, None, PIPE_BYTES, flags)?;
        let mut left = n;
        while left > 0 {
            let drained = splice(
                &self.read,
                None,
                &self.null,
                None,
                left,
                SpliceFFlags::SPLICE_F_MOVE,
            )?;
            if drained == 0 {
                break;
            }
            left -= drained;
        }
        Ok(n)
    }
}
