//! The committed CRD matches the Rust types, and its schema is one a real API server accepts.

use kube::CustomResourceExt;
use serde_json::Value;

#[test]
fn the_committed_crds_are_up_to_date() {
    assert_eq!(cliscale_crd::crd_yamls()[0].1, cliscale_crd::crd_yaml());
    for (file, generated) in cliscale_crd::crd_yamls() {
        let path = format!("{}/../crds/{file}", env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        let kind = file.trim_start_matches("command").trim_end_matches(".yaml");
        assert!(
            committed == generated,
            "crds/{file} is stale: run `cargo run -p cliscale-operator --bin cliscale-crdgen {kind} > crds/{file}`"
        );
    }
}

/// Structural-schema rules of the API server, and the pitfalls of generated schemas.
fn lint(schema: &Value, path: &str, in_branch: bool, named: bool, problems: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else { return };
    if obj.contains_key("$ref") {
        problems.push(format!("{path}: $ref is not allowed"));
    }
    let escape = obj.contains_key("x-kubernetes-int-or-string")
        || obj.contains_key("x-kubernetes-preserve-unknown-fields");
    if in_branch {
        if obj.contains_key("type") {
            problems.push(format!("{path}: type inside an anyOf/oneOf branch"));
        }
    } else if !obj.contains_key("type") && !escape {
        problems.push(format!("{path}: no type (a typeless {{}} schema)"));
    }
    // Every named field explains itself, so `kubectl explain` is useful.
    if named && obj.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
        problems.push(format!("{path}: no description"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            lint(sub, &format!("{path}.properties.{name}"), false, true, problems);
        }
    }
    if let Some(items) = obj.get("items") {
        lint(items, &format!("{path}.items"), false, false, problems);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        lint(extra, &format!("{path}.additionalProperties"), false, false, problems);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for (i, branch) in obj.get(key).and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            lint(branch, &format!("{path}.{key}[{i}]"), true, false, problems);
        }
    }
}

fn schema() -> Value {
    let crd = serde_json::to_value(cliscale_crd::CommandSession::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn the_schema_is_structural_and_documented() {
    let mut problems = Vec::new();
    lint(&schema(), "openAPIV3Schema", false, false, &mut problems);
    for crd in [cliscale_crd::CommandTemplate::crd(), cliscale_crd::CommandSchedule::crd()] {
        let crd = serde_json::to_value(crd).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_owned();
        lint(schema, &kind, false, false, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn defaults_and_bounds_are_in_the_schema() {
    let spec = &schema()["properties"]["spec"]["properties"];
    assert_eq!(spec["cols"]["default"], 80);
    assert_eq!(spec["cols"]["maximum"], 1000.0);
    assert_eq!(spec["ttlSecondsAfterFinished"]["default"], 3600);
    assert_eq!(spec["lingerSeconds"]["default"], 30);
    assert_eq!(spec["command"]["maxLength"], 8192);
    let required = schema()["properties"]["spec"]["required"].clone();
    assert_eq!(required, serde_json::json!(["command"]));
}

#[test]
fn the_crd_has_a_status_subresource_short_name_and_printer_columns() {
    let crd = serde_json::to_value(cliscale_crd::CommandSession::crd()).unwrap();
    assert_eq!(crd["spec"]["group"], "cliscale.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    // `cs` is core ComponentStatus's: `kubectl get cs` would never reach a session.
    assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["cmds"]));
    assert_eq!(crd["spec"]["names"]["categories"], serde_json::json!(["cliscale"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Phase", "Exit", "Pod", "Age"]);
}

#[test]
fn wrong_types_and_missing_commands_never_deserialize() {
    for spec in [
        serde_json::json!({ "cols": 80 }),
        serde_json::json!({ "command": "x", "cols": "wide" }),
        serde_json::json!({ "command": "x", "cols": 70000 }),
    ] {
        let parsed: Result<cliscale_crd::CommandSessionSpec, _> =
            serde_json::from_value(spec.clone());
        assert!(parsed.is_err(), "{spec}");
    }
}
