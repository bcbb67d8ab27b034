// wiretrail review page: the only script it runs (served from /static, CSP script-src 'self').
// 1. A permalink (#seq-N, #turn-N) opens the drawers around its target.
// 2. A live session (body data-live="1") is re-fetched when its file changes; drawers stay as they were.
// Recorded content never passes through here as markup: the page is rendered and escaped on the server,
// and DOMParser does not run scripts.
"use strict";
(function () {
  function openTarget() {
    var id = decodeURIComponent(location.hash.slice(1));
    if (!id) return;
    var el = document.getElementById(id);
    if (!el) return;
    for (var p = el.parentElement; p; p = p.parentElement) {
      if (p.tagName === "DETAILS") p.open = true;
    }
    el.scrollIntoView({block: "start"});
  }
  window.addEventListener("hashchange", openTarget);
  document.addEventListener("DOMContentLoaded", function () {
    openTarget();
    var body = document.body;
    if (body.dataset.live !== "1" || !body.dataset.poll) return;
    var busy = false;
    function refresh() {
      if (busy) return;
      busy = true;
      fetch(body.dataset.poll, {credentials: "same-origin", cache: "no-store"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (state) {
          if (!state || state.version === body.dataset.version) return null;
          return fetch(location.pathname + location.search, {credentials: "same-origin", cache: "no-store"})
            .then(function (r) { return r.ok ? r.text() : null; })
            .then(function (html) {
              if (html === null) return;
              var doc = new DOMParser().parseFromString(html, "text/html");
              var fresh = doc.getElementById("main");
              var main = document.getElementById("main");
              if (!fresh || !main) return;
              var open = {};
              main.querySelectorAll("details[open][id]").forEach(function (d) { open[d.id] = true; });
              main.querySelectorAll("details[id]:not([open])").forEach(function (d) { open[d.id] = false; });
              var y = window.scrollY;
              main.replaceChildren.apply(main, Array.prototype.map.call(fresh.childNodes, function (n) {
                return document.importNode(n, true);
              }));
              main.querySelectorAll("details[id]").forEach(function (d) {
                if (d.id in open) d.open = open[d.id];
              });
              window.scrollTo(0, y);
              body.dataset.version = doc.body.dataset.version || "";
              body.dataset.live = doc.body.dataset.live || "0";
              document.dispatchEvent(new CustomEvent("wiretrail:updated"));
            });
        })
        .catch(function () {})
        .then(function () {
          busy = false;
          if (body.dataset.live === "1") setTimeout(refresh, 2000);
        });
    }
    setTimeout(refresh, 2000);
  });
})();
