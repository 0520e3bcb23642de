// holdfast gate console: reloads the approvals page when a request arrives or is decided
// (polling a digest every 3 s), unless someone is typing into a form on it.
(function () {
  "use strict";
  var box = document.querySelector("[data-version]");
  if (!box) return;
  var seen = box.getAttribute("data-version");
  function busy() {
    var inputs = document.querySelectorAll("input:not([type=hidden])");
    for (var i = 0; i < inputs.length; i++) {
      if (inputs[i].value !== "" || inputs[i] === document.activeElement) return true;
    }
    return false;
  }
  setInterval(function () {
    if (busy() || document.hidden) return;
    fetch("/console/approvals/version", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { location.href = "/console/login"; return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (v) { if (v && v !== seen) location.reload(); })
      .catch(function () {});
  }, 3000);
})();
