// The approvals inbox: every pending interrupt of the tenant's sessions, expiring soonest
// first (GET /v1/interrupts?status=pending). Polled while open; cards are kept by id, so what
// someone is typing survives a refresh. An item answered elsewhere just disappears.

import * as api from "./api.js";
import { h, put, setText, syncList } from "./dom.js";
import * as interrupts from "./interrupts.js";

const POLL_MS = 2000;
const SHOWN = 100;

export function view(main, { me }) {
  let timer = null;
  let stopped = false;
  let items = [];
  const settled = new Set(); // answered here: hidden at once, before the next poll agrees

  const list = h("div", { class: "cards", "data-role": "inbox" });
  const empty = h("p", { class: "muted empty", hidden: true }, "Nothing waits for a human.");
  const more = h("p", { class: "muted", hidden: true });
  const error = h("p", { class: "notice notice-error", hidden: true });
  put(main,
    h("div", { class: "page-head" }, h("h1", {}, "Inbox"),
      h("p", { class: "muted" }, "Approvals and questions from all sessions, expiring soonest first.")),
    error, list, empty, more);

  function render() {
    const shown = items.filter((i) => !settled.has(i.id));
    syncList(list, shown, (i) => i.id,
      (i) => interrupts.card(i, { me, showSession: true, onSettled: settle }),
      (card) => card.refresh());
    empty.hidden = shown.length > 0;
    const detail = { n: shown.length, more: !more.hidden };
    interrupts.pendingCount.dispatchEvent(new CustomEvent("count", { detail }));
  }

  function settle(interrupt) {
    settled.add(interrupt.id);
    render();
  }

  async function load() {
    clearTimeout(timer);
    try {
      const page = await api.get(`/v1/interrupts${api.query({ status: "pending", limit: SHOWN })}`);
      if (stopped) return;
      items = page.data;
      more.hidden = !page.next_cursor;
      setText(more, `Showing the first ${SHOWN}: answer these to see more.`);
      error.hidden = true;
      render();
    } catch (err) {
      if (stopped) return;
      error.hidden = false;
      setText(error, err.message);
    }
    timer = setTimeout(load, POLL_MS);
  }

  load();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
