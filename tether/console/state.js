// A session as the console shows it: the fold of its event log. The session view replays the
// log from the start, then follows it live, so one function (apply) builds the transcript,
// the turn timeline and the pending interrupts, whether an event is old or new, and a
// reconnect only continues the fold.

const TERMINAL = new Set(["completed", "failed", "cancelled"]);

export function isActive(status) {
  return status === "queued" || status === "running" || status === "cancelling" || status === "waiting";
}

export class SessionState {
  constructor() {
    this.status = null; // the session's, from session.updated
    this.turns = new Map(); // id -> turn (the API's shape) + {rolledBack}
    this.messages = new Map(); // id -> message (the API's shape) + {streaming}; in order seen
    this.tools = new Map(); // tool_call_id -> {name, arguments, state: "running"|"done", outcome}
    this.interrupts = new Map(); // id -> interrupt
    this.steered = new Set(); // ids of the messages steers delivered
  }

  apply(type, event) {
    const data = event.data || {};
    switch (type) {
      case "turn.queued":
      case "turn.cancelling":
      case "turn.completed":
      case "turn.failed":
      case "turn.cancelled":
        this.turn(data.turn, data.rolled_back);
        break;
      case "turn.started": {
        const turn = this.turns.get(event.turn_id);
        if (turn && !TERMINAL.has(turn.status)) {
          turn.status = "running";
          turn.attempt = data.attempt;
        }
        break;
      }
      case "message.delta":
        this.delta(event.turn_id, data);
        break;
      case "message.completed": {
        const message = data.message;
        const seen = this.messages.get(message.id);
        // a Map keeps the first place of a key: the streamed message stays where it started
        this.messages.set(message.id, { ...seen, ...message, streaming: false });
        break;
      }
      case "tool.started":
        this.tools.set(data.tool_call_id, {
          name: data.name,
          arguments: data.arguments,
          state: "running",
          outcome: null,
        });
        break;
      case "tool.completed": {
        const tool = this.tools.get(data.tool_call_id) || { name: data.name };
        this.tools.set(data.tool_call_id, { ...tool, state: "done", outcome: data.outcome });
        break;
      }
      case "interrupt.created":
      case "interrupt.resolved":
      case "interrupt.expired": {
        const interrupt = data.interrupt;
        this.interrupts.set(interrupt.id, interrupt);
        const turn = this.turns.get(interrupt.turn_id);
        if (type === "interrupt.created" && data.turn_waiting && turn && !TERMINAL.has(turn.status))
          turn.status = "waiting";
        break;
      }
      case "session.updated":
        this.status = data.status;
        break;
      case "turn.steered":
        for (const id of data.message_ids || []) this.steered.add(id);
        if (data.turn) this.turn(data.turn);
        break;
      case "session.forked": // a fork's first event: the turns it copied (their messages follow)
        for (const turn of data.turns || []) this.turn(turn);
        break;
      default:
        break; // a type this console does not know yet: nothing to show
    }
  }

  turn(turn, rolledBack) {
    const known = this.turns.get(turn.id);
    this.turns.set(turn.id, { ...known, ...turn, rolledBack: rolledBack || known?.rolledBack });
    if (TERMINAL.has(turn.status)) {
      for (const message of this.messages.values())
        if (message.turn_id === turn.id) message.streaming = false;
    }
  }

  /** Streamed text at a character offset: only what we do not have yet is added. */
  delta(turnId, { message_id: id, offset, delta }) {
    let message = this.messages.get(id);
    if (!message) {
      message = { id, turn_id: turnId, role: "assistant", content: "", tool_calls: [], streaming: true };
      this.messages.set(id, message);
    }
    if (!message.streaming) return; // already complete: its stored text is the truth
    const have = message.content.length;
    if (offset > have) return; // a gap (never expected): the reconnect's full delta fills it
    const end = offset + delta.length;
    if (end > have) message.content += delta.slice(have - offset);
  }

  /** Turns in order, each with its messages (a rolled-back turn shows none). */
  timeline() {
    const turns = [...this.turns.values()].sort((a, b) => a.seq - b.seq);
    const byTurn = new Map(turns.map((t) => [t.id, []]));
    for (const message of this.messages.values()) byTurn.get(message.turn_id)?.push(message);
    return turns.map((turn) => ({
      turn,
      messages: turn.rolledBack ? [] : byTurn.get(turn.id),
      interrupts: [...this.interrupts.values()].filter(
        (i) => i.turn_id === turn.id && i.status === "pending",
      ),
    }));
  }

  /** A tool call's result message, if it has one. */
  resultOf(toolCallId) {
    for (const message of this.messages.values())
      if (message.role === "tool" && message.tool_call_id === toolCallId) return message;
    return null;
  }

  activeTurn() {
    return [...this.turns.values()].find((t) => isActive(t.status)) || null;
  }

  usage() {
    const total = { input_tokens: 0, output_tokens: 0, model_calls: 0 };
    for (const turn of this.turns.values())
      for (const name of Object.keys(total)) total[name] += turn.usage?.[name] || 0;
    return total;
  }
}
