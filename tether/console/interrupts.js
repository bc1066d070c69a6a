// An interrupt a human answers: approve or deny (with a reason; edited arguments where the
// tool allows it), answer a question, or respond to a custom type with JSON. Used by the
// inbox and inline in a session's transcript.

import * as api from "./api.js";
import { ago, badge, h, json, put, setText, shortId, until } from "./dom.js";

/** Told the number of pending interrupts when a view learns it (the top bar shows it). */
export const pendingCount = new EventTarget();

/** Answered elsewhere (409) or gone (404): not an error for the person here. */
function goneElsewhere(error) {
  return error instanceof api.ApiError && (error.status === 409 || error.status === 404);
}

function questionText(request) {
  if (typeof request?.question === "string") return request.question;
  return json(request);
}

/**
 * A card for `interrupt`. `me` decides whether answering controls are shown (a read key sees
 * none); `onSettled(interrupt)` is called once it is answered, here or elsewhere.
 */
export function card(interrupt, { me, onSettled, showSession = false }) {
  const status = h("p", { class: "card-status", role: "status" });
  const fail = (error) => {
    if (goneElsewhere(error)) {
      onSettled(interrupt); // answered elsewhere: the item just goes away
      return;
    }
    status.className = "card-status error";
    setText(status, error.message);
    for (const button of el.querySelectorAll("button")) button.disabled = false;
  };
  const respond = async (response) => {
    for (const button of el.querySelectorAll("button")) button.disabled = true;
    status.className = "card-status";
    setText(status, "Sending…");
    try {
      await api.post(`/v1/interrupts/${encodeURIComponent(interrupt.id)}/respond`, { response });
      onSettled(interrupt);
    } catch (error) {
      fail(error);
    }
  };

  const request = interrupt.request || {};
  const expiry = h("span", { class: "expiry" });
  const header = h(
    "div",
    { class: "card-head" },
    badge(interrupt.type, interrupt.type === "approval" || interrupt.type === "question" ? interrupt.type : "custom"),
    interrupt.tool_name ? h("code", { class: "tool-name" }, interrupt.tool_name) : null,
    showSession
      ? h(
          "a",
          { href: `#/sessions/${encodeURIComponent(interrupt.session_id)}`, class: "muted" },
          `session ${shortId(interrupt.session_id)}`,
        )
      : null,
    h("span", { class: "muted", title: interrupt.created_at }, `asked ${ago(interrupt.created_at)}`),
    expiry,
  );

  const body = h("div", { class: "card-body" });
  const actions = h("div", { class: "card-actions" });
  const canAnswer = api.allows(me, "write");

  if (interrupt.type === "approval") {
    const args = request.arguments ?? {};
    if (request.editable && canAnswer) {
      const editor = h("textarea", {
        class: "code",
        rows: Math.min(12, json(args).split("\n").length + 1),
        "aria-label": "Arguments (editable)",
        "data-role": "arguments",
        spellcheck: "false",
      });
      editor.value = json(args);
      put(body, h("label", {}, "Arguments (editable)"), editor);
      actions.append(
        h("button", {
          class: "primary",
          "data-action": "approve",
          onclick: () => {
            let edited;
            try {
              edited = JSON.parse(editor.value);
            } catch {
              fail(new Error("The arguments are not valid JSON."));
              return;
            }
            const changed = json(edited) !== json(args);
            respond(changed ? { decision: "approve", arguments: edited } : { decision: "approve" });
          },
        }, "Approve"),
      );
    } else {
      put(body, h("label", {}, "Arguments"), h("pre", { class: "code" }, json(args)));
      if (canAnswer)
        actions.append(
          h("button", { class: "primary", "data-action": "approve", onclick: () => respond({ decision: "approve" }) }, "Approve"),
        );
    }
    if (request.reason === "outcome_unknown")
      body.prepend(h("p", { class: "warn" }, "It may have run before a crash: approve only if running it again is safe."));
    if (canAnswer) {
      const reason = h("input", { type: "text", placeholder: "Reason (optional)", "aria-label": "Reason", "data-role": "reason", maxlength: 2000 });
      actions.append(
        reason,
        h("button", {
          class: "danger",
          "data-action": "deny",
          onclick: () => respond(reason.value.trim() ? { decision: "deny", reason: reason.value.trim() } : { decision: "deny" }),
        }, "Deny"),
      );
    }
  } else if (interrupt.type === "question") {
    put(body, h("p", { class: "question" }, questionText(request)));
    if (canAnswer) {
      const answer = h("input", { type: "text", placeholder: "Your answer", "aria-label": "Answer", "data-role": "answer" });
      const send = () => answer.value.trim() && respond(answer.value.trim());
      answer.addEventListener("keydown", (e) => e.key === "Enter" && send());
      actions.append(answer, h("button", { class: "primary", "data-action": "answer", onclick: send }, "Answer"));
    }
  } else {
    put(body, h("label", {}, "Request"), h("pre", { class: "code" }, json(request)));
    if (canAnswer) {
      const editor = h("textarea", { class: "code", rows: 4, "aria-label": "Response (JSON)", "data-role": "response", spellcheck: "false" });
      editor.value = "{}";
      actions.append(
        editor,
        h("button", {
          class: "primary",
          "data-action": "respond",
          onclick: () => {
            try {
              respond(JSON.parse(editor.value));
            } catch {
              fail(new Error("The response is not valid JSON."));
            }
          },
        }, "Respond"),
      );
    }
  }

  const el = h("article", { class: "card interrupt", dataset: { interruptId: interrupt.id } }, header, body, canAnswer ? actions : null, status);
  el.refresh = () => {
    const left = interrupt.expires_at ? until(interrupt.expires_at) : null;
    setText(expiry, left === null ? "no expiry" : left === "expired" ? "expired" : `expires ${left}`);
  };
  el.refresh();
  return el;
}
