// Test data shared by the component tests.
import type { Device } from "./types";

/** Device number `i` of a synthetic fleet (sites, hardware, models and presence vary with i). */
export function device(i: number, over: Partial<Device> = {}): Device {
  return {
    device_id: `dev-${String(i).padStart(5, "0")}`,
    tags: { site: i % 3 === 0 ? "berlin" : "munich", hw: i % 2 ? "rpi4" : "jetson" },
    arch: "aarch64",
    agent_version: "0.1.0",
    active_model: { name: "fraud", version: i % 4 === 0 ? "2.0.0" : "1.0.0", digest: "sha256:ab" },
    previous_model: null,
    trust_root_version: 1,
    last_plan_seq: null,
    presence: i % 5 === 0 ? "offline" : "online",
    presence_changed_ms: 0,
    first_seen_ms: 0,
    last_seen_ms: Date.now(),
    ...over,
  };
}
