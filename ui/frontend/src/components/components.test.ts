import { describe, expect, it, vi, beforeEach } from "vitest";
import { render, screen, fireEvent, waitFor } from "@testing-library/svelte";
import FleetTable from "./FleetTable.svelte";
import ErrorBox from "./ErrorBox.svelte";
import Heatmap from "./Heatmap.svelte";
import { device } from "../lib/testing";

beforeEach(() => {
  // jsdom has no layout: requestAnimationFrame for the keyboard focus.
  globalThis.requestAnimationFrame ??= ((cb: FrameRequestCallback) =>
    setTimeout(() => cb(0), 0)) as typeof requestAnimationFrame;
});

describe("FleetTable", () => {
  it("puts only the visible rows of 10,000 devices in the DOM, and more after a scroll", async () => {
    const devices = Array.from({ length: 10_000 }, (_, i) => device(i));
    const { container } = render(FleetTable, { devices, height: 320 });
    const rows = () => container.querySelectorAll("a[data-device]");
    expect(rows().length).toBeLessThan(40);
    expect(container.querySelector("[role=table]")?.getAttribute("aria-rowcount")).toBe("10000");
    expect(rows()[0].getAttribute("href")).toBe("#/device/dev-00000");
    const viewport = screen.getByTestId("fleet-viewport");
    viewport.scrollTop = 32 * 5000;
    await fireEvent.scroll(viewport);
    await waitFor(() => expect(container.querySelector("a[data-device=dev-05000]")).not.toBeNull());
    expect(container.querySelector("a[data-device=dev-00000]")).toBeNull();
    expect(rows().length).toBeLessThan(40);
  });
});

describe("ErrorBox", () => {
  it("says what went wrong and what to do, and retries", async () => {
    const retry = vi.fn();
    render(ErrorBox, {
      error: {
        kind: "unauthorized",
        message: "the server refused (401): unknown token",
        hint: "ask an admin for a token",
      },
      retry,
    });
    expect(screen.getByRole("alert").textContent).toContain("Token refused");
    expect(screen.getByText(/What to do: ask an admin/)).toBeTruthy();
    expect(screen.getByText("Go to Connect").getAttribute("href")).toBe("#/connect");
    await fireEvent.click(screen.getByText("Retry"));
    expect(retry).toHaveBeenCalledOnce();
  });
});

describe("Heatmap", () => {
  it("colours cells by threshold and selects a feature by keyboard-reachable buttons", async () => {
    const onselect = vi.fn();
    const values: Record<string, number | null> = {
      "f1:1": 0.01,
      "f1:2": 0.12,
      "f2:1": 0.4,
      "f2:2": null,
    };
    const { container } = render(Heatmap, {
      features: ["f1", "f2"],
      buckets: [1, 2],
      warn: 0.1,
      alert: 0.25,
      onselect,
      value: (f: string, b: number) => values[`${f}:${b}`] ?? null,
    });
    const cells = container.querySelectorAll("button.cell");
    expect([...cells].map((c) => c.classList[1])).toEqual(["ok", "warn", "alert", "none"]);
    await fireEvent.click(screen.getByRole("rowheader", { name: "f2" }));
    expect(onselect).toHaveBeenCalledWith("f2");
  });
});
