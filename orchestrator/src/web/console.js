// Follows a running viewport: asks this console for the view so far until it is final, and
// puts each in place. Only HTML fragments (written and escaped by the console itself) are put
// in as HTML; anything else is shown as text.
(function () {
  "use strict";
  const run = document.getElementById("run");
  if (!run) {
    return;
  }
  let after = 0;
  async function follow() {
    for (;;) {
      let response;
      try {
        response = await fetch("/run/" + encodeURIComponent(run.dataset.run) + "?after=" + after, {
          cache: "no-store",
        });
      } catch (failure) {
        run.textContent = "the console did not answer: " + failure;
        return;
      }
      let fragment;
      try {
        fragment = await response.text();
      } catch (failure) {
        run.textContent = "the console's answer was cut short: " + failure;
        return;
      }
      const html = (response.headers.get("content-type") || "").startsWith("text/html");
      if (html) {
        run.innerHTML = fragment;
      } else {
        run.textContent = fragment;
      }
      if (!response.ok || response.headers.get("x-final") === "1") {
        run.dataset.final = "1";
        return;
      }
      after = Number(response.headers.get("x-answered")) || after;
      // At most five views a second, however fast the sources answer.
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  follow();
})();
