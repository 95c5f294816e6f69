// account.js: the account panel. Every user may change their password
// (the server ends their other sessions); an admin also lists accounts,
// disables and enables them, and makes invite codes for registration.

import { describe } from './api.js';
import { $, el, showError } from './views.js';

/** Seconds an invite code made here stays valid: 7 days. */
const INVITE_TTL_SECS = 7 * 24 * 3600;

export function initAccount({ api, store }) {
  const panel = $('account-view');
  const admin = () => store.me?.role === 'admin';

  $('account-open').addEventListener('click', () => {
    panel.hidden = !panel.hidden;
    $('account-open').setAttribute('aria-expanded', String(!panel.hidden));
    if (panel.hidden) return;
    $('admin-panel').hidden = !admin();
    $('password-status').textContent = '';
    $('invite-code').textContent = '';
    if (admin()) listUsers();
    $('password-old').focus();
  });
  $('account-close').addEventListener('click', () => { panel.hidden = true; });

  $('password-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const old = $('password-old').value;
    const next = $('password-new').value;
    if (next.length < 8 || next.length > 128) { showError('Change password: a password is 8 to 128 characters'); return; }
    try {
      await api.changePassword(old, next);
      $('password-old').value = '';
      $('password-new').value = '';
      $('password-status').textContent = 'Password changed; your other sessions have ended.';
    } catch (err) {
      showError(err.code === 'forbidden' ? 'Change password: the current password is wrong' : describe('Change password', err));
    }
  });

  $('invite-code-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const uses = Number($('invite-uses').value) || 1;
    try {
      $('invite-code').textContent = await api.invite(uses, INVITE_TTL_SECS);
    } catch (err) { showError(describe('Invite code', err)); }
  });

  $('users-form').addEventListener('submit', (e) => { e.preventDefault(); listUsers(); });

  $('admin-users').addEventListener('click', async (e) => {
    const button = e.target.closest('[data-test="admin-toggle"]');
    if (!button) return;
    const li = button.closest('[data-test="admin-user"]');
    const username = li.getAttribute('data-username');
    const disable = li.getAttribute('data-disabled') !== 'true';
    button.disabled = true;
    try {
      await api.setDisabled(username, disable);
      await listUsers();
    } catch (err) {
      button.disabled = false;
      showError(describe(disable ? `Disable ${username}` : `Enable ${username}`, err));
    }
  });

  async function listUsers() {
    try {
      const users = await api.users($('users-prefix').value.trim());
      $('admin-users').replaceChildren(...users.map(row));
    } catch (err) { showError(describe('List accounts', err)); }
  }

  function row(u) {
    const self = u.username === store.me?.username;
    return el('li', { 'data-test': 'admin-user', 'data-username': u.username, 'data-disabled': String(u.disabled) },
      el('span', { class: 'who' }, u.role === 'admin' ? `${u.username} (admin)` : u.username),
      el('span', { class: 'hint' }, u.disabled ? 'disabled' : `since ${new Date(u.created_at).toLocaleDateString()}`),
      self ? el('span') : el('button', { type: 'button', class: u.disabled ? '' : 'danger', 'data-test': 'admin-toggle' },
        u.disabled ? 'Enable' : 'Disable'));
  }
}
