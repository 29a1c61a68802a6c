// Mounts the console into the page. A failure to start is shown in the window, not only in a
// devtools console nobody opens.
import "./lib/locale";
import { mount } from "svelte";
import App from "./App.svelte";
import "uplot/dist/uPlot.min.css";
import "./app.css";

function showFatal(what: string) {
  const box = document.createElement("pre");
  box.className = "fatal";
  box.setAttribute("role", "alert");
  box.textContent = `The console failed: ${what}\nRestart it; if this repeats, report this text.`;
  document.body.prepend(box);
}

window.addEventListener("error", (event) => showFatal(String(event.message)));

const target = document.getElementById("app");
let app: ReturnType<typeof mount> | undefined;
try {
  if (!target) throw new Error("index.html has no #app element");
  app = mount(App, { target });
} catch (error) {
  showFatal(error instanceof Error ? `${error.message}\n${error.stack ?? ""}` : String(error));
}
export default app;
