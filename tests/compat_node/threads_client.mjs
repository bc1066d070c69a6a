// Drives @lleverage-ai/agent-threads' own WsClient (unmodified) against a running Tether, for
// tests/integration/test_compat_agent_threads.py. The scenario comes as JSON in argv[2]:
//   {url, deadlineMs, expectRefusal, subscriptions: [{streamId, afterSeq, until}]}
// Subscriptions run one after another on one connection. Each ends when its iterator ends
// (an error for its stream, a lost connection), or once live (after replay-end) an event of
// kind `until` arrives, or at replay-end itself when `until` is "replay-end".
// With expectRefusal, an error before the handshake completed ends the run ("refused").
// Prints one JSON object: each subscription's items, the client's errors and states, and the
// raw pings received and pongs sent (seen through the WebSocket the client is given).
import { WsClient } from "@lleverage-ai/agent-threads/client";
import WebSocket from "ws"; // Node 20 keeps its own WebSocket behind a flag; 18 has none

const spec = JSON.parse(process.argv[2]);
const raw = { pings: 0, pongs: 0 };
const errors = [];
const states = [];
const results = [];

function report(outcome) {
  console.log(JSON.stringify({ outcome, results, errors, states, raw }));
}

setTimeout(() => {
  report("deadline");
  process.exit(2);
}, spec.deadlineMs ?? 20000);

// The client's documented `WebSocket` option (it names the `ws` library): watched, not changed.
class RecordingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    this.addEventListener("message", (event) => {
      if (JSON.parse(event.data).type === "ping") raw.pings += 1;
    });
  }

  send(data) {
    if (JSON.parse(data).type === "pong") raw.pongs += 1;
    super.send(data);
  }
}

const client = new WsClient({ url: spec.url, WebSocket: RecordingWebSocket, reconnect: false });
client.on("error", (error) => {
  errors.push(
    error && typeof error.code === "string"
      ? { code: error.code, streamId: error.streamId ?? null, message: error.message }
      : { message: String(error?.message ?? error) },
  );
  if (spec.expectRefusal && !states.includes("connected")) {
    report("refused");
    process.exit(0);
  }
});
client.on("stateChange", (state) => states.push(state));
client.connect();

for (const sub of spec.subscriptions) {
  const items = [];
  let live = false;
  for await (const item of client.subscribe(sub.streamId, { afterSeq: sub.afterSeq ?? 0 })) {
    items.push(item);
    if (item.type === "replay-end") {
      live = true;
      if (sub.until === "replay-end") break;
    } else if (live && item.event?.kind === sub.until) {
      break;
    }
  }
  results.push({ streamId: sub.streamId, items });
}
report("done");
client.close();
process.exit(0);
