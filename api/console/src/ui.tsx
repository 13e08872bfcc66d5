// Pieces every page of the console uses: routing by the address' fragment, times, badges,
// alerts, a button that asks once more, the clipboard.

import { useEffect, useState } from "preact/hooks";
import { ApiError, Phase } from "./api";

// --- Routing: the part of the address after `#`. ---------------------------------------------

export function useRoute(): string[] {
  const read = () => location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  const [route, setRoute] = useState(read);
  useEffect(() => {
    const changed = () => setRoute(read());
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}

export const go = (path: string) => {
  location.hash = path;
};

// --- Small pieces ------------------------------------------------------------------------------

export function since(iso: string | null, until?: string | null): string {
  if (!iso) return "-";
  const end = until ? Date.parse(until) : Date.now();
  const s = Math.max(0, Math.round((end - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function when(iso: string | null): string {
  return iso ? new Date(iso).toLocaleString() : "-";
}

export function Badge({ phase }: { phase: Phase }) {
  return <span class={`badge phase-${phase.toLowerCase()}`}>{phase}</span>;
}

/// A typed reason, coloured as the phase it ended (or stalled) in.
export function ReasonBadge({ reason, phase }: { reason: string | null; phase: Phase }) {
  return reason ? <span class={`badge reason phase-${phase.toLowerCase()}`}>{reason}</span> : <>-</>;
}

export function Alert({ error }: { error: string | null }) {
  return error ? <p class="alert" role="alert">{error}</p> : null;
}

export function message(e: unknown): string {
  return e instanceof ApiError ? e.message : String(e);
}

/// A button that asks once more before it acts.
export function ConfirmButton(props: { label: string; confirm: string; onConfirm: () => void; danger?: boolean }) {
  const [armed, setArmed] = useState(false);
  return armed ? (
    <span class="confirm">
      <button type="button" class="danger" onClick={() => { setArmed(false); props.onConfirm(); }}>
        {props.confirm}
      </button>
      <button type="button" onClick={() => setArmed(false)}>Keep</button>
    </span>
  ) : (
    <button type="button" class={props.danger ? "danger" : ""} onClick={() => setArmed(true)}>
      {props.label}
    </button>
  );
}

export async function copy(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}

