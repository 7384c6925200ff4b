//! Plain HTTP/1.1 for the API tests: a client that sends one request per
//! connection, and a file server on 127.0.0.1 to serve VM images from.
// Each test crate uses its own part of the fixtures.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// An answer: status and body (parsed as JSON when it is JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The JSON body of an answer that must have `status` (the body is in
    /// the failure's message).
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }

    /// The error body's `kind` and `message`, checking its shape.
    pub fn error(&self) -> (String, String) {
        let json = self.json();
        let error = json
            .get("error")
            .unwrap_or_else(|| panic!("not an error body: {json}"));
        assert_eq!(json.as_object().map(|o| o.len()), Some(1), "{json}");
        let field = |key: &str| {
            error
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("the error has no {key}: {json}"))
                .to_string()
        };
        (field("kind"), field("message"))
    }
}

/// `method path` on `address` with an optional body (sent as JSON unless
/// `content_type` says otherwise), in a blocking thread.
pub async fn request(
    address: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    content_type: Option<&str>,
) -> Answer {
    let (address, method, path) = (address.to_string(), method.to_string(), path.to_string());
    let body = body.map(<[u8]>::to_vec);
    let content_type = content_type.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        send(
            &address,
            &method,
            &path,
            body.as_deref(),
            content_type.as_deref(),
            None,
        )
    })
    .await
    .expect("the HTTP request thread")
}

/// `method path` with an optional JSON body and, when given, the header
/// `Authorization: Bearer TOKEN`.
pub async fn request_as(
    address: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Answer {
    let (address, method, path) = (address.to_string(), method.to_string(), path.to_string());
    let body = body.map(|b| serde_json::to_vec(b).expect("serialise the body"));
    let authorization = token.map(|t| format!("Bearer {t}"));
    tokio::task::spawn_blocking(move || {
        let content_type = body.as_ref().map(|_| "application/json");
        send(
            &address,
            &method,
            &path,
            body.as_deref(),
            content_type,
            authorization.as_deref(),
        )
    })
    .await
    .expect("the HTTP request thread")
}

pub async fn get(address: &str, path: &str) -> Answer {
    request(address, "GET", path, None, None).await
}

pub async fn post_json(address: &str, path: &str, body: &Value) -> Answer {
    let bytes = serde_json::to_vec(body).expect("serialise the body");
    request(
        address,
        "POST",
        path,
        Some(&bytes),
        Some("application/json"),
    )
    .await
}

fn send(
    address: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    content_type: Option<&str>,
    authorization: Option<&str>,
) -> Answer {
    let mut stream =
        TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("set a read timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    if let Some(kind) = content_type {
        head.push_str(&format!("Content-Type: {kind}\r\n"));
    }
    if let Some(value) = authorization {
        head.push_str(&format!("Authorization: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send the request");
    if let Some(body) = body {
        // A server may refuse a large body before reading it all.
        let _ = stream.write_all(body);
    }
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .expect("read the status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {status_line:?}"));
    let (mut length, mut chunked) = (None, false);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).expect("read a chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).expect("read a chunk");
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        reader.read_exact(&mut body).expect("read the body");
    } else {
        reader.read_to_end(&mut body).expect("read the body");
    }
    Answer { status, body }
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Serves the files of `dir` at `http://127.0.0.1:PORT/NAME` (404 for any
/// other path) until the test process ends. Returns the base URL.
pub fn serve_files(dir: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the file server");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    return;
                }
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line.trim_end().is_empty() => break,
                        Ok(_) => {}
                    }
                }
                let name = request_line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.strip_prefix('/'))
                    .filter(|n| !n.is_empty() && !n.contains('/') && !n.contains(".."))
                    .map(str::to_string);
                match name.and_then(|n| std::fs::read(dir.join(n)).ok()) {
                    Some(bytes) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                            bytes.len()
                        );
                        let _ = stream.write_all(head.as_bytes());
                        let _ = stream.write_all(&bytes);
                    }
                    None => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
                        );
                    }
                }
            });
        }
    });
    base
}
