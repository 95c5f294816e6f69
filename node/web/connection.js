// connection.js: the live half of the protocol (docs/protocol.md §5, §6,
// §7.3). One WebSocket: the auth frame, commands matched to replies by id,
// events handed on. When it closes (node stopped 1012, too slow 1013, node
// died 1006, network down) it reconnects with exponential backoff and
// jitter and subscribes every room again with `since` = the newest seq the
// page holds in order, so nothing is missed; the store drops what comes
// twice. 4001/4003 mean the session is over. When no WebSocket opens but
// HTTP works (a proxy or the origin rule refuses the upgrade) it streams
// events over SSE instead, with a ticket, and sends over HTTP.
// Behind the Palaver balancer the socket goes straight to the node that
// `GET /assign` names when that node is on this page's own host, so the
// balancer carries none of its bytes; a direct socket that does not open
// sends this page's sockets through the balancer from then on.

import { ApiError } from './api.js';

/** How long a command may wait for its reply. */
const COMMAND_TIMEOUT_MS = 20000;
/** How long `/assign` and then a direct socket may take to answer or open. */
const DIRECT_TIMEOUT_MS = 3000;
/** Longest pause between reconnection attempts. */
const MAX_BACKOFF_MS = 15000;

export class Connection {
  /**
   * `handlers`: onEvent(event), onStatus(text), onOnline(), onAuthLost(why),
   * onStreamFailed(), cursor(room) → seq to resume after, or null.
   */
  constructor(api, handlers) {
    this.api = api;
    this.h = handlers;
    this.rooms = new Set();
    this.mode = 'ws';
    this.ws = null;
    this.es = null;
    this.ready = false;
    this.readyWaiters = [];
    this.waiting = new Map();
    this.nextId = 1;
    this.attempt = 0;
    this.wsFailures = 0;
    // Counts socket openings, so an opening left behind by a newer one stops.
    this.wsGeneration = 0;
    // Set once a socket to an assigned node failed: relayed from then on.
    this.relayedOnly = false;
    this.timer = null;
    this.reopenTimer = null;
    this.stopped = true;
    window.addEventListener('online', () => {
      if (!this.stopped && !this.ready) { this.attempt = 0; this.connect(); }
    });
  }

  start(token) {
    this.token = token;
    this.stopped = false;
    this.attempt = 0;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.teardown();
    this.rooms = new Set();
  }

  /** The rooms to receive events of; subscribes and unsubscribes the difference. */
  setRooms(list) {
    const next = new Set(list);
    const live = this.mode === 'ws' && this.ready;
    for (const r of this.rooms) {
      if (!next.has(r) && live) this.raw({ type: 'unsubscribe', room: r }).catch(() => {});
    }
    const added = [...next].filter((r) => !this.rooms.has(r));
    const changed = added.length > 0 || next.size !== this.rooms.size;
    this.rooms = next;
    if (this.mode === 'sse') {
      if (changed) this.reopenSoon();
    } else {
      for (const r of added) this.subscribe(r);
    }
  }

  /** Subscribes again from the room's cursor (after a history page arrived). */
  resubscribe(room) {
    this.rooms.add(room);
    if (this.mode === 'sse') this.reopenSoon(); else this.subscribe(room);
  }

  /** Forgets a room whose subscription the server ended (`removed`). */
  dropRoom(room) {
    this.rooms.delete(room);
  }

  send(room, body, clientId, replyTo = null, attachments = []) {
    if (this.mode === 'sse') return this.api.send(room, body, clientId, replyTo, attachments);
    const cmd = { type: 'send', room, body, client_id: clientId };
    if (replyTo) cmd.reply_to = replyTo;
    if (attachments.length) cmd.attachments = attachments;
    return this.command(cmd);
  }

  typing(room) {
    // SSE has no typing command over HTTP: the others just see no indicator.
    if (this.mode === 'ws' && this.ready) this.raw({ type: 'typing', room }).catch(() => {});
  }

  read(room, seq) {
    if (this.mode === 'ws' && this.ready) return this.raw({ type: 'read', room, seq });
    return this.api.read(room, seq);
  }

  // ---- connecting -------------------------------------------------------

  connect() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    this.teardown();
    this.status(this.attempt ? 'reconnecting…' : 'connecting…');
    if (this.mode === 'sse') this.openSse(false); else this.openWs();
  }

  teardown() {
    this.wsGeneration++;
    this.setReady(false);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try { ws.close(1000); } catch { /* already closed */ }
    }
    if (this.es) { this.es.close(); this.es = null; }
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer);
      w.reject(new ApiError('network', 'the connection to the server was lost'));
    }
    this.waiting.clear();
  }

  /**
   * The WebSocket URL of the node the balancer assigns this page, or null
   * (no balancer, TLS, a node on another host, or no answer in time).
   */
  async assignedUrl() {
    if (this.relayedOnly || location.protocol !== 'http:') return null;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), DIRECT_TIMEOUT_MS);
    try {
      const r = await fetch('/assign', { cache: 'no-store', signal: abort.signal });
      if (r.status === 404) {
        this.relayedOnly = true; // nothing assigns here
        return null;
      }
      if (!r.ok) return null; // no node to assign now: relayed this time
      const url = new URL((await r.json()).ws);
      if (url.protocol !== 'ws:' || !sameHost(url.hostname, location.hostname)) {
        this.relayedOnly = true;
        return null;
      }
      return url.href;
    } catch {
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  async openWs() {
    const generation = ++this.wsGeneration;
    const direct = await this.assignedUrl();
    if (this.stopped || generation !== this.wsGeneration) return;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(direct || `${scheme}://${location.host}/ws`);
    let opened = false;
    this.ws = ws;
    const openTimer = direct ? setTimeout(() => { if (!opened) ws.close(); }, DIRECT_TIMEOUT_MS) : null;
    ws.onopen = async () => {
      opened = true;
      clearTimeout(openTimer);
      this.wsFailures = 0;
      try {
        await this.raw({ type: 'auth', token: this.token });
      } catch {
        return; // the server closes with 4001 next
      }
      this.attempt = 0;
      this.setReady(true);
      this.status('online');
      for (const r of this.rooms) this.subscribe(r);
      this.h.onOnline();
    };
    ws.onmessage = (e) => this.onFrame(e.data);
    ws.onclose = (e) => {
      clearTimeout(openTimer);
      if (this.ws !== ws) return;
      this.ws = null;
      if (direct && !opened) {
        // The assigned node is not reachable from here: use the relay.
        this.relayedOnly = true;
        this.connect();
        return;
      }
      this.closed(e.code, opened);
    };
  }

  async openSse(reopen) {
    const rooms = [...this.rooms];
    if (rooms.length === 0) {
      if (this.es) { this.es.close(); this.es = null; }
      this.status('online (SSE)');
      if (!reopen) this.h.onOnline();
      return;
    }
    let ticket;
    try {
      ticket = await this.api.ticket();
    } catch (e) {
      if (e.status !== 401) this.retry();
      return;
    }
    if (this.stopped) return;
    const q = new URLSearchParams({ rooms: rooms.join(','), ticket });
    const since = [];
    for (const r of rooms) {
      const s = this.h.cursor(r);
      if (s !== null) since.push(`${r}:${s}`);
    }
    if (since.length) q.set('since', since.join(','));
    const es = new EventSource(`/sse?${q}`);
    // The old stream stays open until the new one is, so presence does not
    // flicker to offline and back; events both deliver are dropped as doubles.
    const old = this.es;
    this.es = es;
    let opened = false;
    es.onopen = () => {
      opened = true;
      if (old) old.close();
      this.attempt = 0;
      this.status('online (SSE)');
      if (!reopen) this.h.onOnline();
    };
    es.onmessage = (e) => {
      try { this.h.onEvent(JSON.parse(e.data)); } catch { /* not JSON: ignored */ }
    };
    const end = (code) => {
      es.close();
      if (this.es !== es) return;
      this.es = null;
      if (old) old.close();
      if (!opened) this.h.onStreamFailed();
      this.closed(code, opened);
    };
    es.addEventListener('close', (e) => {
      let code = 1006;
      try { code = JSON.parse(e.data).code; } catch { /* keep 1006 */ }
      end(code);
    });
    // EventSource would retry by itself with the spent ticket: stop it.
    es.onerror = () => end(1006);
  }

  reopenSoon() {
    clearTimeout(this.reopenTimer);
    this.reopenTimer = setTimeout(() => {
      if (!this.stopped && this.mode === 'sse') this.openSse(true);
    }, 100);
  }

  async closed(code, opened) {
    this.setReady(false);
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer);
      w.reject(new ApiError('network', 'the connection to the server was lost'));
    }
    this.waiting.clear();
    if (this.stopped) return;
    if (code === 4001 || code === 4003) {
      this.stopped = true;
      this.h.onAuthLost(code === 4003 ? 'your session has ended; log in again' : 'not logged in');
      return;
    }
    if (!opened && this.mode === 'ws' && ++this.wsFailures >= 2) {
      // HTTP answers but no WebSocket opens: stream over SSE instead.
      try {
        await this.api.me();
        this.mode = 'sse';
        this.attempt = 0;
      } catch { /* the server is away: keep trying WebSockets */ }
    }
    this.retry();
  }

  retry() {
    if (this.stopped) return;
    const base = Math.min(MAX_BACKOFF_MS, 250 * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 10);
    const delay = base / 2 + Math.random() * (base / 2);
    this.status(delay < 1000 ? 'reconnecting…' : `reconnecting in ${Math.ceil(delay / 1000)} s…`);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  // ---- commands ---------------------------------------------------------

  async subscribe(room) {
    if (this.mode === 'sse') { this.reopenSoon(); return; }
    if (!this.ready) return; // every room is subscribed once the socket is up
    const since = this.h.cursor(room);
    const cmd = { type: 'subscribe', room };
    if (since !== null) cmd.since = since;
    try {
      const ok = await this.raw(cmd);
      this.h.onEvent({ type: 'subscribed', room, last_seq: ok.last_seq });
    } catch (e) {
      if (e.code === 'not_found' || e.code === 'forbidden') {
        this.rooms.delete(room);
        this.h.onEvent({ type: 'subscribe_failed', room, error: e });
      }
    }
  }

  /** A command once the socket is authenticated (waiting up to 10 s for it). */
  async command(cmd) {
    if (!this.ready) {
      await new Promise((resolve, reject) => {
        const t = setTimeout(() => {
          this.readyWaiters = this.readyWaiters.filter((f) => f !== go);
          reject(new ApiError('network', 'not connected to the server'));
        }, 10000);
        const go = () => { clearTimeout(t); resolve(); };
        this.readyWaiters.push(go);
      });
    }
    return this.raw(cmd);
  }

  raw(cmd) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new ApiError('network', 'not connected to the server'));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new ApiError('timeout', 'the server did not answer in time'));
      }, COMMAND_TIMEOUT_MS);
      this.waiting.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ ...cmd, id }));
    });
  }

  onFrame(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { return; }
    const w = msg.id != null ? this.waiting.get(msg.id) : undefined;
    if (w && (msg.type === 'ok' || msg.type === 'error')) {
      this.waiting.delete(msg.id);
      clearTimeout(w.timer);
      if (msg.type === 'ok') w.resolve(msg);
      else w.reject(new ApiError(msg.code, msg.message, 0, msg.retry_after_ms ?? null));
      return;
    }
    this.h.onEvent(msg);
  }

  setReady(ready) {
    this.ready = ready;
    if (ready) {
      const waiters = this.readyWaiters;
      this.readyWaiters = [];
      for (const go of waiters) go();
    }
  }

  status(text) { this.h.onStatus(text); }
}

/** Whether two host names are the same host (loopback names count as one). */
function sameHost(a, b) {
  const loopback = (h) => h === 'localhost' || h === '[::1]' || h.startsWith('127.');
  return a === b || (loopback(a) && loopback(b));
}
