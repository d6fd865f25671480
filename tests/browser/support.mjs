// What the browser tests share: the paths, a free loopback port, and the real sse-bff binary as
// a child process that is always stopped (SIGTERM, then SIGKILL), even if the runner dies.
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** SSE_BFF_BIN overrides the binary (default target/debug/sse-bff). */
export const BIN = path.resolve(ROOT, process.env.SSE_BFF_BIN ?? 'target/debug/sse-bff');
/** Server logs and screenshots. */
export const ARTIFACTS = path.join(ROOT, 'artifacts');
/** Chromium as the machine has it (never downloaded), headless, without background traffic. */
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'];

/** The processes started and not yet stopped. */
export const processes = new Set();

// Last resort if the runner dies between hooks: no server outlives the tests.
process.on('exit', () => processes.forEach((proc) => proc.child.kill('SIGKILL')));

/** A free loopback port (the OS picks it, then it is released for the server). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer().once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const logged = new Set();

/** Starts `sse-bff <args>`, logging to artifacts/<name>.log; `stop()` sends SIGTERM, then SIGKILL. */
export function start(name, args) {
  // A restarted server appends to the log of its first run.
  const log = createWriteStream(path.join(ARTIFACTS, `${name}.log`), { flags: logged.has(name) ? 'a' : 'w' });
  logged.add(name);
  const child = spawn(BIN, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const proc = {
    child,
    exited,
    async stop(timeoutMs = 15_000) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
        await exited;
        clearTimeout(timer);
      }
      processes.delete(proc);
      return exited;
    },
  };
  processes.add(proc);
  return proc;
}
