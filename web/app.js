// wikigpt chat page: talks to the server's /v1/chat/completions with streaming (SSE).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { history: [], controller: null, rag: false };  // rag: the server answers from Wikipedia
const saved = (key, fallback) => localStorage.getItem("wikigpt." + key) ?? fallback;
const save = (key, value) => localStorage.setItem("wikigpt." + key, value);

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function addMessage(role, text) {
  $("empty").hidden = true;
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("input").disabled = busy;
}

// Server-sent events over fetch: bytes arrive in arbitrary pieces. The TextDecoder runs in
// stream mode, so a UTF-8 character split across two reads (often a Chinese one) is kept
// whole, and a partial line waits in `buffer` until its newline arrives.
async function* readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (!line.startsWith("data:")) continue;  // blank separators, comments
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
    if (done) return;
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error?.message || response.statusText;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function send(text) {
  showError("");
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  const system = $("system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(state.history);
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = "Bearer " + key;
  state.controller = new AbortController();
  setBusy(true);
  let reply = "", finish = null, sources = [];
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers, signal: state.controller.signal,
      body: JSON.stringify({
        messages, stream: true,
        temperature: Number($("temperature").value),
        max_tokens: Number($("max-tokens").value) || 128,
        ...(state.rag ? { rag: $("rag").checked } : {}),  // grounding, per conversation
      }),
    });
    if (!response.ok) {
      if (response.status === 401) $("api-key-row").hidden = false;
      throw new Error(await errorText(response));
    }
    for await (const event of readEvents(response)) {
      if (event.error) throw new Error(event.error.message);
      if (event.sources) sources = event.sources;  // with serve.py --rag: the passages it read
      const choice = event.choices?.[0];
      if (!choice) continue;
      if (choice.delta?.content) {
        reply += choice.delta.content;
        bubble.textContent = reply;
        bubble.scrollIntoView({ block: "end" });
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  } catch (err) {
    if (err.name !== "AbortError") {
      showError(err.message || String(err));
      if (!reply) state.history.pop();  // nothing came back: let the user try again
    }
  } finally {
    bubble.classList.remove("streaming");
    if (reply) state.history.push({ role: "assistant", content: reply });
    else if (!finish) bubble.remove();
    if (reply && sources.length) bubble.appendChild(sourceList(sources));
    if (finish === "length") {
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = "(cut at the length limit)";
      bubble.appendChild(note);
    }
    state.controller = null;
    setBusy(false);
    $("input").focus();
  }
}

// A source's address as a link target, or null: only http(s) addresses. It comes from the
// index the server reads, and a javascript: or data: address there would run in this page.
function webAddress(url) {
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

function sourceList(sources) {
  const list = document.createElement("ol");
  list.className = "sources";
  for (const source of sources) {
    const item = document.createElement("li");
    const href = source.url ? webAddress(source.url) : null;
    const link = document.createElement(href ? "a" : "span");
    link.textContent = source.title;
    if (href) { link.href = href; link.target = "_blank"; link.rel = "noopener noreferrer"; }
    link.title = source.text;
    item.appendChild(link);
    if (source.label) {  // what of the article it is: 'article lead', 'section "Economy"', ...
      const what = document.createElement("span");
      what.className = "what";
      what.textContent = " · " + source.label;
      item.appendChild(what);
    }
    list.appendChild(item);
  }
  return list;
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("rag").checked = true;  // each conversation starts answering from Wikipedia
  $("messages").querySelectorAll(".msg").forEach((m) => m.remove());
  $("empty").hidden = false;
  showError("");
  $("input").focus();
}

async function init() {
  for (const [id, key] of [["system", "system"], ["api-key", "apiKey"], ["temperature", "temperature"],
                           ["max-tokens", "maxTokens"]]) {
    $(id).value = saved(key, $(id).value);
    $(id).addEventListener("change", () => save(key, $(id).value));
  }
  $("temperature-value").textContent = $("temperature").value;
  $("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });
  $("toggle-settings").addEventListener("click", () => {
    const open = $("settings").hidden;
    $("settings").hidden = !open;
    $("toggle-settings").setAttribute("aria-expanded", String(open));
  });
  $("new-chat").addEventListener("click", newChat);
  $("stop").addEventListener("click", () => state.controller?.abort());
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value.trim();
    if (!text || state.controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {  // isComposing: Chinese IME input
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  try {
    const health = await (await fetch("/health")).json();
    $("model-name").textContent = `${health.model} · context ${health.context_length} tokens`;
    if (health.auth) $("api-key-row").hidden = false;
    state.rag = Boolean(health.rag && health.chat);
    $("rag-row").hidden = !state.rag;
    if (health.auth && !$("api-key").value) $("settings").hidden = false;
    if (!health.chat) showError("This checkpoint is not chat-tuned: serve one from chat_sft.py to chat here.");
  } catch {
    showError("Cannot reach the server.");
  }
  $("input").focus();
}

init();
