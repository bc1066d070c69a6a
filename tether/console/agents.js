// Agents, read-only: what each one is (model, tools and their policies, limits), and its
// whole definition as the API returns it.

import * as api from "./api.js";
import { ago, h, json, put } from "./dom.js";

function model(agent) {
  const m = agent.model || {};
  return m.model ? `${m.provider} · ${m.model}` : m.provider;
}

function tools(agent) {
  if (!agent.tools?.length) return h("span", { class: "muted" }, "none");
  return agent.tools.map((t) => h("span", { class: `tool-chip policy-${t.policy}` }, t.name, t.policy === "auto" ? "" : ` (${t.policy})`));
}

export function view(main, _ctx, agentId) {
  put(main, h("p", { class: "muted" }, "Loading…"));
  (async () => {
    try {
      const agents = await api.all("/v1/agents");
      const chosen = agents.find((a) => a.id === agentId);
      put(main,
        h("div", { class: "page-head" }, h("h1", {}, "Agents")),
        h("table", { class: "list", "data-role": "agents" },
          h("thead", {}, h("tr", {}, ["Name", "Model", "Tools", "Limits", "Updated"].map((c) => h("th", {}, c)))),
          h("tbody", {}, agents.map((a) => h("tr", { dataset: { agentId: a.id }, class: a.id === agentId ? "selected" : "" },
            h("td", {}, h("a", { href: `#/agents/${encodeURIComponent(a.id)}` }, a.name)),
            h("td", {}, model(a)),
            h("td", {}, h("div", { class: "chips" }, tools(a))),
            h("td", { class: "muted" }, `${a.max_steps} steps · ${a.turn_timeout_s} s`),
            h("td", { class: "muted", title: a.updated_at }, ago(a.updated_at)))))),
        agents.length ? null : h("p", { class: "muted empty" }, "No agents yet."),
        chosen
          ? h("section", { class: "definition" },
              h("h2", {}, `Definition of ${chosen.name}`),
              chosen.instructions ? h("p", { class: "instructions" }, chosen.instructions) : null,
              h("pre", { class: "code", "data-role": "definition" }, json(chosen)))
          : h("p", { class: "muted" }, "Choose an agent to see its definition."));
    } catch (error) {
      put(main, h("p", { class: "notice notice-error" }, error.message));
    }
  })();
  return { stop() {} };
}
