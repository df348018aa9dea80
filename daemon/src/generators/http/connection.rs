//! The client's end of one HTTP/1.1 connection: a GET prepared once as bytes, written as is,
//! and its response read straight off the socket and parsed with httparse, as wrk works.
//!
//! hyper's client hands every request to a connection task over a channel and the response
//! back over another: two task wake-ups and several allocations per request, which made the
//! client, not the path, the limit (35k requests/s where wrk made 51k against the same server).
//! A load generator sends one fixed request, so it needs none of that.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// How long a client waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most header bytes a response may carry before it is refused.
const MAX_HEAD: usize = 16 * 1024;
/// The read buffer; larger bodies pass through it in pieces.
const BUFFER: usize = 64 * 1024;
/// The most headers a response may carry (a sonde server sends two or three).
const MAX_HEADERS: usize = 32;

/// The GET every request of a run sends: to `/`, naming the run's token.
pub fn request(host: &str, token_header: &str, token: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nhost: {host}\r\n{token_header}: {token}\r\n\r\n").into_bytes()
}

/// One connection and what has been read from it but not yet consumed.
pub struct Connection {
    stream: TcpStream,
    buffer: Box<[u8]>,
    filled: usize,
}

impl Connection {
    /// Connects to `target` (Nagle off: each request is one small write).
    pub async fn open(target: SocketAddr) -> Result<Self, String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
            .await
            .map_err(|_| format!("connecting to {target} timed out"))?
            .map_err(|err| format!("connecting to {target}: {err}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            buffer: vec![0; BUFFER].into_boxed_slice(),
            filled: 0,
        })
    }

    /// Sends `request` and reads its whole response; returns the body's length. A response
    /// other than 200 is an error: the peer is not this run's server.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<u64, String> {
        self.stream
            .write_all(request)
            .await
            .map_err(|err| format!("sending the request: {err}"))?;
        let (head, body) = loop {
            if let Some(parsed) = parse_head(&self.buffer[..self.filled])? {
                break parsed;
            }
            if self.filled >= MAX_HEAD {
                return Err(format!(
                    "the response's header is longer than {MAX_HEAD} bytes"
                ));
            }
            self.fill().await?;
        };
        // Consume the body, through the buffer when it is larger.
        let mut wanted = body;
        let mut at = head;
        loop {
            let here = (self.filled - at) as u64;
            if here >= wanted {
                at += wanted as usize;
                break;
            }
            wanted -= here;
            self.filled = 0;
            at = 0;
            self.fill().await?;
        }
        // Whatever follows (nothing, without pipelining) belongs to the next response.
        self.buffer.copy_within(at..self.filled, 0);
        self.filled -= at;
        Ok(body)
    }

    /// Reads what the socket has into the free part of the buffer.
    async fn fill(&mut self) -> Result<(), String> {
        let read = self
            .stream
            .read(&mut self.buffer[self.filled..])
            .await
            .map_err(|err| format!("reading the response: {err}"))?;
        if read == 0 {
            return Err("the server closed the connection mid-response".to_owned());
        }
        self.filled += read;
        Ok(())
    }
}

/// The length of a complete response head in `bytes` and its body's length, `None` while the
/// head is incomplete.
pub fn parse_head(bytes: &[u8]) -> Result<Option<(usize, u64)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(bytes) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(head)) => head,
        Err(err) => return Err(format!("not an HTTP/1.1 response: {err}")),
    };
    match response.code {
        Some(200) => {}
        code => {
            return Err(format!(
                "the peer is not a sonde server for this run (HTTP {})",
                code.unwrap_or_default()
            ));
        }
    }
    let length = response
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("content-length"))
        .and_then(|header| std::str::from_utf8(header.value).ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .ok_or("the response has no content-length (a sonde server always sends one)")?;
    Ok(Some((head, length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_only_when_complete() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: x\r\n\r\n";
        assert_eq!(parse_head(&head[..20]).expect("in a test"), None);
        assert_eq!(parse_head(head).expect("in a test"), Some((head.len(), 5)));
    }

    #[test]
    fn another_status_or_no_length_is_refused() {
        let err = parse_head(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            .expect_err("refused");
        assert!(err.contains("HTTP 403"), "{err}");
        let err = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .expect_err("refused");
        assert!(err.contains("content-length"), "{err}");
        let err = parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").expect_err("refused");
        assert!(err.contains("not an HTTP/1.1 response"), "{err}");
    }

    #[tokio::test]
    async fn bodies_larger_than_the_buffer_and_back_to_back_responses_are_read_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("in a test");
        let target = listener.local_addr().expect("in a test");
        let body = BUFFER * 3 + 17;
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("in a test");
            let mut seen = Vec::new();
            for answer in [body, 3] {
                // Read one request, then answer it.
                let mut byte = [0_u8; 1];
                while !seen.ends_with(b"\r\n\r\n") {
                    socket.read_exact(&mut byte).await.expect("in a test");
                    seen.push(byte[0]);
                }
                seen.clear();
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {answer}\r\n\r\n");
                socket.write_all(head.as_bytes()).await.expect("in a test");
                socket
                    .write_all(&vec![7_u8; answer])
                    .await
                    .expect("in a test");
            }
        });
        let mut connection = Connection::open(target).await.expect("in a test");
        let get = request("h", "x-sonde-token", "ab");
        assert_eq!(
            connection.exchange(&get).await.expect("in a test"),
            body as u64
        );
        assert_eq!(connection.exchange(&get).await.expect("in a test"), 3);
        assert_eq!(connection.filled, 0);
        server.await.expect("in a test");
        // The server has gone: the next exchange says so.
        let err = connection.exchange(&get).await.expect_err("refused");
        assert!(err.contains("closed") || err.contains("sending"), "{err}");
    }
}
