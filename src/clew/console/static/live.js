// The live debugger: an EventSource on /console/live/stream with the filter form's fields,
// each record prepended as an expandable row (built with textContent: records are data,
// never markup). Applying the filter reopens the stream; the page keeps MAX_ROWS rows.
"use strict";

const MAX_ROWS = 500;

function liveDebugger() {
  const form = document.getElementById("live-filter");
  if (!form) return;
  const list = document.getElementById("live-rows");
  const template = document.getElementById("live-row");
  const state = document.getElementById("live");
  const count = document.getElementById("live-count");
  const skippedNote = document.getElementById("live-skipped");
  const pause = document.getElementById("live-pause");
  let source = null;
  let paused = false;
  let skipped = 0;

  function setState(name, text) {
    state.dataset.state = name;
    state.textContent = text;
  }

  function add(row) {
    const item = template.content.firstElementChild.cloneNode(true);
    item.classList.add(row.kind);
    item.dataset.id = row.id;
    item.dataset.messageId = row.message_id;
    const put = (selector, text) => { item.querySelector(selector).textContent = text; };
    put(".at", row.at);
    put(".badge", row.kind === "dead" ? "dead letter" : row.type);
    put(".what", row.name || row.type || "(unreadable)");
    put(".source", row.source);
    put(".who", row.who);
    put(".summary", row.kind === "dead" ? row.summary : "");
    put(".result", row.result);
    put(".where", row.id);
    put(".json", row.json);
    list.prepend(item);
    while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
    count.textContent = String(list.children.length);
  }

  function open() {
    if (source) source.close();
    const query = new URLSearchParams(new FormData(form)).toString();
    source = new EventSource(form.dataset.stream + "?" + query);
    setState("connecting", "connecting…");
    source.addEventListener("ready", () => setState("open", "live"));
    source.addEventListener("row", (event) => add(JSON.parse(event.data)));
    source.addEventListener("skipped", (event) => {
      skipped += JSON.parse(event.data).count;
      skippedNote.textContent = ` (${skipped} skipped: too many to show)`;
    });
    source.addEventListener("error", () => {
      // The browser reconnects by itself, resuming where the stream stopped.
      if (source.readyState === EventSource.CLOSED) setState("closed", "disconnected");
      else setState("connecting", "reconnecting…");
    });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams(new FormData(form)).toString();
    window.history.replaceState(null, "", window.location.pathname + "?" + query);
    list.replaceChildren();
    count.textContent = "0";
    if (!paused) open();
  });
  document.getElementById("live-clear").addEventListener("click", () => {
    list.replaceChildren();
    count.textContent = "0";
  });
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    if (paused) {
      if (source) source.close();
      source = null;
      setState("paused", "paused");
    } else {
      open();
    }
  });
  window.addEventListener("pagehide", () => { if (source) source.close(); });
  open();
}

document.addEventListener("DOMContentLoaded", liveDebugger);
