// The open session, shared by every view.
import type { Session } from "./bindings";

export const session = $state<{ current: Session | null }>({ current: null });

/** Whether the signed-in role may do `what`, as the server's route table allows it. */
export function may(what: "publish" | "audit" | "approve"): boolean {
  const role = session.current?.role;
  if (!role) return false;
  if (what === "publish") return role === "admin" || role === "operator";
  if (what === "audit") return role === "admin" || role === "auditor";
  return role === "admin" || role === "approver";
}
