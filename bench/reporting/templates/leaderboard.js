// Sorting (click a header), filters (backbone / preset / method) and opening a run's details from a link.
(function () {
  "use strict";

  function sortKey(row, index, numeric) {
    var cell = row.cells[index];
    var raw = cell.hasAttribute("data-value") ? cell.getAttribute("data-value") : cell.textContent.trim();
    if (!numeric) { return raw; }
    return raw === "" ? null : parseFloat(raw);
  }

  function sortBy(table, header) {
    var index = Array.prototype.indexOf.call(header.parentNode.children, header);
    var numeric = header.getAttribute("data-type") === "num";
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("thead th").forEach(function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = sortKey(a, index, numeric), y = sortKey(b, index, numeric);
      if (x === null || y === null) { return (x === null) - (y === null); }  // missing cells last
      var order = numeric ? x - y : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  function applyFilters() {
    var chosen = {};
    document.querySelectorAll("select[data-filter]").forEach(function (select) {
      chosen[select.getAttribute("data-filter")] = select.value;
    });
    document.querySelectorAll("table.leaderboard").forEach(function (table) {
      var shown = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        var visible = Object.keys(chosen).every(function (key) {
          return chosen[key] === "" || row.getAttribute("data-" + key) === chosen[key];
        });
        row.hidden = !visible;
        shown += visible ? 1 : 0;
      });
      var counter = document.getElementById(table.id + "-count");
      if (counter) { counter.textContent = shown + " of " + table.tBodies[0].rows.length + " rows shown"; }
    });
  }

  function openLinkedRun() {
    var target = document.getElementById(decodeURIComponent(window.location.hash.slice(1)));
    if (target && target.tagName === "DETAILS") { target.open = true; }
  }

  document.querySelectorAll("table.leaderboard thead th").forEach(function (header) {
    header.addEventListener("click", function () { sortBy(header.closest("table"), header); });
  });
  document.querySelectorAll("select[data-filter]").forEach(function (select) {
    select.addEventListener("change", applyFilters);
  });
  window.addEventListener("hashchange", openLinkedRun);
  applyFilters();
  openLinkedRun();
}());
