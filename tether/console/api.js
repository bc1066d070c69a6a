// The console is a client of the public API: the same routes and keys as any other client.
// The key is typed once and kept in sessionStorage (gone when the tab closes); it travels
// only in the Authorization header, never in a URL.

const KEY = "tether.key";

// The API's root: the console lives at <root>/console/, so a proxy may mount both anywhere.
export const ROOT = location.pathname.replace(/\/console\/.*$/, "");

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** Told when the server refuses the key (401): the app asks for another. */
export const unauthorized = new EventTarget();

export function headers(extra) {
  const out = { Accept: "application/json", ...extra };
  const secret = key.get();
  if (secret) out.Authorization = `Bearer ${secret}`;
  return out;
}

export async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's page): the status says enough
  }
  const error = body?.error;
  return new ApiError(
    response.status,
    error?.code ?? `http_${response.status}`,
    error?.message ?? (response.statusText || `HTTP ${response.status}`),
    error?.details,
  );
}

export async function call(method, path, body, options = {}) {
  const extra = body === undefined ? {} : { "Content-Type": "application/json" };
  const response = await fetch(ROOT + path, {
    method,
    headers: headers({ ...extra, ...options.headers }),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: options.signal,
    cache: "no-store",
    credentials: "omit",
  });
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401) unauthorized.dispatchEvent(new Event("refused"));
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

export const get = (path, options) => call("GET", path, undefined, options);
export const post = (path, body, options) => call("POST", path, body ?? {}, options);

export function query(params) {
  const pairs = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return pairs.length ? `?${new URLSearchParams(pairs)}` : "";
}

/** Every item of a paged list (small lists: agents). */
export async function all(path, params = {}) {
  const items = [];
  let cursor;
  do {
    const page = await get(path + query({ ...params, limit: 200, cursor }));
    items.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

const ROLES = { read: 1, write: 2, admin: 3 };

/** Whether the caller (`/v1/me`) may do what `role` may. */
export function allows(me, role) {
  return ROLES[me.role] >= ROLES[role];
}

/** A fresh Idempotency-Key: a create that is retried (a double click, a flaky network) is made once. */
export function idempotencyKey() {
  // getRandomValues, not randomUUID: the latter exists only on https or localhost
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
