// Building the page. Every text, above all what a model or a tool produced, goes in as a text
// node: nothing here ever parses a string as HTML (the page's CSP requires Trusted Types with
// no policy, so a string handed to an HTML sink would throw anyway).

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  fill(el, children);
  return el;
}

function fill(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace the children of `el`. */
export function put(el, ...children) {
  el.replaceChildren();
  fill(el, children);
  return el;
}

/** Set a text only when it changed (keeps selections and carets of live text steady). */
export function setText(el, text) {
  const value = text ?? "";
  if (el.textContent !== value) el.textContent = value;
}

/**
 * Make `container`'s children the elements of `items`, in order, keyed by `keyOf`: an item's
 * element is made once by `create` and kept (with whatever is typed into it), `update`
 * brings it up to date. Elements of items no longer there are removed.
 */
export function syncList(container, items, keyOf, create, update) {
  const cache = (container._keyed ??= new Map());
  const wanted = new Set();
  let at = container.firstChild;
  for (const item of items) {
    const key = keyOf(item);
    wanted.add(key);
    let el = cache.get(key);
    if (!el) {
      el = create(item);
      cache.set(key, el);
    }
    update?.(el, item);
    if (el !== at) container.insertBefore(el, at);
    else at = at.nextSibling;
  }
  for (const [key, el] of cache) {
    if (!wanted.has(key)) {
      el.remove();
      cache.delete(key);
    }
  }
}

export function badge(text, kind) {
  return h("span", { class: `badge badge-${kind || text}` }, text);
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

const UNITS = [
  [86400, "d"],
  [3600, "h"],
  [60, "m"],
  [1, "s"],
];

function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  for (const [size, unit] of UNITS) if (s >= size) return `${Math.floor(s / size)}${unit}`;
  return "0s";
}

/** "12s ago" */
export function ago(iso) {
  if (!iso) return "";
  return `${span((Date.now() - Date.parse(iso)) / 1000)} ago`;
}

/** "in 4m", or "expired" */
export function until(iso) {
  const left = (Date.parse(iso) - Date.now()) / 1000;
  return left <= 0 ? "expired" : `in ${span(left)}`;
}

/** The tail of an id (a ULID's random end tells ids apart; its head is a timestamp). */
export function shortId(id) {
  const [head, zone] = id.split(".");
  const tail = head.length > 12 ? `…${head.slice(-8)}` : head;
  return zone ? `${tail}.${zone}` : tail;
}

/** Run `fn` later, once, however many times this is called before then. */
export function coalesce(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    setTimeout(() => {
      queued = false;
      fn();
    }, 0);
  };
}
