// One session: its live transcript (streaming text, tool calls with their arguments, status
// and outcome, steers marked), the turn timeline with reasons and usage and a fork action on
// finished turns, pending interrupts, Stop and Rollback, and a message box with the on_busy
// choice (steer included).

import * as api from "./api.js";
import { ago, badge, coalesce, h, json, put, setText, shortId, syncList } from "./dom.js";
import * as interrupts from "./interrupts.js";
import { follow } from "./sse.js";
import { SessionState } from "./state.js";

// The API's on_busy choices, in the order offered.
export const ON_BUSY = [
  ["enqueue", "Queue after the current turn"],
  ["steer", "Steer the current turn"],
  ["interrupt", "Interrupt the current turn"],
  ["rollback", "Roll back the current turn"],
  ["reject", "Only if idle"],
];

const FINISHED = new Set(["completed", "failed", "cancelled"]);

/**
 * Actions offered on a turn of the timeline: a finished one can be forked from (a new
 * session with the history up to its end, DESIGN §4b), which then opens.
 */
function turnActions(sid, turn, me, say) {
  if (!api.allows(me, "write") || !FINISHED.has(turn.status)) return [];
  const fork = h("button", {
    class: "small",
    "data-action": "fork",
    title: "A new session with this session's history up to the end of this turn",
    onclick: async (e) => {
      e.stopPropagation(); // not a click on the entry (which scrolls to the turn)
      fork.disabled = true;
      try {
        const made = await api.post(`/v1/sessions/${encodeURIComponent(sid)}/fork`, { turn_id: turn.id },
          { headers: { "Idempotency-Key": api.idempotencyKey() } });
        location.hash = `#/sessions/${encodeURIComponent(made.id)}`;
      } catch (error) {
        say(error.message, "error");
        fork.disabled = false;
      }
    },
  }, "Fork from here");
  return [h("div", { class: "tl-actions" }, fork)];
}

const LINK_LABELS = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  failed: "disconnected",
};

export function view(main, { me }, sid) {
  const path = `/v1/sessions/${encodeURIComponent(sid)}`;
  const state = new SessionState();
  const canWrite = api.allows(me, "write");
  let session = null;

  const heading = h("h1", { class: "mono" }, sid);
  const agentName = h("span", { class: "muted" });
  const statusEl = h("span", { "data-role": "session-status" });
  const linkEl = h("span", { class: "link link-connecting", "data-role": "link" }, "connecting…");
  const notice = h("p", { class: "notice", role: "status", hidden: true });
  const stopButton = h("button", { class: "danger", "data-action": "stop", disabled: true, onclick: () => stop("interrupt") }, "Stop");
  const rollbackButton = h("button", { "data-action": "rollback", disabled: true, onclick: () => rollback() }, "Rollback");
  const controls = canWrite ? h("div", { class: "controls" }, stopButton, rollbackButton) : null;

  const transcript = h("div", { class: "transcript", "data-role": "transcript" });
  const empty = h("p", { class: "muted empty" }, "No turns yet.");
  const timeline = h("ol", { class: "timeline", "data-role": "timeline" });
  const usageEl = h("dl", { class: "facts" });
  const detailsEl = h("dl", { class: "facts" });
  const composer = canWrite ? makeComposer() : h("p", { class: "muted readonly" }, "This key can read only: you can watch, not act.");

  put(
    main,
    h("div", { class: "page-head" },
      h("div", {}, h("a", { href: "#/sessions", class: "back" }, "← Sessions"), heading, h("div", { class: "subhead" }, agentName, statusEl, linkEl)),
      controls),
    notice,
    h("div", { class: "columns" },
      h("section", { class: "main-column" }, transcript, empty, composer),
      h("aside", { class: "side-column" },
        h("h2", {}, "Turns"), timeline,
        h("h2", {}, "Usage"), usageEl,
        h("h2", {}, "Session"), detailsEl)),
  );

  function say(text, kind = "info") {
    notice.hidden = !text;
    notice.className = `notice notice-${kind}`;
    setText(notice, text);
  }

  async function act(button, work) {
    button.disabled = true;
    say("");
    try {
      await work();
    } catch (error) {
      say(error.message, "error");
    } finally {
      render();
    }
  }

  function stop(mode) {
    return act(mode === "rollback" ? rollbackButton : stopButton, async () => {
      const answer = await api.post(`${path}/interrupt`, { mode, scope: "turn", wait: 5 });
      if (answer.turn && !["completed", "failed", "cancelled"].includes(answer.turn.status))
        say("Stop requested: the turn is still winding down.");
    });
  }

  // Rollback removes the turn's output from the transcript: it asks for a second click.
  let rollbackArmed = null;
  function rollback() {
    if (!rollbackArmed) {
      setText(rollbackButton, "Confirm rollback");
      rollbackButton.classList.add("danger");
      rollbackArmed = setTimeout(disarm, 4000);
      return;
    }
    disarm();
    stop("rollback");
  }
  function disarm() {
    clearTimeout(rollbackArmed);
    rollbackArmed = null;
    setText(rollbackButton, "Rollback");
    rollbackButton.classList.remove("danger");
  }

  function makeComposer() {
    const input = h("textarea", { rows: 3, placeholder: "Message the agent (Ctrl+Enter to send)", "aria-label": "Message", "data-role": "input" });
    const onBusy = h("select", { "aria-label": "If a turn is active", "data-role": "on-busy" },
      ON_BUSY.map(([value, label]) => h("option", { value }, label)));
    const send = h("button", { class: "primary", type: "submit", "data-action": "send" }, "Send");
    const form = h("form", { class: "composer" }, input,
      h("div", { class: "composer-row" }, h("label", { class: "muted" }, "If busy: ", onBusy), send));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = input.value;
      if (!text.trim()) return;
      act(send, async () => {
        const answer = await api.post(`${path}/turns`, { input: text, on_busy: onBusy.value }, { headers: { "Idempotency-Key": api.idempotencyKey() } });
        input.value = "";
        if (answer.steer?.joined)
          say(`Steer sent: turn ${answer.seq} takes it at its next step.`);
      });
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
    });
    form.ui = { input, send };
    return form;
  }

  // --- rendering --------------------------------------------------------------------------

  const render = coalesce(() => {
    const nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
    const status = state.status ?? session?.status;
    put(statusEl, status ? badge(status) : "");
    const active = state.activeTurn();
    stopButton.disabled = !active;
    rollbackButton.disabled = !active;
    if (!active && rollbackArmed) disarm();
    if (canWrite) {
      const closed = Boolean(session?.closed_at) || status === "closed";
      composer.ui.input.disabled = closed;
      composer.ui.send.disabled = closed;
      if (closed) composer.ui.input.placeholder = "This session is closed.";
    }
    const turns = state.timeline();
    empty.hidden = turns.length > 0;
    syncList(transcript, turns, (t) => t.turn.id, turnBlock, updateTurnBlock);
    syncList(timeline, [...turns].reverse(), (t) => t.turn.id, timelineEntry, updateTimelineEntry);
    const usage = state.usage();
    put(usageEl,
      fact("Input tokens", usage.input_tokens),
      fact("Output tokens", usage.output_tokens),
      fact("Model calls", usage.model_calls),
      fact("Turns", turns.length));
    if (nearBottom && active) window.scrollTo(0, document.body.scrollHeight);
  });

  function fact(name, value) {
    return [h("dt", {}, name), h("dd", {}, String(value))];
  }

  function turnBlock({ turn }) {
    const ui = {
      head: h("div", { class: "turn-head" }),
      input: h("div", { class: "queued-input" }),
      messages: h("div", { class: "messages" }),
      pending: h("div", { class: "pending" }),
      foot: h("p", { class: "turn-foot" }),
    };
    const el = h("section", { class: "turn", dataset: { turnId: turn.id } }, Object.values(ui));
    el.ui = ui; // its parts, for updates (not DOM properties: a name like `role` is taken)
    return el;
  }

  function updateTurnBlock(el, { turn, messages, interrupts: pending }) {
    const { ui } = el;
    el.dataset.status = turn.status;
    put(ui.head,
      h("span", { class: "turn-seq" }, `Turn ${turn.seq}`),
      badge(turn.rolledBack ? "rolled back" : turn.status, turn.rolledBack ? "rolledback" : turn.status),
      turn.reason ? h("span", { class: "muted" }, turn.reason) : null);
    // a turn's input becomes messages when it starts: until then, show what it will say
    const waitingInput = messages.length === 0 && !turn.rolledBack && turn.status === "queued";
    ui.input.hidden = !waitingInput;
    if (waitingInput) put(ui.input, h("span", { class: "muted" }, "queued: "), turn.input.map((m) => m.content).join("\n"));
    const shownCalls = new Set(messages.flatMap((m) => (m.tool_calls || []).map((c) => c.id)));
    const visible = messages.filter((m) => !(m.role === "tool" && shownCalls.has(m.tool_call_id)));
    syncList(ui.messages, visible, (m) => m.id, messageEl, updateMessageEl);
    syncList(ui.pending, pending, (i) => i.id, (i) => interrupts.card(i, { me, onSettled: () => {} }), (card) => card.refresh());
    const error = turn.error ? `${turn.error.code}: ${turn.error.message}` : "";
    ui.foot.hidden = !error;
    setText(ui.foot, error);
  }

  function messageEl(message) {
    const ui = {
      who: h("div", { class: "msg-role" }),
      text: h("div", { class: "msg-text" }),
      calls: h("div", { class: "tool-calls" }),
    };
    const el = h("div", { class: `msg msg-${message.role}`, dataset: { messageId: message.id } }, Object.values(ui));
    el.ui = ui;
    return el;
  }

  function updateMessageEl(el, message) {
    const { ui } = el;
    el.dataset.status = message.streaming ? "streaming" : message.status;
    const who = { user: "You", assistant: "Assistant", tool: `Tool ${message.name || ""}` }[message.role] || message.role;
    put(ui.who, who,
      state.steered.has(message.id) ? badge("steer", "steer") : null,
      message.streaming ? badge("streaming", "running") : null,
      message.status === "interrupted" ? badge("interrupted", "cancelled") : null);
    setText(ui.text, message.content);
    ui.text.hidden = !message.content;
    syncList(ui.calls, message.tool_calls || [], (c) => c.id, toolCallEl, updateToolCallEl);
  }

  function toolCallEl(call) {
    const ui = {
      head: h("div", { class: "tool-head" }),
      args: h("pre", { class: "code args" }),
      result: h("details", { class: "tool-result" }),
    };
    const el = h("div", { class: "tool-call", dataset: { toolCallId: call.id } }, Object.values(ui));
    el.ui = ui;
    return el;
  }

  function updateToolCallEl(el, call) {
    const { ui } = el;
    const tool = state.tools.get(call.id);
    const waitingOn = [...state.interrupts.values()].find((i) => i.tool_call_id === call.id && i.status === "pending");
    const label = waitingOn ? (waitingOn.type === "approval" ? "awaiting approval" : "awaiting answer") : tool ? (tool.state === "running" ? "running" : tool.outcome) : "pending";
    el.dataset.outcome = label;
    put(ui.head, "⚙ ", h("code", {}, call.name), badge(label, label.replace(/\s+/g, "-")));
    setText(ui.args, json(tool?.arguments ?? call.arguments));
    const result = state.resultOf(call.id);
    ui.result.hidden = !result;
    if (result && ui.result.dataset.shown !== result.id) {
      ui.result.dataset.shown = result.id;
      put(ui.result, h("summary", {}, "Result"), h("pre", { class: "code" }, result.content ?? ""));
    }
  }

  function timelineEntry({ turn }) {
    const el = h("li", { dataset: { turnId: turn.id } });
    el.addEventListener("click", () => transcript.querySelector(`[data-turn-id="${CSS.escape(turn.id)}"]`)?.scrollIntoView({ block: "start" }));
    return el;
  }

  function updateTimelineEntry(el, { turn }) {
    const usage = turn.usage || {};
    const took = turn.started_at && turn.finished_at ? ((Date.parse(turn.finished_at) - Date.parse(turn.started_at)) / 1000).toFixed(1) + " s" : null;
    el.dataset.status = turn.status;
    put(el,
      h("div", { class: "tl-head" }, h("strong", {}, `#${turn.seq}`), badge(turn.rolledBack ? "rolled back" : turn.status, turn.rolledBack ? "rolledback" : turn.status), h("span", { class: "muted", title: turn.created_at }, ago(turn.created_at))),
      turn.reason ? h("div", { class: "tl-reason" }, `reason: ${turn.reason}`) : null,
      h("div", { class: "tl-usage muted" }, `${usage.input_tokens ?? 0} in · ${usage.output_tokens ?? 0} out · ${turn.step} steps`, took ? ` · ${took}` : "", turn.attempt > 1 ? ` · attempt ${turn.attempt}` : ""),
      turnActions(sid, turn, me, say));
  }

  // --- data ---------------------------------------------------------------------------------

  (async () => {
    try {
      session = await api.get(path);
      const origin = session.forked_from;
      put(detailsEl,
        fact("Created", new Date(session.created_at).toLocaleString()),
        fact("Id", session.id),
        origin ? [h("dt", {}, "Forked from"), h("dd", { "data-role": "forked-from" },
          h("a", { href: `#/sessions/${encodeURIComponent(origin.session_id)}`, class: "mono" }, shortId(origin.session_id)),
          origin.turn_id ? ` ${origin.at} ${shortId(origin.turn_id)}` : " (no finished turn)")] : null,
        Object.keys(session.metadata || {}).length ? fact("Metadata", json(session.metadata)) : null);
      const agent = await api.get(`/v1/agents/${encodeURIComponent(session.agent_id)}`).catch(() => null);
      setText(agentName, agent ? `agent ${agent.name}` : `agent ${shortId(session.agent_id)}`);
      render();
    } catch (error) {
      say(error.message, "error");
    }
  })();

  const stream = follow(`${path}/events`, {
    after: 0, // the view is the fold of the whole log (state.js)
    onEvent(type, event) {
      state.apply(type, event);
      render();
    },
    onStatus(status, error) {
      linkEl.className = `link link-${status}`;
      setText(linkEl, LINK_LABELS[status] + (error ? `: ${error.message}` : ""));
    },
  });

  return { stop: () => stream.stop() };
}
