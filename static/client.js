/**
 * Browser client for sse-bff progress streams.
 *
 * `watchProgress(url, handlers)` follows one document: over EventSource while that works, over
 * the long-poll representation (`Accept: application/json`) when the browser has no
 * EventSource or the stream keeps failing. `onUpdate` never sees an update twice or out of
 * order; it starts at the latest update, and a slow client may skip intermediate ones (progress
 * is state). `watchProgressMany(urls, handlers)` follows several documents over one multiplexed
 * stream (`/events?topic=...`), so a page is not limited by the browser's six connections per
 * origin. An ES module without dependencies:
 * `import { watchProgress, watchProgressMany } from '/client.js'`.
 *
 * @module client
 */

/**
 * One progress update: the `data` of a `progress`, `completed` or `failed` event.
 * @typedef {object} Update
 * @property {string} documentId
 * @property {number} sequence 1, 2, 3, ... per document, gap-free
 * @property {'queued'|'running'|'completed'|'failed'} status
 * @property {number} percent 0 to 100
 * @property {string} stage e.g. `parsing`, `embedding`
 * @property {string} message any text, may contain newlines: render it as text, never as HTML
 * @property {string|null} emittedAt RFC 3339 UTC, or null when the upstream did not stamp it
 * @property {string} [errorCode] set when `status` is `failed`, e.g. `UNSUPPORTED_FORMAT`
 */

/**
 * A failure the server reported: the data of `event: error`, or a problem+json body.
 * @typedef {object} ServerError
 * @property {string} code e.g. `unauthorized`, `permission_denied`, `unavailable`
 * @property {string} message
 * @property {boolean} retryable
 * @property {number} [httpStatus]
 * @property {number} [grpcStatus]
 */

/** @typedef {'connecting'|'live'|'reconnecting'|'polling'|'closed'} ConnectionState */

const TERMINAL = new Set(['completed', 'failed']);
const UPDATE_EVENTS = ['progress', 'completed', 'failed'];
const EVENTSOURCE_CLOSED = 2;
const MAX_BACKOFF_SECONDS = 10;

/**
 * Watches the progress of one document until it completes or fails, or until `close()`.
 *
 * @param {string|URL} url the progress resource, e.g. `/documents/doc-1/progress`; another
 *   origin works when the BFF lists this page's origin in `--cors-origin`
 * @param {object} [options]
 * @param {(update: Update) => void} [options.onUpdate] each update, once, in sequence order
 * @param {(update: Update|null) => void} [options.onDone] the terminal update; the watch is closed
 * @param {(error: ServerError) => void} [options.onError] a failure that retrying cannot fix
 *   (no token, forbidden, not found, ...); the watch is closed
 * @param {(state: ConnectionState) => void} [options.onState] each change of connection state
 * @param {boolean} [options.withCredentials=true] send cookies: the BFF reads the token from one
 * @param {number} [options.fallbackAfter=3] consecutive stream failures (no open, no event in
 *   between) before switching to long-polling
 * @param {number} [options.pollWait=25] seconds one long-poll request may wait (server max 60)
 * @param {number} [options.streamRetryAfter=30] seconds between attempts, while polling, to go
 *   back to EventSource
 * @returns {{close(): void}} stops watching; `onDone` is not called
 */
export function watchProgress(url, {
  onUpdate, onDone, onError, onState, withCredentials = true,
  fallbackAfter = 3, pollWait = 25, streamRetryAfter = 30,
} = {}) {
  const hasEventSource = typeof EventSource !== 'undefined';
  let last = 0; // the highest sequence delivered
  let latest = null; // the update that carried it
  let rebase = false; // after a `reset`, the next update is the new baseline whatever its sequence
  let state = null;
  let closed = false;
  let failures = 0; // consecutive EventSource errors without an open or an event in between
  let source = null; // the EventSource in use
  let probe = null; // while polling, an EventSource trying to take over
  let probeTimer = 0;
  let poller = null; // aborts the long-poll loop

  const setState = (next) => {
    if (next === state) return;
    state = next;
    onState?.(next);
  };

  /** Delivers an update unless it was delivered already (a resume may repeat one). */
  function deliver(update) {
    if (closed || (!rebase && update.sequence <= last)) return;
    rebase = false;
    last = update.sequence;
    latest = update;
    onUpdate?.(update);
    if (TERMINAL.has(update.status)) finish(() => onDone?.(update));
  }

  /** Stops everything, reports `closed`, then tells the caller why. */
  function finish(notify) {
    if (closed) return;
    closed = true;
    source?.close();
    probe?.close();
    source = probe = null;
    clearTimeout(probeTimer);
    poller?.abort();
    poller = null;
    setState('closed');
    notify?.();
  }

  /** The resource URL with extra query parameters. */
  function resource(params) {
    const target = new URL(url, globalThis.location?.href);
    for (const [name, value] of Object.entries(params)) target.searchParams.set(name, String(value));
    return target;
  }

  /**
   * Opens an EventSource that continues after the last delivered sequence. On a first connect
   * the BFF takes the resume point from `?lastEventId=`; EventSource's own reconnects send
   * `Last-Event-ID`, which the BFF prefers.
   */
  function open() {
    const es = new EventSource(resource(last > 0 ? { lastEventId: last } : {}), { withCredentials });
    const onEvent = (event) => {
      if (es !== source) return;
      failures = 0;
      deliver(JSON.parse(event.data));
    };
    for (const name of UPDATE_EVENTS) es.addEventListener(name, onEvent);
    // The resume point was lost: the stream goes on from the current state.
    es.addEventListener('reset', () => {
      if (es === source) rebase = true;
    });
    es.addEventListener('open', () => {
      if (es === probe) {
        // The stream works again: it takes over from the long-poll loop.
        probe = null;
        poller?.abort();
        poller = null;
        source = es;
      }
      if (es !== source) return;
      failures = 0;
      setState('live');
    });
    // A server-sent `event: error` is a MessageEvent with data; a transport error has none.
    es.addEventListener('error', (event) => {
      if (typeof event.data === 'string') serverError(es, event.data);
      else transportError(es);
    });
    return es;
  }

  /** `event: error` from the BFF; the response ends right after it. */
  function serverError(es, data) {
    if (es !== source) return;
    const error = JSON.parse(data);
    // A retryable error (upstream down, token expired) is retried by EventSource itself,
    // resuming with Last-Event-ID.
    if (error.retryable) setState('reconnecting');
    else finish(() => onError?.(error));
  }

  /** The connection failed or ended before the terminal event. */
  function transportError(es) {
    if (closed) return;
    if (es === probe) {
      probe.close();
      probe = null;
      return scheduleProbe();
    }
    if (es !== source) return;
    // CLOSED: EventSource gave up by itself (an HTTP error status, or 204 because the job is
    // over). The long-poll answer says which, with a readable body.
    failures += 1;
    if (es.readyState === EVENTSOURCE_CLOSED || failures >= fallbackAfter) startPolling();
    else setState('reconnecting');
  }

  /** Switches to long-polling, and schedules an attempt to go back to the stream. */
  function startPolling() {
    source?.close();
    source = null;
    if (closed || poller) return;
    poller = new AbortController();
    setState('polling');
    pollLoop(poller.signal);
    scheduleProbe();
  }

  function scheduleProbe() {
    if (!hasEventSource || closed) return;
    clearTimeout(probeTimer);
    probeTimer = setTimeout(() => {
      if (!closed && poller && !probe) probe = open();
    }, streamRetryAfter * 1000);
  }

  /** Long-polls `?after=<cursor>&wait=` until the job ends, the stream takes over, or close(). */
  async function pollLoop(signal) {
    // Like a new EventSource viewer: without a resume point, ask for the latest update first.
    let cursor = last > 0 ? last : null;
    let askedLatest = false;
    const backoff = backoffTimer();
    while (!signal.aborted && !closed) {
      const params = cursor === null ? { wait: pollWait } : { after: cursor, wait: pollWait };
      const answer = await pollOnce(resource(params), { signal, withCredentials, backoff });
      if (signal.aborted || closed) return;
      if (!answer) continue;
      if (answer.error) return finish(() => onError?.(answer.error));
      const { body, status } = answer;
      if (body.reset) rebase = true;
      for (const update of body.events ?? []) deliver(update);
      if (closed || signal.aborted) return;
      if (status === 204 || body.done) {
        // Over, but the terminal update was not seen here (it came before `after`): the
        // latest update is the terminal one.
        if (!askedLatest && !TERMINAL.has(latest?.status)) {
          askedLatest = true;
          cursor = null;
          continue;
        }
        return finish(() => onDone?.(latest));
      }
      cursor = body.lastEventId ?? last;
    }
  }

  if (hasEventSource) {
    setState('connecting');
    source = open();
  } else {
    startPolling();
  }
  return { close: () => finish() };
}

/** Seconds to wait before the next attempt: 1, 2, 4, ... up to `MAX_BACKOFF_SECONDS`. */
function backoffTimer() {
  let seconds = 1;
  return {
    next() {
      const now = seconds;
      seconds = Math.min(seconds * 2, MAX_BACKOFF_SECONDS);
      return now;
    },
    reset() { seconds = 1; },
  };
}

/**
 * One long-poll request with the retry policy both watchers share. Resolves to
 * `{ body, status }` for an answer, `{ error }` for a failure retrying cannot fix (the
 * problem+json body's code, message and retryable, the status as the fallback), or `null`
 * after waiting out one it can (the BFF unreachable, 429, 5xx: `Retry-After`, else the backoff).
 */
async function pollOnce(url, { signal, withCredentials, backoff }) {
  let response, body;
  try {
    response = await fetch(url, {
      headers: { Accept: 'application/json' },
      credentials: withCredentials ? 'include' : 'same-origin',
      cache: 'no-store',
      signal,
    });
    body = await response.json().catch(() => ({}));
  } catch {
    // The BFF is unreachable (restarting, network down) or the loop was aborted.
    await sleep(backoff.next(), signal);
    return null;
  }
  if (!response.ok) {
    const { status } = response;
    const error = { code: `http_${status}`, message: response.statusText, httpStatus: status,
      retryable: status === 429 || status >= 500, ...body };
    if (!error.retryable) return { error };
    await sleep(Number(response.headers.get('Retry-After')) || backoff.next(), signal);
    return null;
  }
  backoff.reset();
  return { body, status: response.status };
}

/** Resolves after `seconds`, or at once when `signal` aborts. */
function sleep(seconds, signal) {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, seconds * 1000);
    signal.addEventListener('abort', done);
  });
}

/**
 * Watches several documents over one multiplexed stream (`/events?topic=<path>&...`), with the
 * same guarantees per document as `watchProgress`: each update once, in sequence order, the
 * terminal one last. EventSource resumes every document where it was after a network cut (its
 * `Last-Event-ID` is the server's cursor of every topic); where EventSource is missing or keeps
 * failing, the same endpoint is long-polled.
 *
 * @param {string[]} urls the progress resources, e.g. `['/documents/doc-1/progress', ...]`
 *   (at most the server's `--max-topics`, 50 by default)
 * @param {object} [options]
 * @param {(url: string, update: Update) => void} [options.onUpdate] each update of a document
 * @param {(url: string, update: Update|null) => void} [options.onDone] a document's terminal update
 * @param {(url: string, error: ServerError) => void} [options.onError] a document's failure that
 *   retrying cannot fix; the others go on
 * @param {(state: ConnectionState) => void} [options.onState] each change of the stream's state
 * @param {boolean} [options.withCredentials=true] send cookies: the BFF reads the token from one
 * @param {number} [options.fallbackAfter=3] consecutive stream failures before long-polling
 * @param {number} [options.pollWait=25] seconds one long-poll request may wait (server max 60)
 * @param {string} [options.endpoint='/events'] the multiplexed endpoint
 * @returns {{close(): void}} stops watching every document
 */
export function watchProgressMany(urls, {
  onUpdate, onDone, onError, onState, withCredentials = true,
  fallbackAfter = 3, pollWait = 25, endpoint = '/events',
} = {}) {
  const topics = urls.map((url) => new URL(url, globalThis.location?.href).pathname);
  // Per document: the highest sequence delivered, its update, whether the next one rebases.
  const docs = new Map(topics.map((topic, i) => [topic, { url: urls[i], last: 0, latest: null, rebase: false, done: false }]));
  let state = null;
  let closed = false;
  let failures = 0;
  let source = null;
  let poller = null;
  let cursor = null; // the server's cursor of every topic, from the last event or poll
  let retryTimer = 0;

  const setState = (next) => {
    if (next === state) return;
    state = next;
    onState?.(next);
  };

  /** The endpoint with every topic and extra query parameters. */
  function target(params) {
    const url = new URL(endpoint, globalThis.location?.href);
    for (const topic of topics) url.searchParams.append('topic', topic);
    for (const [name, value] of Object.entries(params)) url.searchParams.set(name, String(value));
    return url;
  }

  function deliver(topic, update) {
    const doc = docs.get(topic);
    if (!doc || doc.done || closed || (!doc.rebase && update.sequence <= doc.last)) return;
    doc.rebase = false;
    doc.last = update.sequence;
    doc.latest = update;
    onUpdate?.(doc.url, update);
    if (TERMINAL.has(update.status)) end(doc, () => onDone?.(doc.url, update));
  }

  /** One document is over; when all are, so is the watch. */
  function end(doc, notify) {
    if (doc.done) return;
    doc.done = true;
    notify();
    if ([...docs.values()].every((d) => d.done)) finish();
  }

  function finish() {
    if (closed) return;
    closed = true;
    source?.close();
    source = null;
    poller?.abort();
    clearTimeout(retryTimer);
    setState('closed');
  }

  /** A topic's `event: error`: fatal for that document, or a reason to reconnect later. */
  function topicError(topic, error) {
    const doc = docs.get(topic);
    if (!doc || doc.done) return;
    if (!error.retryable) return end(doc, () => onError?.(doc.url, error));
    // The topic ended on the server; a new stream from the cursor picks it up again.
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => { if (!closed && !poller) reopen(); }, 3000);
  }

  function open() {
    const es = new EventSource(target(cursor ? { lastEventId: cursor } : {}), { withCredentials });
    const onEvent = (event) => {
      if (es !== source) return;
      failures = 0;
      cursor = event.lastEventId || cursor;
      const parsed = JSON.parse(event.data);
      if (!('topic' in parsed)) return streamError(parsed); // the stream's own error (token expired)
      const { topic, data } = parsed;
      if (event.type === 'reset') {
        const doc = docs.get(topic);
        if (doc) doc.rebase = true;
      } else if (event.type === 'error') {
        topicError(topic, data);
      } else {
        deliver(topic, data);
      }
    };
    for (const name of [...UPDATE_EVENTS, 'reset']) es.addEventListener(name, onEvent);
    es.addEventListener('open', () => {
      if (es !== source) return;
      failures = 0;
      setState('live');
    });
    es.addEventListener('error', (event) => {
      if (typeof event.data === 'string') return onEvent(event); // a topic's or the stream's error
      if (es !== source || closed) return;
      failures += 1;
      if (es.readyState === EVENTSOURCE_CLOSED || failures >= fallbackAfter) startPolling();
      else setState('reconnecting');
    });
    return es;
  }

  /** The stream's own `event: error`: EventSource retries a retryable one by itself. */
  function streamError(error) {
    if (error.retryable) return setState('reconnecting');
    for (const doc of docs.values()) end(doc, () => onError?.(doc.url, error));
  }

  function reopen() {
    source?.close();
    source = open();
  }

  function startPolling() {
    source?.close();
    source = null;
    if (closed || poller) return;
    poller = new AbortController();
    setState('polling');
    pollLoop(poller.signal);
  }

  async function pollLoop(signal) {
    const backoff = backoffTimer();
    while (!signal.aborted && !closed) {
      const params = cursor ? { after: cursor, wait: pollWait } : { wait: pollWait };
      const answer = await pollOnce(target(params), { signal, withCredentials, backoff });
      if (signal.aborted || closed) return;
      if (!answer) continue;
      if (answer.error) {
        for (const doc of docs.values()) end(doc, () => onError?.(doc.url, answer.error));
        return;
      }
      const { body } = answer;
      for (const { topic, data } of body.events ?? []) {
        if (data && typeof data.code === 'string' && !('sequence' in data)) topicError(topic, data);
        else deliver(topic, data);
      }
      cursor = body.lastEventId ?? cursor;
      if (closed) return;
      if (body.done) {
        // Every topic is over; those whose terminal update came before the cursor end with
        // the latest they had.
        for (const doc of docs.values()) end(doc, () => onDone?.(doc.url, doc.latest));
        return;
      }
    }
  }

  if (typeof EventSource !== 'undefined') {
    setState('connecting');
    source = open();
  } else {
    startPolling();
  }
  return { close: finish };
}
