// Shows the app's name and version as the Rust side reports them (the `app_info` command).
// Outside the Tauri shell (e.g. the file opened in a browser) there is nothing to ask, and the
// version line stays empty.
"use strict";

window.addEventListener("DOMContentLoaded", async () => {
  const target = document.getElementById("app-version");
  const tauri = window.__TAURI__;
  if (!target || !tauri || !tauri.core) {
    return;
  }
  try {
    const info = await tauri.core.invoke("app_info");
    target.textContent = `version ${info.version}`;
  } catch (err) {
    target.textContent = `app_info failed: ${err}`;
  }
});
