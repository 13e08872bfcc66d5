// The console's pages for templates (with a run form built from the parameters, and trigger
// tokens), schedules (with a preview of the next runs), secrets (names, keys and what uses
// them; values are write-only) and the event log.

import { useEffect, useState } from "preact/hooks";
import {
  ApiError, LogEntry, LogPage, Login, ParamSpec, RunSummary, ScheduleView, SecretView,
  TemplateView, TriggerView, call,
} from "./api";
import { Alert, Badge, ConfirmButton, copy, go, message, when } from "./ui";

const canWrite = (login: Login) => login.role !== "viewer";

function useLoad<T>(path: string, deps: unknown[] = []): [T | null, string | null, () => void] {
  const [value, setValue] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const load = () => call<T>("GET", path).then((v) => { setValue(v); setError(null); }, (e) => setError(message(e)));
  useEffect(() => { load(); }, deps);
  return [value, error, load];
}

function Runs({ runs }: { runs: RunSummary[] }) {
  if (runs.length === 0) return <p class="empty">No runs yet.</p>;
  return (
    <table class="runs">
      <thead><tr><th>Session</th><th>Phase</th><th>Exit</th><th>Attempt</th><th>Created</th></tr></thead>
      <tbody>
        {runs.map((r) => (
          <tr data-run={r.sessionId}>
            <td><a href={`#/sessions/${r.sessionId}`}>{r.sessionId.slice(0, 14)}</a></td>
            <td><Badge phase={r.phase} /></td>
            <td>{r.exitCode ?? "-"}</td>
            <td>{r.attempt}{r.retryOf ? ` (retry of ${r.retryOf.slice(0, 8)})` : ""}</td>
            <td>{when(r.createdAt)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/// A JSON definition typed into a textarea and sent as it is; the API's refusal is shown.
function DefinitionForm(props: { label: string; example: string; path: string; onMade: (name: string) => void }) {
  const [text, setText] = useState(props.example);
  const [error, setError] = useState<string | null>(null);
  const submit = async (e: Event) => {
    e.preventDefault();
    let body: { name?: string };
    try {
      body = JSON.parse(text);
    } catch (err) {
      setError(`Not JSON: ${String(err)}`);
      return;
    }
    try {
      await call("POST", props.path, body);
      setError(null);
      props.onMade(body.name ?? "");
    } catch (err) {
      setError(message(err));
    }
  };
  const id = `def-${props.path.replace(/\W/g, "")}`;
  return (
    <form class="card definition" onSubmit={submit}>
      <label for={id}>{props.label}</label>
      <textarea id={id} rows={12} spellcheck={false} value={text}
        aria-invalid={error ? "true" : undefined} aria-describedby={`${id}-error`}
        onInput={(e) => setText((e.target as HTMLTextAreaElement).value)} />
      <p id={`${id}-error`} class="field-error" role="alert">{error ?? ""}</p>
      <button type="submit" class="primary">Create</button>
    </form>
  );
}

// --- Templates ----------------------------------------------------------------------------

const TEMPLATE_EXAMPLE = JSON.stringify({
  name: "hello",
  description: "Greets someone",
  session: { command: "echo \"hello $WHO\"" },
  params: [{ name: "WHO", type: "string", default: "world" }],
}, null, 2);

export function TemplatesPage({ login }: { login: Login }) {
  const [page, error, reload] = useLoad<{ items: TemplateView[] }>("/api/templates");
  const [adding, setAdding] = useState(false);
  return (
    <main id="main" tabIndex={-1}>
      <div class="title">
        <h1>Templates</h1>
        {canWrite(login) && !adding && <button type="button" class="primary" onClick={() => setAdding(true)}>New template</button>}
      </div>
      {adding && <DefinitionForm label="Template (JSON)" example={TEMPLATE_EXAMPLE} path="/api/templates"
        onMade={(name) => { setAdding(false); reload(); go(`/templates/${encodeURIComponent(name)}`); }} />}
      <Alert error={error} />
      <table class="templates">
        <thead><tr><th>Name</th><th>Generation</th><th>Parameters</th><th>Last run</th><th>Description</th></tr></thead>
        <tbody>
          {(page?.items ?? []).map((t) => (
            <tr data-template={t.name}>
              <td><a href={`#/templates/${encodeURIComponent(t.name)}`}>{t.name}</a></td>
              <td>{t.generation}</td>
              <td>{(t.params ?? []).map((p) => p.name).join(", ") || "-"}</td>
              <td>{t.recentRuns[0] ? <Badge phase={t.recentRuns[0].phase} /> : "-"}</td>
              <td>{t.description ?? ""}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {page && page.items.length === 0 && <p class="empty">No templates.</p>}
    </main>
  );
}

/// One input per parameter, typed as the parameter is.
function ParamInput(props: { param: ParamSpec; value: string; error?: string; onChange: (v: string) => void }) {
  const { param: p } = props;
  const id = `p-${p.name}`;
  const set = (e: Event) => props.onChange((e.target as HTMLInputElement).value);
  let input;
  if (p.allowed && p.allowed.length) {
    input = (
      <select id={id} value={props.value} onChange={set}
        aria-invalid={props.error ? "true" : undefined} aria-describedby={`${id}-hint`}>
        <option value="">{p.required ? "(choose)" : "(default)"}</option>
        {p.allowed.map((a) => <option value={a}>{a}</option>)}
      </select>
    );
  } else if (p.type === "boolean") {
    input = (
      <select id={id} value={props.value} onChange={set}
        aria-invalid={props.error ? "true" : undefined} aria-describedby={`${id}-hint`}>
        <option value="">(default)</option><option value="true">true</option><option value="false">false</option>
      </select>
    );
  } else {
    input = <input id={id} type={p.type === "integer" ? "number" : "text"} value={props.value}
      required={p.required} placeholder={p.default === undefined ? "" : String(p.default)}
      aria-invalid={props.error ? "true" : undefined} aria-describedby={`${id}-hint`} onInput={set} />;
  }
  return (
    <div class="field">
      <label for={id}>{p.name}{p.required ? " (required)" : ""}</label>
      {input}
      <span id={`${id}-hint`} class={props.error ? "field-error" : "hint"}>
        {props.error ?? [p.type ?? "string", p.description].filter(Boolean).join(": ")}
      </span>
    </div>
  );
}

function RunForm({ template }: { template: TemplateView }) {
  const params = template.params ?? [];
  const [values, setValues] = useState<Record<string, string>>({});
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [error, setError] = useState<string | null>(null);
  const submit = async (e: Event) => {
    e.preventDefault();
    setErrors({});
    setError(null);
    const body: Record<string, string> = {};
    for (const [k, v] of Object.entries(values)) if (v !== "") body[k] = v;
    // What the page can tell at once; the API checks the rest (allowed values, lengths).
    for (const p of params) {
      const v = body[p.name];
      const wrong = v === undefined
        ? (p.required ? "required" : null)
        : (p.type === "integer" && !/^-?\d+$/.test(v) ? "a whole number" : null);
      if (wrong) {
        setErrors({ [p.name]: `${p.name}: ${wrong}` });
        return;
      }
    }
    try {
      const made = await call<{ sessionId: string }>("POST", `/api/templates/${encodeURIComponent(template.name)}/runs`, { params: body });
      go(`/sessions/${made.sessionId}`);
    } catch (err) {
      // The API names the parameter in its message: show it next to that field.
      const named = err instanceof ApiError ? /parameter "([^"]+)"/.exec(err.message) : null;
      if (named && params.some((p) => p.name === named[1])) setErrors({ [named[1]]: message(err) });
      else setError(message(err));
    }
  };
  return (
    // The API checks the values, and its refusal is shown next to the parameter it names.
    <form class="card run-form" onSubmit={submit} aria-label="Run this template" noValidate>
      <h2>Run</h2>
      {params.length === 0 && <p class="hint">This template takes no parameters.</p>}
      {params.map((p) => (
        <ParamInput param={p} value={values[p.name] ?? ""} error={errors[p.name]}
          onChange={(v) => setValues({ ...values, [p.name]: v })} />
      ))}
      <Alert error={error} />
      <button type="submit" class="primary">Run</button>
    </form>
  );
}

function Triggers({ template }: { template: TemplateView }) {
  const path = `/api/templates/${encodeURIComponent(template.name)}/triggers`;
  const [page, error, reload] = useLoad<{ items: TriggerView[] }>(path, [template.name]);
  const [name, setName] = useState("");
  const [allowed, setAllowed] = useState<string[]>([]);
  const [made, setMade] = useState<TriggerView | null>(null);
  const [copied, setCopied] = useState(false);
  const [failed, setFailed] = useState<string | null>(null);
  const create = async (e: Event) => {
    e.preventDefault();
    try {
      setMade(await call<TriggerView>("POST", path, { name, params: allowed }));
      setCopied(false);
      setName("");
      setFailed(null);
      reload();
    } catch (err) {
      setFailed(message(err));
    }
  };
  const revoke = async (id: string) => {
    try {
      await call("DELETE", `${path}/${id}`);
      reload();
    } catch (err) {
      setFailed(message(err));
    }
  };
  return (
    <section aria-label="Trigger tokens">
      <h2>Trigger tokens</h2>
      <form class="card inline" onSubmit={create}>
        <label>Name <input name="trigger-name" required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} /></label>
        {(template.params ?? []).length > 0 && (
          <fieldset class="checks">
            <legend>May set</legend>
            {(template.params ?? []).map((p) => (
              <label class="check"><input type="checkbox" checked={allowed.includes(p.name)}
                onChange={(e) => setAllowed((e.target as HTMLInputElement).checked ? [...allowed, p.name] : allowed.filter((a) => a !== p.name))} /> {p.name}</label>
            ))}
          </fieldset>
        )}
        <button type="submit">Create token</button>
      </form>
      {made && (
        <div class="card made" role="status">
          <p>The token <strong>{made.name}</strong>, shown this once:</p>
          <code class="secret">{made.token}</code>
          <button type="button" onClick={async () => setCopied(await copy(made.token ?? ""))}>{copied ? "Copied" : "Copy"}</button>
        </div>
      )}
      <Alert error={failed ?? error} />
      <table class="triggers">
        <thead><tr><th>Id</th><th>Name</th><th>May set</th><th>Last used</th><th>Revoked</th><th><span class="sr-only">Actions</span></th></tr></thead>
        <tbody>
          {(page?.items ?? []).map((t) => (
            <tr data-trigger={t.id}>
              <td><code>{t.id}</code></td><td>{t.name}</td><td>{t.params.join(", ") || "-"}</td>
              <td>{when(t.lastUsedAt)}</td><td>{when(t.revokedAt)}</td>
              <td>{!t.revokedAt && <ConfirmButton label="Revoke" confirm="Revoke now" danger onConfirm={() => revoke(t.id)} />}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

export function TemplatePage({ name, login }: { name: string; login: Login }) {
  const [t, error] = useLoad<TemplateView>(`/api/templates/${encodeURIComponent(name)}`, [name]);
  const [failed, setFailed] = useState<string | null>(null);
  const remove = async () => {
    try {
      await call("DELETE", `/api/templates/${encodeURIComponent(name)}`);
      go("/templates");
    } catch (err) {
      setFailed(message(err));
    }
  };
  if (!t) return <main id="main" tabIndex={-1}><Alert error={error} />{!error && <p>Loading…</p>}</main>;
  return (
    <main id="main" tabIndex={-1}>
      <div class="title"><h1>Template {t.name}</h1><span class="hint">generation {t.generation}</span></div>
      <Alert error={failed} />
      <dl class="facts">
        <dt>Description</dt><dd>{t.description ?? "-"}</dd>
        <dt>Command</dt><dd><code>{t.session.command}</code></dd>
        <dt>Secrets</dt><dd>{Object.entries(t.session.secret_env ?? {}).map(([env, r]) => `${env} ← ${r.secret}/${r.key}`).join(", ") || "-"}</dd>
        <dt>Concurrency</dt><dd>{t.concurrencyPolicy}</dd>
        <dt>Retries</dt><dd>{t.retry ? `up to ${t.retry.limit}` : "none"}</dd>
        <dt>Owner</dt><dd>{t.owner}</dd>
        <dt>Updated</dt><dd>{when(t.updatedAt)}</dd>
      </dl>
      {canWrite(login) && <RunForm template={t} />}
      <h2>Latest runs</h2>
      <Runs runs={t.recentRuns} />
      {login.role === "admin" && <Triggers template={t} />}
      {canWrite(login) && (
        <div class="actions"><ConfirmButton label="Delete template" confirm="Delete it now" danger onConfirm={remove} /></div>
      )}
    </main>
  );
}

// --- Schedules ----------------------------------------------------------------------------

/// The next times a cron and zone name, from the server (the same code that fires them).
function Preview({ cron, zone }: { cron: string; zone: string }) {
  const [times, setTimes] = useState<string[]>([]);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    if (!cron.trim()) return;
    const t = setTimeout(() => {
      call<{ nextRunTimes: string[] }>("POST", "/api/schedules/preview", { cron, timeZone: zone || undefined })
        .then((p) => { setTimes(p.nextRunTimes); setError(null); }, (e) => { setTimes([]); setError(message(e)); });
    }, 300);
    return () => clearTimeout(t);
  }, [cron, zone]);
  return (
    <div class="preview" aria-live="polite">
      <strong>Next runs</strong>
      {error ? <p class="field-error">{error}</p> : <ol>{times.map((t) => <li><time>{when(t)}</time> <code>{t}</code></li>)}</ol>}
    </div>
  );
}

function ScheduleForm({ templates, onMade }: { templates: string[]; onMade: (name: string) => void }) {
  const [f, setF] = useState({ name: "", template: templates[0] ?? "", cron: "0 * * * *", timeZone: "", concurrencyPolicy: "Allow", params: "{}" });
  const [error, setError] = useState<string | null>(null);
  const set = (k: keyof typeof f) => (e: Event) => setF({ ...f, [k]: (e.target as HTMLInputElement).value });
  const submit = async (e: Event) => {
    e.preventDefault();
    try {
      const params = JSON.parse(f.params || "{}");
      await call("POST", "/api/schedules", { ...f, timeZone: f.timeZone || undefined, params });
      onMade(f.name);
    } catch (err) {
      setError(err instanceof SyntaxError ? `Parameters are not JSON: ${err.message}` : message(err));
    }
  };
  return (
    <form class="card new-schedule" onSubmit={submit}>
      <div class="inline">
        <label>Name <input name="schedule-name" required value={f.name} onInput={set("name")} /></label>
        <label>Template
          <select name="schedule-template" value={f.template} onChange={set("template")}>
            {templates.map((t) => <option value={t}>{t}</option>)}
          </select>
        </label>
        <label>Cron <input name="schedule-cron" required value={f.cron} onInput={set("cron")} /></label>
        <label>Time zone <input name="schedule-zone" placeholder="UTC" value={f.timeZone} onInput={set("timeZone")} /></label>
        <label>Concurrency
          <select name="schedule-policy" value={f.concurrencyPolicy} onChange={set("concurrencyPolicy")}>
            <option>Allow</option><option>Forbid</option><option>Replace</option>
          </select>
        </label>
      </div>
      <label>Parameters (JSON) <input name="schedule-params" value={f.params} onInput={set("params")} /></label>
      <Preview cron={f.cron} zone={f.timeZone} />
      <Alert error={error} />
      <button type="submit" class="primary">Create schedule</button>
    </form>
  );
}

export function SchedulesPage({ login }: { login: Login }) {
  const [page, error, reload] = useLoad<{ items: ScheduleView[] }>("/api/schedules");
  const [templates] = useLoad<{ items: TemplateView[] }>("/api/templates");
  const [adding, setAdding] = useState(false);
  return (
    <main id="main" tabIndex={-1}>
      <div class="title">
        <h1>Schedules</h1>
        {canWrite(login) && !adding && <button type="button" class="primary" onClick={() => setAdding(true)}>New schedule</button>}
      </div>
      {adding && templates && <ScheduleForm templates={templates.items.map((t) => t.name)}
        onMade={(name) => { setAdding(false); reload(); go(`/schedules/${encodeURIComponent(name)}`); }} />}
      <Alert error={error} />
      <table class="schedules">
        <thead><tr><th>Name</th><th>Cron</th><th>Zone</th><th>Template</th><th>Next run</th><th>Active</th></tr></thead>
        <tbody>
          {(page?.items ?? []).map((s) => (
            <tr data-schedule={s.name}>
              <td><a href={`#/schedules/${encodeURIComponent(s.name)}`}>{s.name}</a></td>
              <td><code>{s.cron}</code></td><td>{s.timeZone ?? "UTC"}</td><td>{s.template}</td>
              <td>{s.suspend ? "suspended" : when(s.status.nextRunTimes[0] ?? null)}</td>
              <td>{s.status.active.length}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {page && page.items.length === 0 && <p class="empty">No schedules.</p>}
    </main>
  );
}

export function SchedulePage({ name, login }: { name: string; login: Login }) {
  const path = `/api/schedules/${encodeURIComponent(name)}`;
  const [s, error, reload] = useLoad<ScheduleView>(path, [name]);
  const [failed, setFailed] = useState<string | null>(null);
  const suspend = async (value: boolean) => {
    if (!s) return;
    const { owner: _o, createdAt: _c, updatedAt: _u, status: _s, ...spec } = s;
    try {
      await call("PUT", path, { ...spec, suspend: value });
      reload();
    } catch (err) {
      setFailed(message(err));
    }
  };
  const remove = async () => {
    try {
      await call("DELETE", path);
      go("/schedules");
    } catch (err) {
      setFailed(message(err));
    }
  };
  if (!s) return <main id="main" tabIndex={-1}><Alert error={error} />{!error && <p>Loading…</p>}</main>;
  return (
    <main id="main" tabIndex={-1}>
      <div class="title"><h1>Schedule {s.name}</h1>{s.suspend && <span class="badge phase-cancelled">suspended</span>}</div>
      <Alert error={failed} />
      <dl class="facts">
        <dt>Cron</dt><dd><code>{s.cron}</code> in {s.timeZone ?? "UTC"}</dd>
        <dt>Template</dt><dd><a href={`#/templates/${encodeURIComponent(s.template)}`}>{s.template}</a> {JSON.stringify(s.params ?? {})}</dd>
        <dt>Concurrency</dt><dd>{s.concurrencyPolicy}</dd>
        <dt>Starting deadline</dt><dd>{s.startingDeadlineSeconds ? `${s.startingDeadlineSeconds} s` : "none"}</dd>
        <dt>Last scheduled</dt><dd>{when(s.status.lastScheduleTime)}</dd>
        <dt>Last success</dt><dd>{when(s.status.lastSuccessfulTime)}</dd>
        <dt>Owner</dt><dd>{s.owner}</dd>
      </dl>
      {canWrite(login) && (
        <div class="actions">
          {s.suspend
            ? <button type="button" onClick={() => suspend(false)}>Resume</button>
            : <button type="button" onClick={() => suspend(true)}>Suspend</button>}
          <ConfirmButton label="Delete schedule" confirm="Delete it now" danger onConfirm={remove} />
        </div>
      )}
      <h2>Next runs</h2>
      {s.status.nextRunTimes.length ? (
        <ol class="next-runs">{s.status.nextRunTimes.map((t) => <li><time>{when(t)}</time> <code>{t}</code></li>)}</ol>
      ) : <p class="empty">None while suspended.</p>}
      <h2>Runs</h2>
      <Runs runs={s.status.recentRuns} />
      <h2>Skipped and missed</h2>
      {s.status.notRun.length ? (
        <table class="not-run">
          <thead><tr><th>Scheduled for</th><th>Reason</th><th>Detail</th></tr></thead>
          <tbody>{s.status.notRun.map((n) => <tr><td>{when(n.scheduledAt)}</td><td><span class="badge reason phase-cancelled">{n.reason}</span></td><td>{n.message}</td></tr>)}</tbody>
        </table>
      ) : <p class="empty">Nothing skipped or missed.</p>}
    </main>
  );
}

// --- Secrets ------------------------------------------------------------------------------

export function SecretsPage({ login }: { login: Login }) {
  const [page, error, reload] = useLoad<{ items: SecretView[] }>("/api/secrets");
  const [name, setName] = useState("");
  const [pairs, setPairs] = useState("");
  const [failed, setFailed] = useState<string | null>(null);
  const create = async (e: Event) => {
    e.preventDefault();
    const data: Record<string, string> = {};
    for (const line of pairs.split("\n").filter((l) => l.trim())) {
      const at = line.indexOf("=");
      if (at < 1) {
        setFailed("Write each value as KEY=value, one per line.");
        return;
      }
      data[line.slice(0, at).trim()] = line.slice(at + 1);
    }
    try {
      await call("POST", "/api/secrets", { name, data });
      setName("");
      setPairs("");
      setFailed(null);
      reload();
    } catch (err) {
      setFailed(message(err));
    }
  };
  const remove = async (secret: string) => {
    try {
      await call("DELETE", `/api/secrets/${encodeURIComponent(secret)}`);
      reload();
    } catch (err) {
      setFailed(message(err));
    }
  };
  return (
    <main id="main" tabIndex={-1}>
      <h1>Secrets</h1>
      <p class="hint">Values are write-only: nobody can read one back here or through the API. A command gets them as environment variables, and its output shows them as ***.</p>
      {login.role === "admin" && (
        <form class="card new-secret" onSubmit={create}>
          <label>Name <input name="secret-name" required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} /></label>
          <label for="secret-values">Values</label>
          <textarea id="secret-values" name="secret-values" rows={3} spellcheck={false} autoComplete="off"
            placeholder="TOKEN=…" value={pairs} onInput={(e) => setPairs((e.target as HTMLTextAreaElement).value)} />
          <span class="hint">KEY=value, one per line; never shown again.</span>
          <button type="submit" class="primary">Store secret</button>
        </form>
      )}
      <Alert error={failed ?? error} />
      <table class="secrets">
        <thead><tr><th>Name</th><th>Keys</th><th>Used by</th><th>Updated</th><th><span class="sr-only">Actions</span></th></tr></thead>
        <tbody>
          {(page?.items ?? []).map((s) => (
            <tr data-secret={s.name}>
              <td>{s.name}</td><td>{s.keys.join(", ")}</td>
              <td>{s.usedBy.map((t) => <a href={`#/templates/${encodeURIComponent(t)}`}>{t} </a>)}{s.usedBy.length ? "" : "-"}</td>
              <td>{when(s.updatedAt)}</td>
              <td>{login.role === "admin" && <ConfirmButton label="Delete" confirm="Delete now" danger onConfirm={() => remove(s.name)} />}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {page && page.items.length === 0 && <p class="empty">No secrets.</p>}
    </main>
  );
}

// --- The event log --------------------------------------------------------------------------

const FILTERS = ["session", "template", "schedule", "type", "actor"] as const;

export function EventsPage() {
  const [filters, setFilters] = useState<Record<string, string>>({});
  const [order, setOrder] = useState("desc");
  const [items, setItems] = useState<LogEntry[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const load = async (from: string | null) => {
    const q = new URLSearchParams({ order, limit: "100" });
    for (const [k, v] of Object.entries(filters)) if (v.trim()) q.set(k, v.trim());
    if (from) q.set("cursor", from);
    try {
      const page = await call<LogPage>("GET", `/api/events?${q}`);
      setItems((old) => (from ? [...old, ...page.items] : page.items));
      setCursor(page.nextCursor);
      setError(null);
    } catch (e) {
      setError(message(e));
    }
  };
  useEffect(() => {
    const t = setTimeout(() => load(null), 300);
    return () => clearTimeout(t);
  }, [JSON.stringify(filters), order]);
  return (
    <main id="main" tabIndex={-1}>
      <h1>Events</h1>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        {FILTERS.map((f) => (
          <label>{f[0].toUpperCase() + f.slice(1)}
            <input name={`event-${f}`} value={filters[f] ?? ""} onInput={(e) => setFilters({ ...filters, [f]: (e.target as HTMLInputElement).value })} />
          </label>
        ))}
        <label>Order
          <select value={order} onChange={(e) => setOrder((e.target as HTMLSelectElement).value)}>
            <option value="desc">Newest first</option><option value="asc">Oldest first</option>
          </select>
        </label>
      </form>
      <Alert error={error} />
      <table class="events">
        <thead><tr><th>#</th><th>Time</th><th>Type</th><th>About</th><th>By</th><th>Message</th></tr></thead>
        <tbody>
          {items.map((e) => (
            <tr data-seq={e.seq}>
              <td>{e.seq}</td><td>{when(e.at)}</td><td><code>{e.type}</code></td>
              <td>
                {e.session && <a href={`#/sessions/${e.session}`}>{e.session.slice(0, 8)} </a>}
                {e.template && <a href={`#/templates/${encodeURIComponent(e.template)}`}>{e.template} </a>}
                {e.schedule && <a href={`#/schedules/${encodeURIComponent(e.schedule)}`}>{e.schedule}</a>}
              </td>
              <td>{e.actor ?? "-"}</td><td>{e.message}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {items.length === 0 && <p class="empty">No events.</p>}
      {cursor && <button type="button" onClick={() => load(cursor)}>Load more</button>}
    </main>
  );
}
