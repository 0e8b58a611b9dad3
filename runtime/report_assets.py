"""The review page's fixed style sheet and script (no data is ever interpolated into either).

Both are allowed by hash in the page's Content-Security-Policy, so even a file name that got past
the escaping could not run a script or load anything from outside the output folder.
"""

CSS = """
:root { --red: #b00020; --near: #b26a00; --ink: #1d1d1f; --muted: #5f6368; --line: #d0d4d9; }
* { box-sizing: border-box; }
body { font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--ink);
       margin: 0; padding: 0 1.2rem 2rem; background: #f6f7f9; }
header { padding: 1rem 0 .5rem; }
h1 { font-size: 1.35rem; margin: .2rem 0; }
h2 { font-size: 1.1rem; margin: 1.4rem 0 .4rem; border-bottom: 2px solid var(--line); padding-bottom: .2rem; }
.banner { background: var(--red); color: #fff; padding: .6rem .9rem; border-radius: 6px; margin: .5rem 0;
          font-weight: 600; }
.warn { background: #fff4e5; border: 1px solid #e0a040; padding: .5rem .8rem; border-radius: 6px; margin: .5rem 0; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: .4rem 0; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; }
.counts { display: flex; flex-wrap: wrap; gap: .6rem; margin: .6rem 0; padding: 0; list-style: none; }
.counts li { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .4rem .8rem; }
.counts b { font-size: 1.2rem; }
.controls { position: sticky; top: 0; background: #f6f7f9; padding: .5rem 0; display: flex; flex-wrap: wrap;
            gap: .8rem; align-items: center; border-bottom: 1px solid var(--line); z-index: 1; }
.controls input[type=search] { min-width: 18rem; padding: .35rem .5rem; font-size: 1rem; }
.controls select { padding: .3rem; font-size: 1rem; }
.hint { color: var(--muted); font-size: .85rem; }
ul.cards { list-style: none; padding: 0; margin: 0; display: grid; gap: .7rem;
           grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); }
.card { background: #fff; border: 2px solid var(--line); border-radius: 8px; padding: .4rem; }
.card.near { border-color: var(--near); box-shadow: 0 0 0 2px #ffd59a; }
.card a.thumb { display: flex; height: 124px; align-items: center; justify-content: center; background: #222;
                border-radius: 4px; overflow: hidden; color: #ddd; text-decoration: none; }
.card a.thumb:focus { outline: 3px solid #1a73e8; outline-offset: 2px; }
.card img { max-width: 100%; max-height: 124px; display: block; }
.p { font-weight: 700; margin-top: .3rem; }
.review .p { color: var(--red); }
.benign .p { color: #1e7d32; }
.tag { display: inline-block; font-size: .75rem; font-weight: 600; padding: 0 .35rem; border-radius: 3px;
       background: #ffd59a; color: #5a3500; margin-left: .3rem; }
.name { font-size: .85rem; overflow-wrap: anywhere; }
.reason, .dx, .from { font-size: .78rem; color: var(--muted); overflow-wrap: anywhere; }
table.left { border-collapse: collapse; background: #fff; }
table.left td, table.left th { border: 1px solid var(--line); padding: .25rem .5rem; text-align: left;
                               overflow-wrap: anywhere; }
.none { color: var(--muted); font-style: italic; }
footer { margin-top: 2rem; color: var(--muted); font-size: .8rem; }
"""

JS = """
(function () {
  "use strict";
  var q = document.getElementById("q"), folder = document.getElementById("folder");
  var order = document.getElementById("order"), shown = document.getElementById("shown");
  var cards = Array.prototype.slice.call(document.querySelectorAll("li.card"));
  function pval(c) { return c.dataset.p === "" ? -1 : parseFloat(c.dataset.p); }
  function apply() {
    var text = q.value.trim().toLowerCase(), f = folder.value, n = 0;
    cards.forEach(function (c) {
      var ok = (!text || c.dataset.name.indexOf(text) >= 0) &&
               (f === "all" || c.dataset.folder === f || (f === "near" && c.dataset.near === "1"));
      c.hidden = !ok;
      if (ok) { n += 1; }
    });
    Array.prototype.forEach.call(document.querySelectorAll("section.grid"), function (s) {
      var empty = s.querySelector("li.card:not([hidden])") === null;
      var msg = s.querySelector(".nomatch");
      if (msg) { msg.hidden = !(empty && s.querySelectorAll("li.card").length > 0); }
    });
    shown.textContent = n + " of " + cards.length + " images shown";
  }
  function sortCards() {
    var key = order.value;
    Array.prototype.forEach.call(document.querySelectorAll("ul.cards"), function (ul) {
      var items = Array.prototype.slice.call(ul.children);
      items.sort(function (a, b) {
        if (key === "p-desc") { return pval(b) - pval(a); }
        if (key === "p-asc") { return pval(a) - pval(b); }
        if (key === "name") { return a.dataset.name < b.dataset.name ? -1 : (a.dataset.name > b.dataset.name ? 1 : 0); }
        return parseInt(a.dataset.seq, 10) - parseInt(b.dataset.seq, 10);
      });
      items.forEach(function (li) { ul.appendChild(li); });
    });
  }
  function visibleLinks() {
    return Array.prototype.slice.call(document.querySelectorAll("li.card:not([hidden]) a.thumb"));
  }
  q.addEventListener("input", apply);
  folder.addEventListener("change", apply);
  order.addEventListener("change", function () { sortCards(); apply(); });
  document.addEventListener("keydown", function (e) {
    var typing = document.activeElement === q;
    if (e.key === "/" && !typing) { e.preventDefault(); q.focus(); return; }
    if (e.key === "Escape") { q.value = ""; apply(); q.blur(); return; }
    if (typing || e.altKey || e.ctrlKey || e.metaKey) { return; }
    if (e.key === "j" || e.key === "k") {
      var links = visibleLinks(), i = links.indexOf(document.activeElement);
      if (!links.length) { return; }
      i = e.key === "j" ? Math.min(links.length - 1, i + 1) : Math.max(0, i - 1);
      links[i].focus();
      links[i].scrollIntoView({block: "nearest"});
      e.preventDefault();
    }
  });
  // report.html#q=TEXT&show=review|benign|problems|near&order=p-asc|name|seq: a saved view
  location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
    var i = kv.indexOf("="), k = kv.slice(0, i), v = "";
    try { v = i < 0 ? "" : decodeURIComponent(kv.slice(i + 1)); } catch (err) { return; }
    if (k === "q") { q.value = v; }
    if (k === "show" && folder.querySelector("option[value='" + v.replace(/[^a-z-]/g, "") + "']")) { folder.value = v; }
    if (k === "order" && order.querySelector("option[value='" + v.replace(/[^a-z-]/g, "") + "']")) { order.value = v; }
  });
  sortCards();
  apply();
  document.documentElement.dataset.ready = "1";
})();
"""
