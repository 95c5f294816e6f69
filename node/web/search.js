// search.js: the search box. Asks the server for messages holding every
// word (in the open room, or in every room the person may read), lists
// them newest first, and on a click opens the room and brings the message
// into view, loading older pages until it is there.

import { describe } from './api.js';
import { $, el, showError } from './views.js';

/** Older pages loaded at most to reach a result (50 messages each). */
const MAX_PAGES = 40;

export function initSearch({ api, store, openRoom, loadOlder }) {
  const form = $('search-form');
  const input = $('search-input');
  const scope = $('search-scope');
  const list = $('search-results');

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const q = input.value.trim();
    if (!q) return;
    const room = scope.checked && store.active ? store.active : null;
    list.replaceChildren(el('li', { class: 'hint' }, 'Searching…'));
    try {
      const found = await api.search(q, room);
      list.replaceChildren(...(found.length ? found.map(result) : [el('li', { class: 'hint' }, 'No message holds all of those words.')]));
    } catch (err) {
      list.replaceChildren();
      showError(describe('Search', err));
    }
  });

  list.addEventListener('click', (e) => {
    const li = e.target.closest('[data-test="search-result"]');
    if (li) jump(li.getAttribute('data-room'), Number(li.getAttribute('data-seq')));
  });

  function result(m) {
    const when = new Date(m.ts).toLocaleString();
    return el('li', { 'data-test': 'search-result', 'data-room': m.room, 'data-seq': String(m.seq), tabindex: '0' },
      el('span', { class: 'where' }, `#${m.room} · ${m.from} · ${when}`),
      el('span', { class: 'what' }, m.body || ''));
  }

  async function jump(room, seq) {
    await openRoom(room);
    for (let i = 0; i < MAX_PAGES && !store.message(room, seq) && store.older.get(room) != null; i++) {
      await loadOlder(room);
      if (store.active !== room) return;
    }
    const li = document.querySelector(`#messages [data-seq="${seq}"]`);
    if (!li) { showError('Search: that message is too far back, or is gone'); return; }
    li.scrollIntoView({ block: 'center' });
    li.classList.add('found');
    setTimeout(() => li.classList.remove('found'), 2500);
  }
}
