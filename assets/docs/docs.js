// bazaar API docs: renders the merged OpenAPI 3.1 document from /api/openapi.json.
// Vanilla ES2020, no dependencies, no external requests.
'use strict';
(() => {
  const SPEC_URL = '/api/openapi.json';
  const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
  const $ = (sel) => document.querySelector(sel);
  let spec = {};

  // Tiny DOM builder: h('div', {class: 'x', onclick: fn}, 'text', child, [more]).
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  // ---------- $ref resolution and schema helpers ----------
  function resolve(obj) {
    let o = obj, hops = 0;
    while (o && typeof o.$ref === 'string' && hops++ < 32) {
      if (!o.$ref.startsWith('#/')) return o;
      const target = o.$ref.slice(2).split('/')
        .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
        .reduce((acc, p) => (acc == null ? acc : acc[p]), spec);
      if (!target) return o;
      o = target;
    }
    return o || {};
  }
  const refName = (s) => (s && typeof s.$ref === 'string' ? s.$ref.split('/').pop() : null);

  function typeOf(schema, depth = 0) {
    if (!schema || depth > 6) return 'any';
    const name = refName(schema);
    if (name) return name;
    const s = schema;
    for (const k of ['oneOf', 'anyOf']) {
      if (Array.isArray(s[k])) return s[k].map((x) => typeOf(x, depth + 1)).join(' | ');
    }
    if (Array.isArray(s.allOf)) {
      return s.allOf.length === 1 ? typeOf(s.allOf[0], depth + 1) : 'object';
    }
    let types = Array.isArray(s.type) ? s.type.slice() : s.type ? [s.type] : [];
    if (s.nullable) types.push('null');
    if (!types.length) types = s.properties ? ['object'] : s.items ? ['array'] : s.enum ? ['enum'] : ['any'];
    const out = types.map((t) => {
      if (t === 'array') return `${typeOf(s.items, depth + 1)}[]`;
      if (t === 'object' && s.additionalProperties && typeof s.additionalProperties === 'object') {
        return `map<string, ${typeOf(s.additionalProperties, depth + 1)}>`;
      }
      return s.format && t !== 'null' ? `${t}(${s.format})` : t;
    });
    let str = out.join(' | ');
    if (Array.isArray(s.enum)) str += ` ∈ {${s.enum.map((e) => JSON.stringify(e)).join(', ')}}`;
    return str;
  }

  // Collects object properties, merging allOf parts.
  function objectParts(schema, seen) {
    const s = resolve(schema);
    const props = {}, required = new Set(s.required || []);
    for (const part of s.allOf || []) {
      const r = refName(part);
      if (r && seen.has(r)) continue;
      const sub = objectParts(part, r ? new Set([...seen, r]) : seen);
      Object.assign(props, sub.props);
      sub.required.forEach((x) => required.add(x));
    }
    Object.assign(props, s.properties || {});
    return { props, required };
  }

  // The schema to descend into for nested rendering (object or array of objects).
  function nestedTarget(schema, depth = 0) {
    if (depth > 4) return null;
    let s = schema;
    for (let i = 0; i < 4; i++) {
      const r = resolve(s);
      if (r.type === 'array' || (Array.isArray(r.type) && r.type.includes('array'))) { s = r.items; continue; }
      if (r.properties || r.allOf) return s;
      const variants = r.oneOf || r.anyOf;
      if (Array.isArray(variants) && variants.some((v) => nestedTarget(v, depth + 1))) return s;
      return null;
    }
    return null;
  }

  // Renders a schema as an indented field list; `seen` holds refs on the current path.
  function schemaTree(schema, seen = new Set(), depth = 0) {
    const name = refName(schema);
    if (name && seen.has(name)) return h('p', { class: 'muted' }, `↻ ${name} (recursive)`);
    const nextSeen = name ? new Set([...seen, name]) : seen;
    const s = resolve(schema);
    if (depth > 8) return h('p', { class: 'muted' }, '…');
    const variants = s.oneOf || s.anyOf;
    if (Array.isArray(variants) && !s.properties) {
      return h('ul', { class: 'fields' }, variants.map((v, i) => {
        const nested = nestedTarget(v);
        return h('li', {}, h('span', { class: 'name' }, `${s.oneOf ? 'one of' : 'any of'} #${i + 1}: `),
          h('span', { class: 'type' }, typeOf(v)), nested ? schemaTree(nested, nextSeen, depth + 1) : null);
      }));
    }
    const { props, required } = objectParts(s, nextSeen);
    const entries = Object.entries(props);
    if (!entries.length) {
      const inner = nestedTarget(s);
      if (inner && inner !== schema) return schemaTree(inner, nextSeen, depth + 1);
      return h('p', {}, h('span', { class: 'type' }, typeOf(schema)), s.description ? ` — ${s.description}` : '');
    }
    return h('ul', { class: 'fields' }, entries.map(([key, prop]) => {
      const p = resolve(prop);
      const nested = nestedTarget(prop);
      return h('li', {},
        h('span', { class: 'name mono' }, key), ' ',
        h('span', { class: 'type mono' }, typeOf(prop)),
        required.has(key) ? h('span', { class: 'req', title: 'required', 'aria-hidden': 'true' }, ' *') : null,
        required.has(key) ? h('span', { class: 'sr-only' }, ' (required)') : null,
        (p.description || prop.description) ? h('span', { class: 'desc' }, ` — ${prop.description || p.description}`) : null,
        nested ? schemaTree(nested, nextSeen, depth + 1) : null);
    }));
  }

  // Builds an example value from a schema (used for curl bodies).
  function example(schema, seen = new Set(), depth = 0) {
    const name = refName(schema);
    if ((name && seen.has(name)) || depth > 6) return null;
    const next = name ? new Set([...seen, name]) : seen;
    const s = resolve(schema);
    if (s.example !== undefined) return s.example;
    if (Array.isArray(s.examples) && s.examples.length) return s.examples[0];
    if (s.default !== undefined) return s.default;
    if (Array.isArray(s.enum)) return s.enum[0];
    if (s.oneOf || s.anyOf) {
      const vs = s.oneOf || s.anyOf;
      return example(vs.find((v) => resolve(v).type !== 'null') || vs[0], next, depth + 1);
    }
    const t = (Array.isArray(s.type) ? s.type.find((x) => x !== 'null') : s.type)
      || (s.properties || s.allOf ? 'object' : s.items ? 'array' : 'string');
    if (t === 'object') {
      const { props } = objectParts(s, next);
      return Object.fromEntries(Object.entries(props).map(([k, v]) => [k, example(v, next, depth + 1)]));
    }
    if (t === 'array') return [example(s.items, next, depth + 1)].filter((x) => x !== null);
    if (t === 'integer' || t === 'number') return s.minimum ?? 0;
    if (t === 'boolean') return false;
    if (s.format === 'uuid') return '00000000-0000-0000-0000-000000000000';
    if (s.format === 'date-time') return new Date(0).toISOString();
    if (s.format === 'email') return 'user@example.com';
    return 'string';
  }

  // ---------- operations ----------
  function baseUrl() {
    const server = (spec.servers || [])[0];
    const rel = server && typeof server.url === 'string' && server.url.startsWith('/') ? server.url : '';
    return location.origin + rel.replace(/\/$/, '');
  }

  function collectOperations() {
    const ops = [];
    for (const [path, rawItem] of Object.entries(spec.paths || {})) {
      const item = resolve(rawItem);
      for (const method of METHODS) {
        const op = item[method];
        if (!op) continue;
        const params = new Map();
        for (const p of [...(item.parameters || []), ...(op.parameters || [])].map(resolve)) {
          params.set(`${p.in}:${p.name}`, p);
        }
        const id = 'op-' + (op.operationId || `${method}-${path}`).replace(/[^A-Za-z0-9_-]+/g, '-');
        ops.push({ path, method, op, id, params: [...params.values()], tags: op.tags && op.tags.length ? op.tags : ['default'] });
      }
    }
    return ops;
  }

  const shellQuote = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

  function curlFor(o) {
    const url = baseUrl() + o.path;
    const lines = [`curl -X ${o.method.toUpperCase()} ${shellQuote(url)}`];
    for (const p of o.params.filter((x) => x.in === 'header')) lines.push(`-H ${shellQuote(`${p.name}: <${p.name}>`)}`);
    const body = resolve(o.op.requestBody);
    const json = body.content && (body.content['application/json'] || Object.values(body.content)[0]);
    if (json) {
      lines.push(`-H 'Content-Type: application/json'`);
      lines.push(`-d ${shellQuote(JSON.stringify(example(json.schema || {}), null, 2))}`);
    }
    return lines.join(' \\\n  ');
  }

  function copyButton(getText) {
    const btn = h('button', { type: 'button', class: 'copy', 'aria-label': 'Copy curl command' }, 'Copy');
    btn.addEventListener('click', async () => {
      try { await navigator.clipboard.writeText(getText()); btn.textContent = 'Copied'; } catch { btn.textContent = 'Select & copy'; }
      setTimeout(() => { btn.textContent = 'Copy'; }, 1500);
    });
    return btn;
  }

  function tryItForm(o) {
    const fields = o.params.filter((p) => p.in === 'path' || p.in === 'query');
    const out = h('div', { 'aria-live': 'polite' });
    const inputs = fields.map((p) => {
      const fid = `${o.id}-${p.in}-${p.name}`;
      const ex = p.example ?? (p.schema ? resolve(p.schema).example : undefined);
      return {
        p, el: h('input', { type: 'text', id: fid, name: p.name, required: p.in === 'path' || p.required, placeholder: ex != null ? String(ex) : typeOf(p.schema) }),
        label: h('label', { for: fid }, `${p.name} (${p.in})`, p.required || p.in === 'path' ? h('span', { class: 'req' }, ' *') : ''),
      };
    });
    const form = h('form', { 'aria-label': `Try ${o.method.toUpperCase()} ${o.path}` },
      inputs.map((i) => h('div', {}, i.label, i.el)),
      h('div', {}, h('button', { type: 'submit' }, 'Send request')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      let path = o.path;
      const qs = new URLSearchParams();
      for (const { p, el } of inputs) {
        if (!el.value) continue;
        if (p.in === 'path') path = path.replace(`{${p.name}}`, encodeURIComponent(el.value));
        else qs.append(p.name, el.value);
      }
      const url = baseUrl() + path + (qs.toString() ? `?${qs}` : '');
      out.replaceChildren(h('p', { class: 'muted' }, `GET ${url} …`));
      try {
        const started = performance.now();
        const res = await fetch(url, { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
        const text = await res.text();
        let pretty = text;
        try { pretty = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not JSON */ }
        const cls = `status s${String(res.status)[0]}`;
        out.replaceChildren(
          h('p', { class: 'result-status' }, h('span', { class: cls }, `${res.status} ${res.statusText}`),
            ` · ${Math.round(performance.now() - started)} ms · `, h('code', {}, url)),
          h('pre', { tabindex: '0', 'aria-label': 'Response body' }, pretty || '(empty body)'));
      } catch (err) {
        out.replaceChildren(h('p', { class: 'error', role: 'alert' }, `Request failed: ${err.message}`));
      }
    });
    return h('section', { class: 'try' }, h('h3', {}, 'Try it'), form, out);
  }

  function renderOperation(o) {
    const { op, method, path } = o;
    const params = o.params.length ? h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Name', 'In', 'Required', 'Type', 'Description'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, o.params.map((p) => h('tr', {},
        h('td', { class: 'mono' }, p.name), h('td', {}, p.in),
        h('td', {}, p.required ? h('span', { class: 'req' }, 'yes') : 'no'),
        h('td', { class: 'type mono' }, typeOf(p.schema || (p.content && Object.values(p.content)[0].schema))),
        h('td', {}, p.description || '')))))) : null;

    const body = resolve(op.requestBody);
    const bodyEls = body.content ? Object.entries(body.content).map(([mime, media]) => h('div', {},
      h('p', { class: 'muted' }, h('code', {}, mime), body.required ? h('span', { class: 'req' }, ' required') : ' optional',
        refName(media.schema) ? ` — ${refName(media.schema)}` : ''),
      body.description ? h('p', {}, body.description) : null,
      media.schema ? schemaTree(media.schema) : null)) : null;

    const responses = h('ul', { class: 'responses fields' }, Object.entries(op.responses || {}).map(([code, raw]) => {
      const r = resolve(raw);
      const media = r.content && (r.content['application/json'] || Object.values(r.content)[0]);
      return h('li', {},
        h('span', { class: `status s${code[0]}` }, code), ' ', r.description || '',
        media && media.schema ? h('details', {}, h('summary', {}, `Schema: ${typeOf(media.schema)}`), schemaTree(media.schema)) : null);
    }));

    const curl = curlFor(o);
    return h('article', { class: `op${op.deprecated ? ' deprecated' : ''}`, id: o.id, 'aria-labelledby': `${o.id}-h` },
      h('h3', { class: 'op-head', id: `${o.id}-h` }, h('span', { class: `badge ${method}` }, method), h('span', { class: 'op-path' }, path),
        op.deprecated ? h('span', { class: 'muted' }, '(deprecated)') : null),
      op.summary ? h('p', { class: 'summary' }, op.summary) : null,
      op.description ? h('p', { class: 'description' }, op.description) : null,
      params && [h('h3', {}, 'Parameters'), params],
      bodyEls && [h('h3', {}, 'Request body'), bodyEls],
      h('h3', {}, 'Responses'), responses,
      h('h3', {}, 'Example'),
      h('div', { class: 'curl' }, h('pre', { tabindex: '0', 'aria-label': 'curl example' }, h('code', {}, curl)), copyButton(() => curl)),
      method === 'get' ? tryItForm(o) : null);
  }

  // ---------- page ----------
  function render() {
    const info = spec.info || {};
    document.title = `${info.title || 'API'} — documentation`;
    $('#api-title').textContent = info.title || 'API documentation';
    $('#api-version').textContent = [info.version && `Version ${info.version}`, spec.openapi && `OpenAPI ${spec.openapi}`].filter(Boolean).join(' · ');
    $('#api-description').textContent = info.description || '';

    const ops = collectOperations();
    const tagMeta = new Map((spec.tags || []).map((t) => [t.name, t]));
    const groups = new Map([...tagMeta.keys()].map((k) => [k, []]));
    for (const o of ops) {
      const tag = o.tags[0];
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push(o);
    }
    const toc = $('#toc'), main = $('#operations');
    toc.replaceChildren(); main.replaceChildren();
    const index = [];
    for (const [tag, list] of groups) {
      if (!list.length) continue;
      const links = list.map((o) => {
        const li = h('li', {}, h('a', { href: `#${o.id}` }, h('span', { class: `badge ${o.method}` }, o.method), h('span', {}, o.op.summary || o.path)));
        const article = renderOperation(o);
        index.push({ li, article, text: [o.method, o.path, o.op.summary, o.op.description, o.op.operationId, tag].join(' ').toLowerCase() });
        return { li, article };
      });
      const tocGroup = h('div', { class: 'toc-tag' }, h('h2', {}, tag), h('ul', {}, links.map((l) => l.li)));
      const section = h('section', { class: 'tag-section', 'aria-label': tag }, h('h2', {}, tag),
        tagMeta.get(tag) && tagMeta.get(tag).description ? h('p', {}, tagMeta.get(tag).description) : null,
        links.map((l) => l.article));
      toc.append(tocGroup); main.append(section);
      index.push({ group: [tocGroup, section], members: links });
    }
    $('#status').replaceChildren();
    $('#status').hidden = true;
    if (!ops.length) main.append(h('p', { class: 'muted' }, 'The document contains no operations.'));

    const filter = $('#filter');
    filter.disabled = false;
    const apply = () => {
      const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
      let shown = 0;
      for (const e of index) {
        if (e.group) {
          const any = e.members.some((m) => !m.article.hidden);
          e.group.forEach((g) => { g.hidden = !any; });
          continue;
        }
        const match = words.every((w) => e.text.includes(w));
        e.li.hidden = e.article.hidden = !match;
        if (match) shown++;
      }
      $('#filter-count').textContent = words.length ? `${shown} of ${ops.length} operations` : `${ops.length} operations`;
    };
    filter.addEventListener('input', apply);
    apply();
    if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
  }

  function showError(message) {
    const status = $('#status');
    status.hidden = false;
    status.className = 'error';
    status.setAttribute('role', 'alert');
    status.replaceChildren(h('strong', {}, 'Could not load the API description. '), message, ' ',
      h('a', { href: SPEC_URL }, 'Open the raw document'), ' or ',
      h('button', { type: 'button', onclick: () => location.reload() }, 'retry'), '.');
  }

  async function load() {
    let res;
    try {
      res = await fetch(SPEC_URL, { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
    } catch (err) {
      return showError(`Network error fetching ${SPEC_URL}: ${err.message}.`);
    }
    if (!res.ok) return showError(`${SPEC_URL} returned HTTP ${res.status} ${res.statusText}.`);
    try {
      spec = await res.json();
    } catch (err) {
      return showError(`${SPEC_URL} is not valid JSON (${err.message}).`);
    }
    if (!spec || typeof spec !== 'object' || !spec.paths) return showError(`${SPEC_URL} does not look like an OpenAPI document (no "paths").`);
    try {
      render();
    } catch (err) {
      console.error(err);
      showError(`The document could not be rendered: ${err.message}.`);
    }
  }

  document.addEventListener('DOMContentLoaded', load);
})();
