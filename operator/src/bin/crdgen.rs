//! Prints the CommandSession CRD as YAML:
//! `cargo run -p cliscale-operator --bin cliscale-crdgen > crds/commandsession.yaml`.
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
        _ => print!("{}", cliscale_crd::crd_yaml()),
    }
}
