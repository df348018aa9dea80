//! Blocking socket I/O that a run can stop: every socket has a short timeout (the poll
//! interval), and these loops retry through it until done, stopped, or past a deadline. The
//! clock is read only when a call timed out or came back short: a message that goes through
//! in one call (every request/response message) costs none.

use std::{
    io::{self, Read, Write},
    sync::atomic::Ordering,
    time::Instant,
};

use super::{measure::Stop, wire::is_timeout};

/// Why a stoppable transfer ended early.
#[derive(Debug)]
pub enum Interrupted {
    /// The run was stopped or its deadline passed.
    Stopped,
    /// The peer closed the connection.
    Closed,
    /// A socket error.
    Failed(io::Error),
}

/// Writes all of `buf`, unless stopped or past `deadline` first.
pub fn write_all(
    socket: &mut impl Write,
    mut buf: &[u8],
    stop: &Stop,
    deadline: Instant,
) -> Result<(), Interrupted> {
    while !buf.is_empty() {
        if stop.load(Ordering::Relaxed) {
            return Err(Interrupted::Stopped);
        }
        match socket.write(buf) {
            Ok(0) => return Err(Interrupted::Closed),
            Ok(n) => buf = &buf[n..],
            Err(err) if is_timeout(&err) || err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if closed(&err) => return Err(Interrupted::Closed),
            Err(err) => return Err(Interrupted::Failed(err)),
        }
        // A short write or a timeout: only then is the clock read.
        if !buf.is_empty() && Instant::now() >= deadline {
            return Err(Interrupted::Stopped);
        }
    }
    Ok(())
}

/// Fills `buf`, unless stopped or past `deadline` first.
pub fn read_exact(
    socket: &mut impl Read,
    buf: &mut [u8],
    stop: &Stop,
    deadline: Instant,
) -> Result<(), Interrupted> {
    let mut filled = 0;
    while filled < buf.len() {
        if stop.load(Ordering::Relaxed) {
            return Err(Interrupted::Stopped);
        }
        match socket.read(&mut buf[filled..]) {
            Ok(0) => return Err(Interrupted::Closed),
            Ok(n) => filled += n,
            Err(err) if is_timeout(&err) || err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if closed(&err) => return Err(Interrupted::Closed),
            Err(err) => return Err(Interrupted::Failed(err)),
        }
        // A short read or a timeout: only then is the clock read.
        if filled < buf.len() && Instant::now() >= deadline {
            return Err(Interrupted::Stopped);
        }
    }
    Ok(())
}

/// Errors that mean the peer went away, which ends a connection normally at a run's end.
pub fn closed(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// Sleeps until `at` (a thread sleep, then a short spin for the last stretch, so paced sends
/// leave close to their intended times).
pub fn sleep_until(at: Instant) {
    const SPIN: std::time::Duration = std::time::Duration::from_micros(60);
    let now = Instant::now();
    if at <= now {
        return;
    }
    let wait = at - now;
    if wait > SPIN {
        std::thread::sleep(wait - SPIN);
    }
    while Instant::now() < at {
        std::hint::spin_loop();
    }
}

/// When each message of a flow should leave: at once (as fast as possible), or on a fixed
/// schedule from the window's start (at a rate), in which case latency counts from the
/// intended time, so that a stall delays the whole schedule visibly instead of hiding
/// (coordinated omission).
#[derive(Debug)]
pub struct Pacer {
    interval: Option<std::time::Duration>,
    next: Instant,
}

impl Pacer {
    /// A pacer for `rate` messages per second (`None`: as fast as possible) from `start`.
    pub fn new(rate: Option<f64>, start: Instant) -> Self {
        Self {
            interval: rate.map(|rate| std::time::Duration::from_secs_f64(1.0 / rate)),
            next: start,
        }
    }

    /// Waits for the next message's turn; returns when it was meant to leave.
    pub fn wait_turn(&mut self) -> Instant {
        match self.interval {
            Some(interval) => {
                let intended = self.next;
                self.next += interval;
                sleep_until(intended);
                intended
            }
            None => Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        os::unix::net::UnixStream,
        sync::{Arc, atomic::AtomicBool},
        time::Duration,
    };

    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socket pair");
        a.set_read_timeout(Some(Duration::from_millis(10)))
            .expect("timeout");
        (a, b)
    }

    #[test]
    fn a_stalled_read_ends_at_the_deadline_and_a_stop_at_once() {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut reader, mut writer) = pair();
        writer.write_all(b"ab").expect("write");
        let mut buf = [0_u8; 4];
        let began = Instant::now();
        let outcome = read_exact(
            &mut reader,
            &mut buf,
            &stop,
            began + Duration::from_millis(50),
        );
        assert!(matches!(outcome, Err(Interrupted::Stopped)), "{outcome:?}");
        assert!(began.elapsed() >= Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        let far = Instant::now() + Duration::from_secs(60);
        let outcome = read_exact(&mut reader, &mut buf, &stop, far);
        assert!(matches!(outcome, Err(Interrupted::Stopped)), "{outcome:?}");
    }

    #[test]
    fn a_message_that_arrives_whole_is_read_and_a_closed_peer_is_told() {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut reader, mut writer) = pair();
        writer.write_all(b"abcd").expect("write");
        let mut buf = [0_u8; 4];
        let far = Instant::now() + Duration::from_secs(60);
        read_exact(&mut reader, &mut buf, &stop, far).expect("read");
        assert_eq!(&buf, b"abcd");
        drop(writer);
        let outcome = read_exact(&mut reader, &mut buf, &stop, far);
        assert!(matches!(outcome, Err(Interrupted::Closed)), "{outcome:?}");
    }
}
