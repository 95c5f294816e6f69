// main.js: the wiring. Turns what the person does (forms, clicks, Enter,
// scrolling) into API calls and what the server says into store changes,
// and redraws what changed. The session token lives in sessionStorage only.

import { Api, ApiError, describe } from './api.js';
import { Connection } from './connection.js';
import { initAccount } from './account.js';
import { initSearch } from './search.js';
import { Store } from './store.js';
import * as view from './views.js';

const { $ } = view;
const TOKEN_KEY = 'palaver.token';
const USERNAME = /^[a-z0-9_.-]{3,32}$/;
const ROOM_ID = /^[a-z0-9_-]{1,64}$/;

const api = new Api();
const store = new Store();
const conn = new Connection(api, {
  onEvent,
  onStatus: (text) => { $('conn').textContent = text; },
  onOnline: () => {
    refreshRooms();
    if (store.active) loadMembers(store.active);
  },
  onAuthLost: (why) => loggedOut(why),
  onStreamFailed: () => refreshRooms(),
  cursor: (room) => store.cursor(room),
});
api.onAuthLost = () => loggedOut('your session has ended; log in again');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const fail = (what) => (e) => { if (e.code !== 'unauthorized' || !api.token) view.showError(describe(what, e)); };

// ---- session ----------------------------------------------------------------

async function boot() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) { showLogin(); return; }
  api.token = token;
  try {
    enterChat(await api.me(), token);
  } catch (e) {
    if (e.code === 'unauthorized') return;
    view.showError(describe('Could not resume the session', e));
    setTimeout(boot, 3000);
  }
}

function showLogin() {
  $('chat-view').hidden = true;
  $('account-view').hidden = true;
  $('account-open').hidden = true;
  $('logout').hidden = true;
  $('me').textContent = '';
  $('conn').textContent = '';
  $('login-view').hidden = false;
  $('username').focus();
}

function credentials() {
  return { username: $('username').value.trim(), password: $('password').value };
}

async function logIn(username, password) {
  const r = await api.login(username, password);
  sessionStorage.setItem(TOKEN_KEY, r.token);
  api.token = r.token;
  $('password').value = '';
  enterChat(await api.me(), r.token);
}

async function onLogin(e) {
  e.preventDefault();
  const { username, password } = credentials();
  if (!username || !password) { view.showError('Log in: enter your username and password'); return; }
  try { await logIn(username, password); } catch (err) {
    view.showError(err.code === 'unauthorized' ? 'Log in: wrong username or password' : describe('Log in', err));
  }
}

async function onRegister() {
  const { username, password } = credentials();
  if (!USERNAME.test(username)) {
    view.showError('Register: a username is 3 to 32 of a–z, 0–9, _ . -');
    return;
  }
  if (password.length < 8 || password.length > 128) {
    view.showError('Register: a password is 8 to 128 characters');
    return;
  }
  try {
    await api.register(username, password, $('register-invite').value.trim());
    $('register-invite').value = '';
    await logIn(username, password);
  } catch (err) { view.showError(describe('Register', err)); }
}

function enterChat(me, token) {
  store.reset();
  store.me = me;
  view.clearError();
  $('login-view').hidden = true;
  $('chat-view').hidden = false;
  $('logout').hidden = false;
  $('account-open').hidden = false;
  $('me').textContent = me.role === 'admin' ? `${me.username} (admin)` : me.username;
  renderAll();
  conn.start(token);
  let wanted = '';
  try { wanted = decodeURIComponent(location.hash.slice(1)); } catch { /* a mangled link: no room */ }
  refreshRooms().then(() => {
    if (wanted && store.rooms.has(wanted)) openRoom(wanted);
  });
}

function loggedOut(why) {
  if (!api.token) return;
  conn.stop();
  api.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  outbox.clear();
  readSent.clear();
  store.reset();
  store.changed('rooms');
  document.body.classList.remove('in-room', 'show-people');
  showLogin();
  if (why) view.showError(why);
}

async function onLogout() {
  const token = api.token;
  try { await api.logout(); } catch { /* the token is dropped here anyway */ }
  // The answer waits until every node has ended the session; the person
  // may have logged in again meanwhile, and that session stays.
  if (api.token !== token) return;
  view.clearError();
  loggedOut(null);
}

// ---- rooms ------------------------------------------------------------------

async function refreshRooms() {
  if (!api.token) return;
  try {
    const list = await api.rooms();
    if (!store.me) return;
    store.setRooms(list);
    if (store.active && !store.rooms.has(store.active)) closeRoom();
    syncSubscriptions();
  } catch (e) { fail('Could not load the rooms')(e); }
}

function syncSubscriptions() {
  const rooms = new Set(store.memberRooms());
  if (store.active) rooms.add(store.active);
  conn.setRooms([...rooms]);
}

async function openRoom(id) {
  document.body.classList.add('in-room');
  if (store.active === id) return;
  if (readTimer) { clearTimeout(readTimer); sendRead(); } // the room left gets its marker now
  store.active = id;
  history.replaceState(null, '', `#${encodeURIComponent(id)}`);
  $('audit').replaceChildren();
  $('mod-status').textContent = '';
  stopComposing(); // a reply or an edit belongs to the room it was begun in
  renderAll();
  syncSubscriptions();
  loadMembers(id);
  loadReceipts(id);
  if (!store.loaded(id)) await loadOlder(id);
  scheduleRead();
  if (!$('composer-form').hidden && window.matchMedia('(min-width: 721px)').matches) $('composer').focus();
}

function closeRoom() {
  store.active = null;
  history.replaceState(null, '', location.pathname);
  document.body.classList.remove('in-room', 'show-people');
  renderAll();
  syncSubscriptions();
}

async function createRoom(e) {
  e.preventDefault();
  const id = $('new-room-name').value.trim();
  if (!ROOM_ID.test(id)) { view.showError('New room: an id is 1 to 64 of a–z, 0–9, _ -'); return; }
  try {
    const r = await api.createRoom(id, $('new-room-visibility').value);
    $('new-room-name').value = '';
    store.upsertRoom(r, true);
    openRoom(r.room);
  } catch (err) { view.showError(describe(`Could not create ${id}`, err)); }
}

async function joinRoom(id) {
  try {
    await api.join(id);
    await refreshRooms();
    if (store.active === id) loadMembers(id); else openRoom(id);
  } catch (err) { view.showError(describe(`Could not join ${id}`, err)); }
}

async function openDirect(e) {
  e.preventDefault();
  const user = $('dm-user').value.trim();
  if (!USERNAME.test(user)) { view.showError('Direct message: enter a username'); return; }
  try {
    const r = await api.dm(user);
    $('dm-user').value = '';
    store.upsertRoom(r, true);
    openRoom(r.room);
  } catch (err) { view.showError(describe(`Could not message ${user}`, err)); }
}

async function leaveRoom() {
  const id = store.active;
  try {
    await api.leave(id);
    await refreshRooms(); // a private room drops out of the list and closes
    if (!store.rooms.has(id)) store.forget(id);
    else if (store.active === id) loadMembers(id);
  } catch (err) { view.showError(describe(`Could not leave ${id}`, err)); }
}

// ---- history ----------------------------------------------------------------

const loading = new Set();

/** Loads the newest page of a room not yet loaded, else the page before the oldest held. */
async function loadOlder(room) {
  if (loading.has(room)) return;
  const first = !store.loaded(room);
  const before = first ? null : store.older.get(room);
  if (!first && before == null) return;
  loading.add(room);
  if (room === store.active) view.historyStatus('Loading messages…');
  let loaded = false;
  try {
    const page = await withRetry(() => api.history(room, { before, limit: 50 }));
    store.older.set(room, page.before);
    store.addMessages(room, page.messages, { load: true });
    if (first) {
      store.changed('messages', room);
      conn.resubscribe(room);
    }
    loaded = true;
  } catch (e) {
    fail('Could not load the messages')(e);
    // The open room stays empty until its first page arrives: try again.
    const retry = () => { if (store.active === room && !store.loaded(room)) loadOlder(room); };
    if (first && e.transient) setTimeout(retry, 3000);
    else if (first) refreshRooms();
  } finally {
    loading.delete(room);
  }
  if (!loaded || room !== store.active) return;
  const done = store.loaded(room) && store.older.get(room) == null;
  view.historyStatus(done ? 'This is the beginning of the room.' : '');
  // Keep going until the list can scroll (or the room's start is reached).
  const sc = $('scroller');
  if (!done && sc.scrollHeight <= sc.clientHeight + 150) loadOlder(room);
}

async function withRetry(f, tries = 4) {
  for (let i = 1; ; i++) {
    try { return await f(); } catch (e) {
      if (!(e instanceof ApiError) || !e.transient || i >= tries) throw e;
      await sleep(e.retryAfterMs ?? 250 * 2 ** i);
    }
  }
}

const fills = new Map();

/** A held room with a gap (an ok ahead of its event, say) is filled from history if the gap stays. */
function checkGap(room) {
  if (!store.loaded(room) || fills.has(room) || store.cursor(room) >= store.newest(room)) return;
  fills.set(room, setTimeout(async () => {
    const from = store.cursor(room);
    try {
      if (store.loaded(room) && from < store.newest(room)) {
        const page = await api.history(room, { after: from, limit: 500 });
        store.addMessages(room, page.messages);
      }
    } catch { /* tried again on the next message */ }
    fills.delete(room);
  }, 1500));
}

// ---- live events -------------------------------------------------------------

function onEvent(ev) {
  const room = ev.room;
  switch (ev.type) {
    case 'message':
      store.addMessages(room, [ev]);
      checkGap(room);
      if (room === store.active) scheduleRead();
      break;
    case 'presence':
      if (store.members.get(room)?.has(ev.username)) store.setPresence(room, ev.username, ev.online);
      else if (room === store.active) loadMembers(room);
      break;
    case 'typing':
      store.setTyping(room, ev.username);
      setTimeout(() => store.changed('typing', room), 5100);
      break;
    case 'member':
      memberEvents.set(room, (memberEvents.get(room) || 0) + 1);
      store.applyMember(ev);
      if (ev.username === store.me?.username) refreshRooms();
      // Whether a newcomer is online is not in the event: ask a little later.
      if (ev.change === 'joined' && room === store.active) setTimeout(() => loadMembers(room), 1000);
      break;
    case 'removed': {
      view.showError(`You were removed from ${roomName(room)} (${ev.reason})`);
      const r = store.rooms.get(room);
      store.forget(room);
      conn.dropRoom(room);
      if (r && r.visibility === 'public' && ev.reason === 'kicked') {
        // A public room may still be read, from outside.
        store.upsertRoom(r, false);
        if (store.active === room) { renderAll(); loadOlder(room); }
      } else {
        store.removeRoom(room);
        if (store.active === room) closeRoom();
      }
      // Not at once: the node asked may not have applied the change yet.
      setTimeout(refreshRooms, 1000);
      break;
    }
    case 'deleted':
      store.markDeleted(room, ev.seq);
      break;
    case 'edited':
      store.applyEdit(room, ev.seq, ev.body, ev.edited_at);
      break;
    case 'reaction':
      store.applyReaction(ev);
      break;
    case 'read':
      store.applyRead(ev);
      break;
    case 'room_deleted':
      if (!store.rooms.has(room) || deleting === room) break; // deleted here, or never listed
      view.showError(`The room ${roomName(room)} was deleted`);
      store.removeRoom(room);
      if (store.active === room) closeRoom(); else syncSubscriptions();
      break;
    case 'subscribe_failed':
      if (room === store.active) view.showError(describe(`Cannot follow ${roomName(room)}`, ev.error));
      break;
    case 'error':
      view.showError(describe('The server refused a command', new ApiError(ev.code, ev.message)));
      break;
    default:
      break;
  }
}

function roomName(id) {
  const r = store.rooms.get(id);
  return r ? view.roomLabel(store, r) : id;
}

// ---- sending ---------------------------------------------------------------

/** Sends waiting per room, in the order written: one in flight per room keeps the order. */
const outbox = new Map();

function newClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return `w-${[...bytes].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** A reply or an edit under way: `{mode: 'reply'|'edit', seq}`, or null. */
let composing = null;

function compose(mode, seq) {
  composing = { mode, seq };
  if (mode === 'edit') {
    const m = store.message(store.active, seq);
    $('composer').value = m ? m.body : '';
    resizeComposer();
  }
  view.renderComposing(store, composing);
  $('composer').focus();
}

function stopComposing() {
  if (composing?.mode === 'edit') { $('composer').value = ''; resizeComposer(); }
  composing = null;
  view.renderComposing(store, null);
}

async function editMessage(room, seq, body) {
  try {
    const m = await api.editMessage(room, seq, body);
    store.applyEdit(room, seq, m.body, m.edited_at);
  } catch (err) {
    view.showError(describe('Message not changed', err));
    if (!$('composer').value && room === store.active) $('composer').value = body;
  }
}

async function toggleReaction(seq, emoji) {
  const room = store.active;
  const mine = (store.message(room, seq)?.reactions?.[emoji] || []).includes(store.me?.username);
  try {
    await api.react(room, seq, emoji, !mine);
    store.applyReaction({ room, seq, emoji, username: store.me.username, on: !mine });
  } catch (err) { view.showError(describe('Reaction not saved', err)); }
}

async function loadReceipts(room) {
  const r = store.rooms.get(room);
  if (!r || !r.member) return;
  try { store.setReceipts(room, await api.receipts(room)); } catch { /* members only; shown when it answers */ }
}

function onSubmit(e) {
  e.preventDefault();
  const room = store.active;
  const body = $('composer').value;
  if (!room || !body.trim()) return;
  $('composer').value = '';
  resizeComposer();
  lastTyping = 0; // the next keystroke starts a new typing notice
  const was = composing;
  stopComposing();
  if (was?.mode === 'edit') { editMessage(room, was.seq, body); return; }
  const p = { room, body, clientId: newClientId(), tries: 0, replyTo: was?.mode === 'reply' ? was.seq : null };
  store.addPending(p);
  if (!outbox.has(room)) outbox.set(room, []);
  outbox.get(room).push(p);
  if (outbox.get(room).length === 1) pump(room);
}

async function pump(room) {
  const queue = outbox.get(room);
  while (queue && queue.length > 0 && outbox.get(room) === queue) {
    await deliver(queue[0]);
    queue.shift();
  }
  if (outbox.get(room) === queue) outbox.delete(room);
}

/** Sends until the ok, retrying transient failures with the same client_id. */
async function deliver(p) {
  while (store.pending.has(p.clientId)) {
    try {
      const ok = await conn.send(p.room, p.body, p.clientId, p.replyTo, p.attachments || []);
      store.ack(p, ok);
      checkGap(p.room);
      // One has read a room up to one's own message, also after leaving it.
      if (p.room === store.active) scheduleRead(); else markRead(p.room, ok.seq);
      return;
    } catch (e) {
      if (!store.pending.has(p.clientId) || !api.token) return;
      if (!(e instanceof ApiError) || !e.transient) {
        store.dropPending(p.clientId);
        view.showError(describe('Message not sent', e));
        if (!$('composer').value && p.room === store.active) $('composer').value = p.body;
        return;
      }
      p.tries++;
      store.changed('pending', p.room);
      await sleep((e.retryAfterMs ?? Math.min(2000, 100 * 2 ** p.tries)) + Math.random() * 100);
    }
  }
}

// ---- attachments -------------------------------------------------------------

/** Object URLs of attachments fetched, by id (kept for the page's life). */
const blobs = new Map();

async function blobUrl(id) {
  if (!blobs.has(id)) blobs.set(id, api.attachment(id).then((b) => URL.createObjectURL(b)));
  try { return await blobs.get(id); } catch (e) { blobs.delete(id); throw e; }
}

/** Fills in the images of the messages shown that have no picture yet. */
function loadImages() {
  for (const img of document.querySelectorAll('img[data-attachment]:not([data-loading])')) {
    img.setAttribute('data-loading', '');
    blobUrl(img.getAttribute('data-attachment'))
      .then((url) => { img.src = url; })
      .catch((e) => view.showError(describe('Image not loaded', e)));
  }
}

async function openAttachment(a) {
  try {
    const link = view.el('a', { href: await blobUrl(a.getAttribute('data-attachment')), download: a.getAttribute('data-name') });
    link.click();
  } catch (e) { view.showError(describe('File not downloaded', e)); }
}

/** Uploads the chosen file, then sends it with what the composer holds (or its name). */
async function onAttach() {
  const input = $('attach-file');
  const file = input.files && input.files[0];
  input.value = '';
  const room = store.active;
  if (!file || !room) return;
  let a;
  try {
    a = await api.upload(room, file);
  } catch (e) { view.showError(describe('File not uploaded', e)); return; }
  const body = $('composer').value.trim() ? $('composer').value : a.name;
  $('composer').value = '';
  resizeComposer();
  const was = composing;
  stopComposing();
  const p = {
    room, body, clientId: newClientId(), tries: 0, replyTo: was?.mode === 'reply' ? was.seq : null, attachments: [a.id], files: [a],
  };
  store.addPending(p);
  if (!outbox.has(room)) outbox.set(room, []);
  outbox.get(room).push(p);
  if (outbox.get(room).length === 1) pump(room);
}

let lastTyping = 0;

function onComposerInput() {
  resizeComposer();
  const r = store.active && store.rooms.get(store.active);
  if (r && r.member && $('composer').value && Date.now() - lastTyping > 3000) {
    lastTyping = Date.now();
    conn.typing(r.room);
  }
}

/** Grows the composer with its text, up to six lines (rows, not an inline style). */
function resizeComposer() {
  const c = $('composer');
  c.rows = 1;
  while (c.rows < 6 && c.scrollHeight > c.clientHeight) c.rows += 1;
}

// ---- read markers ----------------------------------------------------------

const readSent = new Map();
let readTimer = null;
let lastReadAt = 0;

/** Sends the open room's read marker when the reader is at the end, at most once a second. */
function scheduleRead() {
  if (readTimer) return;
  readTimer = setTimeout(sendRead, Math.max(0, lastReadAt + 1000 - Date.now()));
}

function sendRead() {
  readTimer = null;
  const room = store.active;
  const r = room && store.rooms.get(room);
  if (!r || !r.member || document.visibilityState !== 'visible' || !view.atBottom()) return;
  store.setUnread(room, 0);
  markRead(room, store.newest(room));
}

function markRead(room, seq) {
  if (!seq || (readSent.get(room) ?? 0) >= seq) return;
  readSent.set(room, seq);
  lastReadAt = Date.now();
  conn.read(room, seq).catch((e) => {
    readSent.delete(room);
    if (!e.transient && e.code !== 'not_found') fail('Could not mark the room read')(e);
  });
}

// ---- members and moderation ---------------------------------------------------

/** `member` events seen per room: a list fetched while one came may predate it. */
const memberEvents = new Map();

async function loadMembers(room, tries = 0) {
  const r = store.rooms.get(room);
  if (!r || !r.member) { store.members.delete(room); store.changed('members', room); return; }
  const seen = memberEvents.get(room) || 0;
  try {
    const list = await api.members(room);
    if ((memberEvents.get(room) || 0) !== seen && tries < 3) {
      setTimeout(() => loadMembers(room, tries + 1), 1000);
      return;
    }
    store.setMembers(room, list);
  } catch (e) {
    if (e.code !== 'not_found' && e.code !== 'forbidden') fail('Could not load the members')(e);
  }
}

async function moderate(act, user) {
  const room = store.active;
  try {
    if (act === 'mute') await api.moderate(room, 'mute', user, { seconds: 600 });
    else if (act.startsWith('role-')) await api.moderate(room, 'role', user, { role: act.slice(5) });
    else await api.moderate(room, act, user);
    const done = { kick: 'kicked', ban: 'banned', mute: 'muted for 10 minutes', unmute: 'unmuted' }[act]
      || `now ${act.slice(5)}`;
    $('mod-status').textContent = `${user} ${done}`;
    await loadMembers(room);
    if ($('audit').children.length) showAudit();
  } catch (err) { view.showError(describe(`Could not ${act.replace('role-', 'make moderator/member/owner: ')} ${user}`, err)); }
}

async function showAudit() {
  try { view.renderAudit(await api.audit(store.active)); } catch (err) { view.showError(describe('Could not read the audit log', err)); }
}

async function inviteOrUnban(action) {
  const user = $('invite-user').value.trim();
  if (!USERNAME.test(user)) { view.showError(`${action}: enter a username`); return; }
  try {
    await api.moderate(store.active, action, user);
    $('invite-user').value = '';
    $('mod-status').textContent = `${user} ${action === 'invite' ? 'invited' : 'unbanned'}`;
  } catch (err) { view.showError(describe(`Could not ${action} ${user}`, err)); }
}

let deleteArmed = null;
let deleting = null;

async function deleteRoom() {
  const id = store.active;
  const button = $('room-delete');
  if (deleteArmed !== id) {
    deleteArmed = id;
    button.textContent = 'Click again to delete the room';
    setTimeout(() => { deleteArmed = null; button.textContent = 'Delete room'; }, 5000);
    return;
  }
  deleteArmed = null;
  button.textContent = 'Delete room';
  deleting = id;
  try {
    await api.deleteRoom(id);
    store.removeRoom(id);
    if (store.active === id) closeRoom();
  } catch (err) { view.showError(describe(`Could not delete ${id}`, err)); }
  deleting = null;
}

async function deleteMessage(seq) {
  try {
    await api.deleteMessage(store.active, seq);
    store.markDeleted(store.active, seq);
  } catch (err) { view.showError(describe('Could not delete the message', err)); }
}

function canDelete(m) {
  if (m.deleted || !store.me) return false;
  const role = store.roleIn(store.active);
  const r = store.rooms.get(store.active);
  return m.from === store.me.username
    || (r && r.visibility !== 'direct' && (role === 'owner' || role === 'moderator'));
}

// ---- drawing ----------------------------------------------------------------

function renderAll() {
  view.renderRooms(store);
  view.renderHead(store);
  view.renderMessages(store, canDelete);
  loadImages();
  view.renderPending(store);
  view.renderMembers(store);
  view.renderTyping(store);
  view.historyStatus('');
}

store.addEventListener('change', ({ detail: { what, room } }) => {
  if (what === 'rooms') { view.renderRooms(store); view.renderHead(store); return; }
  if (room !== store.active) return;
  if (what === 'messages') {
    view.renderMessages(store, canDelete);
    view.renderTyping(store); // a message ends its sender's typing
  }
  if (what === 'pending') view.renderPending(store);
  if (what === 'typing') view.renderTyping(store);
  if (what === 'receipts') view.renderMessages(store, canDelete);
  if (what === 'members') {
    view.renderMembers(store);
    view.renderHead(store);
    view.renderMessages(store, canDelete);
  }
  loadImages(); // items redrawn above come without their picture
});

// ---- wiring -----------------------------------------------------------------

function wire() {
  $('login-form').addEventListener('submit', onLogin);
  $('register').addEventListener('click', onRegister);
  $('logout').addEventListener('click', onLogout);
  $('error-close').addEventListener('click', view.clearError);
  $('new-room-form').addEventListener('submit', createRoom);
  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('join-room-name').value.trim();
    if (!id) return;
    $('join-room-name').value = '';
    joinRoom(id);
  });
  $('dm-form').addEventListener('submit', openDirect);
  $('room-list').addEventListener('click', (e) => {
    const b = e.target.closest('[data-room]');
    if (b) openRoom(b.getAttribute('data-room'));
  });
  $('back').addEventListener('click', () => document.body.classList.remove('in-room', 'show-people'));
  $('people-toggle').addEventListener('click', () => {
    const open = document.body.classList.toggle('show-people');
    $('people-toggle').setAttribute('aria-expanded', String(open));
  });
  $('join-this').addEventListener('click', () => joinRoom(store.active));
  $('leave').addEventListener('click', leaveRoom);
  $('composer-form').addEventListener('submit', onSubmit);
  $('composer').addEventListener('input', onComposerInput);
  $('composer').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer-form').requestSubmit();
    }
  });
  $('scroller').addEventListener('scroll', () => {
    if (!store.active) return;
    if ($('scroller').scrollTop < 150) loadOlder(store.active);
    if (view.atBottom()) scheduleRead();
  });
  document.addEventListener('visibilitychange', () => {
    scheduleRead();
    if (document.visibilityState === 'visible') refreshRooms();
  });
  // New public rooms, direct messages and joins by others announce nothing
  // to this user: look again now and then.
  setInterval(() => { if (document.visibilityState === 'visible') refreshRooms(); }, 15000);
  $('attach-file').addEventListener('change', onAttach);
  $('messages').addEventListener('click', (e) => {
    const file = e.target.closest('a[data-attachment]');
    if (file) { e.preventDefault(); openAttachment(file); return; }
    const b = e.target.closest('[data-delete]');
    if (b) { deleteMessage(Number(b.getAttribute('data-delete'))); return; }
    const reply = e.target.closest('[data-reply]');
    if (reply) { compose('reply', Number(reply.getAttribute('data-reply'))); return; }
    const change = e.target.closest('[data-edit]');
    if (change) { compose('edit', Number(change.getAttribute('data-edit'))); return; }
    const menu = e.target.closest('[data-react-menu]');
    if (menu) {
      const open = menu.parentElement.querySelector('.react-menu');
      if (open) open.remove(); else menu.after(view.reactMenu(Number(menu.getAttribute('data-react-menu'))));
      return;
    }
    const emoji = e.target.closest('[data-emoji][data-seq]');
    if (emoji) {
      emoji.closest('.react-menu')?.remove();
      toggleReaction(Number(emoji.getAttribute('data-seq')), emoji.getAttribute('data-emoji'));
    }
  });
  $('composing-cancel').addEventListener('click', stopComposing);
  $('members').addEventListener('click', (e) => {
    const b = e.target.closest('[data-act]');
    if (b) moderate(b.getAttribute('data-act'), b.getAttribute('data-user'));
  });
  $('invite-form').addEventListener('submit', (e) => { e.preventDefault(); inviteOrUnban('invite'); });
  $('unban').addEventListener('click', () => inviteOrUnban('unban'));
  $('audit-open').addEventListener('click', showAudit);
  $('room-delete').addEventListener('click', deleteRoom);
  initSearch({ api, store, openRoom, loadOlder });
  initAccount({ api, store });
  window.addEventListener('unhandledrejection', (e) => {
    e.preventDefault();
    view.showError(describe('Something failed', e.reason));
  });
}

wire();
boot();
