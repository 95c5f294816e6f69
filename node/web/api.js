// api.js: the HTTP half of the protocol (docs/protocol.md §2, §3). One
// request function adds the token and turns every failure, the server's
// JSON errors and the network's alike, into an ApiError with a readable
// message. Knows nothing of the page.

/** A failed request: `code` is the protocol's error code, or `network`. */
export class ApiError extends Error {
  constructor(code, message, status = 0, retryAfterMs = null) {
    super(message);
    this.code = code;
    this.status = status;
    this.retryAfterMs = retryAfterMs;
  }

  /** Worth sending again unchanged (with the same client_id for a send). */
  get transient() {
    return ['unavailable', 'rate_limited', 'network', 'timeout'].includes(this.code);
  }
}

/** One line for the error element: what failed, and why, in words. */
export function describe(what, err) {
  if (!(err instanceof ApiError)) return `${what}: ${err && err.message ? err.message : String(err)}`;
  let why = err.message || err.code;
  if (err.code === 'network') why = 'cannot reach the server';
  if (err.code === 'rate_limited') {
    const secs = Math.max(1, Math.ceil((err.retryAfterMs ?? 1000) / 1000));
    why = `${why}; try again in ${secs} s`;
  }
  return `${what}: ${why}`;
}

const room = (id) => `/api/rooms/${encodeURIComponent(id)}`;

/** The HTTP API, with the session's token once logged in. */
export class Api {
  constructor() {
    this.token = null;
    /** Called when the token stops working (401 on a request that sent it). */
    this.onAuthLost = () => {};
  }

  async request(method, path, body) {
    const headers = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {
        method, headers, cache: 'no-store',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError('network', 'cannot reach the server');
    }
    const text = res.status === 204 ? '' : await res.text().catch(() => '');
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: described below */ }
    if (!res.ok) {
      const e = data && data.error;
      const err = e
        ? new ApiError(e.code, e.message, res.status, e.retry_after_ms ?? null)
        : new ApiError(res.status >= 500 ? 'unavailable' : 'http', `HTTP ${res.status}`, res.status);
      if (res.status === 401 && headers.Authorization) this.onAuthLost(err);
      throw err;
    }
    return { data, headers: res.headers };
  }

  async get(path) { return (await this.request('GET', path)).data; }
  async post(path, body = {}) { return (await this.request('POST', path, body)).data; }

  register(username, password, invite = '') {
    return this.post('/api/register', invite ? { username, password, invite } : { username, password });
  }
  login(username, password) { return this.post('/api/login', { username, password }); }
  logout() { return this.post('/api/logout'); }
  me() { return this.get('/api/me'); }
  async ticket() { return (await this.post('/api/ticket')).ticket; }
  changePassword(old, next) { return this.post('/api/me/password', { old, new: next }); }

  // Account administration (admins only).
  users(prefix = '', limit = 200) {
    return this.get(`/api/admin/users?prefix=${encodeURIComponent(prefix)}&limit=${limit}`);
  }
  setDisabled(username, disabled) {
    return this.post(`/api/admin/users/${encodeURIComponent(username)}/${disabled ? 'disable' : 'enable'}`);
  }
  async invite(uses, ttlSecs) { return (await this.post('/api/admin/invites', { uses, ttl_secs: ttlSecs })).code; }

  rooms() { return this.get('/api/rooms'); }
  createRoom(id, visibility) { return this.post('/api/rooms', { room: id, title: id, visibility }); }
  deleteRoom(id) { return this.request('DELETE', room(id)); }
  join(id) { return this.post(`${room(id)}/join`); }
  leave(id) { return this.post(`${room(id)}/leave`); }
  members(id) { return this.get(`${room(id)}/members`); }
  audit(id) { return this.get(`${room(id)}/audit`); }
  read(id, seq) { return this.post(`${room(id)}/read`, { seq }); }
  dm(username) { return this.post(`/api/dm/${encodeURIComponent(username)}`); }
  /** kick, ban, unban, invite, unmute: `{username}`; mute adds seconds, role adds role. */
  moderate(id, action, username, extra = {}) {
    return this.post(`${room(id)}/${action}`, { username, ...extra });
  }
  deleteMessage(id, seq) { return this.request('DELETE', `${room(id)}/messages/${seq}`); }
  async send(id, body, clientId, replyTo = null, attachments = []) {
    const payload = { body, client_id: clientId };
    if (replyTo) payload.reply_to = replyTo;
    if (attachments.length) payload.attachments = attachments;
    return (await this.request('POST', `${room(id)}/messages`, payload)).data;
  }
  async editMessage(id, seq, body) {
    return (await this.request('PATCH', `${room(id)}/messages/${seq}`, { body })).data;
  }
  react(id, seq, emoji, on) {
    return this.request(on ? 'PUT' : 'DELETE', `${room(id)}/messages/${seq}/reactions/${encodeURIComponent(emoji)}`);
  }
  receipts(id) { return this.get(`${room(id)}/receipts`); }
  /** Messages holding every word of `q`, newest first: in room `id`, or everywhere when null. */
  search(q, id = null) {
    const query = new URLSearchParams({ q, limit: '50' });
    return this.get(id ? `${room(id)}/search?${query}` : `/api/search?${query}`);
  }

  /** Uploads a File to a room: `{id, name, type, size}`. */
  async upload(id, file) {
    const headers = { 'Content-Type': file.type || 'application/octet-stream' };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    let res;
    try {
      res = await fetch(`${room(id)}/attachments?name=${encodeURIComponent(file.name)}`, {
        method: 'POST', headers, body: file, cache: 'no-store',
      });
    } catch {
      throw new ApiError('network', 'cannot reach the server');
    }
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      const e = data && data.error;
      throw e ? new ApiError(e.code, e.message, res.status) : new ApiError('http', `HTTP ${res.status}`, res.status);
    }
    return data;
  }

  /** An attachment's bytes as a Blob (the token cannot go in an img src). */
  async attachment(id) {
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    let res;
    try {
      res = await fetch(`/api/attachments/${encodeURIComponent(id)}`, { headers });
    } catch {
      throw new ApiError('network', 'cannot reach the server');
    }
    if (!res.ok) {
      const data = await res.json().catch(() => null);
      const e = data && data.error;
      throw e ? new ApiError(e.code, e.message, res.status) : new ApiError('http', `HTTP ${res.status}`, res.status);
    }
    return res.blob();
  }

  /**
   * One history page: `{messages, before}` where `before` is the cursor of
   * the page older than this one (from `x-next-page` when the server cut
   * the page short), or null at the room's first message.
   */
  async history(id, { before = null, after = null, limit = 50 } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before !== null) q.set('before', String(before));
    if (after !== null) q.set('after', String(after));
    const { data, headers } = await this.request('GET', `${room(id)}/messages?${q}`);
    const messages = data || [];
    const next = /^before=(\d+)$/.exec(headers.get('x-next-page') || '');
    let older = null;
    if (next) older = Number(next[1]);
    else if (after === null && messages.length > 0 && messages[0].seq > 1) older = messages[0].seq;
    const more = /^after=(\d+)$/.exec(headers.get('x-next-page') || '');
    return { messages, before: older, after: more ? Number(more[1]) : null };
  }
}
