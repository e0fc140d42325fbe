//! The lab's pod process: a tiny HTTP and UDP server answering with the pod name, so a client
//! can tell which backend answered.
//!
//! HTTP: any request gets `200 OK`, body `<name>\n`, then the connection closes.
//! UDP: any datagram gets `<name>\n` back.
//! The name [`ANSWER_PEER`] answers with the client's address instead (which source address
//! a server sees: the lab's internet host checks egress SNAT with it).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The name that makes the server answer with the client's IP address.
pub const ANSWER_PEER: &str = "@peer";

fn answer(name: &str, peer: SocketAddr) -> String {
    if name == ANSWER_PEER {
        peer.ip().to_string()
    } else {
        name.to_string()
    }
}

/// Largest request head read.
const MAX_REQUEST: usize = 16 * 1024;

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// Name to answer with.
    pub name: String,
    /// HTTP port (0 = none).
    pub http_port: u16,
    /// UDP port (0 = none).
    pub udp_port: u16,
    /// File created once both sockets are bound.
    pub ready_file: Option<PathBuf>,
    /// More TCP ports answering as the HTTP port does (a pod's declared
    /// container ports, for NetworkPolicy tests).
    pub extra_http_ports: Vec<u16>,
    /// More UDP ports answering as the UDP port does.
    pub extra_udp_ports: Vec<u16>,
}

/// The HTTP response for a name.
pub fn http_response(name: &str) -> String {
    let body = format!("{name}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serves until the process is stopped.
pub async fn run(opts: EchoOptions) -> std::io::Result<()> {
    let any = Ipv4Addr::UNSPECIFIED;
    let http = if opts.http_port != 0 {
        Some(tokio::net::TcpListener::bind(SocketAddr::from((any, opts.http_port))).await?)
    } else {
        None
    };
    let udp = if opts.udp_port != 0 {
        Some(tokio::net::UdpSocket::bind(SocketAddr::from((any, opts.udp_port))).await?)
    } else {
        None
    };
    let mut extra_tcp = Vec::new();
    for port in &opts.extra_http_ports {
        extra_tcp.push(tokio::net::TcpListener::bind(SocketAddr::from((any, *port))).await?);
    }
    let mut extra_udp = Vec::new();
    for port in &opts.extra_udp_ports {
        extra_udp.push(tokio::net::UdpSocket::bind(SocketAddr::from((any, *port))).await?);
    }
    for listener in extra_tcp {
        tokio::spawn(serve_http(listener, opts.name.clone()));
    }
    for sock in extra_udp {
        tokio::spawn(serve_udp(sock, opts.name.clone()));
    }
    if let Some(f) = &opts.ready_file {
        std::fs::write(f, b"ready\n")?;
    }
    tracing::info!(name = %opts.name, http = opts.http_port, udp = opts.udp_port, "echo server ready");
    let http_task = async {
        match http {
            Some(listener) => serve_http(listener, opts.name.clone()).await,
            None => std::future::pending::<std::io::Result<()>>().await,
        }
    };
    let udp_task = async {
        match udp {
            Some(sock) => serve_udp(sock, opts.name.clone()).await,
            None => std::future::pending::<std::io::Result<()>>().await,
        }
    };
    tokio::select! {
        r = http_task => r,
        r = udp_task => r,
    }
}

/// Answers every HTTP request on `listener` with `name`.
async fn serve_http(listener: tokio::net::TcpListener, name: String) -> std::io::Result<()> {
    loop {
        let (mut conn, peer) = listener.accept().await?;
        let response = http_response(&answer(&name, peer));
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_REQUEST];
            let mut len = 0;
            // Read the request head (bounded in size and time), then answer.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    match conn.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            // One line per request: what `kubectl logs` of a lab pod shows.
            let head = String::from_utf8_lossy(&buf[..len]);
            let request = head.lines().next().unwrap_or("").to_string();
            tracing::info!(%peer, %request, "http request");
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Answers every datagram on `sock` with `name`.
async fn serve_udp(sock: tokio::net::UdpSocket, name: String) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (_, peer) = sock.recv_from(&mut buf).await?;
        tracing::debug!(%peer, "udp datagram");
        let text = format!("{}\n", answer(&name, peer));
        let _ = sock.send_to(text.as_bytes(), peer).await;
    }
}

/// Sends one UDP datagram to `target` and returns the answer (the server's name), waiting at
/// most `timeout`.
pub async fn udp_request(target: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    udp_request_from(0, target, timeout).await
}

/// [`udp_request`] from a fixed local port (`0`: any), so that successive requests are one
/// conntrack entry.
pub async fn udp_request_from(
    source_port: u16,
    target: SocketAddr,
    timeout: Duration,
) -> std::io::Result<String> {
    let sock =
        tokio::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, source_port))).await?;
    sock.send_to(b"hello\n", target).await?;
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(timeout, sock.recv_from(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no UDP answer"))??;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// Sends one HTTP GET to `target` and returns the body (the server's name).
pub async fn http_request(target: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    tokio::time::timeout(timeout, async {
        let mut c = tokio::net::TcpStream::connect(target).await?;
        c.write_all(
            format!("GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        c.take(MAX_REQUEST as u64).read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).into_owned();
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.trim().to_string())
            .unwrap_or_default())
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no HTTP answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_response_is_exact() {
        assert_eq!(
            http_response("web-1"),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nweb-1\n"
        );
    }

    #[tokio::test]
    async fn answers_http_and_udp_on_loopback() {
        // Ports 0 would disable a protocol; pick free ones by binding first.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let http_port = tcp.local_addr().unwrap().port();
        drop(tcp);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        drop(udp);
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let server = tokio::spawn(run(EchoOptions {
            name: "pod-a".into(),
            http_port,
            udp_port,
            ready_file: Some(ready.clone()),
            extra_http_ports: Vec::new(),
            extra_udp_ports: Vec::new(),
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "echo server not ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
            .await
            .unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.ends_with("\r\n\r\npod-a\n"), "{out:?}");
        let u = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        u.send_to(b"hi", ("127.0.0.1", udp_port)).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), u.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"pod-a\n");
        let five = Duration::from_secs(5);
        let http = SocketAddr::from(([127, 0, 0, 1], http_port));
        let udp = SocketAddr::from(([127, 0, 0, 1], udp_port));
        assert_eq!(http_request(http, five).await.unwrap(), "pod-a");
        assert_eq!(udp_request(udp, five).await.unwrap(), "pod-a");
        server.abort();
    }
}
