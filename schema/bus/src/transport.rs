//! Subject-addressed publish, subscribe and request/reply, NATS-style.

use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("no one is listening on {0}")]
    NoResponders(String),
    #[error("request on {0} timed out")]
    Timeout(String),
    #[error("bus connection failed: {0}")]
    Connection(String),
}

#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    pub payload: Bytes,
    /// Where to publish the answer of a request.
    pub reply: Option<String>,
}

/// A stream of messages on one subject.
pub struct Subscription {
    rx: mpsc::Receiver<Message>,
}

impl Subscription {
    pub async fn next(&mut self) -> Option<Message> {
        let m = self.rx.recv().await;
        // Both transports deliver through here: the one place received messages are counted.
        if let Some(m) = &m {
            crate::metrics::bus_received(&m.subject);
        }
        m
    }
}

#[async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError>;
    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError>;
    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError>;
    /// Subscribes as one member of the queue group `group`: each message goes to one
    /// member only (several dcmgrs share agents' registrations and reports this way).
    /// The in-process bus has one dcmgr, so there it is a plain subscription.
    async fn subscribe_queue(&self, subject: &str, _group: &str) -> Result<Subscription, BusError> {
        self.subscribe(subject).await
    }
    /// Whether messages flow now (NATS: connected to a server). A dcmgr that hears no
    /// agent must not lead: it would record them all offline.
    fn connected(&self) -> bool {
        true
    }
    /// Where the bus is, for messages (NATS: the server's URL).
    fn describe(&self) -> String {
        "the in-process bus".into()
    }
}

// Deep enough that a burst of ensures to one host does not block dcmgr's dispatcher.
const QUEUE_DEPTH: usize = 8192;

/// The in-process bus of the all-in-one and of fast tests: exact-subject routing over
/// tokio channels.
#[derive(Default)]
pub struct InProc {
    subs: Mutex<HashMap<String, Vec<mpsc::Sender<Message>>>>,
    inbox: AtomicU64,
    /// Fault injection for tests: drop every Nth command or report (0: none).
    drop_every: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl InProc {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Drops every `n`th message to an agent and every `n`th report batch (0 turns it
    /// off), as a lossy network would. Registration, heartbeats and replies pass, so
    /// agents stay online while their work is lost.
    pub fn drop_every(&self, n: u64) {
        self.drop_every.store(n, Ordering::Relaxed);
    }

    /// How many messages [`InProc::drop_every`] has dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn lose(&self, subject: &str) -> bool {
        let n = self.drop_every.load(Ordering::Relaxed);
        let lossy = subject == vdc_schema::bus::subject::REPORT
            || (subject.starts_with("vdc.agent.") && !subject.ends_with(".query"));
        if n == 0 || !lossy {
            return false;
        }
        let lost = (self.sent.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(n);
        if lost {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        lost
    }

    async fn deliver(&self, msg: Message) -> Result<bool, BusError> {
        if self.lose(&msg.subject) {
            // Lost on the way: for a request, the sender waits for its timeout.
            return Ok(true);
        }
        let senders: Vec<_> = self.subs.lock().unwrap().get(&msg.subject).cloned().unwrap_or_default();
        let mut delivered = false;
        for tx in senders {
            if tx.send(msg.clone()).await.is_ok() {
                delivered = true;
            }
        }
        if !delivered {
            // Drop closed subscriptions so the map does not grow with dead inboxes.
            let mut subs = self.subs.lock().unwrap();
            if let Some(list) = subs.get_mut(&msg.subject) {
                list.retain(|tx| !tx.is_closed());
                if list.is_empty() {
                    subs.remove(&msg.subject);
                }
            }
        }
        Ok(delivered)
    }
}

#[async_trait]
impl Transport for InProc {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        crate::metrics::bus_sent(subject);
        // Like NATS, a publish with no subscriber is silently dropped.
        self.deliver(Message { subject: subject.to_owned(), payload, reply: None }).await?;
        Ok(())
    }

    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError> {
        crate::metrics::bus_sent(subject);
        let inbox = format!("_INBOX.{}", self.inbox.fetch_add(1, Ordering::Relaxed));
        let (tx, mut rx) = mpsc::channel(1);
        self.subs.lock().unwrap().insert(inbox.clone(), vec![tx]);
        let sent = self.deliver(Message { subject: subject.to_owned(), payload, reply: Some(inbox.clone()) }).await;
        let result = match sent {
            Ok(true) => match tokio::time::timeout(timeout, rx.recv()).await {
                Ok(Some(m)) => {
                    crate::metrics::bus_received(&m.subject);
                    Ok(m.payload)
                }
                _ => Err(BusError::Timeout(subject.to_owned())),
            },
            Ok(false) => Err(BusError::NoResponders(subject.to_owned())),
            Err(e) => Err(e),
        };
        self.subs.lock().unwrap().remove(&inbox);
        result
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        self.subs.lock().unwrap().entry(subject.to_owned()).or_default().push(tx);
        Ok(Subscription { rx })
    }
}

/// NATS between hosts. async-nats reconnects by itself and restores subscriptions, so a
/// restarted nats-server costs only the messages in flight, which reconciliation repairs.
pub struct Nats {
    client: async_nats::Client,
    url: String,
}

impl Nats {
    pub async fn connect(url: &str, name: &str) -> Result<Arc<Self>, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| BusError::Connection(format!("{url}: {e}")))?;
        Ok(Arc::new(Self { client, url: url.to_owned() }))
    }
}

#[async_trait]
impl Transport for Nats {
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn describe(&self) -> String {
        format!("NATS at {}", self.url)
    }

    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        crate::metrics::bus_sent(subject);
        self.client.publish(subject.to_owned(), payload).await.map_err(|e| BusError::Connection(e.to_string()))
    }

    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError> {
        crate::metrics::bus_sent(subject);
        let req = async_nats::Request::new().payload(payload).timeout(Some(timeout));
        match self.client.send_request(subject.to_owned(), req).await {
            Ok(m) => {
                crate::metrics::bus_received(m.subject.as_str());
                Ok(m.payload)
            }
            Err(e) => Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => BusError::NoResponders(subject.to_owned()),
                async_nats::RequestErrorKind::TimedOut => BusError::Timeout(subject.to_owned()),
                _ => BusError::Connection(e.to_string()),
            }),
        }
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        let sub = self.client.subscribe(subject.to_owned()).await.map_err(|e| BusError::Connection(e.to_string()))?;
        Ok(Self::relay(sub))
    }

    async fn subscribe_queue(&self, subject: &str, group: &str) -> Result<Subscription, BusError> {
        let sub = self
            .client
            .queue_subscribe(subject.to_owned(), group.to_owned())
            .await
            .map_err(|e| BusError::Connection(e.to_string()))?;
        Ok(Self::relay(sub))
    }
}

impl Nats {
    /// Moves a NATS subscription's messages into a [`Subscription`].
    fn relay(mut sub: async_nats::Subscriber) -> Subscription {
        use futures::StreamExt;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let msg = Message {
                    subject: m.subject.to_string(),
                    payload: m.payload,
                    reply: m.reply.map(|r| r.to_string()),
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        Subscription { rx }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inproc_request_reply_and_no_responders() {
        let bus = InProc::new();
        let mut sub = bus.subscribe("echo").await.unwrap();
        let b2 = bus.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                b2.publish(m.reply.as_deref().unwrap(), m.payload).await.unwrap();
            }
        });
        let got = bus.request("echo", Bytes::from_static(b"hi"), Duration::from_secs(1)).await.unwrap();
        assert_eq!(&got[..], b"hi");
        let err = bus.request("nobody", Bytes::new(), Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, BusError::NoResponders(_)));
    }
}
