//! A minimal HTTP/1.1 server for the operations endpoints: one request per connection, one
//! connection at a time, on the operations thread.
//!
//! Why not a crate: what is needed is GET/POST/DELETE without bodies, answered with a small
//! body and `Connection: close`, on a loopback port scraped every few seconds. Doing it by hand
//! keeps every bound explicit: a request is at most [`REQUEST_BYTES_MAX`], a connection gets
//! [`IO_TIMEOUT`] for reading and writing, and there is exactly one thread (tiny_http, the
//! usual small choice, starts a thread per waiting connection with no upper bound).
//! Request bodies are refused (413): no endpoint takes one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The largest request line plus headers accepted.
pub const REQUEST_BYTES_MAX: usize = 16 * 1024;
/// Read and write timeout of one connection: a client that stalls holds the thread no longer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoded, without the query.
    pub path: String,
    /// Query parameters, percent-decoded (`+` is a space), in order.
    pub query: Vec<(String, String)>,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// A response; `Connection: close` and `Content-Length` are always added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self { status, content_type, body: body.into(), headers: Vec::new() }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        let mut body = body.into();
        body.push('\n');
        Self::new(status, "text/plain; charset=utf-8", body)
    }
}

/// Why a request could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The peer closed or timed out before a whole request: nothing to answer.
    Gone,
    /// Not HTTP we accept: answer with this status.
    Bad(u16, &'static str),
}

/// Reads one request's line and headers from `stream` (already given its timeouts).
pub fn read_request(stream: &mut impl Read) -> Result<Request, ReadError> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(end) = find_header_end(&buffer) {
            break end;
        }
        if buffer.len() >= REQUEST_BYTES_MAX {
            return Err(ReadError::Bad(431, "request header too large"));
        }
        let read = stream.read(&mut chunk).map_err(|_| ReadError::Gone)?;
        if read == 0 {
            return Err(ReadError::Gone);
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = std::str::from_utf8(&buffer[..end]).map_err(|_| ReadError::Bad(400, "not UTF-8"))?;
    parse_head(head)
}

fn find_header_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(4).position(|window| window == b"\r\n\r\n")
}

/// Parses the request line and headers (everything before the blank line).
pub fn parse_head(head: &str) -> Result<Request, ReadError> {
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(400, "bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(505, "HTTP/1.x only"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Bad(400, "bad header line"));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = percent_decode(path, false).ok_or(ReadError::Bad(400, "bad percent-encoding"))?;
    let query = parse_query(query).ok_or(ReadError::Bad(400, "bad percent-encoding"))?;
    let request = Request { method: method.to_owned(), path, query, headers };
    let body_length = request.header("content-length").map_or(Ok(0), str::parse::<u64>);
    if body_length != Ok(0) || request.header("transfer-encoding").is_some() {
        return Err(ReadError::Bad(413, "request bodies are not accepted"));
    }
    Ok(request)
}

fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(key, true)?, percent_decode(value, true)?))
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+` as a space in a query); `None` if malformed or not UTF-8.
pub fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = text.get(index + 1..index + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Internal Server Error",
    }
}

/// Writes `response` and lets the connection close.
pub fn write_response(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&response.body)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_headers_and_query_are_parsed_and_decoded() {
        let head = "GET /api/v1/retained?topic=a%2Fb+c&limit=5 HTTP/1.1\r\nHost: x\r\n\
                    Authorization: Bearer t0k";
        let request = parse_head(head).unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/api/v1/retained");
        assert_eq!(request.param("topic"), Some("a/b c"));
        assert_eq!(request.param("limit"), Some("5"));
        assert_eq!(request.header("authorization"), Some("Bearer t0k"));
    }

    #[test]
    fn malformed_requests_get_their_status() {
        for (head, status) in [
            ("GET /\r\nHost: x", 400),
            ("GET / HTTP/2\r\nHost: x", 505),
            ("GET /%zz HTTP/1.1\r\nHost: x", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 3", 413),
            ("GET / HTTP/1.1\r\nno colon", 400),
        ] {
            match parse_head(head) {
                Err(ReadError::Bad(got, _)) => assert_eq!(got, status, "{head:?}"),
                other => panic!("{head:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn an_oversized_or_cut_request_is_refused() {
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(REQUEST_BYTES_MAX));
        assert!(matches!(read_request(&mut huge.as_bytes()), Err(ReadError::Bad(431, _))));
        assert_eq!(read_request(&mut &b"GET / HTTP/1.1\r\n"[..]), Err(ReadError::Gone));
        let whole = read_request(&mut &b"GET /metrics HTTP/1.0\r\n\r\n"[..]).unwrap();
        assert_eq!(whole.path, "/metrics");
    }

    #[test]
    fn percent_decoding_refuses_truncated_escapes_and_bad_utf8() {
        assert_eq!(percent_decode("%2", false), None);
        assert_eq!(percent_decode("%ff", false), None);
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%23%2B", true).as_deref(), Some("#+"));
    }
}
