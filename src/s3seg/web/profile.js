// Who is using the page: the API key form (local mode), Supabase sign-in (email + password), and the
// profile: tier, credits and recent usage.

import { api, forgetApiKey, mode, session, setApiKey, signIn, signOut } from "./api.js";
import { h, showError, when } from "./dom.js";

/** Local mode: ask for the server's API key once; checked against GET /api/v1/me before it is kept. */
export function keyForm(view, { message, done }) {
  const key = h("input", { type: "password", id: "api-key", autocomplete: "current-password", required: true });
  const remember = h("input", { type: "checkbox", id: "remember-key" });
  const error = h("div", { class: "error", id: "key-error", role: "alert" });
  const form = h(
    "form",
    { class: "card-form", id: "key-form" },
    h("h1", {}, "API key"),
    h("p", {}, "This server needs its API key (S3SEG_API_KEY). It stays in this browser and is sent only in the X-API-Key header."),
    h("div", { class: "field" }, h("label", { for: "api-key" }, "API key"), key),
    h("div", { class: "check" }, remember, h("label", { for: "remember-key" }, "Remember on this device")),
    h("button", { type: "submit", class: "primary" }, "Continue"),
    error,
  );
  if (message) showError(error, message);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(error, null);
    setApiKey(key.value, remember.checked);
    try {
      await api("/api/v1/me");
      done();
    } catch (err) {
      forgetApiKey();
      showError(error, explain(err));
      key.focus();
    }
  });
  view.replaceChildren(form);
  key.focus();
}

/** Supabase mode: email and password, sent to Supabase Auth (the page never sees other secrets). */
export function signInForm(view, { message, done }) {
  const email = h("input", { type: "email", id: "email", autocomplete: "username", required: true });
  const password = h("input", { type: "password", id: "password", autocomplete: "current-password", required: true });
  const error = h("div", { class: "error", id: "sign-in-error", role: "alert" });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "card-form", id: "sign-in-form" },
    h("h1", {}, "Sign in"),
    h("div", { class: "field" }, h("label", { for: "email" }, "Email"), email),
    h("div", { class: "field" }, h("label", { for: "password" }, "Password"), password),
    submit,
    error,
  );
  if (message) showError(error, message);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(error, null);
    submit.disabled = true;
    try {
      await signIn(email.value.trim(), password.value);
      await api("/api/v1/me");
      done();
    } catch (err) {
      signOut();
      showError(error, explain(err));
    } finally {
      submit.disabled = false;
    }
  });
  view.replaceChildren(form);
  email.focus();
}

/** A clear sentence for the errors people meet at the door. */
export function explain(err) {
  if (err.status === 401 && mode() === "api-key") {
    return { message: `The server refused this API key (${err.message}).`, hint: "Use the key the server was started with (S3SEG_API_KEY)." };
  }
  if (err.status === 401) return { message: `Not signed in: ${err.message}`, hint: "sign in again" };
  if (err.status === 403) return { message: err.message, hint: err.hint || "this account has no profile on the server" };
  return err;
}

function charge(task) {
  const cost = task.metadata?.cost ?? 0;
  if (task.status === "done") return `${cost} credit${cost === 1 ? "" : "s"}`;
  return task.status === "error" ? "not charged" : `${cost} reserved`;
}

export async function profilePage(view, { signal, leave }) {
  const error = h("div", { class: "error", role: "alert" });
  const facts = h("dl", { class: "facts", id: "profile" });
  const usage = h("ul", { class: "usage", id: "usage", "aria-label": "Recent usage" });
  const out = h("button", { type: "button", id: "sign-out" }, mode() === "supabase" ? "Sign out" : "Forget the API key");
  out.addEventListener("click", () => {
    if (mode() === "supabase") signOut();
    else forgetApiKey();
    leave();
  });
  view.replaceChildren(
    h("h1", {}, "Profile"),
    error,
    facts,
    h("h2", {}, "Recent usage"),
    usage,
    mode() === "none" ? null : out,
  );
  try {
    const [me, recent] = await Promise.all([
      api("/api/v1/me", { signal }),
      api("/api/v1/results?limit=10", { signal }),
    ]);
    const row = (name, value) => [h("dt", {}, name), h("dd", { text: value })];
    facts.replaceChildren(
      ...row("Signed in as", me.email || session()?.email || (mode() === "supabase" ? me.user_id : `local user (${me.user_id})`)),
      ...row("Tier", me.tier),
      ...row("Credits", me.credits === null ? "not counted (local store)" : String(me.credits)),
      ...row("Rate limit", `${me.rate_limit_per_minute} requests per minute`),
    );
    usage.replaceChildren(
      ...(recent.items.length
        ? recent.items.map((t) =>
            h("li", {},
              h("a", { href: `/results/${t.task_id}`, "data-nav": true, text: (t.metadata?.prompts || [t.text_prompt]).join(", ") }),
              h("span", { class: "muted small" },
                ` · ${t.status}${me.credits === null ? "" : ` · ${charge(t)}`} · ${when(t.created_at)}`)))
        : [h("li", { class: "muted" }, "Nothing yet.")]),
    );
  } catch (e) {
    if (!signal.aborted) showError(error, explain(e));
  }
}
