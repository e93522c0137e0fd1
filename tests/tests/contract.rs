//! Contract checks that need no running stack: the checked-in OpenAPI document matches the
//! code, and every example configuration in the repository parses.

use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// `dcmgr/openapi.json` is generated from the handlers; regenerate it with
/// `VDC_UPDATE_OPENAPI=1 cargo test -p vdc-tests --test contract`.
#[test]
fn openapi_document_is_up_to_date() {
    let path = repo().join("dcmgr/openapi.json");
    let generated = serde_json::to_string_pretty(&vdc_dcmgr::api::openapi()).unwrap() + "\n";
    if std::env::var_os("VDC_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "dcmgr/openapi.json is out of date with the code; run VDC_UPDATE_OPENAPI=1 cargo test -p vdc-tests --test contract"
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
