//! A minimal HTTP server for tests of the client and the commands.

/// What the mock server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub auth: String,
    pub body: String,
}

type Handler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

/// A one-file HTTP/1.1 server, enough to check what the client sends and how it reads
/// answers. Returns the base URL and the log of requests.
pub async fn mock(
    handler: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (_, log) = mock_on(listener, handler);
    (base, log)
}

/// [`mock`] on `listener`; aborting the returned task closes it (a server going away).
pub fn mock_on(
    listener: tokio::net::TcpListener,
    handler: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
) -> (tokio::task::JoinHandle<()>, std::sync::Arc<std::sync::Mutex<Vec<Seen>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler: std::sync::Arc<Handler> = std::sync::Arc::new(handler);
    let log2 = log.clone();
    let task = tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (handler, log) = (handler.clone(), log2.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let head_end = loop {
                    let mut chunk = [0u8; 4096];
                    let n = sock.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    if n == 0 {
                        return;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                let len: usize = header("content-length").parse().unwrap_or(0);
                while buf.len() < head_end + len {
                    let mut chunk = [0u8; 4096];
                    let n = sock.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                let mut first = head.lines().next().unwrap().split(' ');
                let seen = Seen {
                    method: first.next().unwrap().to_string(),
                    target: first.next().unwrap().to_string(),
                    auth: header("authorization"),
                    body: String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
                };
                let (status, body) = handler(&seen);
                log.lock().unwrap().push(seen);
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(resp.as_bytes()).await.unwrap();
            });
        }
    });
    (task, log)
}
