// Vite builds the Svelte frontend from frontend/ into dist/, which tauri.conf.json embeds;
// Vitest runs the component tests (frontend/src/**/*.test.ts) in jsdom.
import { defineConfig } from "vitest/config";
import { svelte } from "@sveltejs/vite-plugin-svelte";

export default defineConfig(({ mode }) => ({
  root: "frontend",
  plugins: [svelte()],
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
  },
}));
