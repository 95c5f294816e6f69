// views.js: draws the store into the page. Every piece of user text (names,
// titles, message bodies) goes in through textContent or an attribute
// value, never as HTML, so a message cannot become markup. Knows nothing
// of the network.

export const $ = (id) => document.getElementById(id);

/** An element with attributes (`text` sets textContent) and children. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

const ROLE_RANK = { owner: 3, moderator: 2, member: 1 };

/** A room's name for people: the other user of a direct room, else its title. */
export function roomLabel(store, r) {
  if (r.visibility === 'direct') {
    const other = r.room.split(':').slice(1).find((u) => u !== store.me?.username);
    return other || r.room;
  }
  return r.title || r.room;
}

function time(ts) {
  const d = new Date(ts);
  const today = new Date().toDateString() === d.toDateString();
  const t = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return today ? t : `${d.toLocaleDateString()} ${t}`;
}

// ---- errors -----------------------------------------------------------------

export function showError(text) {
  $('errorbar').hidden = false;
  document.querySelector('[data-test="error"]').textContent = text;
}

export function clearError() {
  $('errorbar').hidden = true;
  document.querySelector('[data-test="error"]').textContent = '';
}

// ---- room list ------------------------------------------------------------

export function renderRooms(store) {
  const nav = $('room-list');
  const focused = document.activeElement && nav.contains(document.activeElement)
    ? document.activeElement.getAttribute('data-room') : null;
  const rooms = [...store.rooms.values()]
    .sort((a, b) => roomLabel(store, a).localeCompare(roomLabel(store, b)));
  const groups = [
    ['Rooms', rooms.filter((r) => r.member && r.visibility !== 'direct')],
    ['Direct messages', rooms.filter((r) => r.visibility === 'direct')],
    ['Public rooms to join', rooms.filter((r) => !r.member && r.visibility !== 'direct')],
  ].filter(([, list]) => list.length > 0);
  const unread = rooms.reduce((n, r) => n + (r.unread || 0), 0);
  document.title = unread ? `(${unread}) Palaver` : 'Palaver';
  // The list is rebuilt only when what it shows changed: a rebuild between
  // a press and its release would swallow the click (the pressed button is
  // gone), and the list is refreshed often while nothing in it changes.
  const shown = JSON.stringify(groups.map(([title, list]) =>
    [title, list.map((r) => [r.room, roomLabel(store, r), r.room === store.active, r.unread || 0, r.visibility])]));
  if (nav.dataset.shown === shown) return;
  nav.dataset.shown = shown;
  nav.replaceChildren(...groups.map(([title, list]) =>
    el('section', {}, el('h3', { text: title }), el('ul', {}, ...list.map((r) => roomItem(store, r))))));
  if (groups.length === 0) nav.append(el('p', { class: 'hint', text: 'No rooms yet: create one below.' }));
  if (focused) nav.querySelector(`[data-room="${CSS.escape(focused)}"]`)?.focus();
}

function roomItem(store, r) {
  const active = r.room === store.active;
  const mark = r.visibility === 'direct' ? '@' : '#';
  const n = r.unread || 0;
  const unread = r.member
    ? el('span', { class: n ? 'unread' : 'unread zero', 'data-test': 'unread', 'data-room': r.room, text: String(n) })
    : null;
  return el('li', {},
    el('button', {
      type: 'button', class: active ? 'room-item active' : 'room-item', 'data-test': 'room-item',
      'data-room': r.room, 'aria-current': active ? 'true' : null,
      'aria-label': `${roomLabel(store, r)}${n ? `, ${n} unread` : ''}`,
    },
    el('span', { class: 'mark', 'aria-hidden': 'true', text: mark }),
    el('span', { class: 'name', text: roomLabel(store, r) }),
    r.visibility === 'private' ? el('span', { class: 'tag', text: 'private' }) : null,
    unread));
}

// ---- the open room ----------------------------------------------------------

export function renderHead(store) {
  const r = store.active && store.rooms.get(store.active);
  const role = r ? store.roleIn(r.room) : null;
  $('room-title').textContent = r ? roomLabel(store, r) : 'No room open';
  $('empty').hidden = !!r;
  $('join-this').hidden = !r || r.member || r.visibility !== 'public';
  $('leave').hidden = !r || !r.member || r.visibility === 'direct' || role === 'owner';
  $('people-toggle').hidden = !r;
  $('composer-form').hidden = !r || !r.member;
  $('people').hidden = !r;
  const moderator = r && r.visibility !== 'direct' && (role === 'owner' || role === 'moderator');
  const admin = store.me?.role === 'admin';
  $('mod-tools').hidden = !(moderator || (r && admin));
  $('invite-form').hidden = !moderator;
  $('audit-open').hidden = !(role === 'owner' || admin);
  $('room-delete').hidden = !(role === 'owner' || admin);
}

/** Whether the message list is scrolled to (near) its end. */
export function atBottom() {
  const sc = $('scroller');
  return sc.scrollHeight - sc.scrollTop - sc.clientHeight < 48;
}

/**
 * Brings the message list in line with the store, touching only what
 * changed; keeps the reader's place when older messages are put above,
 * and follows the end when the reader was there.
 */
export function renderMessages(store, canDelete) {
  const ol = $('messages');
  const sc = $('scroller');
  const room = store.active || '';
  if (ol.getAttribute('data-room') !== room) {
    ol.replaceChildren();
    ol.setAttribute('data-room', room);
  }
  const follow = atBottom();
  const anchor = [...ol.children].find((li) => li.offsetTop + li.offsetHeight > sc.scrollTop);
  const anchorTop = anchor ? anchor.offsetTop - sc.scrollTop : 0;
  const existing = new Map([...ol.children].map((li) => [Number(li.getAttribute('data-seq')), li]));
  const list = store.list(store.active);
  let next = null;
  for (let i = list.length - 1; i >= 0; i--) {
    const m = list[i];
    const can = canDelete(m);
    const quoted = m.reply_to ? store.message(room, m.reply_to) : null;
    const mine = m.from === store.me?.username;
    const state = [
      m.deleted ? 'deleted' : 'shown', can ? 'delete' : '', m.edited_at || '', JSON.stringify(m.reactions || {}),
      (m.attachments || []).length,
      quoted ? `${quoted.deleted ? 'gone' : quoted.body}` : '', mine ? 'mine' : '',
    ].join('|');
    let li = existing.get(m.seq);
    existing.delete(m.seq);
    if (li && li.getAttribute('data-state') !== state) {
      const fresh = messageItem(m, { canDelete: can, quoted, mine, me: store.me?.username }, state);
      li.replaceWith(fresh);
      li = fresh;
    }
    if (!li) {
      li = messageItem(m, { canDelete: can, quoted, mine, me: store.me?.username }, state);
      ol.insertBefore(li, next);
    }
    next = li;
  }
  for (const li of existing.values()) li.remove();
  renderSeenBy(store);
  if (follow) sc.scrollTop = sc.scrollHeight;
  else if (anchor && anchor.isConnected) sc.scrollTop = anchor.offsetTop - anchorTop;
}

/** Emoji offered by a message's React button, in order. */
export const QUICK_REACTIONS = ['👍', '❤️', '😂', '🎉', '👀'];

function messageItem(m, { canDelete, quoted, mine, me }, state) {
  const action = (name, label, attrs) => el('button', {
    type: 'button', class: 'link', 'data-test': name, 'aria-label': `${label} message ${m.seq}`, text: label, ...attrs,
  });
  const quote = m.reply_to ? el('blockquote', {
    class: 'reply-quote', 'data-test': 'reply-quote', 'data-reply-to': m.reply_to,
    text: quoted ? `${quoted.from}: ${quoted.deleted ? 'message deleted' : quoted.body}` : `a reply to message ${m.reply_to}`,
  }) : null;
  const reactions = Object.entries(m.deleted ? {} : (m.reactions || {}));
  return el('li', {
    class: m.deleted ? 'msg deleted' : 'msg', 'data-test': 'message',
    'data-seq': m.seq, 'data-from': m.from, 'data-state': state,
  },
  el('div', { class: 'meta' },
    el('span', { class: 'from', text: m.from }),
    el('time', { datetime: new Date(m.ts).toISOString(), text: time(m.ts) }),
    m.edited_at && !m.deleted ? el('span', { class: 'edited', 'data-test': 'edited', text: '(edited)' }) : null,
    m.deleted ? null : action('reply', 'Reply', { 'data-reply': m.seq }),
    mine && !m.deleted ? action('edit', 'Edit', { 'data-edit': m.seq }) : null,
    m.deleted ? null : action('react', 'React', { 'data-react-menu': m.seq }),
    canDelete ? el('button', {
      type: 'button', class: 'link', id: `delete-${m.seq}`, 'data-delete': m.seq,
      'aria-label': `Delete message ${m.seq}`, text: 'Delete',
    }) : null),
  quote,
  el('p', { class: 'body', text: m.deleted ? 'message deleted' : m.body }),
  attachmentList(m),
  reactions.length ? el('div', { class: 'reactions' }, ...reactions.map(([emoji, users]) => el('button', {
    type: 'button', class: users.includes(me) ? 'reaction mine' : 'reaction', 'data-test': 'reaction',
    'data-emoji': emoji, 'data-count': users.length, 'data-seq': m.seq, title: users.join(', '),
    text: `${emoji} ${users.length}`,
  }))) : null);
}

/** Types shown in the page; every other file is a download link. */
const INLINE_IMAGES = ['image/png', 'image/jpeg', 'image/gif', 'image/webp'];

function size(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/**
 * A message's files: images as `img` whose `src` main.js fills in (the
 * bytes need the token, so they come as a blob), the rest as links.
 */
function attachmentList(m) {
  const list = m.deleted ? [] : (m.attachments || []);
  if (!list.length) return null;
  return el('div', { class: 'attachments' }, ...list.map((a) => {
    const type = (a.type || '').split(';')[0].trim();
    if (INLINE_IMAGES.includes(type)) {
      return el('img', { 'data-test': 'attachment-image', 'data-attachment': a.id, alt: a.name, title: a.name });
    }
    return el('a', {
      'data-test': 'attachment', 'data-attachment': a.id, 'data-name': a.name, href: '#',
      text: `${a.name} (${size(a.size)})`,
    });
  }));
}

/** "Seen by" under the newest message: who else has read that far. */
function renderSeenBy(store) {
  const p = $('seen-by');
  const newest = store.active ? store.newest(store.active) : 0;
  const who = newest ? store.seenBy(store.active, newest) : [];
  const text = who.length ? `Seen by ${who.join(', ')}` : '';
  if (p.textContent !== text) p.textContent = text;
}

/** The reply or edit under way, above the composer. */
export function renderComposing(store, composing) {
  const bar = $('composing');
  if (!composing) { bar.hidden = true; return; }
  const m = store.message(store.active, composing.seq);
  const what = composing.mode === 'edit' ? 'Editing' : `Replying to ${m ? m.from : `message ${composing.seq}`}`;
  $('composing-text').textContent = m && !m.deleted ? `${what}: ${m.body}` : what;
  bar.hidden = false;
}

/** The emoji menu of a message's React button. */
export function reactMenu(seq) {
  return el('span', { class: 'react-menu', 'data-test': 'react-menu' },
    ...QUICK_REACTIONS.map((emoji) => el('button', {
      type: 'button', class: 'reaction', 'data-test': 'react-choice', 'data-emoji': emoji, 'data-seq': seq,
      'aria-label': `React with ${emoji}`, text: emoji,
    })));
}

export function renderPending(store) {
  const follow = atBottom();
  $('pending').replaceChildren(...store.pendingIn(store.active).map((p) =>
    el('li', { class: 'msg pending' },
      el('div', { class: 'meta' },
        el('span', { class: 'from', text: store.me.username }),
        el('span', { class: 'state', text: p.tries ? 'retrying…' : 'sending…' })),
      el('p', { class: 'body', text: p.body }))));
  if (follow) $('scroller').scrollTop = $('scroller').scrollHeight;
}

export function historyStatus(text) {
  $('history-status').textContent = text;
}

export function renderTyping(store) {
  const who = store.active ? store.typists(store.active) : [];
  const text = who.length === 0 ? ''
    : who.length === 1 ? `${who[0]} is typing…`
      : `${who.slice(0, -1).join(', ')} and ${who[who.length - 1]} are typing…`;
  const p = document.querySelector('[data-test="typing"]');
  if (p.textContent !== text) p.textContent = text;
}

// ---- members and moderation -------------------------------------------------

export function renderMembers(store) {
  const room = store.active;
  const r = room && store.rooms.get(room);
  const members = room ? store.members.get(room) : null;
  const ul = $('members');
  if (!r || !members) {
    ul.replaceChildren(el('li', { class: 'hint', text: r && !r.member ? 'Join the room to see who is here.' : '' }));
    return;
  }
  const open = new Set([...ul.querySelectorAll('details[open]')].map((d) => d.getAttribute('data-user')));
  const myRole = store.roleIn(room);
  const mine = ROLE_RANK[myRole] || 0;
  const list = [...members.values()].sort((a, b) =>
    (b.online - a.online) || (ROLE_RANK[b.role] - ROLE_RANK[a.role]) || a.username.localeCompare(b.username));
  ul.replaceChildren(...list.map((m) => {
    const canAct = r.visibility !== 'direct' && m.username !== store.me.username
      && mine >= 2 && ROLE_RANK[m.role] < mine;
    return el('li', {
      class: m.online ? 'member online' : 'member', 'data-test': 'presence',
      'data-username': m.username, 'data-online': String(!!m.online),
    },
    el('span', { class: 'dot', 'aria-hidden': 'true' }),
    el('span', { class: 'name', text: m.username }),
    el('span', { class: 'role', text: m.role === 'member' ? '' : m.role }),
    el('span', { class: 'sr-only', text: m.online ? ', online' : ', offline' }),
    canAct ? actions(m, myRole, open.has(m.username)) : null);
  }));
}

function actions(m, myRole, open) {
  const b = (act, text) => el('button', {
    type: 'button', class: 'small', id: `${act}-${m.username}`, 'data-act': act, 'data-user': m.username, text,
    'aria-label': `${text}: ${m.username}`,
  });
  const roles = myRole === 'owner'
    ? [m.role === 'member' ? b('role-moderator', 'Make moderator') : b('role-member', 'Make member'),
      b('role-owner', 'Make owner')]
    : [];
  return el('details', { class: 'manage', 'data-user': m.username, open },
    el('summary', { id: `manage-${m.username}`, text: 'Manage' }),
    el('div', { class: 'row wrap' },
      b('kick', 'Kick'), b('ban', 'Ban'), b('mute', 'Mute 10 min'), b('unmute', 'Unmute'), ...roles));
}

export function renderAudit(list) {
  $('audit').replaceChildren(...(list.length ? list : [null]).map((a) => a === null
    ? el('li', { class: 'hint', text: 'Nothing yet.' })
    : el('li', {},
      el('time', { datetime: new Date(a.ts).toISOString(), text: time(a.ts) }),
      ` ${a.actor} ${a.action.replace('_', ' ')} ${a.target}${auditDetail(a)}`)));
}

function auditDetail(a) {
  if (!a.detail) return '';
  if (a.action === 'mute') return ` (until ${time(Number(a.detail))})`;
  if (a.action === 'delete_message') return ` (message ${a.detail})`;
  return ` (${a.detail})`;
}
