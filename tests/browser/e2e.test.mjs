// End-to-end tests of the demo page and static/client.js: a real Chromium (never downloaded,
// /usr/bin/chromium) against the real sse-bff binary on loopback.
//
//   cd tests/browser && npm ci && cd ../.. && node --test tests/browser/
//
// SSE_BFF_BIN overrides the binary (default target/debug/sse-bff). Server logs, and the
// screenshot, go to artifacts/; the screenshot is also copied to docs/demo.png.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { copyFile, mkdir } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

import { ARTIFACTS, BIN, CHROMIUM_ARGS, ROOT, freePort, processes, start } from './support.mjs';

const DOCS = ['doc-1', 'doc-2', 'doc-3', 'scan-42'];
/** The demo page shows three documents of each script: twelve, over one multiplexed stream. */
const ROWS = 3 * DOCS.length;
const LAUNCH = {
  executablePath: '/usr/bin/chromium',
  args: CHROMIUM_ARGS,
};

/** The scripted jobs: what each row must end with. */
const JOBS = Object.fromEntries(DOCS.map((name) => {
  const { steps } = JSON.parse(readFileSync(path.join(ROOT, 'fixtures/jobs', `${name}.json`), 'utf8'));
  return [name, { terminal: steps.length, final: steps.at(-1) }];
}));

let browser;

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  browser = await chromium.launch(LAUNCH);
  console.log(`chromium ${browser.version()} (${LAUNCH.executablePath}), sse-bff ${BIN}`);
});

after(async () => {
  await browser?.close();
  await Promise.all([...processes].map((proc) => proc.stop()));
});


/**
 * A TCP proxy on a free loopback port in front of `port`, whose `cut()` breaks every connection
 * open through it (new ones still pass): a network cut, as the browser sees one.
 */
async function cuttableProxy(port) {
  const sockets = new Set();
  const server = createServer((client) => {
    const upstream = connect(Number(port), '127.0.0.1');
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => {});
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    cut: () => sockets.forEach((socket) => socket.destroy()),
    close: () => { server.close(); sockets.forEach((socket) => socket.destroy()); },
  };
}

/** Polls `url` until it answers 200 (readiness without fixed sleeps). */
async function waitReady(url, proc, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    assert.equal(proc.child.exitCode, null, `${url}: the server exited`);
    try {
      if ((await fetch(url)).ok) return;
    } catch { /* not listening yet */ }
    assert.ok(Date.now() < deadline, `${url} not ready within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Starts `sse-bff demo` (simulator + BFF + demo cookie) at speed 2. */
async function startDemo() {
  const [port, simPort] = [await freePort(), await freePort()];
  const base = `http://127.0.0.1:${port}`;
  const proc = start('demo', ['demo', '--listen', `127.0.0.1:${port}`, '--sim-listen', `127.0.0.1:${simPort}`, '--speed', '2']);
  await waitReady(`${base}/healthz`, proc);
  await waitReady(`${base}/readyz`, proc);
  return { base, proc };
}

/** A page that records every change of a row's `data-state` in `window.__states`. */
async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await page.addInitScript(() => {
    window.__states = {};
    new MutationObserver((mutations) => {
      for (const { target } of mutations) (window.__states[target.dataset.doc] ??= []).push(target.dataset.state);
    }).observe(document, { subtree: true, attributeFilter: ['data-state'] });
  });
  const problems = [];
  page.on('pageerror', (error) => problems.push(String(error)));
  page.on('console', (message) => message.type() === 'error' && problems.push(message.text()));
  return { context, page, problems };
}

/** Waits until every row shows a terminal status. */
async function waitFinished(page, timeoutMs) {
  await page.waitForFunction((count) => {
    const rows = document.querySelectorAll('tr[data-doc]');
    return rows.length === count && [...rows].every((row) => ['completed', 'failed', 'error'].includes(row.dataset.status));
  }, ROWS, { timeout: timeoutMs, polling: 100 });
}

/** What the page shows and recorded, per row (by document id). */
async function snapshot(page) {
  const rows = await page.$$eval('tr[data-doc]', (trs) => trs.map((row) => ({
    id: row.dataset.doc,
    script: row.dataset.script,
    status: row.dataset.status,
    state: row.dataset.state,
    name: row.querySelector('.name').textContent,
    percent: row.querySelector('.pct').textContent,
    width: row.querySelector('.fill').style.width,
    outcome: row.querySelector('.outcome').textContent,
    message: row.querySelector('.msg').textContent,
    renderedMessage: row.querySelector('.msg').innerText,
    code: row.querySelector('code').hidden ? null : row.querySelector('code').textContent,
    badge: row.querySelector('.badge').textContent,
    received: window.__received[row.dataset.doc],
    times: window.__times[row.dataset.doc],
    states: window.__states[row.dataset.doc] ?? [],
  })));
  return Object.fromEntries(rows.map((row) => [row.id, row]));
}

/** Each row shows the final update of its script, closed, with the right text. */
function assertFinal(rows) {
  const scripts = Object.values(rows).map((row) => row.script).sort();
  assert.deepEqual(scripts, DOCS.flatMap((name) => [name, name, name]).sort(), 'three rows of each script');
  for (const row of Object.values(rows)) {
    const name = row.script;
    const { final } = JOBS[name];
    assert.match(row.id, new RegExp(`^${name}\\.[a-z0-9]+$`), `${name}: a fresh id per page load`);
    assert.equal(row.status, final.status, `${name}: status`);
    assert.equal(row.state, 'closed', `${name}: connection state`);
    assert.equal(row.badge, 'closed', `${name}: badge`);
    assert.equal(row.percent, `${final.percent}%`, `${name}: percent`);
    assert.equal(row.width, `${final.percent}%`, `${name}: bar width`);
    assert.equal(row.message, final.message, `${name}: message text, escaped and whole`);
    assert.equal(row.outcome, final.status === 'completed' ? 'Completed' : 'Failed', `${name}: outcome`);
    assert.equal(row.code, final.error_code ?? null, `${name}: error code`);
  }
  // Newlines in server text are rendered as line breaks.
  const doc3 = Object.values(rows).find((row) => row.script === 'doc-3');
  assert.equal(doc3.renderedMessage, JOBS['doc-3'].final.message);
  assert.match(doc3.renderedMessage, /\n/);
}

/** The sequences a row received: from its first one on, each exactly once, no gap, up to the terminal one. */
function assertContiguous({ script: name, received }) {
  assert.ok(received.length > 0, `${name}: received nothing`);
  const first = received[0];
  const expected = Array.from({ length: JOBS[name].terminal - first + 1 }, (_, i) => first + i);
  assert.deepEqual(received, expected, `${name}: sequences ${received}`);
}

describe('demo server', () => {
  let demo;
  before(async () => { demo = await startDemo(); });
  after(async () => { await demo?.proc.stop(); });

  test('every bar reaches its final state with the right text', { timeout: 60_000 }, async (t) => {
    t.diagnostic(`chromium ${browser.version()}`);
    const { context, page, problems } = await newPage();
    await page.goto(`${demo.base}/`);
    await waitFinished(page, 30_000);
    const rows = await snapshot(page);
    assertFinal(rows);
    for (const row of Object.values(rows)) {
      assertContiguous(row);
      assert.ok(row.states.includes('live'), `${row.id}: was live over EventSource`);
    }
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('all twelve bars move at once over one stream', { timeout: 60_000 }, async () => {
    const { context, page, problems } = await newPage();
    const streams = [];
    page.on('request', (request) => request.resourceType() === 'eventsource' && streams.push(request.url()));
    await page.goto(`${demo.base}/`);
    await waitFinished(page, 30_000);
    const rows = Object.values(await snapshot(page));
    assert.equal(rows.length, 12);
    // Each bar got its second update before any bar completed: all twelve were live together,
    // which twelve EventSources over HTTP/1.1 (six connections per origin) cannot be.
    const seconds = rows.map((row) => row.times[1]);
    const firstEnd = Math.min(...rows.map((row) => row.times.at(-1)));
    assert.ok(seconds.every((t) => t < firstEnd), `second updates ${seconds} before the first end at ${firstEnd}`);
    assert.equal(streams.length, 1, `one EventSource for all twelve: ${streams}`);
    assert.match(streams[0], /\/events\?topic=/);
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('a network cut mid-way resumes all twelve with nothing lost or repeated', { timeout: 60_000 }, async () => {
    const proxy = await cuttableProxy(new URL(demo.base).port);
    const { context, page, problems } = await newPage();
    const streams = [];
    page.on('request', (request) => request.resourceType() === 'eventsource' && streams.push(request.url()));
    await page.goto(`${proxy.base}/`);
    // Cut every connection once every bar has had two updates: the browser sees the network go.
    await page.waitForFunction(() => Object.values(window.__received).every((got) => got.length >= 2),
      undefined, { timeout: 15_000, polling: 20 });
    proxy.cut();
    await waitFinished(page, 45_000);
    proxy.close();
    const rows = await snapshot(page);
    assertFinal(rows);
    for (const row of Object.values(rows)) assertContiguous(row);
    const cut = Object.values(rows).filter((row) => row.states.includes('reconnecting') || row.states.includes('polling'));
    assert.ok(cut.length > 0, 'the cut was noticed: the stream reconnected');
    assert.ok(streams.length >= 2, `the stream was opened again after the cut: ${streams.length}`);
    assert.ok(streams.slice(1).every((url) => /lastEventId=|\/events\?/.test(url)), `${streams}`);
    assert.deepEqual(problems.filter((text) => !/ERR_INCOMPLETE_CHUNKED_ENCODING|ERR_CONNECTION_RESET|ERR_EMPTY_RESPONSE/.test(text)), []);
    await context.close();
  });

  test('one stream per document (watchProgress): all end right, but six connections hold the rest back', { timeout: 60_000 }, async () => {
    const { context, page, problems } = await newPage();
    await page.goto(`${demo.base}/?single=1`);
    await waitFinished(page, 45_000);
    const rows = await snapshot(page);
    assertFinal(rows);
    for (const row of Object.values(rows)) assertContiguous(row);
    // What the multiplexed stream avoids: over HTTP/1.1 the seventh EventSource waits for a
    // connection, so some bar gets its second update only after another one completed.
    const firstEnd = Math.min(...Object.values(rows).map((row) => row.times.at(-1)));
    assert.ok(Object.values(rows).some((row) => row.times[1] > firstEnd), 'some streams waited for a connection');
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('one long-poll per document (watchProgress without EventSource) delivers every update once', { timeout: 60_000 }, async () => {
    const { context, page, problems } = await newPage();
    await page.goto(`${demo.base}/?single=1&noEventSource=1`);
    await waitFinished(page, 45_000);
    const rows = await snapshot(page);
    assertFinal(rows);
    for (const row of Object.values(rows)) {
      assertContiguous(row);
      assert.deepEqual(row.states, ['polling', 'closed'], `${row.id}: states`);
    }
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('without EventSource, long-polling delivers every update once', { timeout: 60_000 }, async () => {
    const { context, page, problems } = await newPage();
    const streams = [];
    page.on('request', (request) => request.resourceType() === 'eventsource' && streams.push(request.url()));
    await page.goto(`${demo.base}/?noEventSource=1`);
    assert.equal(await page.evaluate(() => typeof window.EventSource), 'undefined');
    await page.waitForFunction((count) => document.querySelectorAll('tr[data-state=polling]').length === count,
      ROWS, { timeout: 10_000, polling: 50 });
    await page.locator('tr[data-doc] .badge', { hasText: 'polling' }).first().waitFor();
    await waitFinished(page, 30_000);
    const rows = await snapshot(page);
    assertFinal(rows);
    for (const row of Object.values(rows)) {
      assertContiguous(row);
      assert.deepEqual(row.states, ['polling', 'closed'], `${row.id}: states`);
    }
    assert.deepEqual(streams, [], 'no EventSource request');
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('screenshot of the finished page', { timeout: 60_000 }, async () => {
    const { context, page } = await newPage();
    await page.goto(`${demo.base}/`);
    await waitFinished(page, 30_000);
    // Lets the bar's width transition settle.
    await page.waitForFunction(() => [...document.getAnimations()].every((a) => a.playState !== 'running'));
    const file = path.join(ARTIFACTS, 'demo.png');
    await page.screenshot({ path: file, fullPage: true });
    await mkdir(path.join(ROOT, 'docs'), { recursive: true });
    await copyFile(file, path.join(ROOT, 'docs/demo.png'));
    await context.close();
  });
});

describe('BFF restart mid-job', () => {
  const secret = randomBytes(24).toString('hex');
  let sim;
  let bff;
  let port;
  let base;
  const serve = () => start('serve', ['serve', '--listen', `127.0.0.1:${port}`, '--upstream', sim.url,
    '--jwt-secret', secret, '--shutdown-grace', '5s']);

  before(async () => {
    const simPort = await freePort();
    port = await freePort();
    base = `http://127.0.0.1:${port}`;
    sim = start('upstream-sim', ['upstream-sim', '--listen', `127.0.0.1:${simPort}`, '--speed', '1']);
    sim.url = `http://127.0.0.1:${simPort}`;
    bff = serve();
    await waitReady(`${base}/healthz`, bff);
    await waitReady(`${base}/readyz`, bff);
  });
  after(async () => {
    await bff?.stop();
    await sim?.stop();
  });

  test('the bars continue where they were, nothing lost or repeated', { timeout: 90_000 }, async (t) => {
    const { stdout } = await promisify(execFile)(BIN,
      ['token', '--secret', secret, '--sub', 'alice', '--tenant', 'acme', '--ttl', '1h'], { cwd: ROOT });
    const { context, page, problems } = await newPage();
    await context.addCookies([{ name: 'access_token', value: stdout.trim(), url: base, httpOnly: true, sameSite: 'Strict' }]);
    await page.goto(`${base}/`);

    // doc-2 runs ~11 s at speed 1: stop the BFF once it is a few updates in.
    const doc2 = await page.$eval('tr[data-doc^="doc-2."]', (row) => row.dataset.doc);
    await page.waitForFunction((id) => window.__received[id]?.length >= 3, doc2, { timeout: 15_000, polling: 50 });
    const before = await page.evaluate((id) => [...window.__received[id]], doc2);
    const stopped = Date.now();
    const { code, signal } = await bff.stop();
    assert.equal(code, 0, `BFF drained and exited cleanly on SIGTERM: code ${code}, signal ${signal}`);
    const exitedAfter = Date.now() - stopped;
    bff = serve();
    await waitReady(`${base}/healthz`, bff);
    t.diagnostic(`BFF exited ${exitedAfter} ms after SIGTERM, served again after ${Date.now() - stopped} ms`);

    await waitFinished(page, 45_000);
    const rows = await snapshot(page);
    assertFinal(rows);
    for (const row of Object.values(rows)) assertContiguous(row);
    const { received, states } = rows[doc2];
    t.diagnostic(`doc-2: received ${received} (${before.length} before the restart), states ${states}`);
    assert.ok(before.at(-1) < JOBS['doc-2'].terminal, 'the restart landed mid-job');
    assert.deepEqual(received.slice(0, before.length), before);
    assert.ok(received.length > before.length, 'updates after the restart');
    assert.ok(states.some((state) => state === 'reconnecting' || state === 'polling'), `doc-2 states: ${states}`);
    // A reconnect may hit the port while it is closed; Chrome logs that, and it is expected here.
    assert.deepEqual(problems.filter((text) => !text.includes('ERR_CONNECTION_REFUSED')), []);
    await context.close();
  });
});
