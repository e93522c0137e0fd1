//! `vdc bundle push` (issue 13, point 6): the source site's bundle streamed to the target
//! site, carrying only the chunks the target's import will use and lacks.
//!
//! The CLI drives it, between the two dcmgrs: it reads the source's export as a stream,
//! sends the target the head (manifest and signature) and the maps, and the target answers
//! which chunks its import would use (`POST /bundle/chunks/wanted`): those it lacks for the
//! caller's account (sent) and those the account holds there (sent as a reference frame,
//! `R`, 37 bytes). Every other chunk is left out (`N`, 37 bytes): the disks of instances
//! and the data of volumes the target keeps as they are do not travel again at every push
//! (a running guest changes its disk, so each push sent its changed chunks; 13.8 MB per
//! instance in the two-host test). The manifest and its signature pass through unchanged;
//! the target verifies everything as for any bundle, resolves each reference from what the
//! account holds there, checking its hash again, and refuses an import that needs a chunk
//! left out (something changed there since it answered): nothing is made, push again. A
//! target without that question (an older vdc) is asked which chunks it lacks
//! (`POST /bundle/chunks/missing`) and every other chunk is sent.
//!
//! Why the CLI and not the source dcmgr: the target's token stays with the user (it is
//! never handed to the source site), the source needs no outbound connections to URLs a
//! tenant names (no request forgery from inside a site), and the export path is the one
//! `bundle export` uses. The typical push is from a laptop's `vdc up` to a datacenter:
//! the source-to-CLI leg is local, and the leg to the target is the one the dedup saves.
//! Nothing is held whole in memory or on disk: the manifest and one chunk at a time.

use crate::client::{Client, ClientError};
use std::collections::HashSet;
use vdc_schema::api::{BundleChunkQuery, BundleImported, BundlePlan, MAX_CHUNK_QUERY};

/// What to push and how.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    pub maps: Vec<String>,
    pub prune: bool,
    pub model_only: bool,
    pub stop: bool,
    /// Plan only: the target verifies the bundle and answers what an import would do.
    pub dry_run: bool,
}

/// What a push did: the target's answer and the bytes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PushReport {
    /// The target's plan (`--dry-run`).
    pub plan: Option<BundlePlan>,
    /// The target's import (without `--dry-run`).
    pub import: Option<BundleImported>,
    /// Bytes sent to the target.
    pub bytes_sent: u64,
    /// Bytes of the whole bundle: what a push without dedup would have sent.
    pub bytes_full: u64,
    /// Chunks of the bundle, those sent, those the target held (referenced), and those
    /// left out (the target's import does not use them).
    pub chunks: u64,
    pub chunks_sent: u64,
    pub chunks_held: u64,
    #[serde(default)]
    pub chunks_left_out: u64,
    /// False when the target does not answer which chunks it lacks (an older vdc): then
    /// every chunk is sent.
    pub dedup: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the source site: {0}")]
    Source(ClientError),
    #[error("the target site: {0}")]
    Target(ClientError),
    #[error("relaying the bundle: {0}")]
    Stream(String),
}

impl PushError {
    /// The API error code, when a site answered one.
    pub fn code(&self) -> &str {
        match self {
            PushError::Source(e) | PushError::Target(e) => e.code(),
            PushError::Stream(_) => "bundle_push_failed",
        }
    }
}

/// A writer into the request body's channel (blocking side).
struct ChannelWriter(tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the target stopped reading"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Which of `chunks` the target lacks; `None` when the target cannot answer (an older
/// vdc without `bundle/chunks/missing`).
async fn missing(target: &Client, chunks: &[String]) -> Result<Option<HashSet<String>>, ClientError> {
    let mut out = HashSet::new();
    for part in chunks.chunks(MAX_CHUNK_QUERY) {
        let q = BundleChunkQuery { chunks: part.to_vec() };
        match target.missing_chunks(&q).await {
            Ok(m) => out.extend(m.missing),
            Err(ClientError::Api { status: 404 | 405, .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(out))
}

/// How each chunk goes to the target.
#[derive(Default)]
struct Choice {
    /// Chunks sent as references.
    held: HashSet<String>,
    /// With the target's answer of what its import uses: the chunks to carry (the rest
    /// is left out). Without it, every chunk not held is carried.
    send: Option<HashSet<String>>,
}

impl Choice {
    fn pass(&self, sha: &str) -> vdc_bundle::Pass {
        use vdc_bundle::Pass;
        match &self.send {
            _ if self.held.contains(sha) => Pass::Reference,
            Some(send) if !send.contains(sha) => Pass::LeaveOut,
            _ => Pass::Carry,
        }
    }
}

/// What the target wants of the bundle whose head is `head`; `Ok(None)` when it cannot
/// answer (an older vdc without `bundle/chunks/wanted`).
async fn wanted(target: &Client, head: Vec<u8>, o: &PushOptions) -> Result<Option<Choice>, ClientError> {
    match target.wanted_chunks(head, &o.maps, o.prune).await {
        Ok(w) => Ok(Some(Choice { held: w.held.into_iter().collect(), send: Some(w.send.into_iter().collect()) })),
        Err(ClientError::Api { status: 404 | 405, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Pushes the source account's VDC to the target account (see the module's text).
pub async fn push(source: &Client, target: &Client, o: &PushOptions) -> Result<PushReport, PushError> {
    use futures::TryStreamExt;
    let resp = source.export_response(o.model_only, o.stop).await.map_err(PushError::Source)?;
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    let mut reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));

    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let (choice_tx, choice_rx) = tokio::sync::oneshot::channel::<Choice>();
    let (body_tx, mut body_rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let relay = tokio::task::spawn_blocking(move || -> Result<(u64, vdc_bundle::Relayed), String> {
        let limits = vdc_bundle::Limits::default();
        let head = match vdc_bundle::read_head(&mut reader, &limits) {
            Ok(h) => h,
            Err(e) => return Err(format!("the source's bundle: {e}")),
        };
        let head_len = head.bytes.len() as u64;
        let head_bytes = head.bytes.clone();
        if head_tx.send((head.chunks, head.bytes)).is_err() {
            return Err("cancelled".into());
        }
        let Ok(choice) = choice_rx.blocking_recv() else { return Err("cancelled".into()) };
        let mut w = std::io::BufWriter::with_capacity(1 << 20, ChannelWriter(body_tx.clone()));
        let r = std::io::Write::write_all(&mut w, &head_bytes)
            .map_err(vdc_bundle::BundleError::from)
            .and_then(|_| vdc_bundle::relay_with(&mut reader, &mut w, |h| choice.pass(h)));
        match r {
            Ok(relayed) => {
                // The source removes the export's temporary images and snapshots before
                // its body ends: read to that end, so none is left when the push returns.
                drop((w, body_tx)); // the target's body ends here
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                Ok((head_len, relayed))
            }
            Err(e) => {
                // The target sees a cut body and refuses it; the reason is this one.
                let _ = body_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                Err(e.to_string())
            }
        }
    });
    let relay_error = |r: Result<Result<(u64, vdc_bundle::Relayed), String>, tokio::task::JoinError>| match r {
        Ok(Ok(_)) => PushError::Stream("the relay ended early".into()),
        Ok(Err(e)) => PushError::Stream(e),
        Err(e) => PushError::Stream(e.to_string()),
    };

    let (chunks, head) = match head_rx.await {
        Ok(c) => c,
        Err(_) => return Err(relay_error(relay.await)),
    };
    let (choice, dedup) = match wanted(target, head, o).await.map_err(PushError::Target)? {
        Some(c) => (c, true),
        None => {
            let hashes: Vec<String> = chunks.iter().map(|c| c.sha256.clone()).collect();
            match missing(target, &hashes).await.map_err(PushError::Target)? {
                Some(m) => (Choice { held: hashes.into_iter().filter(|h| !m.contains(h)).collect(), send: None }, true),
                None => (Choice::default(), false),
            }
        }
    };
    let _ = choice_tx.send(choice);
    let body = reqwest::Body::wrap_stream(futures::stream::poll_fn(move |cx| body_rx.poll_recv(cx)));
    let (plan, import) = if o.dry_run {
        let p = match o.prune {
            true => target.plan_bundle_pruning(body, &o.maps).await,
            false => target.plan_bundle(body, &o.maps).await,
        };
        (Some(p), None)
    } else {
        let i = match o.prune {
            true => target.import_bundle_pruning(body, &o.maps).await,
            false => target.import_bundle(body, &o.maps).await,
        };
        (None, Some(i))
    };
    let relayed = relay.await;
    let target_error = matches!((&plan, &import), (Some(Err(_)), _) | (_, Some(Err(_))));
    let (head_len, r) = match relayed {
        Ok(Ok(v)) => v,
        // The target answered before reading everything (it refused the bundle): its
        // answer is the reason.
        Ok(Err(m)) if target_error && m.contains("the target stopped reading") => {
            let e = plan.and_then(|p| p.err()).or_else(|| import.and_then(|i| i.err()));
            return Err(PushError::Target(e.expect("a target error")));
        }
        // The source's stream was cut (or is not a bundle): the target saw a cut body.
        other => return Err(relay_error(other)),
    };
    Ok(PushReport {
        plan: plan.transpose().map_err(PushError::Target)?,
        import: import.transpose().map_err(PushError::Target)?,
        bytes_sent: head_len + r.bytes_out,
        bytes_full: head_len + r.bytes_in,
        chunks: chunks.len() as u64,
        chunks_sent: r.carried,
        chunks_held: r.referenced,
        chunks_left_out: r.left_out,
        dedup,
    })
}
