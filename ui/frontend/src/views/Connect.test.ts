import { describe, expect, it, vi } from "vitest";
import { render, screen, fireEvent, waitFor } from "@testing-library/svelte";

const connect = vi.fn();
vi.mock("../lib/bindings", () => ({
  commands: {
    connectionInfo: vi.fn(async () => ({
      status: "ok",
      data: {
        remembered: { url: "http://127.0.0.1:8443", ca_file: null },
        has_remembered_token: false,
        keyring: { available: false, detail: "no Secret Service" },
        session: null,
        preset_url: null,
      },
    })),
    connect: (...args: unknown[]) => connect(...args),
    connectLocal: vi.fn(),
    forgetToken: vi.fn(),
  },
}));

import Connect from "./Connect.svelte";

describe("Connect", () => {
  it("says the token is not remembered without a keyring, and shows a refused token's error", async () => {
    connect.mockResolvedValueOnce({
      status: "error",
      error: {
        kind: "unauthorized",
        message: "the server refused (401): unknown token",
        hint: "Ask an admin for a token.",
      },
    });
    render(Connect);
    await waitFor(() =>
      expect(screen.getByTestId("no-keyring").textContent).toContain("no Secret Service"),
    );
    expect((document.querySelector("input[name=url]") as HTMLInputElement).value).toBe(
      "http://127.0.0.1:8443",
    );
    await fireEvent.input(document.querySelector("input[name=token]")!, {
      target: { value: "bad" },
    });
    await fireEvent.submit(document.querySelector("form")!);
    await waitFor(() => expect(screen.getByRole("alert").textContent).toContain("Token refused"));
    expect(connect).toHaveBeenCalledWith({
      url: "http://127.0.0.1:8443",
      token: "bad",
      ca_file: null,
      remember: false,
    });
    expect(screen.getByText(/Ask an admin for a token/)).toBeTruthy();
  });
});
