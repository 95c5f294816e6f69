//! Messages: send (idempotent by client_id), history pages, deletion, typing.

use std::sync::Arc;

use super::ApiError;
use super::Node;
use super::Session;
use super::rooms::check_room_id;
use std::time::Duration;

use crate::clock::now_ms;
use crate::cluster::wire::ForwardedDelete;
use crate::cluster::wire::ForwardedSend;
use crate::cluster::wire::RoomAnswer;
use crate::cluster::wire::RoomCall;
use crate::cluster::wire::decode;
use crate::cluster::wire::encode;
use crate::hub::Event;
use crate::meta::RoomOp;
use crate::peer::Channel;
use crate::permissions::Action;
use crate::permissions::Role;
use crate::permissions::Standing;
use crate::protocol::Code;
use crate::protocol::Page;
use crate::protocol::typing_event;
use crate::rooms::Appended;
use crate::rooms::DEFAULT_PAGE;
use crate::rooms::MAX_PAGE;
use crate::rooms::Message;
use crate::rooms::RoomRef;

/// A send's answer, from this node's writer or from the room's owner.
enum Wait<L> {
    Local(L),
    Remote(tokio::sync::oneshot::Receiver<Result<Appended, ApiError>>),
}

/// Longest client_id, characters.
const MAX_CLIENT_ID: usize = 64;

impl Node {
    /// Checks a send against the limits and the caller's rights; answers the
    /// room to write to. Separate from the write so a WebSocket can check in
    /// order and then wait for the answer without blocking its next frame.
    pub fn check_send(&self, s: &Session, room: &str, body: &str, client_id: &str) -> Result<RoomRef, ApiError> {
        check_room_id(room)?;
        if body.is_empty() {
            return Err(ApiError::bad_request("body must not be empty"));
        }
        if body.chars().count() > self.limits.message_chars {
            return Err(ApiError::too_large(format!("body is longer than {} characters", self.limits.message_chars)));
        }
        if client_id.is_empty() || client_id.chars().count() > MAX_CLIENT_ID {
            return Err(ApiError::bad_request(format!("client_id must be 1 to {MAX_CLIENT_ID} characters")));
        }
        let meta = self.meta();
        let r = meta.authorize(&s.username, room, Action::Send)?;
        if r.muted(&s.username, now_ms()) {
            return Err(ApiError::forbidden("you are muted in this room"));
        }
        Ok(RoomRef { key: r.info.key, id: room.into(), epoch: r.info.epoch, owner: r.info.owner_node })
    }

    /// Queues a checked send in order; the returned future answers once it
    /// is durable.
    pub async fn submit_message(
        &self,
        s: &Session,
        room: RoomRef,
        body: String,
        client_id: String,
    ) -> Result<impl Future<Output = Result<Appended, ApiError>> + Send + 'static, ApiError> {
        let wait = match &self.cluster {
            Some(cluster) if room.owner == self.id && cluster.recovering.contains(room.key) => {
                return Err(ApiError::unavailable("the room is moving to this node; retry"));
            }
            Some(cluster) if room.owner != self.id => {
                let send = ForwardedSend {
                    id: 0,
                    from: s.username.to_string(),
                    room: room.id.to_string(),
                    body,
                    client_id,
                    applied: self.consensus.applied_index(),
                };
                Wait::Remote(cluster.forwarder.submit(room.owner, send).await?)
            }
            _ => Wait::Local(self.writer.submit_append(room, s.username.to_string(), body, client_id).await?),
        };
        Ok(async move {
            let appended = match wait {
                Wait::Local(pending) => pending.await?,
                Wait::Remote(answer) => {
                    answer.await.map_err(|_| ApiError::unavailable("the room's owner went away; retry"))??
                }
            };
            metrics::counter!("palaver_sends_total").increment(1);
            Ok(appended)
        })
    }

    /// Checks and stores a send made over HTTP (rate limited per session).
    pub async fn send(&self, s: &Session, room: &str, body: String, client_id: String) -> Result<Appended, ApiError> {
        let r = self.check_send(s, room, &body, &client_id)?;
        self.http_sends.take(&s.token_hash, now_ms()).map_err(ApiError::rate_limited)?;
        self.submit_message(s, r, body, client_id).await?.await
    }

    /// A page of history.
    pub fn history(&self, s: &Session, room: &str, page: Page, limit: Option<usize>) -> Result<Vec<Message>, ApiError> {
        let r = self.readable_room(s, room)?;
        let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        Ok(match page {
            Page::After(n) => self.log.after(r.key, n, limit)?,
            Page::Before(n) => self.log.before(r.key, n, limit)?,
        })
    }

    /// Deletes a message's body (its sender, or a moderator or owner).
    pub async fn delete_message(&self, s: &Session, room: &str, seq: u64) -> Result<(), ApiError> {
        check_room_id(room)?;
        let (r, moderator) = {
            let meta = self.meta();
            let r = meta.authorize(&s.username, room, Action::DeleteMessage { own: true })?;
            let moderator = matches!(r.standing(&s.username), Standing::Member(role) if role >= Role::Moderator);
            (RoomRef { key: r.info.key, id: room.into(), epoch: r.info.epoch, owner: r.info.owner_node }, moderator)
        };
        let sender = match &self.cluster {
            Some(cluster) if r.owner != self.id => {
                let call = RoomCall::Delete(ForwardedDelete {
                    actor: s.username.to_string(),
                    moderator,
                    room: room.to_string(),
                    seq,
                    applied: self.consensus.applied_index(),
                });
                let bytes = cluster
                    .endpoint
                    .request(r.owner, Channel::Rooms, encode(&call), Duration::from_secs(10))
                    .await
                    .map_err(|e| ApiError::unavailable(format!("the room's owner is unreachable: {e}")))?;
                match decode::<RoomAnswer>(&bytes).map_err(ApiError::internal)? {
                    RoomAnswer::Deleted(sender) => sender,
                    RoomAnswer::Refused(code, message) => return Err(ApiError::new(Code::parse(&code), message)),
                    RoomAnswer::Records(_) | RoomAnswer::Tail { .. } => {
                        return Err(ApiError::internal("unexpected answer to a delete"));
                    }
                }
            }
            _ => self.writer.delete(r, seq, s.username.to_string(), moderator).await?,
        };
        if sender != *s.username {
            self.room_op(s, room, RoomOp::AuditDelete { sender, seq }).await?;
        }
        Ok(())
    }

    /// Tells the room's other listeners that the caller is typing.
    pub fn typing(&self, s: &Session, room: &str) -> Result<(), ApiError> {
        check_room_id(room)?;
        let key = self.meta().authorize(&s.username, room, Action::Send)?.info.key;
        if let Some(cluster) = &self.cluster {
            cluster.broadcast(&crate::cluster::wire::Gossip::Typing {
                room_key: key,
                room: room.to_string(),
                username: s.username.to_string(),
            });
        }
        let json = typing_event(room, &s.username);
        self.hub.publish(Event {
            room_key: key,
            room: Arc::from(room),
            seq: 0,
            json: json.into(),
            except: Some(s.username.clone()),
        });
        Ok(())
    }
}
