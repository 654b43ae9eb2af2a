// The operator console's only script (README, "Operator console"): reloads the overview at
// the server's refresh interval while the tab is visible. Pages work without it.
(function () {
  "use strict";
  var overview = document.getElementById("overview");
  if (!overview) return;
  var every = parseInt(overview.getAttribute("data-refresh-ms"), 10) || 5000;
  setInterval(function () {
    if (document.visibilityState === "visible") window.location.reload();
  }, Math.max(every, 1000));
})();
