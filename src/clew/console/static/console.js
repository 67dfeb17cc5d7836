// The console's progressive enhancement: every page works without it; with it, forms that
// destroy data ask first (data-confirm) and sections marked data-refresh reload themselves.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});

function refreshSections() {
  for (const section of document.querySelectorAll("[data-refresh]")) {
    const every = Number(section.getAttribute("data-refresh")) * 1000;
    if (!(every > 0) || !section.id) continue;
    window.setInterval(async () => {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById(section.id);
      if (fresh) section.replaceChildren(...fresh.childNodes);
    }, every);
  }
}

document.addEventListener("DOMContentLoaded", refreshSections);
