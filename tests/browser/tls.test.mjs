// HTTP/2 over TLS in a real Chromium (/usr/bin/chromium, never downloaded): a page served by
// `sse-bff serve --tls-cert --tls-key` opens 12 EventSources at once, twice the six HTTP/1.1
// connections a browser allows per origin, and all 12 are live together on one connection.
//
//   cd tests/browser && npm ci && cd ../.. && node --test tests/browser/tls.test.mjs
//
// The certificate is made by the openssl CLI for the test. SSE_BFF_BIN overrides the binary
// (default target/debug/sse-bff); server logs go to artifacts/tls-*.log.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

import { ARTIFACTS, CHROMIUM_ARGS, freePort, processes, start } from './support.mjs';

const LAUNCH = {
  executablePath: '/usr/bin/chromium',
  args: [...CHROMIUM_ARGS, '--ignore-certificate-errors'],
};
const run = promisify(execFile);

let browser;
let certDir;
let base;
let port;
let ca;


/** The status of `GET url` over HTTPS, trusting only the test's certificate. */
function status(url) {
  return new Promise((resolve, reject) => {
    // No keep-alive: an idle connection of the test's own would count as the browser's.
    request(url, { ca, agent: false }, (response) => {
      response.resume();
      resolve(response.statusCode);
    }).once('error', reject).end();
  });
}

/** Polls `url` until it answers 200 (readiness without fixed sleeps). */
async function waitReady(url, proc, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    assert.equal(proc.child.exitCode, null, `${url}: the server exited`);
    try {
      if ((await status(url)) === 200) return;
    } catch { /* not listening yet */ }
    assert.ok(Date.now() < deadline, `${url} not ready within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Established TCP connections to the BFF's port, counted on the server's side. */
async function connections() {
  const { stdout } = await run('ss', ['-Htn', 'state', 'established', `( sport = :${port} )`]);
  return stdout.split('\n').filter((line) => line.trim()).length;
}

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  certDir = await mkdtemp(path.join(tmpdir(), 'sse-bff-tls-'));
  const [cert, key] = [path.join(certDir, 'cert.pem'), path.join(certDir, 'key.pem')];
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-days', '1', '-keyout', key, '-out', cert]);
  ca = readFileSync(cert);
  const simPort = await freePort();
  port = await freePort();
  base = `https://127.0.0.1:${port}`;
  start('tls-upstream-sim', ['upstream-sim', '--listen', `127.0.0.1:${simPort}`, '--speed', '1']);
  const bff = start('tls-serve', ['serve', '--listen', `127.0.0.1:${port}`, '--upstream', `http://127.0.0.1:${simPort}`,
    '--insecure-no-auth', '--tls-cert', cert, '--tls-key', key, '--shutdown-grace', '5s']);
  await waitReady(`${base}/readyz`, bff);
  browser = await chromium.launch(LAUNCH);
});

after(async () => {
  await browser?.close();
  await Promise.all([...processes].map((proc) => proc.stop()));
  if (certDir) await rm(certDir, { recursive: true, force: true });
});

test('12 EventSources are live at once over one HTTP/2 connection', { timeout: 60_000 }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  // Any page of the origin will do; the demo page would open streams of its own.
  await page.goto(`${base}/healthz`);
  assert.equal(await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol), 'h2');
  await page.exposeFunction('countConnections', connections);

  const ids = Array.from({ length: 12 }, (_, i) => `doc-${(i % 3) + 1}.${randomBytes(6).toString('hex')}`);
  const result = await page.evaluate((ids) => new Promise((resolve, reject) => {
    const names = ['progress', 'completed', 'failed'];
    const streams = ids.map((id) => ({ id, events: 0, second: null, end: null }));
    let connectionsWhileLive = null;
    const done = () => streams.every((s) => s.end !== null) && connectionsWhileLive !== null;
    setTimeout(() => reject(new Error(`not all ended: ${JSON.stringify(streams)}`)), 40_000);
    for (const stream of streams) {
      const source = new EventSource(`/documents/${stream.id}/progress?lastEventId=0`);
      const onEvent = async (event) => {
        stream.events += 1;
        if (stream.events === 2) {
          stream.second = performance.now();
          if (streams.every((s) => s.second !== null)) {
            connectionsWhileLive = await window.countConnections();
            if (done()) resolve({ streams, connectionsWhileLive });
          }
        }
        if (event.type === 'completed' || event.type === 'failed') {
          stream.end = performance.now();
          source.close();
          if (done()) resolve({ streams, connectionsWhileLive });
        }
      };
      names.forEach((name) => source.addEventListener(name, onEvent));
      source.onerror = () => stream.end === null && reject(new Error(`${stream.id}: the stream failed`));
    }
  }), ids);

  const lastSecond = Math.max(...result.streams.map((s) => s.second));
  const firstEnd = Math.min(...result.streams.map((s) => s.end));
  assert.ok(lastSecond < firstEnd,
    `all 12 had their second update (last at ${lastSecond} ms) before any ended (first at ${firstEnd} ms)`);
  assert.equal(result.connectionsWhileLive, 1, 'the page and its 12 streams share one connection');
  const protocols = await page.evaluate(() => performance.getEntriesByType('resource')
    .filter((entry) => entry.name.includes('/progress')).map((entry) => entry.nextHopProtocol));
  assert.deepEqual(protocols, Array(12).fill('h2'), 'every stream went over HTTP/2');
  await context.close();
});
