//! Contract checks that need no running stack: the checked-in OpenAPI document matches the
//! code, and every example configuration in the repository parses.

use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// `dcmgr/openapi.json` is generated from the handlers; regenerate it with
/// `VDC_UPDATE_OPENAPI=1 cargo test -p vdc-tests --test suite contract::`.
#[test]
fn openapi_document_is_up_to_date() {
    let path = repo().join("dcmgr/openapi.json");
    let generated = serde_json::to_string_pretty(&vdc_dcmgr::http::openapi()).unwrap() + "\n";
    if std::env::var_os("VDC_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "dcmgr/openapi.json is out of date with the code; run VDC_UPDATE_OPENAPI=1 cargo test -p vdc-tests --test suite contract::"
    );
    // Every route of the router is documented.
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in ["/api/v1/instances", "/api/v1/instances/{id}/reboot", "/api/v1/volumes/{id}/attach", "/api/v1/jobs/{id}"]
    {
        assert!(paths.contains_key(p), "{p} is missing from the OpenAPI document");
    }
    assert!(paths.len() >= 30, "only {} paths documented", paths.len());
}

/// The checked-in document is valid OpenAPI, as a real validator (`openapi-spec-validator`,
/// installed by packaging/install-deps.sh) sees it. A missing validator fails the test.
#[test]
fn openapi_document_is_valid_openapi() {
    let path = repo().join("dcmgr/openapi.json");
    let probe = std::process::Command::new("python3").args(["-c", "import openapi_spec_validator"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Python module openapi_spec_validator is missing ({}); run packaging/install-deps.sh",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
        ),
        Err(e) => panic!("python3 cannot run ({e}); run packaging/install-deps.sh"),
    }
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--validation-errors", "all"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refuses {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The document keeps the API conventions (ARCHITECTURE.md, "Errors and status codes"):
/// unique operation IDs, paging as optional query parameters, every error status an
/// operation can answer documented with the error body, request bodies that refuse
/// unknown fields, enums spelled as on the wire.
#[test]
fn openapi_document_follows_the_api_conventions() {
    use serde_json::Value;
    let doc = serde_json::to_value(vdc_dcmgr::http::openapi()).unwrap();
    let components = &doc["components"];
    // A `$ref` inside this document, resolved.
    let resolve = |v: &Value| -> Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let mut target = &doc;
                for part in r.trim_start_matches("#/").split('/') {
                    target = &target[part];
                }
                assert!(!target.is_null(), "unresolved $ref {r}");
                target.clone()
            }
            None => v.clone(),
        }
    };
    let mut ids = std::collections::HashSet::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let what = format!("{method} {path}");
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{what} has no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice ({what})");
            let params: Vec<Value> = op["parameters"].as_array().cloned().unwrap_or_default();
            let mut query = false;
            for p in &params {
                let name = p["name"].as_str().unwrap();
                match p["in"].as_str().unwrap() {
                    "path" => assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{what}: path parameter {name} is not in the path"
                    ),
                    "query" => {
                        query = true;
                        assert_ne!(p["required"], Value::Bool(true), "{what}: query parameter {name} is required");
                    }
                    // The one header: an optional `Idempotency-Key` on POSTs (`http::idempotency`).
                    "header" if name == "Idempotency-Key" && method == "post" => {
                        assert_ne!(p["required"], Value::Bool(true), "{what}: {name} is required");
                        for status in ["409", "422"] {
                            assert!(op["responses"].get(status).is_some(), "{what} does not document {status}");
                        }
                    }
                    other => panic!("{what}: parameter {name} in {other}"),
                }
            }
            let responses = op["responses"].as_object().unwrap();
            let public = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r == &serde_json::json!({})));
            let mut needed: Vec<&str> = vec![];
            if !public {
                needed.extend(["401", "503"]);
            }
            if query || op.get("requestBody").is_some() {
                needed.push("400");
            }
            for status in needed {
                assert!(responses.contains_key(status), "{what} does not document {status}");
            }
            for (status, response) in responses {
                let response = resolve(response);
                assert!(
                    response["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{what} {status}: no description"
                );
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                        "{what} {status}: not the error body"
                    );
                }
            }
            // JSON bodies; an upload's body is the data itself (application/octet-stream).
            if let Some(body) = op.get("requestBody").filter(|b| b["content"].get("application/json").is_some()) {
                let schema = resolve(&body["content"]["application/json"]["schema"]);
                assert_eq!(
                    schema["additionalProperties"],
                    Value::Bool(false),
                    "{what}: the body accepts unknown fields"
                );
            }
        }
    }
    assert!(operations >= 55, "only {operations} operations");
    // Enums as on the wire (every spelling is lowercase; schema/src/state.rs tests each).
    for (name, schema) in components["schemas"].as_object().unwrap() {
        for v in schema["enum"].as_array().into_iter().flatten() {
            let v = v.as_str().unwrap();
            assert_eq!(v, v.to_lowercase(), "enum {name} lists {v:?}, not its wire spelling");
        }
    }
}

/// Every example configuration shipped under packaging/ parses with the real parser.
#[test]
fn example_configurations_parse() {
    let dir = repo().join("packaging/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("dcmgr") && p.extension().is_some_and(|e| e == "toml") {
            vdc_dcmgr::Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1, "no dcmgr example configuration found in {}", dir.display());
    // And a typo is refused, not ignored.
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), "listen = \"127.0.0.1:1\"\nlissten = \"x\"\n").unwrap();
    assert!(vdc_dcmgr::Config::load(tmp.path()).unwrap_err().to_string().contains("lissten"));
}

/// The systemd units of the agents read their arguments from their example environment
/// files' variables. (That each agent accepts its example arguments is a test of the agent
/// itself: `hva/tests/example_config.rs` and the like, where cargo builds the binary.)
#[test]
fn agent_units_use_their_environment_files() {
    for (agent, var) in [("hva", "HVA_ARGS"), ("nwagent", "NWAGENT_ARGS"), ("sta", "STA_ARGS")] {
        let unit = std::fs::read_to_string(repo().join(format!("packaging/systemd/vdc-{agent}.service"))).unwrap();
        assert!(unit.contains(&format!("/etc/vdc/{agent}.env")) && unit.contains(&format!("${var}")), "{agent}");
    }
}
