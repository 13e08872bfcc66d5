//! The OpenAPI 3.1 document served at `/openapi.json`. A test checks that it names every route
//! the API and gateway serve, so it cannot silently fall behind.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn json_body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn id_param(name: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
}

pub fn document() -> Value {
    let common_errors = json!({
        "400": error_response("Invalid request (malformed JSON, unknown field, wrong type, bad value)"),
        "401": error_response("Missing or invalid API key"),
        "413": error_response("Body larger than 256 KiB"),
        "429": error_response("Rate limited; see Retry-After"),
    });
    let with = |mut base: Value, extra: Value| {
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        base
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "cliscale",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Run command-line sessions in isolated runners and drive them from a browser terminal. See docs/api.md."
        },
        "components": {
            "securitySchemes": { "apiKey": { "type": "http", "scheme": "bearer", "description": "An API key, csk_<id>_<secret>" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error", "message"], "properties": {
                    "error": { "type": "string", "description": "Stable machine-readable code" },
                    "message": { "type": "string" } } },
                "CreateSession": { "type": "object", "required": ["command"], "additionalProperties": false, "properties": {
                    "command": { "type": "string", "maxLength": 8192 },
                    "code_url": { "type": "string", "maxLength": 2048, "description": "GitHub tree URL, .zip, .tar.gz/.tgz or git URL" },
                    "code_checksum_sha256": { "type": "string" },
                    "prompt": { "type": "string", "maxLength": 65536 },
                    "install_cmd": { "type": "string", "maxLength": 8192 },
                    "env": { "type": "object", "additionalProperties": { "type": "string" }, "maxProperties": 64 },
                    "cols": { "type": "integer", "minimum": 1, "maximum": 1000 },
                    "rows": { "type": "integer", "minimum": 1, "maximum": 1000 },
                    "timeout_seconds": { "type": "integer", "minimum": 1, "maximum": 604800 },
                    "ttl_seconds": { "type": "integer", "minimum": 0, "maximum": 2592000 } } },
                "SessionCreated": { "type": "object", "properties": {
                    "sessionId": { "type": "string" }, "wsUrl": { "type": "string" }, "token": { "type": "string" },
                    "terminalUrl": { "type": "string", "format": "uri" }, "phase": { "type": "string" } } },
                "Session": { "type": "object", "properties": {
                    "sessionId": { "type": "string" }, "owner": { "type": "string" },
                    "phase": { "enum": ["Pending", "Starting", "Running", "Succeeded", "Failed", "TimedOut", "Cancelled", "Lost"] },
                    "exitCode": { "type": ["integer", "null"] }, "reason": { "type": ["string", "null"] },
                    "message": { "type": ["string", "null"] }, "command": { "type": "string" },
                    "codeUrl": { "type": ["string", "null"] }, "envNames": { "type": "array", "items": { "type": "string" } },
                    "createdAt": { "type": "string", "format": "date-time" },
                    "startedAt": { "type": ["string", "null"], "format": "date-time" },
                    "finishedAt": { "type": ["string", "null"], "format": "date-time" },
                    "updatedAt": { "type": "string", "format": "date-time" } } },
                "SessionPage": { "type": "object", "properties": {
                    "items": { "type": "array", "items": { "$ref": "#/components/schemas/Session" } },
                    "nextCursor": { "type": ["string", "null"] } } },
                "MintToken": { "type": "object", "additionalProperties": false, "properties": { "scope": { "enum": ["interact", "view"] } } },
                "Token": { "type": "object", "properties": {
                    "sessionId": { "type": "string" }, "scope": { "type": "string" }, "token": { "type": "string" },
                    "wsUrl": { "type": "string" }, "terminalUrl": { "type": "string" }, "expiresInSeconds": { "type": "integer" } } },
                "CreateKey": { "type": "object", "required": ["name", "role"], "additionalProperties": false, "properties": {
                    "name": { "type": "string", "maxLength": 128 }, "role": { "enum": ["admin", "operator", "viewer"] } } },
                "Key": { "type": "object", "properties": {
                    "id": { "type": "string" }, "name": { "type": "string" }, "role": { "type": "string" },
                    "key": { "type": "string", "description": "Only in the creation response" },
                    "createdAt": { "type": "string" }, "revokedAt": { "type": ["string", "null"] } } }
            }
        },
        "security": [{ "apiKey": [] }],
        "paths": {
            "/api/sessions": {
                "post": { "summary": "Create a session (returns at once)", "requestBody": json_body("CreateSession"),
                    "responses": with(json!({ "201": ok("Created", "SessionCreated"), "403": error_response("Role may not create") }), common_errors.clone()) },
                "get": { "summary": "List sessions, newest first", "parameters": [
                        { "name": "phase", "in": "query", "schema": { "type": "string" } },
                        { "name": "owner", "in": "query", "schema": { "type": "string" } },
                        { "name": "created_after", "in": "query", "schema": { "type": "string" } },
                        { "name": "created_before", "in": "query", "schema": { "type": "string" } },
                        { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 200 } },
                        { "name": "cursor", "in": "query", "schema": { "type": "string" } } ],
                    "responses": with(json!({ "200": ok("A page", "SessionPage") }), common_errors.clone()) }
            },
            "/api/sessions/{id}": {
                "get": { "summary": "Get a session", "parameters": [id_param("id")],
                    "responses": with(json!({ "200": ok("The session", "Session"), "404": error_response("No such session (or not yours)") }), common_errors.clone()) },
                "delete": { "summary": "Cancel a session", "parameters": [id_param("id")],
                    "responses": with(json!({ "202": ok("Cancelling", "Session"), "200": ok("Already finished", "Session"), "404": error_response("No such session") }), common_errors.clone()) }
            },
            "/api/sessions/{id}/tokens": {
                "post": { "summary": "Mint a terminal token", "parameters": [id_param("id")], "requestBody": json_body("MintToken"),
                    "responses": with(json!({ "201": ok("Minted", "Token"), "403": error_response("Viewers may only mint view tokens"), "404": error_response("No such session") }), common_errors.clone()) }
            },
            "/api/sessions/{id}/events": {
                "get": { "summary": "The session's event log", "parameters": [id_param("id")],
                    "responses": with(json!({ "200": { "description": "Events" }, "404": error_response("No such session") }), common_errors.clone()) }
            },
            "/api/keys": {
                "post": { "summary": "Create an API key (admin)", "requestBody": json_body("CreateKey"),
                    "responses": with(json!({ "201": ok("Created; the key is shown only here", "Key"), "403": error_response("Admins only") }), common_errors.clone()) },
                "get": { "summary": "List API keys (admin)", "responses": with(json!({ "200": { "description": "Keys, without secrets" } }), common_errors.clone()) }
            },
            "/api/keys/{id}": {
                "delete": { "summary": "Revoke an API key (admin)", "parameters": [id_param("id")],
                    "responses": with(json!({ "204": { "description": "Revoked" }, "404": error_response("No such key") }), common_errors.clone()) }
            },
            "/.well-known/jwks.json": { "get": { "summary": "Public keys of terminal tokens", "security": [], "responses": { "200": { "description": "JWKS" } } } },
            "/healthz": { "get": { "summary": "Liveness", "security": [], "responses": { "200": { "description": "ok" } } } },
            "/readyz": { "get": { "summary": "Readiness (database reachable)", "security": [], "responses": { "200": { "description": "ready" }, "500": error_response("Not ready") } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "security": [], "responses": { "200": { "description": "OpenMetrics text" } } } },
            "/openapi.json": { "get": { "summary": "This document", "security": [], "responses": { "200": { "description": "OpenAPI" } } } },
            "/t/{sid}": { "get": { "summary": "Terminal page (token in the #token= fragment)", "security": [], "parameters": [id_param("sid")], "responses": { "200": { "description": "HTML" } } } },
            "/ws/{sid}": { "get": { "summary": "Terminal WebSocket (docs/protocol.md); token as ?token= or Bearer",
                "security": [], "parameters": [id_param("sid"),
                    { "name": "token", "in": "query", "schema": { "type": "string" } },
                    { "name": "since", "in": "query", "schema": { "type": "integer", "minimum": 0 } },
                    { "name": "mode", "in": "query", "schema": { "enum": ["view", "interact"] } }],
                "responses": { "101": { "description": "Upgraded" }, "302": { "description": "Plain GET: redirect to the page" },
                    "400": error_response("Bad query"), "401": error_response("Missing, invalid, expired or replayed token"),
                    "403": error_response("Token for another session"), "404": error_response("No such session"),
                    "410": error_response("Session ended and its runner is gone"), "502": error_response("Runner unreachable"),
                    "503": error_response("Runner not ready within the wait, or key set unavailable") } } }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_names_every_route() {
        let doc = super::document();
        let paths = doc["paths"].as_object().unwrap();
        let routes = include_str!("routes.rs");
        for line in routes.lines().filter(|l| l.trim_start().starts_with(".route(\"")) {
            let path = line.split('"').nth(1).unwrap();
            assert!(paths.contains_key(path), "{path} is served but not documented");
        }
        for path in ["/t/{sid}", "/ws/{sid}"] {
            assert!(paths.contains_key(path));
        }
    }
}
