import { describe, expect, it, vi } from "vitest";
import { render, screen, fireEvent, waitFor } from "@testing-library/svelte";

const auditEvents = vi.fn();
const verifyAuditExport = vi.fn();
vi.mock("../lib/bindings", () => ({
  commands: {
    auditEvents: (...args: unknown[]) => auditEvents(...args),
    exportAudit: vi.fn(),
    verifyAuditExport: (...args: unknown[]) => verifyAuditExport(...args),
  },
}));

import { session } from "../lib/session.svelte";
import Audit from "./Audit.svelte";

describe("Audit", () => {
  it("lists the log for an auditor and gives a clear verdict on a broken export", async () => {
    session.current = {
      url: "http://x",
      user: "ann",
      role: "auditor",
      mode: "remote",
      token_remembered: false,
    };
    auditEvents.mockResolvedValue({
      status: "ok",
      data: {
        events: [
          {
            id: 2,
            ts_ms: 2,
            actor: "olga",
            action: "rollout.approve",
            subject: "rollout r1",
            outcome: "ok",
            reason: "",
            source: "api",
            device: null,
            model: "fraud@2.0.0",
          },
          {
            id: 1,
            ts_ms: 1,
            actor: "eve",
            action: "auth.denied",
            subject: "GET /v1/users",
            outcome: "403",
            reason: "role",
            source: "api",
          },
        ],
      },
    });
    verifyAuditExport.mockResolvedValue({
      status: "ok",
      data: {
        valid: false,
        summary: "records.jsonl line 3: leaf 7 is not in the log",
        records: 0,
        tree_size: 0,
        vkey: null,
        key_pinned: false,
      },
    });
    render(Audit);
    await waitFor(() =>
      expect(screen.getByTestId("audit-events").textContent).toContain("rollout.approve"),
    );
    expect(auditEvents).toHaveBeenCalledWith(
      { action: null, actor: null, device: null, model: null, from_ms: null, to_ms: null },
      1000,
    );
    expect(screen.getByTestId("audit-count").textContent).toContain("2 of the 2");
    await fireEvent.input(document.querySelector("input[name=verify_dir]")!, {
      target: { value: "/tmp/export" },
    });
    await fireEvent.click(screen.getByTestId("verify"));
    await waitFor(() =>
      expect(screen.getByTestId("verdict").textContent).toContain("NOT VERIFIED"),
    );
    expect(screen.getByTestId("verdict").textContent).toContain("leaf 7 is not in the log");
  });
});
