// The web console: sessions at a glance (live through the session feed), one session's
// terminal, output and events, a form for new sessions, API keys and health. It talks to the
// REST API with the login cookie; docs/console.md describes it.

import { render } from "preact";
import { memo } from "preact/compat";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import {
  ApiError, EventView, Key, Login, Minted, PHASES, Phase, Role, Session, SessionPage, call,
  fieldOf, setCsrf,
} from "./api";
import {
  EventsPage, SchedulePage, SchedulesPage, SecretsPage, TemplatePage, TemplatesPage,
} from "./definitions";
import {
  Alert, Badge, ConfirmButton, ReasonBadge, copy, go, message, since, useRoute, when,
} from "./ui";

const FINISHED: Phase[] = ["Succeeded", "Failed", "TimedOut", "Cancelled", "Lost"];
const isFinished = (p: Phase) => FINISHED.includes(p);

// --- The session feed --------------------------------------------------------------------------

/// Subscribes to the session feed; `onSession` gets every creation and change. The browser's
/// EventSource reconnects by itself, resuming with Last-Event-ID.
function useFeed(query: string, onReady: () => void, onSession: (s: Session) => void, deps: unknown[]) {
  const [live, setLive] = useState(false);
  useEffect(() => {
    const source = new EventSource(`/api/sessions/feed${query}`);
    source.addEventListener("ready", () => {
      setLive(true);
      onReady();
    });
    source.addEventListener("session", (e) => onSession(JSON.parse((e as MessageEvent).data)));
    source.onerror = () => setLive(false);
    return () => source.close();
  }, deps);
  return live;
}

// --- Pages -------------------------------------------------------------------------------------

function LoginPage({ onLogin }: { onLogin: (l: Login) => void }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState<string | null>(null);
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    try {
      const login = await call<Login>("POST", "/api/console/login", { key: key.trim() });
      setCsrf(login.csrfToken);
      onLogin(login);
      go("/sessions");
    } catch (err) {
      setError(err instanceof ApiError && err.status === 401
        ? "That API key was not accepted: it is unknown, revoked or mistyped."
        : message(err));
    }
  };
  return (
    <main id="main" tabIndex={-1} class="login">
      <h1>cliscale</h1>
      <form onSubmit={submit} class="card">
        <label for="api-key">API key</label>
        <input id="api-key" name="api-key" type="password" autoComplete="off" required
          placeholder="csk_…" value={key} onInput={(e) => setKey((e.target as HTMLInputElement).value)} />
        <Alert error={error} />
        <button type="submit" class="primary">Log in</button>
        <p class="hint">The key is exchanged for a login cookie; the page never keeps it.</p>
      </form>
    </main>
  );
}

/// One row; unchanged sessions keep their object, so a feed event re-renders its own row only.
const SessionRow = memo(({ session: s }: { session: Session }) => (
  <tr data-session={s.sessionId}>
    <td><a href={`#/sessions/${s.sessionId}`}>{s.sessionId.slice(0, 8)}</a></td>
    <td><Badge phase={s.phase} /></td>
    <td><ReasonBadge reason={s.reason} phase={s.phase} /></td>
    <td>{s.exitCode ?? "-"}</td>
    <td>{since(s.startedAt, s.finishedAt)}</td>
    <td>{when(s.createdAt)}</td>
    <td class="command"><code>{s.command}</code></td>
  </tr>
));

/// `value`, once it has stayed the same for `ms`.
function useSettled<T>(value: T, ms: number): T {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    const t = setTimeout(() => setSettled(value), ms);
    return () => clearTimeout(t);
  }, [value]);
  return settled;
}

/// A datetime-local value is the browser's local time; the API takes RFC 3339.
const rfc3339 = (local: string) => (local ? new Date(local).toISOString() : "");

function SessionsPage({ login }: { login: Login }) {
  const [phase, setPhase] = useState<"" | Phase>("");
  const [owner, setOwner] = useState("");
  const [search, setSearch] = useState("");
  const [after, setAfter] = useState("");
  const [before, setBefore] = useState("");
  const [rows, setRows] = useState<Map<string, Session>>(new Map());
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  // The search runs on the server, over every session, once typing pauses.
  const text = useSettled(search.trim(), 300);
  const filters = new URLSearchParams();
  if (owner.trim()) filters.set("owner", owner.trim());
  if (after) filters.set("created_after", rfc3339(after));
  if (before) filters.set("created_before", rfc3339(before));
  if (text) filters.set("q", text);
  const feedQuery = filters.toString() ? `?${filters}` : "";

  // Sessions the feed changed while a list read was on its way, one set per read: the feed's
  // word on them is newer than the read's, which must not put a row back to an older phase.
  const reading = useRef(new Set<Set<string>>());
  const load = async (from: string | null, replace: boolean) => {
    const fed = new Set<string>();
    reading.current.add(fed);
    try {
      const params = new URLSearchParams(filters);
      params.set("limit", "50");
      if (phase) params.set("phase", phase);
      if (from) params.set("cursor", from);
      const page = await call<SessionPage>("GET", `/api/sessions?${params}`);
      setRows((old) => {
        const next = replace ? new Map<string, Session>() : new Map(old);
        for (const s of page.items) next.set(s.sessionId, s);
        for (const id of fed) {
          const seen = old.get(id);
          if (seen) next.set(id, seen);
          else next.delete(id); // the feed took it out of the filtered list
        }
        return next;
      });
      setCursor(page.nextCursor);
      setError(null);
    } catch (e) {
      setError(message(e));
    } finally {
      reading.current.delete(fed);
    }
  };
  // Subscribed before the list is read, so nothing that happens in between is missed. The
  // phase filter applies here, so a session that leaves it leaves the list.
  const live = useFeed(feedQuery, () => load(null, true), (s) => {
    for (const fed of reading.current) fed.add(s.sessionId);
    setRows((old) => {
      const next = new Map(old);
      if (phase && s.phase !== phase) next.delete(s.sessionId);
      else next.set(s.sessionId, { ...(old.get(s.sessionId) ?? {}), ...s });
      return next;
    });
  }, [phase, feedQuery]);

  const shown = useMemo(
    () => [...rows.values()].sort((a, b) =>
      b.createdAt.localeCompare(a.createdAt) || b.sessionId.localeCompare(a.sessionId)),
    [rows],
  );

  return (
    <main id="main" tabIndex={-1}>
      <div class="title">
        <h1>Sessions</h1>
        <span class={live ? "live on" : "live"} role="status">{live ? "live" : "connecting…"}</span>
        {login.role !== "viewer" && <a class="button primary" href="#/new">New session</a>}
      </div>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <label>Phase
          <select value={phase} onChange={(e) => setPhase((e.target as HTMLSelectElement).value as Phase | "")}>
            <option value="">Any</option>
            {PHASES.map((p) => <option value={p}>{p}</option>)}
          </select>
        </label>
        {login.role !== "operator" && (
          <label>Owner (key id)
            <input value={owner} onChange={(e) => setOwner((e.target as HTMLInputElement).value)} />
          </label>
        )}
        <label>Created after
          <input type="datetime-local" value={after} onChange={(e) => setAfter((e.target as HTMLInputElement).value)} />
        </label>
        <label>Created before
          <input type="datetime-local" value={before} onChange={(e) => setBefore((e.target as HTMLInputElement).value)} />
        </label>
        <label>Search
          <input type="search" value={search} placeholder="id or command" maxLength={200}
            onInput={(e) => setSearch((e.target as HTMLInputElement).value)} />
        </label>
      </form>
      <Alert error={error} />
      <table class="sessions">
        <thead>
          <tr><th>Session</th><th>Phase</th><th>Reason</th><th>Exit</th><th>Duration</th><th>Created</th><th>Command</th></tr>
        </thead>
        <tbody>
          {shown.map((s) => <SessionRow key={s.sessionId} session={s} />)}
        </tbody>
      </table>
      {shown.length === 0 && <p class="empty">No sessions.</p>}
      {cursor && <button type="button" onClick={() => load(cursor, false)}>Load more</button>}
    </main>
  );
}

function SessionPage({ id, login }: { id: string; login: Login }) {
  const [session, setSession] = useState<Session | null>(null);
  const [events, setEvents] = useState<EventView[]>([]);
  const [terminal, setTerminal] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [note, setNote] = useState<string | null>(null);
  const [playing, setPlaying] = useState(false);
  const refresh = async () => {
    try {
      setSession(await call<Session>("GET", `/api/sessions/${id}`));
      setEvents((await call<{ items: EventView[] }>("GET", `/api/sessions/${id}/events`)).items);
    } catch (e) {
      setError(message(e));
    }
  };
  useFeed("", refresh, (s) => {
    if (s.sessionId === id) refresh();
  }, [id]);
  const mint = (scope: "view" | "interact") =>
    call<Minted>("POST", `/api/sessions/${id}/tokens`, { scope });
  const canType = login.role !== "viewer" && session !== null && !isFinished(session.phase);
  useEffect(() => {
    if (!session || terminal) return;
    mint(canType ? "interact" : "view").then((m) => setTerminal(m.terminalUrl), (e) => setError(message(e)));
  }, [session === null]);
  const copyLink = async (scope: "view" | "interact") => {
    try {
      const m = await mint(scope);
      setNote((await copy(m.terminalUrl)) ? `${scope === "view" ? "View" : "Interact"} link copied.` : m.terminalUrl);
    } catch (e) {
      setError(message(e));
    }
  };
  const cancel = async () => {
    try {
      setSession(await call<Session>("DELETE", `/api/sessions/${id}`));
    } catch (e) {
      setError(message(e));
    }
  };
  if (!session) return <main id="main" tabIndex={-1}><Alert error={error} />{!error && <p>Loading…</p>}</main>;
  return (
    <main id="main" tabIndex={-1}>
      <div class="title">
        <h1>Session <code>{session.sessionId.slice(0, 8)}</code></h1>
        <Badge phase={session.phase} />
      </div>
      <Alert error={error} />
      {note && <p class="note" role="status">{note}</p>}
      <dl class="facts">
        <dt>Reason</dt><dd><ReasonBadge reason={session.reason} phase={session.phase} /></dd>
        <dt>Exit code</dt><dd>{session.exitCode ?? "-"}</dd>
        <dt>Message</dt><dd>{session.message ?? "-"}</dd>
        <dt>Command</dt><dd><code>{session.command}</code></dd>
        <dt>Owner</dt><dd>{session.owner}</dd>
        {session.template && (
          <><dt>Template</dt><dd><a href={`#/templates/${encodeURIComponent(session.template)}`}>{session.template}</a> (generation {session.templateGeneration})</dd></>
        )}
        {session.schedule && (
          <><dt>Schedule</dt><dd><a href={`#/schedules/${encodeURIComponent(session.schedule)}`}>{session.schedule}</a> for {when(session.scheduledAt ?? null)}</dd></>
        )}
        {session.retryOf && (
          <><dt>Attempt</dt><dd>{session.attempt}, retrying <a href={`#/sessions/${session.retryOf}`}>{session.retryOf.slice(0, 8)}</a></dd></>
        )}
        {session.secretEnv && Object.keys(session.secretEnv).length > 0 && (
          <><dt>Secrets</dt><dd>{Object.entries(session.secretEnv).map(([env, r]) => `${env} ← ${r.secret}/${r.key}`).join(", ")}</dd></>
        )}
        <dt>Created</dt><dd>{when(session.createdAt)}</dd>
        <dt>Duration</dt><dd>{since(session.startedAt, session.finishedAt)}</dd>
      </dl>
      <div class="actions">
        {login.role !== "viewer" && !isFinished(session.phase) && (
          <ConfirmButton label="Cancel session" confirm="Cancel it now" danger onConfirm={cancel} />
        )}
        <button type="button" onClick={() => copyLink("view")}>Copy view link</button>
        {canType && <button type="button" onClick={() => copyLink("interact")}>Copy interact link</button>}
        <a class="button" href={`/api/sessions/${id}/output?format=text`} download={`${id}.txt`}>Download output</a>
        <a class="button" href={`/api/sessions/${id}/recording`} download={`${id}.cast`}>Download recording</a>
        {isFinished(session.phase) && !playing && (
          <button type="button" onClick={() => setPlaying(true)}>Play recording</button>
        )}
      </div>
      {playing && <Player id={id} />}
      {terminal && <iframe class="terminal" title="Terminal" src={terminal} />}
      <h2>Timeline</h2>
      <ol class="timeline">
        {events.map((e) => <li><time>{when(e.at)}</time> <strong>{e.kind}</strong> {e.message}</li>)}
      </ol>
    </main>
  );
}

/// The recording, played in a frame of its own: the player's page alone may compile
/// WebAssembly (asciinema-player's terminal), and its script loads only when one is played.
function Player({ id }: { id: string }) {
  return <iframe class="player" title="Recording" src={`/console/player?session=${encodeURIComponent(id)}`} />;
}

interface Draft {
  command: string; code_url: string; code_checksum_sha256: string; install_cmd: string;
  prompt: string; env: string; masked_env: string; size: string; timeout_seconds: string;
  ttl_seconds: string; scrollback_lines: string;
}

const EMPTY: Draft = {
  command: "", code_url: "", code_checksum_sha256: "", install_cmd: "", prompt: "", env: "",
  masked_env: "", size: "", timeout_seconds: "", ttl_seconds: "", scrollback_lines: "",
};

const LABELS: [keyof Draft, string, string][] = [
  ["command", "Command", "run by bash -c in the session's terminal"],
  ["code_url", "Code URL", "GitHub tree URL, .zip, .tar.gz or git URL (optional)"],
  ["code_checksum_sha256", "Checksum (SHA-256)", "of the downloaded archive (optional)"],
  ["install_cmd", "Install command", "run in the code's directory first (optional)"],
  ["prompt", "Prompt", "given to the command as CLISCALE_PROMPT (optional)"],
  ["env", "Environment", "NAME=value, one per line"],
  ["masked_env", "Masked variables", "names whose values are shown as *** (comma-separated)"],
  ["size", "Terminal size", "COLSxROWS, e.g. 120x40 (default 80x24)"],
  ["timeout_seconds", "Timeout (seconds)", "stop the session after this long (optional)"],
  ["ttl_seconds", "Keep for (seconds)", "after it ends (default 3600)"],
  ["scrollback_lines", "Scrollback lines", "1000–1000000 (default 100000)"],
];

function request(d: Draft): { body?: Record<string, unknown>; field?: keyof Draft; error?: string } {
  const body: Record<string, unknown> = { command: d.command };
  for (const k of ["code_url", "code_checksum_sha256", "install_cmd", "prompt"] as const) {
    if (d[k].trim()) body[k] = d[k];
  }
  const env: Record<string, string> = {};
  for (const line of d.env.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf("=");
    if (at < 1) return { field: "env", error: `"${line}" is not NAME=value` };
    env[line.slice(0, at)] = line.slice(at + 1);
  }
  if (Object.keys(env).length) body.env = env;
  const masked = d.masked_env.split(",").map((n) => n.trim()).filter(Boolean);
  if (masked.length) body.masked_env = masked;
  if (d.size.trim()) {
    const m = /^(\d+)\s*x\s*(\d+)$/i.exec(d.size.trim());
    if (!m) return { field: "size", error: "write it as COLSxROWS, e.g. 120x40" };
    body.cols = Number(m[1]);
    body.rows = Number(m[2]);
  }
  for (const k of ["timeout_seconds", "ttl_seconds", "scrollback_lines"] as const) {
    if (!d[k].trim()) continue;
    if (!/^\d+$/.test(d[k].trim())) return { field: k, error: "a whole number" };
    body[k] = Number(d[k].trim());
  }
  return { body };
}

function NewSessionPage() {
  const [draft, setDraft] = useState<Draft>(EMPTY);
  const [errors, setErrors] = useState<Partial<Record<keyof Draft, string>>>({});
  const [error, setError] = useState<string | null>(null);
  const submit = async (e: Event) => {
    e.preventDefault();
    setErrors({});
    setError(null);
    const built = request(draft);
    if (!built.body) {
      setErrors({ [built.field!]: built.error });
      return;
    }
    try {
      const made = await call<{ sessionId: string }>("POST", "/api/sessions", built.body);
      go(`/sessions/${made.sessionId}`);
    } catch (err) {
      if (!(err instanceof ApiError)) return setError(message(err));
      // The API names the field in the code, or (for lengths and emptiness) in the message.
      const byCode = fieldOf(err.code) as keyof Draft | null;
      const field = byCode ?? LABELS.map(([k]) => k).find((k) => err.message.includes(k));
      if (field) setErrors({ [field]: err.message });
      else setError(err.message);
    }
  };
  return (
    <main id="main" tabIndex={-1}>
      <h1>New session</h1>
      <form class="card new-session" onSubmit={submit} noValidate>
        {LABELS.map(([k, label, hint]) => {
          const multiline = k === "command" || k === "prompt" || k === "env";
          const set = (e: Event) => setDraft({ ...draft, [k]: (e.target as HTMLInputElement).value });
          return (
            <div class="field">
              <label for={`f-${k}`}>{label}</label>
              {multiline
                ? <textarea id={`f-${k}`} name={k} rows={k === "command" ? 2 : 3} value={draft[k]} onInput={set}
                    aria-invalid={errors[k] ? "true" : undefined} aria-describedby={`h-${k}`} required={k === "command"} />
                : <input id={`f-${k}`} name={k} value={draft[k]} onInput={set}
                    aria-invalid={errors[k] ? "true" : undefined} aria-describedby={`h-${k}`} />}
              <small id={`h-${k}`} class={errors[k] ? "field-error" : "hint"}>{errors[k] ?? hint}</small>
            </div>
          );
        })}
        <Alert error={error} />
        <button type="submit" class="primary">Create session</button>
      </form>
    </main>
  );
}

function KeysPage() {
  const [keys, setKeys] = useState<Key[]>([]);
  const [name, setName] = useState("");
  const [role, setRole] = useState<Role>("operator");
  const [made, setMade] = useState<Key | null>(null);
  const [copied, setCopied] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const refresh = () => call<{ items: Key[] }>("GET", "/api/keys").then((p) => setKeys(p.items), (e) => setError(message(e)));
  useEffect(() => void refresh(), []);
  const create = async (e: Event) => {
    e.preventDefault();
    setError(null);
    try {
      setMade(await call<Key>("POST", "/api/keys", { name, role }));
      setCopied(false);
      setName("");
      refresh();
    } catch (err) {
      setError(message(err));
    }
  };
  const revoke = async (id: string) => {
    try {
      await call("DELETE", `/api/keys/${id}`);
      refresh();
    } catch (err) {
      setError(message(err));
    }
  };
  return (
    <main id="main" tabIndex={-1}>
      <h1>API keys</h1>
      <form class="card inline" onSubmit={create}>
        <label>Name <input name="key-name" required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} /></label>
        <label>Role
          <select name="key-role" value={role} onChange={(e) => setRole((e.target as HTMLSelectElement).value as Role)}>
            <option value="operator">operator</option><option value="viewer">viewer</option><option value="admin">admin</option>
          </select>
        </label>
        <button type="submit" class="primary">Create key</button>
      </form>
      {made && (
        <div class="card made" role="status">
          <p>The new key <strong>{made.name}</strong>, shown this once:</p>
          <code class="secret">{made.key}</code>
          <button type="button" onClick={async () => setCopied(await copy(made.key ?? ""))}>{copied ? "Copied" : "Copy"}</button>
        </div>
      )}
      <Alert error={error} />
      <table class="keys">
        <thead><tr><th>Id</th><th>Name</th><th>Role</th><th>Created</th><th>Revoked</th><th><span class="sr-only">Actions</span></th></tr></thead>
        <tbody>
          {keys.map((k) => (
            <tr data-key={k.id}>
              <td><code>{k.id}</code></td><td>{k.name}</td><td>{k.role}</td><td>{when(k.createdAt)}</td>
              <td>{k.revokedAt ? when(k.revokedAt) : "-"}</td>
              <td>{!k.revokedAt && <ConfirmButton label="Revoke" confirm="Revoke now" danger onConfirm={() => revoke(k.id)} />}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </main>
  );
}

function HealthPage() {
  const [version, setVersion] = useState("-");
  const [storage, setStorage] = useState("checking…");
  const [counts, setCounts] = useState<Record<string, number>>({});
  useEffect(() => {
    call<{ info: { version: string } }>("GET", "/openapi.json").then((d) => setVersion(d.info.version), () => {});
    fetch("/readyz").then((r) => setStorage(r.ok ? "reachable" : `unavailable (HTTP ${r.status})`), () => setStorage("unreachable"));
    for (const phase of ["Running", "Pending", "Lost"]) {
      call<SessionPage>("GET", `/api/sessions?phase=${phase}&limit=200`).then(
        (p) => setCounts((c) => ({ ...c, [phase]: p.items.length })), () => {});
    }
  }, []);
  const n = (p: string) => (counts[p] === undefined ? "…" : counts[p] === 200 ? "200+" : String(counts[p]));
  return (
    <main id="main" tabIndex={-1}>
      <h1>Health</h1>
      <dl class="facts">
        <dt>Version</dt><dd>{version}</dd>
        <dt>Storage</dt><dd>{storage}</dd>
        <dt>Running sessions</dt><dd>{n("Running")}</dd>
        <dt>Waiting to start</dt><dd>{n("Pending")}</dd>
        <dt>Lost runners</dt><dd>{n("Lost")}</dd>
      </dl>
    </main>
  );
}

// --- The frame -----------------------------------------------------------------------------

function useTheme(): [string, () => void] {
  const initial = localStorage.getItem("cliscale-theme")
    ?? (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  const [theme, setTheme] = useState(initial);
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
  }, [theme]);
  const toggle = () => {
    const next = theme === "dark" ? "light" : "dark";
    localStorage.setItem("cliscale-theme", next);
    setTheme(next);
  };
  return [theme, toggle];
}

function App() {
  const [login, setLogin] = useState<Login | null | undefined>(undefined);
  const route = useRoute();
  const [theme, toggleTheme] = useTheme();
  useEffect(() => {
    call<Login | undefined>("GET", "/api/console/me").then((l) => {
      if (l) setCsrf(l.csrfToken);
      setLogin(l ?? null);
    }, () => setLogin(null));
  }, []);
  if (login === undefined) return <main id="main" tabIndex={-1}><p>Loading…</p></main>;
  if (login === null) return <LoginPage onLogin={setLogin} />;
  const logout = async () => {
    await call("POST", "/api/console/logout").catch(() => {});
    setLogin(null);
    go("/");
  };
  const [page, id] = route;
  let body;
  if (page === "sessions" && id) body = <SessionPage key={id} id={id} login={login} />;
  else if (page === "new" && login.role !== "viewer") body = <NewSessionPage />;
  else if (page === "keys" && login.role === "admin") body = <KeysPage />;
  else if (page === "health") body = <HealthPage />;
  else if (page === "templates" && id) body = <TemplatePage key={id} name={decodeURIComponent(id)} login={login} />;
  else if (page === "templates") body = <TemplatesPage login={login} />;
  else if (page === "schedules" && id) body = <SchedulePage key={id} name={decodeURIComponent(id)} login={login} />;
  else if (page === "schedules") body = <SchedulesPage login={login} />;
  else if (page === "secrets") body = <SecretsPage login={login} />;
  else if (page === "events") body = <EventsPage />;
  else body = <SessionsPage login={login} />;
  const current = (p: string) => ((page ?? "sessions") === p ? "page" : undefined);
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>Skip to content</a>
      <header>
        <nav aria-label="Main">
          <a class="brand" href="#/sessions">cliscale</a>
          <a href="#/sessions" aria-current={current("sessions")}>Sessions</a>
          {login.role !== "viewer" && <a href="#/new" aria-current={current("new")}>New session</a>}
          <a href="#/templates" aria-current={current("templates")}>Templates</a>
          <a href="#/schedules" aria-current={current("schedules")}>Schedules</a>
          <a href="#/secrets" aria-current={current("secrets")}>Secrets</a>
          <a href="#/events" aria-current={current("events")}>Events</a>
          {login.role === "admin" && <a href="#/keys" aria-current={current("keys")}>API keys</a>}
          <a href="#/health" aria-current={current("health")}>Health</a>
        </nav>
        <div class="who">
          <span>{login.keyId} ({login.role})</span>
          <button type="button" onClick={toggleTheme} aria-label={`Switch to ${theme === "dark" ? "light" : "dark"} theme`}>
            {theme === "dark" ? "Light" : "Dark"}
          </button>
          <button type="button" onClick={logout}>Log out</button>
        </div>
      </header>
      {body}
    </>
  );
}

render(<App />, document.getElementById("app")!);
