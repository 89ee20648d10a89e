// Talking to the server: the same public API every client uses (docs/api.md).
// Local mode: the API key in X-API-Key (kept in sessionStorage, or localStorage when remembered).
// Supabase mode: email + password to Supabase Auth, then Authorization: Bearer <access token>.
// Keys and tokens go in headers only: never in URLs, never logged.

import { sleep } from "./dom.js";

const KEY = "s3seg.apiKey";
const SESSION = "s3seg.session";
let config = { auth: "none" };

export class ApiError extends Error {
  constructor(status, code, message, hint) {
    super(message);
    this.status = status;
    this.code = code;
    this.hint = hint;
  }
}

export async function loadConfig() {
  const response = await fetch("/app/config.json", { cache: "no-store" });
  config = await response.json();
  return config;
}

export const mode = () => config.auth; // "api-key" | "supabase" | "none"

// --------------------------------------------------------------------------- local mode: the key
export function apiKey() {
  return sessionStorage.getItem(KEY) ?? localStorage.getItem(KEY);
}

export function setApiKey(key, remember) {
  sessionStorage.setItem(KEY, key);
  if (remember) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

export function forgetApiKey() {
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
}

// ---------------------------------------------------------------------- Supabase mode: a session
export function session() {
  try {
    return JSON.parse(localStorage.getItem(SESSION) || "null");
  } catch {
    return null;
  }
}

export function signOut() {
  localStorage.removeItem(SESSION);
}

function keepSession(body) {
  const expiresAt = body.expires_at || Math.floor(Date.now() / 1000) + (body.expires_in || 3600);
  const kept = {
    access_token: body.access_token,
    refresh_token: body.refresh_token,
    expires_at: expiresAt,
    email: body.user?.email ?? null,
  };
  localStorage.setItem(SESSION, JSON.stringify(kept));
  return kept;
}

async function authToken(grant, payload) {
  let response;
  try {
    response = await fetch(`${config.supabase_url}/auth/v1/token?grant_type=${grant}`, {
      method: "POST",
      headers: { apikey: config.supabase_anon_key || "", "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
  } catch {
    throw new ApiError(0, "AUTH_UNREACHABLE", "cannot reach Supabase Auth", "check your connection");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error_description || body.msg || body.message || `sign-in failed (HTTP ${response.status})`;
    throw new ApiError(response.status, "SIGN_IN_FAILED", message, "check the email and the password");
  }
  return keepSession(body);
}

export function signIn(email, password) {
  return authToken("password", { email, password });
}

async function freshSession() {
  const current = session();
  if (!current) return null;
  if (current.expires_at - 60 > Date.now() / 1000) return current;
  try {
    return await authToken("refresh_token", { refresh_token: current.refresh_token });
  } catch {
    signOut();
    return null;
  }
}

export function signedIn() {
  if (config.auth === "api-key") return Boolean(apiKey());
  if (config.auth === "supabase") return Boolean(session());
  return true;
}

async function authHeaders() {
  if (config.auth === "api-key") {
    const key = apiKey();
    return key ? { "X-API-Key": key } : {};
  }
  if (config.auth === "supabase") {
    const current = await freshSession();
    return current ? { Authorization: `Bearer ${current.access_token}` } : {};
  }
  return {};
}

// ----------------------------------------------------------------------------------- requests
async function send(path, { method = "GET", json, form, signal, headers = {} } = {}) {
  const init = { method, signal, headers: { ...(await authHeaders()), ...headers } };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  try {
    return await fetch(path, init);
  } catch (e) {
    if (signal?.aborted) throw e;
    throw new ApiError(0, "UNREACHABLE", "cannot reach the s3seg server", "check that `s3seg serve` is running");
  }
}

async function failure(response) {
  const body = await response.json().catch(() => null);
  const error = body?.error || {};
  const failed = new ApiError(response.status, error.code || "HTTP_ERROR", error.message || `HTTP ${response.status}`, error.hint);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("s3seg:unauthorized", { detail: failed }));
  return failed;
}

/** A JSON route: answers the envelope's data, or throws ApiError with the server's code and message. */
export async function api(path, options = {}) {
  const response = await send(path, options);
  if (!response.ok) throw await failure(response);
  const body = await response.json();
  if (!body.ok) throw new ApiError(response.status, body.error?.code, body.error?.message, body.error?.hint);
  return body.data;
}

/** A file route (results/{id}/files/{name}): answers a Blob. */
export async function fileBlob(path, signal) {
  const response = await send(path, { signal });
  if (!response.ok) throw await failure(response);
  return response.blob();
}

// --------------------------------------------------------------------------------- task events
/** Parse a text/event-stream body into {event, id, data} objects. */
export async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let current = { data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        if (line === "") {
          if (current.data.length || current.event) {
            yield { event: current.event || "message", id: current.id, data: current.data.join("\n") };
          }
          current = { data: [] };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "data") current.data.push(value);
          else if (field === "event") current.event = value;
          else if (field === "id") current.id = value;
        }
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * Wait for a task to finish, calling onUpdate(kind, data) on the way ("status", "progress").
 * Live events (GET /tasks/{id}/events, resumed with Last-Event-ID after a dropped connection); when
 * the stream cannot be had, the long-poll (GET /tasks/{id}?wait=30). Answers the finished task.
 */
export async function waitForTask(id, onUpdate, signal) {
  const path = `/api/v1/tasks/${encodeURIComponent(id)}`;
  let lastId = null;
  for (let attempt = 0; attempt < 3; attempt++) {
    let response;
    try {
      const headers = { Accept: "text/event-stream", ...(lastId ? { "Last-Event-ID": lastId } : {}) };
      response = await send(`${path}/events`, { signal, headers });
    } catch (e) {
      if (signal?.aborted) throw e;
      break;
    }
    if (response.status === 401) throw await failure(response);
    if (!response.ok || !response.body) break; // no events here: long-poll instead
    try {
      for await (const event of readEvents(response.body)) {
        if (event.id) lastId = event.id;
        const data = event.data ? JSON.parse(event.data) : null;
        if (event.event === "done") return data;
        if (event.event === "error") return api(path, { signal });
        onUpdate?.(event.event, data);
      }
    } catch (e) {
      if (signal?.aborted) throw e;
    }
    await sleep(500 * (attempt + 1), signal); // the stream dropped: resume after what we saw
  }
  return longPoll(path, onUpdate, signal);
}

async function longPoll(path, onUpdate, signal) {
  let wait = 0; // a first look: is it a video?
  for (;;) {
    const task = await api(`${path}?wait=${wait}`, { signal });
    if (task.status === "done" || task.status === "error") return task;
    onUpdate?.("status", { task_id: task.task_id, status: task.status });
    wait = 30;
    if (task.frames_total > 1) {
      // a video: its frames as the events would have told them; ask again sooner to show them moving
      onUpdate?.("progress", { task_id: task.task_id, done: task.frames_done, total: task.frames_total });
      wait = 5;
    }
  }
}
