//! A small OVSDB client (RFC 7047 JSON-RPC over a Unix socket), enough for nwagent: one
//! bridge, its ports and their interfaces.
//!
//! Why our own: the `ovsdb` crate is too thin (its schema call is broken and it prints to
//! stdout) and `ovs-vsctl` is made for people, not for a program that must know exactly
//! what changed. One request at a time on one connection keeps it simple; nwagent's
//! changes are few and small.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

#[derive(Debug, Clone, thiserror::Error)]
pub enum OvsdbError {
    #[error("cannot reach ovsdb-server at {path}: {err}")]
    Connect { path: String, err: String },
    #[error("ovsdb-server connection: {0}")]
    Io(String),
    #[error("ovsdb transaction failed: {0}")]
    Transact(String),
}

pub struct Ovsdb {
    path: PathBuf,
    conn: Mutex<Option<(UnixStream, Vec<u8>)>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A row of the Interface table that nwagent cares about.
#[derive(Debug, Clone, PartialEq)]
pub struct IfaceRow {
    pub name: String,
    pub ofport: i64,
    /// The kernel's index of the device behind the interface; 0 while it is absent. A
    /// device deleted and made again under the same name gets a new one.
    pub ifindex: i64,
    pub error: Option<String>,
    /// The device exists and is administratively down (nothing passes a down veth).
    pub admin_down: bool,
}

fn io(e: impl std::fmt::Display) -> OvsdbError {
    OvsdbError::Io(e.to_string())
}

/// `["set", [...]]` or a bare atom, as OVSDB encodes a set of one.
fn set_items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) if a.len() == 2 && a[0] == "set" => a[1].as_array().cloned().unwrap_or_default(),
        other => vec![other.clone()],
    }
}

fn map(pairs: &[(&str, &str)]) -> Value {
    json!(["map", pairs.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()])
}

impl Ovsdb {
    pub fn new(path: &Path) -> Self {
        Ovsdb { path: path.to_owned(), conn: Mutex::new(None), next_id: Default::default() }
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let s = UnixStream::connect(&self.path)
                .await
                .map_err(|e| OvsdbError::Connect { path: self.path.display().to_string(), err: e.to_string() })?;
            *guard = Some((s, Vec::new()));
        }
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = json!({"method": method, "params": params, "id": id});
        let result = async {
            let (stream, buf) = guard.as_mut().expect("connected above");
            stream.write_all(&serde_json::to_vec(&req).map_err(io)?).await.map_err(io)?;
            loop {
                // Messages are concatenated JSON values; read until one complete reply.
                let mut de = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
                match de.next() {
                    Some(Ok(msg)) => {
                        let used = de.byte_offset();
                        buf.drain(..used);
                        if msg.get("method").and_then(Value::as_str) == Some("echo") {
                            let reply = json!({"result": msg["params"], "error": null, "id": msg["id"]});
                            stream.write_all(&serde_json::to_vec(&reply).map_err(io)?).await.map_err(io)?;
                            continue;
                        }
                        if msg.get("id") == Some(&json!(id)) {
                            if !msg["error"].is_null() {
                                return Err(OvsdbError::Transact(msg["error"].to_string()));
                            }
                            return Ok(msg["result"].clone());
                        }
                    }
                    Some(Err(e)) if !e.is_eof() => return Err(io(e)),
                    _ => {
                        let mut chunk = [0u8; 16 << 10];
                        let n = stream.read(&mut chunk).await.map_err(io)?;
                        if n == 0 {
                            return Err(io("ovsdb-server closed the connection"));
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
        .await;
        if result.is_err() {
            *guard = None; // reconnect next time
        }
        result
    }

    /// Runs one transaction; any failed operation fails it as a whole.
    pub async fn transact(&self, ops: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let started = std::time::Instant::now();
        let r = self.transact_once(ops).await;
        vdc_bus::metrics::driver_op("ovsdb", "transact", started, r.is_ok());
        r
    }

    async fn transact_once(&self, ops: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let mut params = vec![json!("Open_vSwitch")];
        params.extend(ops);
        let res = self.call("transact", Value::Array(params)).await?;
        let results = res.as_array().cloned().unwrap_or_default();
        for r in &results {
            if let Some(err) = r.get("error") {
                return Err(OvsdbError::Transact(format!("{err}: {}", r.get("details").unwrap_or(&Value::Null))));
            }
        }
        Ok(results)
    }

    /// Makes bridge `name` exist with `datapath_type`; idempotent.
    pub async fn ensure_bridge(&self, name: &str, datapath_type: &str) -> Result<(), OvsdbError> {
        let found = self
            .transact(vec![json!({"op": "select", "table": "Bridge", "where": [["name", "==", name]],
                "columns": ["_uuid", "datapath_type"]})])
            .await?;
        let rows = found[0]["rows"].as_array().cloned().unwrap_or_default();
        if let Some(row) = rows.first() {
            if row["datapath_type"] != datapath_type {
                self.transact(vec![json!({"op": "update", "table": "Bridge", "where": [["name", "==", name]],
                    "row": {"datapath_type": datapath_type}})])
                    .await?;
            }
            return Ok(());
        }
        // A bridge needs its own internal port, as ovs-vsctl add-br makes it.
        self.transact(vec![
            json!({"op": "insert", "table": "Interface", "row": {"name": name, "type": "internal"}, "uuid-name": "iface"}),
            json!({"op": "insert", "table": "Port", "row": {"name": name, "interfaces": ["named-uuid", "iface"]},
                "uuid-name": "port"}),
            json!({"op": "insert", "table": "Bridge", "row": {"name": name, "datapath_type": datapath_type,
                "ports": ["named-uuid", "port"], "fail_mode": "secure",
                "protocols": ["set", ["OpenFlow10", "OpenFlow13"]]}, "uuid-name": "br"}),
            json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                "mutations": [["bridges", "insert", ["set", [["named-uuid", "br"]]]]]}),
        ])
        .await?;
        Ok(())
    }

    /// The names of the ports on `bridge`.
    pub async fn ports(&self, bridge: &str) -> Result<Vec<String>, OvsdbError> {
        let r = self
            .transact(vec![
                json!({"op": "select", "table": "Bridge", "where": [["name", "==", bridge]], "columns": ["ports"]}),
                json!({"op": "select", "table": "Port", "where": [], "columns": ["_uuid", "name"]}),
            ])
            .await?;
        let Some(br) = r[0]["rows"].as_array().and_then(|a| a.first()).cloned() else { return Ok(vec![]) };
        let uuids: Vec<Value> = set_items(&br["ports"]);
        let names = r[1]["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| uuids.contains(&p["_uuid"]))
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect();
        Ok(names)
    }

    /// Adds port `name` (one interface of `kind`, with `options` and `external_ids`) to
    /// `bridge`, or updates them if the port exists.
    pub async fn ensure_port(
        &self,
        bridge: &str,
        name: &str,
        kind: &str,
        options: &[(&str, &str)],
        external_ids: &[(&str, &str)],
    ) -> Result<(), OvsdbError> {
        self.ensure_port_at(bridge, name, kind, options, external_ids, None).await
    }

    /// [`Ovsdb::ensure_port`], asking for OpenFlow port number `ofport` if the port is
    /// added (the switch gives another one if it is taken).
    pub async fn ensure_port_at(
        &self,
        bridge: &str,
        name: &str,
        kind: &str,
        options: &[(&str, &str)],
        external_ids: &[(&str, &str)],
        ofport: Option<u32>,
    ) -> Result<(), OvsdbError> {
        if self.ports(bridge).await?.iter().any(|p| p == name) {
            self.transact(vec![json!({"op": "update", "table": "Interface", "where": [["name", "==", name]],
                "row": {"type": kind, "options": map(options), "external_ids": map(external_ids)}})])
                .await?;
            return Ok(());
        }
        let mut iface = json!({"name": name, "type": kind, "options": map(options), "external_ids": map(external_ids)});
        if let Some(p) = ofport {
            iface["ofport_request"] = json!(p);
        }
        self.transact(vec![
            json!({"op": "insert", "table": "Interface", "row": iface, "uuid-name": "iface"}),
            json!({"op": "insert", "table": "Port", "row": {"name": name, "interfaces": ["named-uuid", "iface"]},
                "uuid-name": "port"}),
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
                "mutations": [["ports", "insert", ["set", [["named-uuid", "port"]]]]]}),
        ])
        .await?;
        Ok(())
    }

    /// Removes port `name` from `bridge`; absent is fine. (Port and Interface rows are
    /// not root rows: OVSDB drops them once no bridge refers to them.)
    pub async fn remove_port(&self, bridge: &str, name: &str) -> Result<(), OvsdbError> {
        let r = self
            .transact(vec![
                json!({"op": "select", "table": "Port", "where": [["name", "==", name]], "columns": ["_uuid"]}),
            ])
            .await?;
        let Some(uuid) = r[0]["rows"].as_array().and_then(|a| a.first()).map(|p| p["_uuid"].clone()) else {
            return Ok(());
        };
        self.transact(vec![json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
            "mutations": [["ports", "delete", ["set", [uuid]]]]})])
            .await?;
        Ok(())
    }

    /// The Interface row of `name`, once ovs-vswitchd has looked at it.
    pub async fn interface(&self, name: &str) -> Result<Option<IfaceRow>, OvsdbError> {
        let r = self
            .transact(vec![json!({"op": "select", "table": "Interface", "where": [["name", "==", name]],
                "columns": ["name", "ofport", "ifindex", "error", "admin_state"]})])
            .await?;
        Ok(r[0]["rows"].as_array().and_then(|a| a.first()).map(iface_row))
    }

    /// Every Interface row (one query, for the watch over all ports).
    pub async fn interfaces(&self) -> Result<Vec<IfaceRow>, OvsdbError> {
        let r = self
            .transact(vec![json!({"op": "select", "table": "Interface", "where": [],
                "columns": ["name", "ofport", "ifindex", "error", "admin_state"]})])
            .await?;
        Ok(r[0]["rows"].as_array().map(|a| a.iter().map(iface_row).collect()).unwrap_or_default())
    }

    /// Waits until ovs-vswitchd has applied the database as it stands now (what
    /// `ovs-vsctl` waits for): a later change is then seen as a change of its own, not
    /// folded with this one.
    pub async fn wait_applied(&self, timeout: std::time::Duration) -> Result<(), OvsdbError> {
        let r = self
            .transact(vec![
                json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                    "mutations": [["next_cfg", "+=", 1]]}),
                json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"]}),
            ])
            .await?;
        let want = r[1]["rows"][0]["next_cfg"].as_i64().unwrap_or(0);
        let start = std::time::Instant::now();
        loop {
            let r = self
                .transact(vec![json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["cur_cfg"]})])
                .await?;
            if r[0]["rows"][0]["cur_cfg"].as_i64().unwrap_or(0) >= want {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(OvsdbError::Io(format!("ovs-vswitchd did not apply the database within {timeout:?}")));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

fn iface_row(row: &Value) -> IfaceRow {
    let int = |col: &str| set_items(&row[col]).first().and_then(Value::as_i64);
    IfaceRow {
        name: row["name"].as_str().unwrap_or_default().to_owned(),
        ofport: int("ofport").unwrap_or(-1),
        ifindex: int("ifindex").unwrap_or(0),
        error: set_items(&row["error"]).first().and_then(|e| e.as_str().map(str::to_owned)),
        admin_down: set_items(&row["admin_state"]).first().and_then(Value::as_str) == Some("down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_maps_are_encoded_as_ovsdb_wants() {
        assert_eq!(set_items(&json!(["set", [1, 2]])), vec![json!(1), json!(2)]);
        assert_eq!(set_items(&json!(7)), vec![json!(7)]);
        assert_eq!(set_items(&json!(["set", []])), Vec::<Value>::new());
        assert_eq!(map(&[("a", "b")]), json!(["map", [["a", "b"]]]));
    }
}
