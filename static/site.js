// Every page: a placeholder for previews that cannot be shown, and a question before forms that
// delete something (forms marked data-confirm).
"use strict";
(function () {
  function missing(img) {
    const holder = img.closest(".thumb, .hero-image");
    if (holder) holder.classList.add("missing");
  }
  for (const img of document.querySelectorAll(".thumb img, .hero-image img")) {
    if (img.complete && img.naturalWidth === 0 && img.src) missing(img);
    img.addEventListener("error", () => missing(img));
  }
  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) e.preventDefault();
  });
})();
