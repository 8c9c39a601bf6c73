//! The HTTP/1.1 subset both ends of the ops socket speak: one request per connection, a head
//! of at most [`MAX_HEAD`] bytes, `Content-Length` bodies, `Connection: close`.

use std::io::{self, Read, Write};

/// The longest request or response head (request line, status line and headers).
pub const MAX_HEAD: usize = 8 << 10;

/// A message head and the bytes that came after it in the same reads.
#[derive(Debug)]
pub struct Head {
    /// The first line (request line or status line).
    pub first: String,
    /// The headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Bytes read past the head (the start of a body or stream).
    pub rest: Vec<u8>,
}

impl Head {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a head (up to the blank line). A head over [`MAX_HEAD`], not UTF-8, or cut short is
/// an `InvalidData` / `UnexpectedEof` error.
pub fn read_head(stream: &mut impl Read) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n").filter(|&i| i <= MAX_HEAD) {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("the message head is too long"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end + 4);
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| invalid("the head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Head {
        first,
        headers,
        rest,
    })
}

/// Writes a complete response: status, content type, length, and `body`.
pub fn respond(
    stream: &mut impl Write,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

/// The status code of a status line (`HTTP/1.1 200 OK` → 200).
pub fn status_code(line: &str) -> Option<u16> {
    let mut words = line.split_whitespace();
    let version = words.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    words.next()?.parse().ok()
}

/// Reads a body of at most `max` bytes after `head` (its `Content-Length`, else to EOF).
pub fn read_body(stream: &mut impl Read, head: Head, max: usize) -> io::Result<Vec<u8>> {
    let length = match head.header("content-length") {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| invalid("bad Content-Length"))?,
        ),
        None => None,
    };
    if length.is_some_and(|n| n > max) {
        return Err(invalid("the body is too long"));
    }
    let mut body = head.rest;
    let want = length.unwrap_or(max);
    stream
        .take((want.saturating_sub(body.len()) + 1) as u64)
        .read_to_end(&mut body)?;
    if body.len() > want {
        return Err(invalid("the body is too long"));
    }
    if length.is_some_and(|n| body.len() < n) {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(body)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_bodies() {
        let mut input: &[u8] = b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let head = read_head(&mut input).unwrap();
        assert_eq!(head.first, "GET /status HTTP/1.1");
        assert_eq!(head.header("host"), Some("x"));
        assert_eq!(read_body(&mut input, head, 10).unwrap(), b"hello");
        assert_eq!(status_code("HTTP/1.1 404 Not Found"), Some(404));
        assert_eq!(status_code("SSH-2.0 x"), None);
    }

    #[test]
    fn oversized_or_short_messages_are_errors() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let e = read_head(&mut big.as_bytes()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let e = read_head(&mut &b"GET / HTTP/1.1\r\n"[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut input: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nabc";
        let head = read_head(&mut input).unwrap();
        assert!(read_body(&mut input, head, 10).is_err(), "over the cap");
        let mut input: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n0123456789abc";
        let head = read_head(&mut input).unwrap();
        assert!(
            read_body(&mut input, head, 10).is_err(),
            "no length, over the cap"
        );
        let mut input: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab";
        let head = read_head(&mut input).unwrap();
        assert!(read_body(&mut input, head, 10).is_err(), "cut short");
    }
}
