// The REST API as the console calls it: the login cookie rides along (same origin), and every
// write carries the login's CSRF token. The types mirror cliscale_core::rest.

export type Phase =
  | "Pending" | "Starting" | "Running" | "Succeeded" | "Failed" | "TimedOut" | "Cancelled" | "Lost";
export const PHASES: Phase[] = [
  "Pending", "Starting", "Running", "Succeeded", "Failed", "TimedOut", "Cancelled", "Lost",
];
export type Role = "admin" | "operator" | "viewer";

export interface Session {
  sessionId: string;
  owner: string;
  phase: Phase;
  exitCode: number | null;
  reason: string | null;
  message: string | null;
  command: string;
  codeUrl: string | null;
  envNames: string[];
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  updatedAt: string;
  outputTail?: string;
  template?: string;
  templateGeneration?: number;
  schedule?: string;
  scheduledAt?: string;
  attempt: number;
  retryOf?: string;
  secretEnv?: Record<string, { secret: string; key: string }>;
}

export interface SessionPage { items: Session[]; nextCursor: string | null }
export interface EventView { at: string; kind: string; message: string }
export interface Key {
  id: string; name: string; role: Role; createdAt: string; revokedAt: string | null; key?: string;
}
export interface Login { keyId: string; role: Role; csrfToken: string; expiresAt: number }
export interface Minted { terminalUrl: string; token: string; wsUrl: string; scope: string }

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

let csrf = "";

export function setCsrf(token: string): void {
  csrf = token;
}

export async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp: Response;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, "unreachable", "The server cannot be reached. Check the connection.");
  }
  if (resp.status === 204) return undefined as T;
  const text = await resp.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: a proxy's page.
  }
  if (!resp.ok) {
    const e = (json ?? {}) as { error?: string; message?: string };
    throw new ApiError(resp.status, e.error ?? `http_${resp.status}`, e.message ?? text.slice(0, 200));
  }
  return json as T;
}

/// Which create field an API error code is about, so the form can say it next to the field.
export function fieldOf(code: string): string | null {
  const fields: Record<string, string> = {
    invalid_code_url: "code_url",
    invalid_checksum: "code_checksum_sha256",
    invalid_env: "env",
    invalid_size: "size",
    invalid_timeout: "timeout_seconds",
    invalid_ttl: "ttl_seconds",
    invalid_scrollback: "scrollback_lines",
  };
  return fields[code] ?? null;
}

// --- Secrets, templates, schedules, the event log (cliscale_core::rest::definitions) ---------

export interface SecretView { name: string; keys: string[]; createdAt: string; updatedAt: string; usedBy: string[] }
export interface SecretRef { secret: string; key: string }
export type ParamType = "string" | "integer" | "boolean";
export interface ParamSpec {
  name: string; type?: ParamType; description?: string; default?: unknown; required?: boolean;
  allowed?: string[];
}
export interface RunSummary {
  sessionId: string; phase: Phase; exitCode: number | null; attempt: number;
  retryOf: string | null; createdAt: string;
}
export interface TemplateView {
  name: string; description?: string; labels?: Record<string, string>;
  session: { command: string; secret_env?: Record<string, SecretRef>; env?: Record<string, string> };
  params?: ParamSpec[]; retry?: { limit: number }; concurrencyPolicy: string;
  generation: number; owner: string; createdAt: string; updatedAt: string; recentRuns: RunSummary[];
}
export interface TriggerView {
  id: string; template: string; name: string; params: string[]; createdAt: string;
  revokedAt: string | null; lastUsedAt: string | null; token?: string;
}
export interface NotRun { scheduledAt: string; reason: string; message: string }
export interface ScheduleView {
  name: string; template: string; params?: Record<string, unknown>; cron: string; timeZone?: string;
  concurrencyPolicy: string; startingDeadlineSeconds?: number; suspend: boolean;
  successfulRunsHistoryLimit?: number; failedRunsHistoryLimit?: number;
  owner: string; createdAt: string; updatedAt: string;
  status: {
    lastScheduleTime: string | null; lastSuccessfulTime: string | null; nextRunTimes: string[];
    active: string[]; recentRuns: RunSummary[]; notRun: NotRun[];
  };
}
export interface LogEntry {
  seq: number; at: string; type: string; session: string | null; template: string | null;
  schedule: string | null; actor: string | null; message: string;
}
export interface LogPage { items: LogEntry[]; nextCursor: string | null }
