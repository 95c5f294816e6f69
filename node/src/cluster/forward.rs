//! Sends made on a node that does not lead the room's shard travel to the
//! shard's leader on one ordered stream per leader node, so a client's
//! pipelined sends keep their order; the leader answers each by id as its
//! shard commits them.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use palaver_protocol::Code;
use parking_lot::Mutex;
use quinn::RecvStream;
use quinn::SendStream;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::wire::ForwardedAnswer;
use super::wire::ForwardedSend;
use crate::error::ApiError;
use crate::peer::Channel;
use crate::peer::PeerEndpoint;
use crate::peer::codec::decode;
use crate::peer::codec::encode;
use crate::peer::frame;
use crate::rooms::Appended;

/// The first frame of a forwarding stream (the `Rooms` channel's only kind).
pub const STREAM_FORWARD: u8 = 2;
/// Sends queued per leader before callers wait.
const QUEUE: usize = 4_096;
/// Sends written in one frame at most.
const FRAME_SENDS: usize = 256;

type Answer = oneshot::Sender<Result<Appended, ApiError>>;

/// Forwarded sends, one link per leader node.
pub struct Forwarder {
    endpoint: PeerEndpoint,
    links: Mutex<HashMap<u64, mpsc::Sender<(ForwardedSend, Answer)>>>,
}

fn unavailable(leader: u64) -> ApiError {
    ApiError::unavailable(format!("the shard leader (node {leader}) is unreachable; retry"))
}

impl Forwarder {
    /// No links yet; they open on first use.
    pub fn new(endpoint: PeerEndpoint) -> Self {
        Self { endpoint, links: Mutex::new(HashMap::new()) }
    }

    /// Queues a send for `leader` in order; the receiver gets its answer.
    pub async fn submit(
        &self,
        leader: u64,
        send: ForwardedSend,
    ) -> Result<oneshot::Receiver<Result<Appended, ApiError>>, ApiError> {
        let tx = {
            let mut links = self.links.lock();
            match links.get(&leader) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(link(self.endpoint.clone(), leader, rx));
                    links.insert(leader, tx.clone());
                    tx
                }
            }
        };
        let (answer, wait) = oneshot::channel();
        tx.send((send, answer)).await.map_err(|_| unavailable(leader))?;
        Ok(wait)
    }
}

/// One stream to a leader: writes sends in order, matches answers by id.
/// When the stream breaks, every unanswered send is told to retry and the
/// link ends; the next send opens a new one.
async fn link(endpoint: PeerEndpoint, leader: u64, mut rx: mpsc::Receiver<(ForwardedSend, Answer)>) {
    let opened = async {
        let (mut send, recv) = endpoint.open_stream(leader, Channel::Rooms).await.ok()?;
        frame::write_frame(&mut send, &[STREAM_FORWARD]).await.ok()?;
        Some((send, recv))
    };
    let Some((mut send, mut recv)) = opened.await else {
        rx.close();
        while let Some((_, answer)) = rx.recv().await {
            let _ = answer.send(Err(unavailable(leader)));
        }
        return;
    };
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<ForwardedAnswer>();
    let reader = tokio::spawn(async move {
        while let Ok(Some(bytes)) = frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME).await {
            let Ok(list) = decode::<Vec<ForwardedAnswer>>(&bytes) else { return };
            for a in list {
                if answers_tx.send(a).is_err() {
                    return;
                }
            }
        }
    });
    let mut pending: HashMap<u64, Answer> = HashMap::new();
    let mut next_id = 0u64;
    let mut frame_sends = Vec::new();
    loop {
        tokio::select! {
            item = rx.recv() => {
                let Some(first) = item else { break };
                let mut item = Some(first);
                while let Some((mut s, answer)) = item.take() {
                    next_id += 1;
                    s.id = next_id;
                    pending.insert(next_id, answer);
                    frame_sends.push(s);
                    if frame_sends.len() < FRAME_SENDS {
                        item = rx.try_recv().ok();
                    }
                }
                if frame::write_frame(&mut send, &encode(&frame_sends)).await.is_err() {
                    break;
                }
                frame_sends.clear();
            }
            answer = answers.recv() => {
                let Some(a) = answer else { break };
                if let Some(waiting) = pending.remove(&a.id) {
                    let result = a.result.map_err(|(code, message)| ApiError::new(Code::parse(&code), message));
                    let _ = waiting.send(result);
                }
            }
        }
    }
    reader.abort();
    tracing::info!(leader, unanswered = pending.len(), "forwarding stream to the shard leader ended");
    rx.close();
    for (_, waiting) in pending.drain() {
        let _ = waiting.send(Err(unavailable(leader)));
    }
    while let Some((_, answer)) = rx.recv().await {
        let _ = answer.send(Err(unavailable(leader)));
    }
}

/// A forwarded send's answer, once it is ordered (or refused).
pub type Pending = BoxFuture<'static, Result<Appended, ApiError>>;

/// What the leader's side of a forwarding stream needs of its node.
pub trait SendTarget: Send + Sync + 'static {
    /// Checks a forwarded send and queues it on its shard: the error is the
    /// refusal, the future the send's answer.
    fn accept(&self, send: ForwardedSend) -> BoxFuture<'_, Result<Pending, ApiError>>;
}

/// Owner side: serves one forwarding stream from `peer`.
pub async fn serve(target: Arc<dyn SendTarget>, peer: u64, mut recv: RecvStream, mut send: SendStream) {
    let (out_tx, mut out_rx) = mpsc::channel::<ForwardedAnswer>(QUEUE);
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        while let Some(first) = out_rx.recv().await {
            batch.push(first);
            while batch.len() < FRAME_SENDS {
                match out_rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            if frame::write_frame(&mut send, &encode(&batch)).await.is_err() {
                return;
            }
            batch.clear();
        }
    });
    while let Ok(Some(bytes)) = frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME).await {
        let sends: Vec<ForwardedSend> = match decode(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer, error = %e, "dropping a forwarding stream with a bad frame");
                break;
            }
        };
        for s in sends {
            let id = s.id;
            let result = target.accept(s).await;
            let out = out_tx.clone();
            tokio::spawn(async move {
                let result = match result {
                    Ok(wait) => wait.await,
                    Err(e) => Err(e),
                };
                let result = result.map_err(|e| (e.code.as_str().to_string(), e.message));
                let _ = out.send(ForwardedAnswer { id, result }).await;
            });
        }
    }
    drop(out_tx);
    let _ = writer.await;
}
