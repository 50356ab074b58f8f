// edgeloop dashboard: live fragments and confirmations. No framework, no build step.
(function () {
  "use strict";

  // Every [data-live] element re-fetches its page with ?fragment=1 and swaps its content.
  function refresh(el) {
    const url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("done");
    url.searchParams.delete("error");
    return fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) {
          window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname));
          return null;
        }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null) return;
        el.innerHTML = html;
        const n = Number(el.dataset.refreshes || "0") + 1;
        el.dataset.refreshes = String(n);
        const stamp = document.getElementById("live-stamp");
        if (stamp) stamp.textContent = "updated " + new Date().toLocaleTimeString();
      })
      .catch(function () { /* the hub may be restarting: try again next tick */ });
  }

  document.querySelectorAll("[data-live]").forEach(function (el) {
    const every = Number(el.dataset.live) || 3000;
    window.setInterval(function () {
      if (!document.hidden) refresh(el);
    }, every);
  });

  // Forms with data-confirm ask first (delegated: works on refreshed fragments too).
  document.addEventListener("submit", function (event) {
    const form = event.target;
    const question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();
