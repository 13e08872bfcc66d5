//! The client's calls for secrets, templates, trigger tokens, schedules and the event log.

use std::collections::BTreeMap;

use cliscale_core::rest::{
    CreateSecretRequest, CreateTriggerRequest, EventQuery, LogPage, RunRequest, SchedulePage,
    ScheduleSpec, ScheduleView, SecretPage, SecretView, SessionCreated, TemplatePage, TemplateSpec,
    TemplateView, TriggerPage, TriggerView, UpdateSecretRequest,
};
use reqwest::Method;

use crate::{Client, Result};

impl Client {
    /// `POST /api/secrets`.
    pub async fn create_secret(
        &self,
        name: &str,
        data: BTreeMap<String, String>,
    ) -> Result<SecretView> {
        let body = CreateSecretRequest { name: name.into(), data };
        self.json(self.request(Method::POST, &["api", "secrets"]).json(&body)).await
    }

    /// `PUT /api/secrets/{name}`: replaces every value.
    pub async fn update_secret(
        &self,
        name: &str,
        data: BTreeMap<String, String>,
    ) -> Result<SecretView> {
        let body = UpdateSecretRequest { data };
        self.json(self.request(Method::PUT, &["api", "secrets", name]).json(&body)).await
    }

    /// `GET /api/secrets`: names and key names.
    pub async fn list_secrets(&self) -> Result<SecretPage> {
        self.json(self.request(Method::GET, &["api", "secrets"])).await
    }

    /// `DELETE /api/secrets/{name}`.
    pub async fn delete_secret(&self, name: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &["api", "secrets", name])).await.map(drop)
    }

    /// `POST /api/templates`, or `PUT /api/templates/{name}` when `replace`.
    pub async fn put_template(&self, spec: &TemplateSpec, replace: bool) -> Result<TemplateView> {
        let req = if replace {
            self.request(Method::PUT, &["api", "templates", &spec.name])
        } else {
            self.request(Method::POST, &["api", "templates"])
        };
        self.json(req.json(spec)).await
    }

    /// `GET /api/templates`.
    pub async fn list_templates(&self) -> Result<TemplatePage> {
        self.json(self.request(Method::GET, &["api", "templates"])).await
    }

    /// `GET /api/templates/{name}`.
    pub async fn template(&self, name: &str) -> Result<TemplateView> {
        self.json(self.request(Method::GET, &["api", "templates", name])).await
    }

    /// `DELETE /api/templates/{name}`.
    pub async fn delete_template(&self, name: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &["api", "templates", name])).await.map(drop)
    }

    /// `POST /api/templates/{name}/runs`.
    pub async fn run_template(
        &self,
        name: &str,
        params: BTreeMap<String, serde_json::Value>,
    ) -> Result<SessionCreated> {
        let body = RunRequest { params };
        self.json(self.request(Method::POST, &["api", "templates", name, "runs"]).json(&body)).await
    }

    /// `POST /api/templates/{name}/triggers`.
    pub async fn create_trigger(
        &self,
        template: &str,
        name: &str,
        params: Vec<String>,
    ) -> Result<TriggerView> {
        let body = CreateTriggerRequest { name: name.into(), params };
        let req = self.request(Method::POST, &["api", "templates", template, "triggers"]);
        self.json(req.json(&body)).await
    }

    /// `GET /api/templates/{name}/triggers`.
    pub async fn list_triggers(&self, template: &str) -> Result<TriggerPage> {
        self.json(self.request(Method::GET, &["api", "templates", template, "triggers"])).await
    }

    /// `DELETE /api/templates/{name}/triggers/{id}`.
    pub async fn revoke_trigger(&self, template: &str, id: &str) -> Result<()> {
        let req = self.request(Method::DELETE, &["api", "templates", template, "triggers", id]);
        self.send(req).await.map(drop)
    }

    /// `POST /api/templates/{name}/trigger`, with a trigger token instead of the client's key.
    pub async fn trigger(
        &self,
        template: &str,
        token: &str,
        params: BTreeMap<String, serde_json::Value>,
    ) -> Result<SessionCreated> {
        let url = self.url(&["api", "templates", template, "trigger"]);
        let req = self.http.post(url).bearer_auth(token).json(&RunRequest { params });
        self.json(req).await
    }

    /// `POST /api/schedules`, or `PUT /api/schedules/{name}` when `replace`.
    pub async fn put_schedule(&self, spec: &ScheduleSpec, replace: bool) -> Result<ScheduleView> {
        let req = if replace {
            self.request(Method::PUT, &["api", "schedules", &spec.name])
        } else {
            self.request(Method::POST, &["api", "schedules"])
        };
        self.json(req.json(spec)).await
    }

    /// `GET /api/schedules`.
    pub async fn list_schedules(&self) -> Result<SchedulePage> {
        self.json(self.request(Method::GET, &["api", "schedules"])).await
    }

    /// `GET /api/schedules/{name}`.
    pub async fn schedule(&self, name: &str) -> Result<ScheduleView> {
        self.json(self.request(Method::GET, &["api", "schedules", name])).await
    }

    /// `DELETE /api/schedules/{name}`.
    pub async fn delete_schedule(&self, name: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &["api", "schedules", name])).await.map(drop)
    }

    /// `GET /api/events`.
    pub async fn log(&self, query: &EventQuery) -> Result<LogPage> {
        self.json(self.request(Method::GET, &["api", "events"]).query(query)).await
    }
}
