//! Prints a CRD as YAML: `cargo run -p cliscale-operator --bin cliscale-crdgen [KIND] >
//! crds/command<KIND>.yaml`, KIND `session` (the default), `template` or `schedule`.
//! With `runner-job`, prints instead the Job the operator makes for an example session (with
//! the default configuration), which CI checks against the restricted Pod Security Standard.

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("runner-job") => {
            let session: cliscale_crd::CommandSession = serde_json::from_value(serde_json::json!({
                "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
                "metadata": { "name": "example", "namespace": "cliscale", "uid": "0" },
                "spec": { "command": "make test", "timeoutSeconds": 600,
                          "envFromSecrets": [{ "name": "TOKEN", "secretName": "s", "key": "k" }] }
            }))
            .expect("an example session");
            let job = cliscale_operator::desired::desired_job(&session, &Default::default());
            print!("{}", serde_norway::to_string(&job).expect("a Job serializes"));
        }
        kind => {
            let file = format!("command{}.yaml", kind.unwrap_or("session"));
            let [session, rest @ ..] = cliscale_crd::crd_yamls();
            let found = std::iter::once(session).chain(rest).find(|(name, _)| *name == file);
            match found {
                Some((_, yaml)) => print!("{yaml}"),
                None => {
                    eprintln!("KIND is session, template, schedule or runner-job");
                    std::process::exit(64);
                }
            }
        }
    }
}
