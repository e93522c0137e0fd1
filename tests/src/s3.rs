//! A real S3 server for the S3 image store's tests: `s3s-fs` (installed by
//! `packaging/install-deps.sh`) on a free loopback port, with its own directory and
//! credentials, killed when dropped. Tests fail, never skip, when it is missing.

use crate::procs::Proc;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How `packaging/install-deps.sh` installs the server.
pub const INSTALL: &str = "cargo install --locked --features binary s3s-fs@0.14.1";

pub struct S3Server {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

/// `s3s-fs` from `VDC_S3S_FS`, else the PATH, else cargo's bin directory.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VDC_S3S_FS") {
        return p.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("s3s-fs is missing: run packaging/install-deps.sh, or `{INSTALL}`"))
}

impl S3Server {
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let access_key = format!("vdctest{:08x}", rand::random::<u32>());
        let secret_key = format!("{:032x}", rand::random::<u128>());
        let mut cmd = std::process::Command::new(binary());
        cmd.args(["--host", "127.0.0.1", "--port", "0", "--access-key", &access_key, "--secret-key", &secret_key])
            .arg(&data)
            // Its "server is running at" line is at info level.
            .env("RUST_LOG", "s3s_fs=info");
        let proc = Proc::spawn("s3s-fs", &mut cmd, dir.path());
        let start = Instant::now();
        let endpoint = loop {
            let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
            if let Some(at) = log.find("server is running at ") {
                let rest = &log[at + "server is running at ".len()..];
                break rest.split_whitespace().next().unwrap().to_owned();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "s3s-fs did not start: {log}");
            std::thread::sleep(Duration::from_millis(20));
        };
        S3Server { endpoint, access_key, secret_key, _proc: proc, _dir: dir, http: reqwest::Client::new() }
    }

    fn bucket(&self, name: &str) -> Bucket {
        Bucket::new(self.endpoint.parse().unwrap(), UrlStyle::Path, name.to_owned(), "us-east-1").unwrap()
    }

    fn creds(&self) -> Credentials {
        Credentials::new(self.access_key.clone(), self.secret_key.clone())
    }

    pub async fn create_bucket(&self, name: &str) {
        let url = self.bucket(name).create_bucket(&self.creds()).sign(Duration::from_secs(60));
        let r = self.http.put(url).send().await.unwrap();
        assert!(r.status().is_success(), "create bucket {name}: {}", r.text().await.unwrap());
    }

    /// The object's bytes, or None if there is none.
    pub async fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let url = self.bucket(bucket).get_object(Some(&self.creds()), key).sign(Duration::from_secs(60));
        let r = self.http.get(url).send().await.unwrap();
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(r.status().is_success(), "GET {key}: {}", r.status());
        Some(r.bytes().await.unwrap().to_vec())
    }

    /// The keys in the bucket, sorted.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let b = self.bucket(bucket);
        let creds = self.creds();
        let url = b.list_objects_v2(Some(&creds)).sign(Duration::from_secs(60));
        let r = self.http.get(url).send().await.unwrap();
        assert!(r.status().is_success(), "list {bucket}: {}", r.status());
        // By hand: rusty-s3's parser wants an ETag per object, which s3s-fs leaves out.
        let body = r.text().await.unwrap();
        let mut keys: Vec<String> =
            body.split("<Key>").skip(1).filter_map(|k| k.split_once("</Key>")).map(|(k, _)| k.to_owned()).collect();
        keys.sort();
        keys
    }

    /// dcmgr's settings for `bucket` of this server.
    pub fn config(&self, bucket: &str) -> vdc_dcmgr::config::S3Config {
        vdc_dcmgr::config::S3Config {
            endpoint: self.endpoint.clone(),
            region: "us-east-1".into(),
            bucket: bucket.into(),
            access_key: self.access_key.clone(),
            secret_key: Some(self.secret_key.clone()),
            secret_key_file: None,
            path_style: true,
            part_size_mib: 5,
        }
    }
}
