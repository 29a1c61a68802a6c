// Calls the Rust commands (bindings.ts, generated) and turns their Result into a value or a
// thrown ConsoleError, so views can `await` and catch one error shape everywhere.
import type { ConsoleError, ErrorKind } from "./bindings";

export type { ConsoleError, ErrorKind };

type Result<T> = { status: "ok"; data: T } | { status: "error"; error: ConsoleError };

/** Whether `value` is the tagged error the Rust side returns. */
export function isConsoleError(value: unknown): value is ConsoleError {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as ConsoleError).kind === "string" &&
    typeof (value as ConsoleError).message === "string"
  );
}

/** Any thrown thing as a ConsoleError (an IPC failure or a bug becomes kind "server"). */
export function asConsoleError(value: unknown): ConsoleError {
  if (isConsoleError(value)) return value;
  const message = value instanceof Error ? value.message : String(value);
  return {
    kind: "server",
    message,
    hint: "This is unexpected: retry, and if it repeats restart the console.",
  };
}

/** Awaits a command and returns its data, or throws its ConsoleError. */
export async function call<T>(pending: Promise<Result<unknown>>): Promise<T> {
  let result: Result<unknown>;
  try {
    result = await pending;
  } catch (thrown) {
    throw asConsoleError(thrown);
  }
  if (result.status === "error") throw result.error;
  return result.data as T;
}
