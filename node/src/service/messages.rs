//! Messages: send (idempotent by client_id), history pages, deletion, typing.

use palaver_protocol::Code;
use palaver_protocol::Page;
use palaver_protocol::Role;
use palaver_protocol::ServerEvent;

use super::ApiError;
use super::Node;
use super::Session;
use super::rooms::check_room_id;
use super::rooms::room_ref;
use std::time::Duration;

use crate::clock::now_ms;
use crate::cluster::wire::ChangeDone;
use crate::cluster::wire::ForwardedChange;
use crate::cluster::wire::ForwardedDelete;
use crate::cluster::wire::ForwardedSend;
use crate::cluster::wire::MessageChange;
use crate::cluster::wire::RoomAnswer;
use crate::cluster::wire::RoomCall;
use crate::hub::Event;
use crate::meta::RoomOp;
use crate::peer::Channel;
use crate::peer::codec::decode;
use crate::peer::codec::encode;
use crate::permissions::Action;
use crate::permissions::Standing;
use crate::protocol::to_json;
use crate::rooms::Appended;
use crate::rooms::DEFAULT_PAGE;
use crate::rooms::MAX_PAGE;
use crate::rooms::Message;
use crate::rooms::RoomRef;
use crate::shards::types::OpResult;
use crate::shards::types::ShardOp;
use futures_util::FutureExt;

/// A history page and, when it was cut short at the byte cap, the cursor
/// of the rest.
#[derive(Debug)]
pub struct HistoryPage {
    /// The messages, ascending.
    pub messages: Vec<Message>,
    /// Where the next page starts (`after` or `before` as asked).
    pub next: Option<Page>,
}

/// Adds messages to a page until its JSON reaches the byte cap.
struct PageFill<'a> {
    room: &'a str,
    cap: usize,
    bytes: usize,
    messages: Vec<Message>,
}

impl PageFill<'_> {
    /// Adds `m` unless the page is full (a page always takes its first).
    fn take(&mut self, m: Message) -> bool {
        let size = to_json(&crate::protocol::message(self.room, &m)).len() + 1;
        if !self.messages.is_empty() && self.bytes + size > self.cap {
            return false;
        }
        self.bytes += size;
        self.messages.push(m);
        true
    }
}

/// How long a send waits for its shard to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// Longest client_id, characters.
const MAX_CLIENT_ID: usize = 64;

impl Node {
    /// Checks a send against the limits and the caller's rights; answers the
    /// room to write to. Separate from the write so a WebSocket can check in
    /// order and then wait for the answer without blocking its next frame.
    pub async fn check_send(&self, s: &Session, room: &str, body: &str, client_id: &str) -> Result<RoomRef, ApiError> {
        check_room_id(room)?;
        self.check_body(body)?;
        if client_id.is_empty() || client_id.chars().count() > MAX_CLIENT_ID {
            return Err(ApiError::bad_request(format!("client_id must be 1 to {MAX_CLIENT_ID} characters")));
        }
        self.read(|meta| may_send(meta, &s.username, room)).await
    }

    /// Queues a checked send in order; the returned future answers once it
    /// is durable.
    pub async fn submit_message(
        &self,
        s: &Session,
        room: RoomRef,
        post: NewPost,
    ) -> Result<futures_util::future::BoxFuture<'static, Result<Appended, ApiError>>, ApiError> {
        self.submit_to_shard(s.username.to_string(), room, post, false).await
    }

    /// Queues a checked send on its shard: on this node's batcher when this
    /// node leads the shard, otherwise on the ordered stream to the leader
    /// (`relayed`: the send was forwarded here already).
    pub(crate) async fn submit_to_shard(
        &self,
        from: String,
        room: RoomRef,
        post: NewPost,
        relayed: bool,
    ) -> Result<futures_util::future::BoxFuture<'static, Result<Appended, ApiError>>, ApiError> {
        let NewPost { body, client_id, reply_to, attachments } = post;
        let shards = self.shards();
        let shard = self.shard_of(&room.id)?;
        let mut led = shards.led(shard);
        if led.is_none() && shards.leader(shard).is_none() {
            // An election is under way: this node may be the one to win it.
            shards.wait_for_leader(shard, LEADER_WAIT).await;
            led = shards.led(shard);
        }
        if let Some(raft) = led {
            let (room_key, room) = (room.key, room.id.to_string());
            let op = if attachments.is_empty() {
                ShardOp::Post { room_key, room, from, body, client_id, reply_to }
            } else {
                ShardOp::PostWith { room_key, room, from, body, client_id, reply_to, attachments }
            };
            let wait = shards.enqueue(shard, raft, op).await?;
            return Ok(async move {
                let appended = match super::shards::answered(wait).await? {
                    OpResult::Stored { seq, ts } => Appended { seq, ts, duplicate: false },
                    OpResult::Duplicate { seq, ts } => Appended { seq, ts, duplicate: true },
                    OpResult::NoSuchReply => return Err(no_such_reply()),
                    OpResult::NoSuchAttachment => return Err(super::attachments::no_such_attachment()),
                    other => return Err(ApiError::internal(format!("a send answered {other:?}"))),
                };
                metrics::counter!("palaver_sends_total").increment(1);
                Ok(appended)
            }
            .boxed());
        }
        let leader = shards.leader(shard).or_else(|| self.meta().layout.replicas(shard).first().copied());
        let (Some(leader), Some(cluster)) = (leader, &self.cluster) else {
            return Err(ApiError::unavailable(format!("shard {shard} has no leader yet; retry")));
        };
        let send = ForwardedSend {
            id: 0,
            from,
            room: room.id.to_string(),
            body,
            client_id,
            applied: self.consensus.applied_index(),
            relayed,
            reply_to,
            attachments,
        };
        let answer = cluster.forwarder.submit(leader, send).await?;
        Ok(async move {
            let appended = answer
                .await
                .map_err(|_| ApiError::unavailable(format!("the shard leader (node {leader}) went away; retry")))??;
            metrics::counter!("palaver_sends_total").increment(1);
            Ok(appended)
        }
        .boxed())
    }

    /// Checks and stores a send made over HTTP (rate limited per session).
    pub async fn send(&self, s: &Session, room: &str, post: NewPost) -> Result<Appended, ApiError> {
        let r = self.check_send(s, room, &post.body, &post.client_id).await?;
        self.quotas.take(super::Usage::Send, &s.username, now_ms())?;
        self.submit_message(s, r, post).await?.await
    }

    /// Changes the text of one of the caller's messages (not while muted);
    /// answers the message as it is now. The old text goes to the room's
    /// audit.
    pub async fn edit_message(&self, s: &Session, room: &str, seq: u64, body: String) -> Result<Message, ApiError> {
        check_room_id(room)?;
        self.check_body(&body)?;
        let r = self.read(|meta| may_send(meta, &s.username, room)).await?;
        self.quotas.take(super::Usage::Send, &s.username, now_ms())?;
        match self.change_message(&s.username, r, seq, MessageChange::Edit { body }).await? {
            ChangeDone::Edited { message, old_body } => {
                self.room_op(s, room, RoomOp::AuditEdit { seq, old_body }).await?;
                Ok(message)
            }
            ChangeDone::Reacted => Err(ApiError::internal("an edit answered as a reaction")),
        }
    }

    /// Adds (`on`) or takes back the caller's `emoji` on a message.
    pub async fn set_reaction(&self, s: &Session, room: &str, seq: u64, emoji: &str, on: bool) -> Result<(), ApiError> {
        check_room_id(room)?;
        check_emoji(emoji)?;
        let r = self.read(|meta| may_react(meta, &s.username, room)).await?;
        self.quotas.take(super::Usage::Send, &s.username, now_ms())?;
        let change = MessageChange::React { emoji: emoji.to_string(), on };
        self.change_message(&s.username, r, seq, change).await.map(|_| ())
    }

    /// Orders a change to a message where the room's shard is led.
    async fn change_message(
        &self,
        actor: &str,
        room: RoomRef,
        seq: u64,
        change: MessageChange,
    ) -> Result<ChangeDone, ApiError> {
        let shard = self.shard_of(&room.id)?;
        let leader = self
            .shards()
            .leader(shard)
            .ok_or_else(|| ApiError::unavailable(format!("shard {shard} has no leader; retry")))?;
        if leader == self.id {
            return self.change_on_shard(room, seq, actor.to_string(), change).await;
        }
        let call = RoomCall::Change(ForwardedChange {
            actor: actor.to_string(),
            room: room.id.to_string(),
            seq,
            change,
            applied: self.consensus.applied_index(),
        });
        match self.call_leader(leader, &call).await? {
            RoomAnswer::Changed(done) => Ok(done),
            other => Err(ApiError::internal(format!("a message change answered {other:?}"))),
        }
    }

    /// Sends a room call to the leader of the room's shard; its refusal
    /// comes back as the error it was there.
    pub(super) async fn call_leader(&self, leader: u64, call: &RoomCall) -> Result<RoomAnswer, ApiError> {
        let cluster = self.cluster.as_ref().ok_or_else(|| ApiError::internal("no peers to forward a call to"))?;
        let bytes = cluster
            .endpoint
            .request(leader, Channel::Rooms, encode(call), Duration::from_secs(10))
            .await
            .map_err(|e| ApiError::unavailable(format!("the shard leader (node {leader}) is unreachable: {e}")))?;
        match decode::<RoomAnswer>(&bytes).map_err(ApiError::internal)? {
            RoomAnswer::Refused(code, message) => Err(ApiError::new(Code::parse(&code), message)),
            answer => Ok(answer),
        }
    }

    /// Applies a change to a message through its shard's log; this node
    /// must lead the shard.
    pub(crate) async fn change_on_shard(
        &self,
        room: RoomRef,
        seq: u64,
        actor: String,
        change: MessageChange,
    ) -> Result<ChangeDone, ApiError> {
        let shards = self.shards();
        let shard = self.shard_of(&room.id)?;
        let raft = shards
            .led(shard)
            .ok_or_else(|| ApiError::unavailable(format!("node {} does not lead shard {shard}; retry", self.id)))?;
        let (room_key, room) = (room.key, room.id.to_string());
        let op = match change {
            MessageChange::Edit { body } => ShardOp::Edit { room_key, room, seq, actor, body },
            MessageChange::React { emoji, on } => ShardOp::React { room_key, room, seq, actor, emoji, on },
        };
        match super::shards::answered(shards.enqueue(shard, raft, op).await?).await? {
            OpResult::Edited { message, old_body } => Ok(ChangeDone::Edited { message: *message, old_body }),
            OpResult::Reacted { .. } => Ok(ChangeDone::Reacted),
            OpResult::NotFound => Err(ApiError::not_found("message")),
            OpResult::Forbidden => Err(ApiError::forbidden("only the sender may edit a message")),
            OpResult::TooManyReactions => Err(ApiError::bad_request(format!(
                "a message carries at most {} different reactions",
                crate::shards::machine::MAX_REACTIONS
            ))),
            other => Err(ApiError::internal(format!("a message change answered {other:?}"))),
        }
    }

    fn check_body(&self, body: &str) -> Result<(), ApiError> {
        if body.is_empty() {
            return Err(ApiError::bad_request("body must not be empty"));
        }
        if body.chars().count() > self.limits.message_chars {
            return Err(ApiError::too_large(format!("body is longer than {} characters", self.limits.message_chars)));
        }
        Ok(())
    }

    /// A page of history, with every message answered as sent anywhere
    /// before this call; cut short at `history_page_bytes` of JSON (never
    /// below one message), with the cursor that continues it.
    pub async fn history(
        &self,
        s: &Session,
        room: &str,
        page: Page,
        limit: Option<usize>,
    ) -> Result<HistoryPage, ApiError> {
        let r = self.readable_room(s, room).await?;
        let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let mut fill = PageFill { room, cap: self.limits.history_page_bytes, bytes: 0, messages: Vec::new() };
        let found = self.read_page(&r, page, limit).await?;
        Ok(match page {
            Page::After(mut cursor) => {
                for m in found {
                    let seq = m.seq;
                    if !fill.take(m) {
                        return Ok(HistoryPage { messages: fill.messages, next: Some(Page::After(cursor)) });
                    }
                    cursor = seq;
                }
                HistoryPage { messages: fill.messages, next: None }
            }
            Page::Before(mut cursor) => {
                let mut next = None;
                for m in found.into_iter().rev() {
                    let seq = m.seq;
                    if !fill.take(m) {
                        next = Some(Page::Before(cursor));
                        break;
                    }
                    cursor = seq;
                }
                fill.messages.reverse();
                HistoryPage { messages: fill.messages, next }
            }
        })
    }

    /// Deletes a message's body (its sender, or a moderator or owner).
    pub async fn delete_message(&self, s: &Session, room: &str, seq: u64) -> Result<(), ApiError> {
        check_room_id(room)?;
        let (r, moderator) = self
            .read(|meta| {
                let r = meta.authorize(&s.username, room, Action::DeleteMessage { own: true })?;
                let moderator = matches!(r.standing(&s.username), Standing::Member(role) if role >= Role::Moderator);
                let r = room_ref(&r.info, room);
                Ok((r, moderator))
            })
            .await?;
        // Ordered where the room's shard is led.
        let shard = self.shard_of(room)?;
        let leader = self
            .shards()
            .leader(shard)
            .ok_or_else(|| ApiError::unavailable(format!("shard {shard} has no leader; retry")))?;
        let sender = if leader == self.id {
            self.delete_on_shard(r, seq, s.username.to_string(), moderator).await?
        } else {
            self.forward_delete(leader, room, seq, &s.username).await?
        };
        if sender != *s.username {
            self.room_op(s, room, RoomOp::AuditDelete { sender, seq }).await?;
        }
        Ok(())
    }

    /// Asks the leader of the room's shard to delete a message (it decides
    /// the actor's standing again); answers the message's sender.
    async fn forward_delete(&self, leader: u64, room: &str, seq: u64, actor: &str) -> Result<String, ApiError> {
        let call = RoomCall::Delete(ForwardedDelete {
            actor: actor.to_string(),
            room: room.to_string(),
            seq,
            applied: self.consensus.applied_index(),
        });
        match self.call_leader(leader, &call).await? {
            RoomAnswer::Deleted(sender) => Ok(sender),
            other => Err(ApiError::internal(format!("a delete answered {other:?}"))),
        }
    }

    /// Removes a message's body through its shard's log; this node must
    /// lead the shard. Answers the message's sender.
    pub(crate) async fn delete_on_shard(
        &self,
        room: RoomRef,
        seq: u64,
        actor: String,
        moderator: bool,
    ) -> Result<String, ApiError> {
        let shards = self.shards();
        let shard = self.shard_of(&room.id)?;
        let raft = shards
            .led(shard)
            .ok_or_else(|| ApiError::unavailable(format!("node {} does not lead shard {shard}; retry", self.id)))?;
        let op = ShardOp::Delete { room_key: room.key, room: room.id.to_string(), seq, actor, moderator };
        match super::shards::answered(shards.enqueue(shard, raft, op).await?).await? {
            OpResult::Deleted { sender } => Ok(sender),
            OpResult::NotFound => Err(ApiError::not_found("message")),
            OpResult::Forbidden => Err(ApiError::forbidden("only the sender or a moderator may delete a message")),
            other => Err(ApiError::internal(format!("a delete answered {other:?}"))),
        }
    }

    /// Tells the room's other listeners that the caller is typing.
    pub async fn typing(&self, s: &Session, room: &str) -> Result<(), ApiError> {
        check_room_id(room)?;
        let key = self.read(|meta| Ok(meta.authorize(&s.username, room, Action::Send)?.info.key)).await?;
        if let Some(cluster) = &self.cluster {
            // To the replicas of the room's shard, which pass it on to the
            // nodes that watch the room on them: only nodes with listeners
            // of the room get it.
            let shard = self.shard_of(room)?;
            let replicas: Vec<u64> =
                self.meta().layout.replicas(shard).iter().copied().filter(|id| *id != self.id).collect();
            cluster.tell(
                &replicas,
                &crate::cluster::wire::Gossip::Typing {
                    room_key: key,
                    room: room.to_string(),
                    username: s.username.to_string(),
                },
            );
        }
        let typing = ServerEvent::Typing { room, username: &*s.username };
        let event = Event::notice(key, &typing, Some(s.username.clone()));
        self.hub.publish(Event { relay: crate::hub::Relay::Watchers, ..event });
        Ok(())
    }
}

/// A message to send: what a client gives besides the room.
#[derive(Debug, Clone)]
pub struct NewPost {
    /// The text.
    pub body: String,
    /// The sender's idempotency key.
    pub client_id: String,
    /// The message of the same room it answers.
    pub reply_to: Option<u64>,
    /// Attachments of the same room it carries ([`Node::attachment_ids`]).
    pub attachments: Vec<crate::rooms::attachments::AttachmentId>,
}

fn no_such_reply() -> ApiError {
    ApiError::bad_request("reply_to names no message of this room")
}

/// Longest `:name:` reaction, characters.
const MAX_EMOJI_NAME: usize = 32;

/// A reaction is one grapheme cluster beyond ASCII (an emoji, with its
/// modifiers and joiners; a plain letter or digit is text, not a reaction),
/// or a short `:name:` of letters, digits, `_`, `+` and `-`.
pub(crate) fn check_emoji(emoji: &str) -> Result<(), ApiError> {
    use unicode_segmentation::UnicodeSegmentation;
    let named = emoji.len() > 2
        && emoji.chars().count() <= MAX_EMOJI_NAME
        && emoji.starts_with(':')
        && emoji.ends_with(':')
        && emoji[1..emoji.len() - 1].chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '+' | '-'));
    let one_cluster = emoji.graphemes(true).count() == 1
        && !emoji.is_ascii()
        && !emoji.chars().any(|c| c.is_whitespace() || c.is_control());
    if named || one_cluster {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "a reaction is one emoji or a :name: of at most {MAX_EMOJI_NAME} characters"
        )))
    }
}

/// Whether `username` may react in `room`: whoever may send there, muted or not.
pub(crate) fn may_react(meta: &crate::meta::MetaState, username: &str, room: &str) -> Result<RoomRef, ApiError> {
    Ok(room_ref(&meta.authorize(username, room, Action::Send)?.info, room))
}

/// Whether `username` may send to `room` now: a member (or whoever the room's
/// visibility lets send) who is not muted. Checked where the send arrives and
/// again where it is ordered (the leader of the room's shard).
pub(crate) fn may_send(meta: &crate::meta::MetaState, username: &str, room: &str) -> Result<RoomRef, ApiError> {
    let r = meta.authorize(username, room, Action::Send)?;
    if r.muted(username, now_ms()) {
        return Err(ApiError::forbidden("you are muted in this room"));
    }
    Ok(room_ref(&r.info, room))
}

#[cfg(test)]
mod tests {
    use super::check_emoji;

    #[test]
    fn a_reaction_is_one_emoji_or_a_short_name() {
        for ok in ["👍", "🎉", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "1\u{fe0f}\u{20e3}", ":tada:", ":+1:", ":thumbs_up-2:"]
        {
            assert!(check_emoji(ok).is_ok(), "{ok} is a reaction");
        }
        let long = format!(":{}:", "a".repeat(31));
        for bad in ["", "a", "7", "\u{a0}", "ok", "👍👍", " ", "::", ":a b:", ":a", "a:", &long, "\u{7}"] {
            assert!(check_emoji(bad).is_err(), "{bad:?} is not a reaction");
        }
        assert!(check_emoji(&format!(":{}:", "a".repeat(30))).is_ok(), "32 characters with the colons");
    }
}
