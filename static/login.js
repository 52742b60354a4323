// Login page: after a wrong password the form comes back with the user name already filled in and
// the password field focused. The name is kept in this tab's sessionStorage, not sent back by the
// server, so that the answer to a wrong password is the same page whether the user exists or not.
"use strict";
(function () {
  const form = document.querySelector("form.stacked");
  if (!form) return;
  const name = form.querySelector("input[name=username]"), password = form.querySelector("input[name=password]");
  const KEY = "crowdsky.login.username";
  const kept = sessionStorage.getItem(KEY);
  if (kept && document.querySelector(".error") && !name.value) {
    name.value = kept;
    password.focus();
  }
  sessionStorage.removeItem(KEY);
  form.addEventListener("submit", () => sessionStorage.setItem(KEY, name.value));
})();
