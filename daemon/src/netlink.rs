//! One netlink request/answer loop for the families sonde speaks (netfilter's ctnetlink,
//! rtnetlink): send a request, hand every answer to the caller until the kernel says done.
//! Messages are built and parsed by the `netlink-packet-*` crates.

use std::io;

use netlink_packet_core::{
    NLM_F_DUMP, NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

/// A netlink socket for requests, bound to the network namespace of the thread that opened it
/// (a socket keeps its namespace for life).
#[derive(Debug)]
pub struct Requester {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Requester {
    /// Opens a socket of `protocol` (`NETLINK_NETFILTER`, `NETLINK_ROUTE`, ...).
    pub fn open(protocol: isize) -> io::Result<Self> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
            buffer: vec![0; 1 << 16],
        })
    }

    /// Sends `message` with `flags` and hands every answer to `each`: all of a dump's
    /// (`NLM_F_DUMP`), else the first. A kernel error comes back as the `io::Error` of its
    /// errno.
    pub fn request<M>(&mut self, message: M, flags: u16, mut each: impl FnMut(M)) -> io::Result<()>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
        M::Error: std::fmt::Display,
    {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        let is_dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        loop {
            let length = self.socket.recv(&mut &mut self.buffer[..], 0)?;
            let mut offset = 0;
            while offset < length {
                let frame = &self.buffer[offset..length];
                let size = NetlinkBuffer::new_checked(frame).map_err(invalid)?.length() as usize;
                let answer = NetlinkMessage::<M>::deserialize(frame).map_err(invalid)?;
                offset += size.next_multiple_of(4).max(16);
                if answer.header.sequence_number != self.sequence {
                    continue;
                }
                match answer.payload {
                    NetlinkPayload::InnerMessage(inner) => {
                        each(inner);
                        if !is_dump {
                            return Ok(());
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(()),
                        };
                    }
                    _ => {}
                }
            }
        }
    }
}

fn invalid(err: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err.to_string())
}
