// Vite builds the Svelte frontend from frontend/ into dist/, which tauri.conf.json embeds;
// Vitest runs the component tests (frontend/src/**/*.test.ts) in jsdom.
import { defineConfig } from "vitest/config";
import { svelte } from "@sveltejs/vite-plugin-svelte";

// The assets are same-origin (Tauri's custom scheme): the `crossorigin` attribute Vite adds
// would only turn their loads into CORS requests.
const sameOriginAssets = {
  name: "outpost-same-origin-assets",
  transformIndexHtml: (html: string) => html.replace(/ crossorigin(="[^"]*")?/g, ""),
};

export default defineConfig(({ mode }) => ({
  root: "frontend",
  // The Svelte config sits beside this file, not in the Vite root.
  plugins: [svelte({ configFile: "../svelte.config.js" }), sameOriginAssets],
  clearScreen: false,
  server: { port: 1420, strictPort: true },
  build: {
    outDir: "../dist",
    emptyOutDir: true,
    target: "safari15",
    chunkSizeWarningLimit: 1024,
  },
  // Svelte's browser build (mount, effects) in the component tests.
  resolve: mode === "test" ? { conditions: ["browser"] } : undefined,
  test: {
    root: "frontend",
    include: ["src/**/*.test.ts"],
    environment: "jsdom",
    setupFiles: ["src/test-setup.ts"],
  },
}));
