// Browser tests for bazaar's pages: starts a real `bazaar up` on free ports with a fresh data
// directory, drives Debian's Chromium with playwright-core, and saves a screenshot of every
// page it checks under tests/artifacts/browser/ (git-ignored).
//
//   BAZAAR_BIN=target/debug/bazaar node tests/browser/run.mjs
//
// Each scenario is a node:test test, run in order against the one system; a failure names the
// step and leaves the screenshots taken so far.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const BIN = process.env.BAZAAR_BIN
  || path.join(process.env.CARGO_TARGET_DIR || path.join(repo, 'target'), 'debug', 'bazaar');
const CHROMIUM = process.env.BAZAAR_CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(repo, 'tests', 'artifacts', 'browser');
const DEMO_ADMIN = { email: 'admin@bazaar.test', password: 'admin-pass-1' };
const SUCCESS_CARD = '4242424242424242';
const DECLINE_CARD = '4000000000000002';

let system; // { base, pids, stop() }
let browser;

/// Whether `port` can be bound on 127.0.0.1 right now.
function portFree(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/// A run of `count` free ports below the ephemeral range (outbound connections of the running
/// system take ephemeral ports and could otherwise steal a planned one).
async function freePortRange(count) {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = 10000 + Math.floor(Math.random() * 22000);
    let free = true;
    for (let port = base; port < base + count && free; port++) free = await portFree(port);
    if (free) return base;
  }
  throw new Error('no free port range');
}

/// Starts `bazaar up` and resolves once it prints that it is up, with each process's pid.
async function startSystem() {
  const basePort = await freePortRange(16);
  const gateway = basePort + 15;
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'bazaar-browser-'));
  const child = spawn(BIN, ['up', '--port', String(gateway), '--base-port', String(basePort), '--data-dir', dataDir], {
    env: { ...process.env, RUST_LOG: 'warn', BAZAAR_CONFIG_DIR: dataDir },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const pids = {};
  const lines = readline.createInterface({ input: child.stdout });
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('bazaar up did not start within 120 s')), 120_000);
    child.once('exit', (code) => reject(new Error(`bazaar up exited early with ${code}`)));
    lines.on('line', (line) => {
      // The table `up` prints: SERVICE ADDRESS STATE PID.
      const row = line.match(/^\s*([a-z-]+\d*)\s+http:\/\/127\.0\.0\.1:\d+\s+ready\s+(\d+)\s*$/);
      if (row) pids[row[1]] = Number(row[2]);
      if (line.includes('press Ctrl-C')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  await ready;
  return {
    base: `http://127.0.0.1:${gateway}`,
    pids,
    async stop() {
      child.kill('SIGTERM');
      await once(child, 'exit');
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/// Reloads `page` until `locator`'s text matches `pattern` (the order page refreshes itself
/// too; this only bounds the wait).
async function waitForText(page, selector, pattern, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  let text = '';
  while (Date.now() < deadline) {
    text = (await page.locator(selector).textContent({ timeout: 10_000 }).catch(() => '')) || '';
    if (pattern.test(text)) return text;
    await page.waitForTimeout(500);
    await page.reload();
  }
  assert.fail(`${selector} never matched ${pattern}; last text: ${text.trim()}`);
}

/// Signs in through the identity provider's login form (the page must be on it).
async function fillLogin(page, { email, password }) {
  await page.waitForURL(/\/login\?/);
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function signIn(page, who) {
  await page.getByRole('link', { name: 'Sign in' }).first().click();
  await fillLogin(page, who);
  await page.waitForURL((url) => !url.pathname.startsWith('/login') && !url.pathname.startsWith('/oauth2'));
  await assert.doesNotReject(page.getByText(`Signed in as ${who.email}`).waitFor());
}

/// Opens the first product of a search and adds one to the cart; returns its name.
async function addFirstResult(page, query, skipName) {
  await page.goto(`${system.base}/search?q=${encodeURIComponent(query)}`);
  const links = page.locator('ul.grid li.card a');
  const count = await links.count();
  assert.ok(count > 0, `search for ${query} found products`);
  for (let i = 0; i < count; i++) {
    const name = (await links.nth(i).locator('.name').textContent()).trim();
    if (name === skipName) continue;
    await links.nth(i).click();
    await page.waitForURL(/\/products\//);
    await assert.doesNotReject(page.getByRole('heading', { level: 1, name }).waitFor());
    await page.getByRole('button', { name: 'Add to cart' }).click();
    await page.waitForURL(/\/cart$/);
    return name;
  }
  assert.fail(`no second product for ${query}`);
}

async function checkout(page, card) {
  await page.goto(`${system.base}/checkout`);
  await page.getByLabel('Full name').fill('Browser Shopper');
  await page.getByLabel('Street address').fill('1 Main Street');
  await page.getByLabel('City').fill('New York');
  await page.getByLabel('Country (2 letters)').fill('US');
  await page.getByLabel('Postal code').fill('10001');
  await page.getByLabel('Card number').fill(card);
  await page.getByLabel('Expiry (MM/YY)').fill('12/30');
  await page.getByLabel('CVC').fill('123');
  await page.getByRole('button', { name: 'Place order' }).click();
  await page.waitForURL(/\/orders\/[0-9a-f-]{36}$/);
  return page.url().split('/').pop();
}

const shopper = {
  name: 'Browser Shopper',
  email: `shopper-${Date.now()}@example.test`,
  password: 'browser-pass-1',
};
let confirmedOrderId;

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  assert.ok(fs.existsSync(BIN), `the bazaar binary is at ${BIN} (cargo build -p bazaar)`);
  assert.ok(fs.existsSync(CHROMIUM), `Chromium is at ${CHROMIUM} (apt-get install chromium)`);
  system = await startSystem();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  await system?.stop();
});

test('a shopper registers, searches, fills a cart signed out, signs in, and checks out', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();

  await page.goto(system.base);
  await assert.doesNotReject(page.getByRole('heading', { name: 'Featured' }).waitFor());
  await shot(page, '01-home');

  // Register; identity's login form follows, which the shopper leaves for later.
  await page.getByRole('link', { name: 'Register' }).click();
  await page.getByLabel('Name').fill(shopper.name);
  await page.getByLabel('Email').fill(shopper.email);
  await page.getByLabel('Password (at least 10 characters)').fill(shopper.password);
  await shot(page, '02-register');
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.waitForURL(/\/login\?/);
  assert.equal(await page.getByLabel('Email').inputValue(), shopper.email, 'the new email is prefilled');

  // Search, with the filters, then a product page with stock and a shipping estimate.
  await page.goto(system.base);
  await page.getByLabel('Search products').fill('mug');
  await page.getByRole('button', { name: 'Search' }).click();
  await page.waitForURL(/\/search\?/);
  assert.match(await page.getByTestId('result-count').textContent(), /^[1-9]\d* products?$/);
  await shot(page, '03-search');
  await page.locator('ul.grid li.card a').first().click();
  await page.waitForURL(/\/products\//);
  assert.match(await page.getByTestId('stock').textContent(), /In stock|left/);
  await page.getByLabel('Postal code').fill('10001');
  await page.getByRole('button', { name: 'Estimate' }).click();
  assert.match(await page.getByTestId('quote').textContent(), /Shipping to 10001: \$\d/);
  await shot(page, '04-product');

  // Two products into the anonymous cart.
  const first = await addFirstResult(page, 'mug');
  const second = await addFirstResult(page, 'lamp', first);
  assert.equal((await page.getByTestId('cart-count').textContent()).trim(), '2');
  await assert.doesNotReject(page.getByRole('link', { name: first }).waitFor());
  await assert.doesNotReject(page.getByRole('link', { name: second }).waitFor());
  await shot(page, '05-cart-signed-out');

  // Signing in merges the anonymous cart into the new account's.
  await signIn(page, shopper);
  await page.goto(`${system.base}/cart`);
  assert.equal((await page.getByTestId('cart-count').textContent()).trim(), '2');
  await assert.doesNotReject(page.getByRole('link', { name: second }).waitFor());

  // Checkout with the success card: pending, then confirmed as the saga completes.
  const checkoutPage = page.goto(`${system.base}/checkout`);
  await checkoutPage;
  await assert.doesNotReject(page.getByText(SUCCESS_CARD).waitFor());
  await shot(page, '06-checkout');
  confirmedOrderId = await checkout(page, SUCCESS_CARD);
  await waitForText(page, '[data-testid=order-status]', /Confirmed/);
  assert.match(await page.getByTestId('shipment-status').textContent(), /label created|in transit|delivered/);
  await shot(page, '07-order-confirmed');
  // The confirmation's event empties the cart just after the order page shows it confirmed
  // (the page waits for the outcome): reload until the header's count follows.
  await waitForText(page, '[data-testid=cart-count]', /^\s*0\s*$/, 20_000);

  // The confirmation email arrives in the mailbox (through events, so wait for it).
  await page.goto(`${system.base}/account/mailbox`);
  await waitForText(page, 'ul.mail', new RegExp(`${confirmedOrderId} is confirmed`));
  await shot(page, '08-mailbox');

  // Order history lists it.
  await page.goto(`${system.base}/orders`);
  await assert.doesNotReject(page.locator(`a[href="/orders/${confirmedOrderId}"]`).waitFor());
  await shot(page, '09-orders');
  await context.close();
});

test('a declined card shows the cancellation and its reason', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(system.base);
  await signIn(page, shopper);
  await addFirstResult(page, 'mug');
  await checkout(page, DECLINE_CARD);
  const status = await waitForText(page, '[data-testid=order-status]', /Cancelled/);
  assert.match(status, /declined/i);
  await shot(page, '10-order-declined');
  await context.close();
});

test('a bad checkout field is named on the form, not a crash', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(system.base);
  await signIn(page, shopper);
  await addFirstResult(page, 'mug');
  await page.goto(`${system.base}/checkout`);
  await page.getByLabel('Full name').fill('Browser Shopper');
  await page.getByLabel('Street address').fill('1 Main Street');
  await page.getByLabel('City').fill('New York');
  await page.getByLabel('Country (2 letters)').fill('US');
  await page.getByLabel('Postal code').fill('10001');
  await page.getByLabel('Card number').fill('4242424242424241'); // fails the Luhn check
  await page.getByLabel('Expiry (MM/YY)').fill('12/30');
  await page.getByLabel('CVC').fill('123');
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/checkout') && r.request().method() === 'POST'),
    page.getByRole('button', { name: 'Place order' }).click(),
  ]);
  assert.equal(response.status(), 422);
  await assert.doesNotReject(page.locator('#card_number-error').waitFor());
  await shot(page, '11-checkout-bad-card');
  await context.close();
});

test('pages fit a phone-sized window', async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
  const page = await context.newPage();
  for (const [name, url] of [['home', '/'], ['search', '/search?q=mug'], ['cart', '/cart']]) {
    await page.goto(`${system.base}${url}`);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${url} is ${overflow}px wider than a phone`);
    await shot(page, `12-phone-${name}`);
  }
  await context.close();
});

test('static assets have hashed names, are immutable, and the second load comes from the cache', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  const fromCache = new Set();
  cdp.on('Network.requestServedFromCache', (e) => fromCache.add(e.requestId));
  const cssUrls = new Map();
  cdp.on('Network.responseReceived', (e) => {
    if (/\/static\/web\/site\.[0-9a-f]{10}\.css$/.test(e.response.url)) {
      cssUrls.set(e.requestId, e.response);
    }
  });

  const first = page.waitForResponse((r) => /\/static\/web\/site\.[0-9a-f]{10}\.css$/.test(r.url()));
  await page.goto(system.base);
  const css = await first;
  assert.equal(css.status(), 200);
  assert.equal(css.headers()['cache-control'], 'public, max-age=31536000, immutable');

  cssUrls.clear();
  await page.goto(`${system.base}/search?q=mug`);
  await page.waitForLoadState('load');
  const second = [...cssUrls.entries()];
  assert.ok(second.length > 0, 'the stylesheet was used by the second page');
  for (const [id, response] of second) {
    assert.ok(fromCache.has(id) || response.fromDiskCache || response.fromMemoryCache,
      `the stylesheet came from the browser cache on the second page (status ${response.status})`);
  }
  await context.close();
});

test('with orders frozen the shop still browses, and a checkout waits for shipping to return', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(system.base);
  await signIn(page, shopper);

  // Orders frozen (SIGSTOP: alive, so not restarted, but answering nothing).
  process.kill(system.pids.orders, 'SIGSTOP');
  try {
    await page.goto(`${system.base}/orders`);
    await assert.doesNotReject(page.getByText(/orders service is unavailable/).waitFor());
    await shot(page, '13-orders-down');
    await page.goto(`${system.base}/search?q=mug`);
    assert.match(await page.getByTestId('result-count').textContent(), /^[1-9]\d* products?$/);
  } finally {
    process.kill(system.pids.orders, 'SIGCONT');
  }

  // Shipping frozen during a checkout (the saga's first step needs it): the order waits,
  // visibly, and completes once shipping answers again.
  await addFirstResult(page, 'lamp');
  process.kill(system.pids.shipping, 'SIGSTOP');
  try {
    await checkout(page, SUCCESS_CARD);
    const waiting = await waitForText(page, '[data-testid=order-status]', /Pending/);
    assert.match(waiting, /completes when it returns/);
    await shot(page, '14-order-pending-shipping-down');
  } finally {
    process.kill(system.pids.shipping, 'SIGCONT');
  }
  await waitForText(page, '[data-testid=order-status]', /Confirmed/, 90_000);
  await shot(page, '15-order-confirmed-after-shipping-returned');
  await context.close();
});

test('a developer creates an API key, calls the API with it from the portal, and sees the usage', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${system.base}/developers`);
  await assert.doesNotReject(page.getByTestId('plans').waitFor());
  await shot(page, '16-portal');
  await page.getByTestId('cta-signin').click();
  await fillLogin(page, shopper);
  await page.waitForURL(/\/developers\/keys$/);

  await page.locator('#key-name').fill('browser-app');
  await page.locator('#key-plan').selectOption('free-trial');
  await page.getByTestId('create-key').click();
  const key = (await page.getByTestId('new-key').textContent()).trim();
  assert.match(key, /^bzr_/, 'the new key is shown once');
  await shot(page, '17-portal-new-key');

  // The try form (filled with the new key) calls the gateway from the browser.
  await page.getByTestId('try-send').click();
  const result = page.getByTestId('try-result');
  await assert.doesNotReject(result.and(page.locator('[data-status="200"]')).waitFor());
  assert.match(await result.textContent(), /"items"/);
  await shot(page, '18-portal-try');

  // The key works from outside the browser too, and the call is counted.
  const direct = await fetch(`${system.base}/api/v1/feed/products?per_page=1`, { headers: { 'x-api-key': key } });
  assert.equal(direct.status, 200);
  await page.goto(`${system.base}/developers/usage`);
  const deadline = Date.now() + 30_000;
  let counted = 0;
  while (Date.now() < deadline) {
    counted = Number(await page.getByTestId('day-usage').first().getAttribute('data-count'));
    if (counted >= 2) break;
    await page.waitForTimeout(500);
    await page.reload();
  }
  assert.ok(counted >= 2, `usage counts the two calls (saw ${counted})`);
  await shot(page, '19-portal-usage');

  // A key is shown once: the keys page never shows it again.
  await page.goto(`${system.base}/developers/keys`);
  assert.ok(!(await page.content()).includes(key), 'the key is not shown again');
  await context.close();
});

test('an admin sees the topology and finds the shopper\'s order in the console', async () => {
  assert.ok(confirmedOrderId, 'the shopper scenario placed an order');
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(system.base);
  await signIn(page, DEMO_ADMIN);

  await page.getByRole('link', { name: 'Admin' }).first().click();
  await page.waitForURL(/\/admin$/);
  await assert.doesNotReject(page.getByTestId('topology').waitFor());
  assert.equal(await page.getByTestId('topology-node-orders').getAttribute('data-health'), 'up');
  await shot(page, '20-admin-topology');

  await page.getByTestId('admin-nav-orders').click();
  await page.waitForURL(/\/admin\/orders/);
  const row = page.getByTestId(`order-row-${confirmedOrderId}`);
  await assert.doesNotReject(row.waitFor());
  assert.equal(await row.getAttribute('data-status'), 'confirmed');
  await shot(page, '21-admin-orders');
  await row.getByTestId('order-link').click();
  await page.waitForURL(new RegExp(`/admin/orders/${confirmedOrderId}$`));
  assert.match(await page.getByTestId('admin-order-status').textContent(), /confirmed/i);
  assert.equal(await page.getByTestId('saga-step-confirm').getAttribute('data-state'), 'done');
  // On failure, say what the section showed instead (a notice that payments is unavailable,
  // or "No payment for this order").
  assert.ok(await page.getByTestId('payment-row').count() >= 1,
    `the order's payment is listed; the section reads: ${(await page.getByTestId('order-payments').textContent()).replace(/\s+/g, ' ').trim()}`);
  await shot(page, '22-admin-order');

  // The shopper is not an admin: the console refuses them.
  const shopperContext = await browser.newContext();
  const shopperPage = await shopperContext.newPage();
  await shopperPage.goto(system.base);
  await signIn(shopperPage, shopper);
  const refused = await shopperPage.goto(`${system.base}/admin/orders`);
  assert.equal(refused.status(), 403);
  await shopperContext.close();
  await context.close();
});
