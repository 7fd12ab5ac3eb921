// bazaar developer portal: "Try a call". The browser sends the request straight to the gateway
// (the page's own origin, so no CORS is involved and every response header is readable), with
// the key in `x-api-key`: the key's plan limits and usage counting apply exactly as for any
// client, and the key never passes through the web service. Without this script the form only
// shows the equivalent curl command.
'use strict';

(() => {
  const FEED = '/api/v1/feed/';
  const SHOWN_HEADERS = ['RateLimit-Policy', 'RateLimit', 'Retry-After', 'Content-Type', 'x-request-id'];

  // The same rule as the server's `feed_path`: a plain path under the feed, no dot segments
  // (which the URL parser would resolve elsewhere), no fragment.
  function feedPath(candidate) {
    const text = candidate.trim();
    if (text.length > 2000) return null;
    const at = text.indexOf('?');
    const path = at < 0 ? text : text.slice(0, at);
    const query = at < 0 ? '' : text.slice(at + 1);
    const underFeed = path.startsWith(FEED) && path.length > FEED.length;
    const plain = /^[A-Za-z0-9\-_.~/]*$/.test(path);
    const dotted = path.split('/').some((s) => s === '.' || s === '..');
    const queryOk = /^[\x21-\x7e]*$/.test(query) && !query.includes('#');
    return underFeed && plain && !dotted && !path.includes('//') && queryOk ? text : null;
  }

  // One shell word: bare when nothing in it means something to a shell, else single-quoted.
  function shellWord(word) {
    return /^[A-Za-z0-9\-_./:=%@+,]*$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
  }

  function curl(key, path) {
    return `curl -H ${shellWord(`x-api-key: ${key || 'YOUR_KEY'}`)} ${shellWord(location.origin + path)}`;
  }

  function setUp(form) {
    const keyInput = form.querySelector('[data-try-key]');
    const pathInput = form.querySelector('[data-try-path]');
    const curlCode = form.querySelector('[data-try-curl]');
    const output = form.querySelector('[data-try-output]');
    const status = form.querySelector('[data-try-status]');
    const result = output.querySelector('pre');
    const button = form.querySelector('button[type=submit]');
    for (const note of form.querySelectorAll('[data-try-nojs]')) note.hidden = true;

    const refresh = () => {
      const path = feedPath(pathInput.value);
      if (path) curlCode.textContent = curl(keyInput.value.trim(), path);
    };
    keyInput.addEventListener('input', refresh);
    pathInput.addEventListener('input', refresh);
    refresh();

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      output.hidden = false;
      const path = feedPath(pathInput.value);
      if (!path) {
        status.textContent = 'not sent';
        result.dataset.status = '';
        result.textContent = `Use a path under ${FEED}, such as ${FEED}products?per_page=2.`;
        return;
      }
      const headers = { accept: 'application/json' };
      const key = keyInput.value.trim();
      if (key) headers['x-api-key'] = key;
      button.disabled = true;
      status.textContent = 'sending…';
      try {
        const response = await fetch(path, {
          headers,
          // The session cookie has nothing to do with the API; the key alone must decide.
          credentials: 'omit',
          cache: 'no-store',
        });
        const text = await response.text();
        let body = text;
        try {
          body = JSON.stringify(JSON.parse(text), null, 2);
        } catch (_) {
          // Not JSON: shown as it came.
        }
        const lines = [`HTTP ${response.status} ${response.statusText}`.trim()];
        for (const name of SHOWN_HEADERS) {
          const value = response.headers.get(name);
          if (value !== null) lines.push(`${name}: ${value}`);
        }
        status.textContent = `${response.status} ${response.statusText}`.trim();
        result.dataset.status = String(response.status);
        result.textContent = `${lines.join('\n')}\n\n${body}`;
      } catch (error) {
        status.textContent = 'no answer';
        result.dataset.status = '0';
        result.textContent = `The gateway could not be reached: ${error.message}`;
      } finally {
        button.disabled = false;
      }
    });
  }

  document.addEventListener('DOMContentLoaded', () => {
    for (const form of document.querySelectorAll('form[data-try]')) setUp(form);
  });
})();
