import { describe, expect, it, vi } from "vitest";
import { render, screen, waitFor } from "@testing-library/svelte";

vi.mock("./lib/bindings", () => ({
  commands: {
    appInfo: vi.fn(async () => ({ name: "Outpost Console", version: "0.1.0" })),
    connectionInfo: vi.fn(async () => ({
      status: "ok",
      data: {
        remembered: { url: null, ca_file: null },
        has_remembered_token: false,
        keyring: { available: true, detail: null },
        session: null,
        preset_url: null,
      },
    })),
    disconnect: vi.fn(),
  },
}));

import App from "./App.svelte";

describe("App", () => {
  it("starts on the Connect page when not connected, with every view in the navigation", async () => {
    render(App);
    await waitFor(() =>
      expect(screen.getByRole("heading", { level: 2 }).textContent).toBe("Connect"),
    );
    const nav = screen.getByRole("navigation", { name: "Views" });
    expect([...nav.querySelectorAll("a")].map((a) => a.textContent)).toEqual([
      "Fleet",
      "Models",
      "Rollouts",
      "Drift",
      "Audit",
      "Connect",
    ]);
    await waitFor(() => expect(screen.getByText("0.1.0")).toBeTruthy());
  });
});
