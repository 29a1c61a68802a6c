import { describe, expect, it, vi } from "vitest";

describe("locale", () => {
  it("replaces a POSIX locale Intl refuses with en-US before anything formats", async () => {
    Object.defineProperty(navigator, "language", { value: "C", configurable: true });
    vi.resetModules();
    const { locale } = await import("./locale");
    expect(locale).toBe("en-US");
    expect(() => new Intl.NumberFormat(navigator.language)).not.toThrow();
  });
});
