// The sessions list: live status, sessions waiting for a human first, filters by status and
// agent, paged. "Live" is a poll of the list route every few seconds while the view is open:
// one indexed query per page per console, where a stream per listed session would hold dozens
// of connections (and count against the tenant's stream limit) to learn little more.

import * as api from "./api.js";
import { ago, badge, h, put, setText, shortId, syncList } from "./dom.js";

const POLL_MS = 2000;
const PAGE = 25;
const STATUSES = ["", "waiting", "running", "queued", "idle", "closed"];

export function view(main, { me }) {
  const filters = { status: "", agent_id: "" };
  let cursors = [null]; // the cursor of each page seen; the last is the current page's
  let nextCursor = null;
  let agents = [];
  let timer = null;
  let stopped = false;
  let generation = 0; // a load started later wins over one still in flight

  const statusSelect = h("select", { "aria-label": "Status", "data-role": "status-filter" },
    STATUSES.map((s) => h("option", { value: s }, s || "any status")));
  const agentSelect = h("select", { "aria-label": "Agent", "data-role": "agent-filter" }, h("option", { value: "" }, "any agent"));
  const rows = h("tbody", { "data-role": "sessions" });
  const empty = h("p", { class: "muted empty", hidden: true }, "No sessions match.");
  const error = h("p", { class: "notice notice-error", hidden: true });
  const newer = h("button", { disabled: true, "data-role": "newer", onclick: () => page(-1) }, "← Newer");
  const older = h("button", { disabled: true, "data-role": "older", onclick: () => page(1) }, "Older →");
  const pageLabel = h("span", { class: "muted" });
  const creator = api.allows(me, "write") ? newSessionForm() : null;

  statusSelect.addEventListener("change", () => refilter({ status: statusSelect.value }));
  agentSelect.addEventListener("change", () => refilter({ agent_id: agentSelect.value }));

  put(main,
    h("div", { class: "page-head" }, h("h1", {}, "Sessions"), creator),
    h("div", { class: "filters" }, statusSelect, agentSelect),
    error,
    h("table", { class: "list" },
      h("thead", {}, h("tr", {}, ["Session", "Agent", "Status", "Last turn", "Updated"].map((c) => h("th", {}, c)))),
      rows),
    empty,
    h("div", { class: "pager" }, newer, pageLabel, older));

  function newSessionForm() {
    const choice = h("select", { "aria-label": "Agent for a new session", "data-role": "new-session-agent" });
    const create = h("button", { class: "primary", "data-action": "new-session" }, "New session");
    const form = h("form", { class: "inline-form" }, choice, create);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (!choice.value) return;
      create.disabled = true;
      try {
        const made = await api.post("/v1/sessions", { agent_id: choice.value }, { headers: { "Idempotency-Key": api.idempotencyKey() } });
        location.hash = `#/sessions/${encodeURIComponent(made.id)}`;
      } catch (err) {
        show(err);
      } finally {
        create.disabled = false;
      }
    });
    form.ui = { choice };
    return form;
  }

  function refilter(change) {
    Object.assign(filters, change);
    cursors = [null];
    load();
  }

  function page(step) {
    if (step > 0 && nextCursor) cursors.push(nextCursor);
    if (step < 0 && cursors.length > 1) cursors.pop();
    load();
  }

  function show(err) {
    error.hidden = !err;
    setText(error, err ? err.message : "");
  }

  const agentName = (id) => agents.find((a) => a.id === id)?.name ?? shortId(id);

  async function load() {
    clearTimeout(timer);
    const mine = ++generation;
    const current = () => !stopped && mine === generation;
    try {
      const cursor = cursors[cursors.length - 1];
      const firstPage = cursors.length === 1;
      const listed = api.get(`/v1/sessions${api.query({ ...filters, limit: PAGE, cursor })}`);
      // waiting for a human comes first: on the first page of an unfiltered list, the
      // waiting ones are fetched on their own and put on top
      const lift = firstPage && !filters.status;
      const waiting = lift ? api.get(`/v1/sessions${api.query({ status: "waiting", agent_id: filters.agent_id, limit: 100 })}`) : null;
      const [pageData, waitingData] = await Promise.all([listed, waiting]);
      if (!current()) return;
      const lifted = waitingData?.data ?? [];
      const liftedIds = new Set(lifted.map((s) => s.id));
      const items = [...lifted, ...pageData.data.filter((s) => !liftedIds.has(s.id))];
      nextCursor = pageData.next_cursor;
      syncList(rows, items, (s) => s.id, row, updateRow);
      empty.hidden = items.length > 0;
      newer.disabled = cursors.length === 1;
      older.disabled = !nextCursor;
      setText(pageLabel, `page ${cursors.length}`);
      show(null);
    } catch (err) {
      if (!current()) return;
      show(err);
    }
    timer = setTimeout(load, POLL_MS);
  }

  function row(s) {
    const link = h("a", { href: `#/sessions/${encodeURIComponent(s.id)}`, class: "mono" }, shortId(s.id));
    const cells = [h("td", {}, link), h("td", {}), h("td", {}), h("td", {}), h("td", { class: "muted" })];
    const el = h("tr", { dataset: { sessionId: s.id } }, cells);
    el.ui = cells; // not `cells`: a table row has that built in
    return el;
  }

  function updateRow(el, s) {
    el.dataset.status = s.status;
    el.classList.toggle("row-waiting", s.status === "waiting");
    setText(el.ui[1], agentName(s.agent_id));
    put(el.ui[2], badge(s.status));
    put(el.ui[3], s.last_turn ? badge(s.last_turn.status) : h("span", { class: "muted" }, "—"));
    el.ui[4].title = s.updated_at;
    setText(el.ui[4], ago(s.updated_at));
  }

  (async () => {
    try {
      agents = await api.all("/v1/agents");
    } catch (err) {
      show(err);
    }
    if (stopped) return;
    for (const agent of agents) {
      agentSelect.append(h("option", { value: agent.id }, agent.name));
      creator?.ui.choice.append(h("option", { value: agent.id }, agent.name));
    }
    load();
  })();

  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
