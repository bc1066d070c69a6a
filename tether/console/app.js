// The console's shell: who is asking (GET /v1/me), the key prompt, the top bar, and a hash
// router over the views. Each view mounts into <main> and answers {stop()}, called when the
// view is left (it closes its stream, stops its polling).

import * as agents from "./agents.js";
import * as api from "./api.js";
import { h, put, setText } from "./dom.js";
import * as inbox from "./inbox.js";
import * as interrupts from "./interrupts.js";
import * as session from "./session.js";
import * as sessions from "./sessions.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");

const ROUTES = [
  [/^#\/sessions\/([^/]+)$/, session.view, "sessions"],
  [/^#\/sessions$/, sessions.view, "sessions"],
  [/^#\/inbox$/, inbox.view, "inbox"],
  [/^#\/agents(?:\/([^/]+))?$/, agents.view, "agents"],
];
const INBOX_POLL_MS = 5000;

let me = null;
let current = null; // the mounted view
let inboxTimer = null;
const inboxCount = h("span", { class: "count", hidden: true, "data-role": "inbox-count" });
const links = {
  sessions: h("a", { href: "#/sessions" }, "Sessions"),
  inbox: h("a", { href: "#/inbox" }, "Inbox ", inboxCount),
  agents: h("a", { href: "#/agents" }, "Agents"),
};

function leave() {
  current?.stop();
  current = null;
}

function route() {
  if (!me) return;
  leave();
  const hash = location.hash || "#/sessions";
  for (const [pattern, view, section] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    for (const [name, link] of Object.entries(links)) link.classList.toggle("active", name === section);
    const params = match.slice(1).map((p) => (p === undefined ? p : decodeURIComponent(p)));
    current = view(main, { me }, ...params);
    return;
  }
  location.hash = "#/sessions";
}

function showCount(n, more) {
  inboxCount.hidden = n === 0;
  setText(inboxCount, more ? `${n}+` : String(n));
}
// the inbox view knows the count first when it is open
interrupts.pendingCount.addEventListener("count", (e) => showCount(e.detail.n, e.detail.more));

async function pollInbox() {
  clearTimeout(inboxTimer);
  if (!me) return;
  try {
    const page = await api.get(`/v1/interrupts${api.query({ status: "pending", limit: 100 })}`);
    showCount(page.data.length, Boolean(page.next_cursor));
  } catch {
    // the views report errors; the badge just keeps its last count
  }
  inboxTimer = setTimeout(pollInbox, INBOX_POLL_MS);
}

function showWho() {
  const parts = [h("span", { class: "tenant" }, me.tenant_id), h("span", { class: `badge badge-role` }, me.role)];
  if (me.auth) {
    parts.push(h("button", { class: "link-button", "data-action": "forget-key", onclick: forget }, "Forget key"));
  } else {
    parts.push(h("span", { class: "muted", title: "This server runs without API keys (loopback only)" }, "open mode"));
  }
  put(who, parts);
}

function forget() {
  api.key.clear();
  signIn("");
}

/** Ask for a key. `why` says what went wrong with the last one, if anything. */
function signIn(why) {
  leave();
  me = null;
  clearTimeout(inboxTimer);
  put(nav);
  put(who);
  const input = h("input", { type: "password", autocomplete: "off", placeholder: "tth_…", "aria-label": "API key", "data-role": "key", required: true });
  const message = h("p", { class: "notice notice-error", hidden: !why, role: "alert" }, why);
  const form = h("form", { class: "card signin", "data-role": "signin" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "This server needs an API key (", h("code", {}, "tether keys create"), "). It is kept in this tab only, until the tab closes."),
    input, h("button", { class: "primary", type: "submit", "data-action": "sign-in" }, "Use this key"), message);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    api.key.set(input.value.trim());
    await start();
  });
  put(main, form);
  input.focus();
}

async function start(retry = true) {
  try {
    me = await api.get("/v1/me");
  } catch (error) {
    if (error.status === 401) {
      const hadKey = Boolean(api.key.get());
      api.key.clear();
      if (hadKey && retry) {
        await start(false); // perhaps the server is open now: try without a key
        if (me) return;
      }
      signIn(hadKey ? "That key was refused." : "");
      return;
    }
    put(main, h("p", { class: "notice notice-error" }, `The server cannot be reached: ${error.message}`));
    return;
  }
  put(nav, Object.values(links));
  showWho();
  route();
  pollInbox();
}

// a key revoked while the console is open: ask again
api.unauthorized.addEventListener("refused", () => {
  if (!me) return;
  api.key.clear();
  signIn("The server refused the key (revoked?). Enter a key to go on.");
});

window.addEventListener("hashchange", route);
// leaving the page (or its being kept in the back-forward cache) closes the view's streams
window.addEventListener("pagehide", leave);
window.addEventListener("pageshow", (event) => event.persisted && route());
start();
