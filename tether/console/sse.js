// Following a session's events over server-sent events, with fetch() rather than EventSource:
// EventSource cannot send the Authorization header (and the key must not go in the URL), and
// reading the stream ourselves lets us decide when and from where to reconnect.
//
// Reconnection: after a dropped or ended stream we reconnect with `Last-Event-ID: <the last
// seq seen>`; the server sends every durable event after it exactly once, then the text of
// the message in flight so far as one delta from offset 0. Deltas carry character offsets, so
// the reader (state.js) never appends text it already has.

import * as api from "./api.js";

const SILENCE_MS = 45000; // the server pings every 15 s by default: this much silence is a dead link
const FIRST_RETRY_MS = 250;
const MAX_RETRY_MS = 5000;

/** The frames of an SSE body: {id, event, data} per the EventSource parsing rules. */
async function* frames(body, link) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let frame = { data: [] };
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) return;
      link.alive(); // bytes came: the link is up (keep-alives count)
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop(); // an incomplete line waits for the next chunk
      for (const raw of lines) {
        const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        if (line === "") {
          if (frame.data.length) yield { ...frame, data: frame.data.join("\n") };
          frame = { data: [] };
          continue;
        }
        if (line.startsWith(":")) continue; // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") frame.data.push(value);
        else if (field === "id" || field === "event") frame[field] = value;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * Follow `path` (an events route) from `after`, for ever, reconnecting by itself, until
 * `stop()` is called. `onEvent(type, data)` gets each event, `onStatus(status, error?)` the
 * link's state: "connecting", "live", "reconnecting", or "failed" (the server refused: a
 * missing session, a refused key; no retry).
 */
export function follow(path, { after = 0, onEvent, onStatus }) {
  let lastId = after;
  let stopped = false;
  let current = null; // the AbortController of the connection in use
  let wentLive = false;

  async function connectOnce() {
    const controller = new AbortController();
    current = controller;
    let timer = null;
    const alive = () => {
      clearTimeout(timer);
      timer = setTimeout(() => controller.abort(), SILENCE_MS);
    };
    alive();
    try {
      const response = await fetch(api.ROOT + path, {
        headers: api.headers({ Accept: "text/event-stream", "Last-Event-ID": String(lastId) }),
        signal: controller.signal,
        cache: "no-store",
        credentials: "omit",
      });
      if (!response.ok) {
        const error = await api.errorOf(response);
        if (response.status === 401) api.unauthorized.dispatchEvent(new Event("refused"));
        // 429 (too many streams) and 5xx (bus down) pass; the rest will not get better
        if (response.status !== 429 && response.status < 500) error.fatal = true;
        throw error;
      }
      wentLive = true;
      onStatus("live");
      for await (const frame of frames(response.body, { alive })) {
        if (frame.id !== undefined && /^\d+$/.test(frame.id)) lastId = Number(frame.id);
        onEvent(frame.event || "message", JSON.parse(frame.data));
      }
    } finally {
      clearTimeout(timer);
      current = null;
    }
  }

  (async () => {
    let wait = FIRST_RETRY_MS;
    onStatus("connecting");
    while (!stopped) {
      wentLive = false;
      try {
        await connectOnce();
      } catch (error) {
        if (stopped) return;
        if (error.fatal) {
          onStatus("failed", error);
          return;
        }
      }
      if (stopped) return;
      if (wentLive) wait = FIRST_RETRY_MS; // it was up: come back at once
      onStatus("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, wait));
      wait = Math.min(wait * 2, MAX_RETRY_MS);
    }
  })();

  return {
    stop() {
      stopped = true;
      current?.abort();
    },
    get lastId() {
      return lastId;
    },
  };
}
