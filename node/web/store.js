// store.js: what the page knows, with no DOM and no network. Rooms with
// unread counts; each opened room's messages in a Map by seq, so a message
// that arrives twice (a replay after a reconnect, an ok and its event) is
// kept once; sends waiting for their ok; members with presence; who is
// typing. Changes are announced as `change` events naming what changed.

/** How long a typing notice shows without a new one. */
const TYPING_MS = 5000;

export class Store extends EventTarget {
  constructor() {
    super();
    this.reset();
  }

  reset() {
    this.me = null;
    this.rooms = new Map();
    this.active = null;
    this.messages = new Map();
    this.older = new Map();
    this.pending = new Map();
    this.members = new Map();
    this.typing = new Map();
    this.receipts = new Map();
  }

  changed(what, room = null) {
    this.dispatchEvent(new CustomEvent('change', { detail: { what, room } }));
  }

  // ---- rooms ------------------------------------------------------------

  /** Replaces the room list with the server's (`unread` only on member rooms). */
  setRooms(list) {
    const next = new Map();
    for (const r of list) {
      const old = this.rooms.get(r.room);
      const room = { ...r, member: r.unread !== undefined };
      if (old && old.last_seq > room.last_seq) room.last_seq = old.last_seq;
      if (r.room === this.active) room.unread = room.member ? 0 : undefined;
      next.set(r.room, room);
    }
    // The open room stays listed (a public room being read, or one just joined).
    const active = this.active && this.rooms.get(this.active);
    if (active && !next.has(this.active) && active.visibility === 'public') next.set(this.active, active);
    this.rooms = next;
    this.changed('rooms');
  }

  upsertRoom(r, member) {
    const old = this.rooms.get(r.room) || {};
    this.rooms.set(r.room, { ...old, ...r, member, unread: member ? (r.unread ?? old.unread ?? 0) : undefined });
    this.changed('rooms');
  }

  removeRoom(id) {
    this.rooms.delete(id);
    this.forget(id);
    this.changed('rooms');
  }

  /** Drops what the page held of a room's messages (it will load them again). */
  forget(id) {
    this.messages.delete(id);
    this.older.delete(id);
    this.members.delete(id);
    this.typing.delete(id);
    this.receipts.delete(id);
  }

  memberRooms() {
    return [...this.rooms.values()].filter((r) => r.member).map((r) => r.room);
  }

  setUnread(room, n) {
    const r = this.rooms.get(room);
    if (r && r.member && r.unread !== n) { r.unread = n; this.changed('rooms'); }
  }

  // ---- messages ---------------------------------------------------------

  /** Whether the room's messages are held (it was opened). */
  loaded(room) { return this.messages.has(room); }

  /** Adds messages (from history, events or acks); answers how many were new. */
  addMessages(room, list, { load = false } = {}) {
    if (!this.messages.has(room)) {
      if (!load) { this.noteSeq(room, list); return 0; }
      this.messages.set(room, new Map());
    }
    const held = this.messages.get(room);
    let added = 0;
    for (const m of list) {
      if (!held.has(m.seq)) added++;
      const old = held.get(m.seq);
      // A deletion seen first wins over a replayed copy of the original.
      if (!(old && old.deleted && !m.deleted)) held.set(m.seq, m);
      if (m.from === this.me?.username) this.dropPending(m.client_id);
      this.typing.get(room)?.delete(m.from);
    }
    this.noteSeq(room, list);
    if (added) this.changed('messages', room);
    return added;
  }

  /** Moves a room's `last_seq`; counts unread others' messages in rooms not open. */
  noteSeq(room, list) {
    const r = this.rooms.get(room);
    if (!r) return;
    let changed = false;
    for (const m of list) {
      if (m.seq <= r.last_seq) continue;
      r.last_seq = m.seq;
      if (r.member && room !== this.active && m.from !== this.me?.username) {
        r.unread = (r.unread || 0) + 1;
      }
      changed = true;
    }
    if (changed) this.changed('rooms');
  }

  /** The held messages of a room, by seq ascending. */
  list(room) {
    const held = this.messages.get(room);
    if (!held) return [];
    return [...held.values()].sort((a, b) => a.seq - b.seq);
  }

  /**
   * The seq up to which the room is held without a gap, counted from the
   * oldest held message: a resumed subscription starts after it. 0 for an
   * empty room that was loaded, null for one never loaded (live events only).
   */
  cursor(room) {
    const held = this.messages.get(room);
    if (!held) return null;
    if (held.size === 0) return 0;
    let seq = Math.min(...held.keys());
    while (held.has(seq + 1)) seq++;
    return seq;
  }

  /** The newest seq held, or 0. */
  newest(room) {
    const held = this.messages.get(room);
    return held && held.size ? Math.max(...held.keys()) : 0;
  }

  markDeleted(room, seq) {
    const m = this.messages.get(room)?.get(seq);
    if (!m || m.deleted) return;
    const { body: _gone, ...rest } = m;
    this.messages.get(room).set(seq, { ...rest, deleted: true });
    this.changed('messages', room);
  }

  /** An `edited` event, or the answer to one's own edit. */
  applyEdit(room, seq, body, editedAt) {
    const m = this.messages.get(room)?.get(seq);
    if (!m || m.deleted) return;
    this.messages.get(room).set(seq, { ...m, body, edited_at: editedAt });
    this.changed('messages', room);
  }

  /** A `reaction` event: `username` added (`on`) or took back `emoji`. */
  applyReaction({ room, seq, emoji, username, on }) {
    const m = this.messages.get(room)?.get(seq);
    if (!m || m.deleted) return;
    const reactions = { ...(m.reactions || {}) };
    const users = (reactions[emoji] || []).filter((u) => u !== username);
    if (on) users.push(username);
    if (users.length) reactions[emoji] = users; else delete reactions[emoji];
    this.messages.get(room).set(seq, { ...m, reactions });
    this.changed('messages', room);
  }

  /** The message at `seq` of a held room, if held. */
  message(room, seq) { return this.messages.get(room)?.get(seq) ?? null; }

  // ---- read receipts ---------------------------------------------------------

  setReceipts(room, list) {
    this.receipts.set(room, new Map(list.map((r) => [r.username, r.seq])));
    this.changed('receipts', room);
  }

  /** A `read` event: a member's marker moved. */
  applyRead({ room, username, seq }) {
    if (!this.receipts.has(room)) return;
    this.receipts.get(room).set(username, seq);
    this.changed('receipts', room);
  }

  /** Who else has read a room up to `seq`, by name. */
  seenBy(room, seq) {
    return [...(this.receipts.get(room) || new Map())]
      .filter(([u, s]) => s >= seq && u !== this.me?.username).map(([u]) => u).sort();
  }

  // ---- sends waiting for their ok ----------------------------------------

  addPending(p) {
    this.pending.set(p.clientId, p);
    this.changed('pending', p.room);
  }

  /** The send's ok: the message is committed, so it is shown with its seq. */
  ack(p, ok) {
    const m = { room: p.room, seq: ok.seq, ts: ok.ts, from: this.me.username, body: p.body, client_id: p.clientId };
    if (p.replyTo) m.reply_to = p.replyTo;
    if (p.files && p.files.length) m.attachments = p.files;
    this.dropPending(p.clientId);
    if (this.loaded(p.room)) this.addMessages(p.room, [m]);
  }

  dropPending(clientId) {
    const p = this.pending.get(clientId);
    if (p) { this.pending.delete(clientId); this.changed('pending', p.room); }
  }

  pendingIn(room) {
    return [...this.pending.values()].filter((p) => p.room === room);
  }

  // ---- members, presence, typing ------------------------------------------

  setMembers(room, list) {
    this.members.set(room, new Map(list.map((m) => [m.username, m])));
    this.changed('members', room);
  }

  /**
   * A `member` event, applied as it says: a list fetched now could come
   * from a node that has not applied the change yet.
   */
  applyMember(ev) {
    const members = this.members.get(ev.room);
    if (!members) return;
    const m = members.get(ev.username);
    if (ev.change === 'joined') {
      members.set(ev.username, { username: ev.username, role: ev.role || 'member', online: m?.online ?? false });
    } else if (ev.change === 'role') {
      if (m) m.role = ev.role;
    } else {
      members.delete(ev.username);
    }
    this.changed('members', ev.room);
  }

  setPresence(room, username, online) {
    const m = this.members.get(room)?.get(username);
    if (m && m.online !== online) { m.online = online; this.changed('members', room); }
  }

  /** My role in a room (owner, moderator, member), or null. */
  roleIn(room) {
    return this.members.get(room)?.get(this.me?.username)?.role ?? null;
  }

  setTyping(room, username) {
    if (!this.typing.has(room)) this.typing.set(room, new Map());
    this.typing.get(room).set(username, Date.now() + TYPING_MS);
    this.changed('typing', room);
  }

  /** Who types in a room now, by name. */
  typists(room) {
    const now = Date.now();
    return [...(this.typing.get(room) || new Map())].filter(([, until]) => until > now).map(([u]) => u).sort();
  }
}
