//! The `vdc` command line against a fresh stack (dcmgr + simulated agents), on SQLite and
//! PostgreSQL: resources named by name or ID, as a user types them.

use clap::Parser;
use std::path::Path;
use vdc_cli::client::Client;
use vdc_cli::commands::{self, Cli, GlobalArgs};
use vdc_cli::error::CliError;
use vdc_cli::output::{OutputArg, OutputFormat};
use vdc_schema::api::*;
use vdc_schema::{ImageFormat, InstanceState, MemberStatus};
use vdc_tests::{on_both_databases, Db, Stack, StackOptions};

on_both_databases!(
    names_or_ids_everywhere,
    vdc_bundle_exports_plans_and_imports,
    vdc_bundle_push_sends_what_the_target_lacks,
    images_are_shared_by_name_or_id,
    an_admin_manages_the_tokens_of_the_account_it_names
);

/// Runs `vdc ARGS…` in-process as the holder of `c`'s token.
async fn vdc(c: &Client, args: &[&str]) -> Result<(), CliError> {
    let cli = Cli::try_parse_from(std::iter::once("vdc").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("vdc {}: {e}", args.join(" ")));
    let global = GlobalArgs {
        // JSON unless the command names a file there (`vdc bundle export --output FILE`).
        output: match cli.global.output {
            OutputArg::File(f) => OutputArg::File(f),
            OutputArg::Format(_) => OutputArg::Format(OutputFormat::Json),
        },
        api: Some(c.base_url().to_string()),
        token: Some(c.token().to_string()),
        account: None,
        wait_timeout: 30,
        verbose: 0,
    };
    commands::run(&global, cli.command).await
}

/// [`vdc`] with `--account ACCOUNT`.
async fn vdc_in(c: &Client, account: &str, args: &[&str]) -> Result<(), CliError> {
    let cli = Cli::try_parse_from(std::iter::once("vdc").chain(args.iter().copied())).unwrap();
    let global = GlobalArgs {
        output: OutputArg::Format(OutputFormat::Json),
        api: Some(c.base_url().to_string()),
        token: Some(c.token().to_string()),
        account: Some(account.to_string()),
        wait_timeout: 30,
        verbose: 0,
    };
    commands::run(&global, cli.command).await
}

/// `vdc ARGS…` run as a process as the holder of `c`'s token; it succeeded.
async fn process(c: &Client, args: &[&str]) -> std::process::Output {
    let (api, token) = (c.base_url().to_string(), c.token().to_string());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(vdc_tests::procs::bin("vdc"))
            .env("VDC_CONFIG", "/nonexistent/vdc-cli.toml")
            .env("VDC_API", api)
            .env("VDC_TOKEN", token)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "vdc {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        out
    })
    .await
    .unwrap()
}

/// Its stdout (table output).
async fn table_of(c: &Client, args: &[&str]) -> String {
    String::from_utf8_lossy(&process(c, args).await.stdout).into_owned()
}

/// Its stderr.
async fn stderr_of(c: &Client, args: &[&str]) -> String {
    String::from_utf8_lossy(&process(c, args).await.stderr).into_owned()
}

async fn ok(c: &Client, args: &[&str]) {
    if let Err(e) = vdc(c, args).await {
        panic!("vdc {}: {}", args.join(" "), e.report());
    }
}

/// The error of a command that must fail with exit code 1.
async fn fails(c: &Client, args: &[&str]) -> String {
    match vdc(c, args).await {
        Ok(()) => panic!("vdc {} should have failed", args.join(" ")),
        Err(e) => {
            assert_eq!(e.exit_code(), 1, "vdc {}: {}", args.join(" "), e.report());
            e.report()
        }
    }
}

async fn only<T: serde::de::DeserializeOwned>(c: &Client, path: &str, name: &str) -> T {
    let q = ListQuery { name: Some(name.into()), ..Default::default() };
    let mut all: Vec<T> = c.list_all(path, &q).await.unwrap();
    assert_eq!(all.len(), 1, "one {path} named {name}");
    all.remove(0)
}

async fn names_or_ids_everywhere(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let alice = s.account("alice").await;
    let key_file = s.tmp.path().join("mykey");
    let key_arg = key_file.to_str().unwrap();

    ok(&alice, &["keypair", "create", "mykey", "--private-key-out", key_arg]).await;
    ok(&alice, &["network", "create", "net1", "--cidr", "10.5.0.0/24"]).await;
    ok(&alice, &["secgroup", "create", "web", "--rule", "tcp:22"]).await;
    ok(
        &alice,
        &[
            "instance",
            "create",
            "web1",
            "--image",
            "tiny",
            "--network",
            "net1",
            "--secgroup",
            "web",
            "--keypair",
            "mykey",
            "--wait",
        ],
    )
    .await;
    let net1: Network = only(&alice, "/networks", "net1").await;
    let web: SecurityGroup = only(&alice, "/security_groups", "web").await;
    let key: KeyPair = only(&alice, "/keypairs", "mykey").await;
    let web1: Instance = only(&alice, "/instances", "web1").await;
    assert_eq!(web1.state, vdc_schema::InstanceState::Running);
    assert_eq!(web1.image_id, s.image, "the public image `tiny`");
    assert_eq!(web1.interfaces[0].network_id, net1.id);
    assert_eq!(web1.interfaces[0].security_groups, vec![web.id.clone()]);
    assert_eq!(web1.ssh_key_id.as_ref(), Some(&key.id));
    assert!(Path::new(&key_file).exists());

    // Actions, attachments and snapshots by name; IDs keep working beside them.
    ok(&alice, &["instance", "stop", "web1", "--wait"]).await;
    ok(&alice, &["instance", "start", web1.id.as_str(), "--wait"]).await;
    ok(&alice, &["volume", "create", "data", "--size", "1G", "--wait"]).await;
    ok(&alice, &["volume", "attach", "data", "web1", "--wait"]).await;
    let data: Volume = only(&alice, "/volumes", "data").await;
    assert_eq!(data.instance_id.as_ref(), Some(&web1.id));
    ok(&alice, &["snapshot", "create", "data", "snap1", "--wait"]).await;
    ok(&alice, &["volume", "create", "copy", "--snapshot", "snap1", "--wait"]).await;
    let copy: Volume = only(&alice, "/volumes", "copy").await;
    let snap1: Snapshot = only(&alice, "/snapshots", "snap1").await;
    assert_eq!(copy.snapshot_id.as_ref(), Some(&snap1.id));
    // `vdc snapshot image` by name, qcow2, waiting for the image.
    ok(&alice, &["snapshot", "image", "snap1", "--image-name", "snapdisk", "--format", "qcow2", "--os", "x", "--wait"])
        .await;
    let snapdisk: Image = only(&alice, "/images", "snapdisk").await;
    assert_eq!(
        (snapdisk.state, snapdisk.format, snapdisk.os.as_deref()),
        (vdc_schema::ImageState::Available, vdc_schema::ImageFormat::Qcow2, Some("x"))
    );
    assert_eq!(snapdisk.source, format!("snapshot:{}", snap1.id));
    let err = fails(&alice, &["snapshot", "image", "snap1", "--image-name", "snapdisk"]).await;
    assert!(err.ends_with("(name_taken)"), "{err}");
    ok(&alice, &["secgroup", "rule-add", "web", "udp:53"]).await;
    assert_eq!(alice.get_security_group(&web.id).await.unwrap().rules.len(), 2);
    // A rule's SOURCE names a group too.
    ok(&alice, &["secgroup", "create", "db", "--rule", "tcp:5432:web"]).await;
    let db: SecurityGroup = only(&alice, "/security_groups", "db").await;
    assert_eq!(db.rules[0].spec.group.as_ref(), Some(&web.id));
    assert_eq!(db.rules[0].spec.cidr, None);

    // Names are unique within an account: a second net1 is refused.
    let err = fails(&alice, &["network", "create", "net1", "--cidr", "10.6.0.0/24"]).await;
    assert!(err.contains("a network named \"net1\" already exists") && err.ends_with("(name_taken)"), "{err}");
    // An image of one's own may share a public image's name: refused with both listed,
    // and nothing is created.
    let own = alice.create_image(&vdc_tests::image_request("tiny", vdc_schema::ImageFormat::Raw)).await.unwrap();
    let err = fails(&alice, &["instance", "create", "web2", "--image", "tiny", "--network", "net1"]).await;
    assert!(err.starts_with("error: 2 images are named \"tiny\" (ambiguous_name)\n"), "{err}");
    assert!(err.contains(own.id.as_str()) && err.contains(s.image.as_str()), "{err}");
    let q = ListQuery { name: Some("web2".into()), ..Default::default() };
    assert!(alice.list_all::<Instance>("/instances", &q).await.unwrap().is_empty(), "nothing half-created");
    // The same by ID is fine; `--wait` answers once its interface is programmed too.
    let made = table_of(
        &alice,
        &["--output", "json", "instance", "create", "web2", "--image", s.image.as_str(), "--network", "net1", "--wait"],
    )
    .await;
    let made: Instance = serde_json::from_str(&made).unwrap_or_else(|e| panic!("{e}: {made}"));
    assert_eq!(made.state, InstanceState::Running);
    assert_eq!(made.interfaces[0].state, vdc_schema::InterfaceState::Active, "{made:?}");

    // Unknown names and other accounts' names are not found.
    let err = fails(&alice, &["instance", "create", "w3", "--image", "nosuch"]).await;
    assert!(err.contains("no image has the name or ID \"nosuch\"") && err.ends_with("(not_found)"), "{err}");
    let bob = s.account("bob").await;
    let err = fails(&bob, &["network", "show", "net1"]).await;
    assert!(err.contains("no network has the name or ID \"net1\""), "{err}");
    let err = fails(&bob, &["instance", "show", web1.id.as_str()]).await;
    assert!(err.contains("(not_found)"), "{err}");

    // Another account's image is no one else's ambiguity.
    ok(&bob, &["network", "create", "net1", "--cidr", "10.5.0.0/24"]).await;
    ok(&bob, &["instance", "create", "w4", "--image", "tiny", "--network", "net1", "--wait"]).await;

    // Deleting by name.
    ok(&alice, &["instance", "terminate", "web2", "--wait"]).await;
    ok(&alice, &["volume", "delete", "copy", "--wait"]).await;
    assert_eq!(alice.get_volume(&copy.id).await.unwrap().state, vdc_schema::VolumeState::Deleted);

    // The second time: a name used again after a terminate or a delete means the live one
    // (the gone ones stay listed); while only the gone one has it, it is still found.
    ok(&alice, &["instance", "show", "web2"]).await;
    ok(&alice, &["instance", "create", "web2", "--image", s.image.as_str(), "--network", "net1", "--wait"]).await;
    ok(&alice, &["volume", "create", "copy", "--size", "1G", "--wait"]).await;
    ok(&alice, &["volume", "attach", "copy", "web2", "--wait"]).await;
    ok(&alice, &["instance", "stop", "web2", "--wait"]).await;
    let web2: Vec<Instance> =
        alice.list_all("/instances", &ListQuery { name: Some("web2".into()), ..Default::default() }).await.unwrap();
    let states: Vec<_> = web2.iter().map(|i| i.state).collect();
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(states.contains(&vdc_schema::InstanceState::Terminated), "{states:?}");
    assert!(states.contains(&vdc_schema::InstanceState::Stopped), "{states:?}");
    let copies: Vec<Volume> =
        alice.list_all("/volumes", &ListQuery { name: Some("copy".into()), ..Default::default() }).await.unwrap();
    let attached = copies.iter().find(|v| v.state != vdc_schema::VolumeState::Deleted).expect("the new copy");
    assert!(web2.iter().any(|i| Some(&i.id) == attached.instance_id.as_ref()), "attached to the new web2");
    // Two live ones of a name are still refused, naming only those.
    ok(&alice, &["instance", "create", "web2", "--image", s.image.as_str()]).await;
    let err = fails(&alice, &["instance", "show", "web2"]).await;
    assert!(err.starts_with("error: 2 instances are named \"web2\" (ambiguous_name)\n"), "{err}");
    s.stop().await;
}

/// `vdc instance ssh` end to end against a real sshd: dropbear, on a loopback address that
/// stands in for the guest's floating IP (the simulated stack's external network is
/// 127.77.0.0/24, which this machine answers itself). dropbear runs in a mount namespace
/// of its own where root's home is the test's directory, so it reads the test's
/// authorized_keys and nothing of the machine's is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ssh_runs_the_remote_command_with_the_saved_key() {
    use std::process::{Command, Output, Stdio};
    use vdc_tests::procs::{bin, free_port, Proc};
    vdc_tests::init_logging();
    let mut o = StackOptions::new(Db::Sqlite);
    o.hosts = 1;
    o.external = Some(vdc_dcmgr::config::ExternalConfig {
        cidr: "127.77.0.0/24".into(),
        gateway: "127.77.0.1".into(),
        pool_start: "127.77.0.10".into(),
        pool_end: "127.77.0.20".into(),
        router_reserve: None,
    });
    let s = Stack::start(o).await;
    let c = s.account("sshuser").await;
    let dir = s.tmp.path().join("cli");
    let config = dir.join("config.toml");
    vdc_cli::config::save(&config, &vdc_cli::config::CliConfig::new(s.url(), c.token())).unwrap();
    let vdc = |args: Vec<String>| {
        let config = config.clone();
        async move {
            tokio::task::spawn_blocking(move || -> Output {
                Command::new(bin("vdc"))
                    .env("VDC_CONFIG", &config)
                    .env_remove("VDC_API")
                    .env_remove("VDC_TOKEN")
                    .env_remove("SSH_AUTH_SOCK")
                    .args(&args)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let key_file = dir.join("k1.pem");
    let out = vdc(argv(&["keypair", "create", "k1", "--private-key-out", key_file.to_str().unwrap()])).await;
    assert!(out.status.success(), "{out:?}");
    let out = vdc(argv(&["network", "create", "n1", "--cidr", "10.9.0.0/24"])).await;
    assert!(out.status.success(), "{out:?}");
    let out =
        vdc(argv(&["instance", "create", "web1", "--image", "tiny", "--network", "n1", "--keypair", "k1", "--wait"]))
            .await;
    assert!(out.status.success(), "{out:?}");

    // No floating IP yet: exit 1 and the commands that give it one.
    let out = vdc(argv(&["instance", "ssh", "web1", "--", "true"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("vdc floating-ip create") && stderr.contains("vdc floating-ip associate FIP_ID web1"),
        "{stderr}"
    );

    let fip = c.create_floating_ip(&CreateFloatingIp::default()).await.unwrap();
    // Named by its address, as OpenStack's CLI takes it.
    let addr = fip.ip.to_string();
    let out = vdc(argv(&["floating-ip", "associate", addr.as_str(), "web1"])).await;
    assert!(out.status.success(), "{out:?}");
    let out = vdc(argv(&["floating-ip", "show", "198.51.100.254"])).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no floating IP 198.51.100.254"), "{out:?}");

    // The "guest": dropbear as root, whose home (from a passwd bound over /etc/passwd in
    // dropbear's own mount namespace) holds the key pair's public key.
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let key: KeyPair = only(&c, "/keypairs", "k1").await;
    std::fs::write(home.join(".ssh/authorized_keys"), format!("{}\n", key.public_key)).unwrap();
    let passwd: String = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .map(|l| if l.starts_with("root:") { format!("root:x:0:0:root:{}:/bin/sh", home.display()) } else { l.into() })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("passwd"), passwd + "\n").unwrap();
    let host_key = dir.join("host_key");
    let st = Command::new("dropbearkey").args(["-t", "ed25519", "-f"]).arg(&host_key).output().unwrap();
    assert!(st.status.success(), "dropbearkey (apt package dropbear-bin): {st:?}");
    let port = free_port();
    let script = format!(
        "mount --bind {} /etc/passwd && exec dropbear -F -E -s -m -p {}:{port} -r {} -P {}",
        dir.join("passwd").display(),
        fip.ip,
        host_key.display(),
        dir.join("dropbear.pid").display()
    );
    let _sshd = Proc::spawn(
        "dropbear",
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]),
        s.tmp.path(),
    );
    let listening = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::net::TcpStream::connect((fip.ip, port)).is_ok()
    });
    assert!(
        listening,
        "dropbear did not start: {}",
        std::fs::read_to_string(s.tmp.path().join("dropbear.log")).unwrap_or_default()
    );

    // The remote command's output and exit code are the command's; the guest's host key
    // lands in the CLI's own known_hosts.
    let p = port.to_string();
    let out = vdc(argv(&["instance", "ssh", "web1", "-p", &p, "--", "echo hello from $(id -un); exit 7"])).await;
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from root\n");
    // (Hashed or not, as the user's ssh_config says: ask ssh-keygen.)
    // Recorded under the instance's ID: a floating IP moves between guests.
    let web1 = c.list_all_instances().await.unwrap().into_iter().find(|i| i.name == "web1").unwrap();
    let found =
        Command::new("ssh-keygen").args(["-F", web1.id.as_str(), "-f"]).arg(dir.join("known_hosts")).output().unwrap();
    assert!(found.status.success(), "the guest's key is not in the CLI's known_hosts: {found:?}");
    // The second time the key is known; -i names the key explicitly.
    let out = vdc(argv(&["instance", "ssh", "web1", "-p", &p, "-i", key_file.to_str().unwrap(), "--", "true"])).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // A user the image does not have is refused by the guest: ssh's own failure, 255.
    let out = vdc(argv(&["instance", "ssh", "web1", "-p", &p, "-l", "nobody-here", "--", "true"])).await;
    assert_eq!(out.status.code(), Some(255), "{out:?}");

    let out = vdc(argv(&["instance", "stop", "web1", "--wait"])).await;
    assert!(out.status.success(), "{out:?}");
    let out = vdc(argv(&["instance", "ssh", "web1", "--", "true"])).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("vdc instance start web1"), "{out:?}");
    s.stop().await;
}

/// `vdc bundle`: export to a file (renamed into place when whole), plan (exit 1 while a
/// conflict is unresolved), import with a map, the imports listed. One site: it trusts
/// its own key, so another account imports the bundle.
async fn vdc_bundle_exports_plans_and_imports(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let src = s.account("src").await;
    let dst = s.account("dst").await;
    ok(&src, &["network", "create", "front", "--cidr", "10.70.0.0/24"]).await;
    ok(&src, &["secgroup", "create", "web", "--rule", "tcp:22"]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vdc.bundle");
    let f = file.to_str().unwrap();
    ok(&src, &["bundle", "export", "-O", f]).await;
    assert!(file.exists() && !dir.path().join("vdc.partial").exists());
    ok(&dst, &["network", "create", "mine", "--cidr", "10.70.0.0/16"]).await;
    let why = fails(&dst, &["bundle", "plan", f]).await;
    assert!(why.contains("1 conflict(s) unresolved"), "{why}");
    assert!(fails(&dst, &["bundle", "import", f]).await.contains("bundle_unresolved"));
    ok(&dst, &["bundle", "plan", f, "--map", "network.front.cidr=10.71.0.0/24"]).await;
    ok(&dst, &["bundle", "import", f, "--map", "network.front.cidr=10.71.0.0/24"]).await;
    // Again: nothing changes.
    ok(&dst, &["bundle", "import", f, "--map", "network.front.cidr=10.71.0.0/24"]).await;
    ok(&dst, &["bundle", "imports"]).await;
    let nets = dst.list_all_networks().await.unwrap();
    assert_eq!(nets.len(), 2);
    assert!(nets.iter().any(|n| n.name == "front" && n.cidr.to_string() == "10.71.0.0/24"));
    assert_eq!(dst.list_bundle_imports().await.unwrap().len(), 1);
    ok(&dst, &["bundle", "show", dst.list_bundle_imports().await.unwrap()[0].id.as_str()]).await;

    // An update: the real `vdc` binary prints the plan of the newer bundle as a person
    // reads it (the remapped network stays remapped), and the older one is refused.
    ok(&src, &["secgroup", "rule-add", "web", "tcp:443"]).await;
    ok(&src, &["network", "create", "back", "--cidr", "10.72.0.0/24"]).await;
    let file2 = dir.path().join("vdc2.bundle");
    let f2 = file2.to_str().unwrap();
    ok(&src, &["bundle", "export", "--output", f2]).await;
    assert!(file2.exists());
    let why = vdc(&src, &["network", "list", "--output", f2]).await.unwrap_err().report();
    assert!(why.contains("table, json or yaml"), "{why}");
    let config = dir.path().join("config.toml");
    vdc_cli::config::save(&config, &vdc_cli::config::CliConfig::new(s.url(), dst.token())).unwrap();
    let run = |args: Vec<String>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(vdc_tests::procs::bin("vdc"))
                .env("VDC_CONFIG", &config)
                .env_remove("VDC_API")
                .env_remove("VDC_TOKEN")
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
    };
    let out = run(vec!["bundle".into(), "plan".into(), f2.into()]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    let import = &dst.list_bundle_imports().await.unwrap()[0].id;
    let lines: Vec<&str> = text.lines().skip(1).collect();
    let web = only::<SecurityGroup>(&dst, "/security_groups", "web").await;
    assert_eq!(
        lines,
        vec![
            format!("updates import {import} (the bundle wins for the fields it carries)").as_str(),
            "  + network \"back\"",
            format!("  ~ security_group \"web\" {}: + ingress tcp 443 from 0.0.0.0/0", web.id).as_str(),
            "  = 1 unchanged",
        ],
        "{text}"
    );
    // The same plan from a pipe: read to its end, its length unknown.
    let (piped_config, piped_file) = (config.clone(), f2.to_owned());
    let piped = tokio::task::spawn_blocking(move || {
        let vdc = vdc_tests::procs::bin("vdc");
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cat '{piped_file}' | '{}' bundle plan /dev/stdin", vdc.display()))
            .env("VDC_CONFIG", &piped_config)
            .env_remove("VDC_API")
            .env_remove("VDC_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let piped_text = String::from_utf8_lossy(&piped.stdout);
    assert!(piped.status.success(), "{piped_text} {}", String::from_utf8_lossy(&piped.stderr));
    assert_eq!(piped_text, text, "a piped bundle plans as its file");
    ok(&dst, &["bundle", "import", f2]).await;
    assert_eq!(only::<SecurityGroup>(&dst, "/security_groups", "web").await.rules.len(), 2);
    assert_eq!(dst.list_all_networks().await.unwrap().len(), 3);
    let out = run(vec!["bundle".into(), "import".into(), f.into()]).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bundle_downgrade"), "{err}");

    // Snapshots stay behind, and the export says so.
    let err = stderr_of(&src, &["bundle", "export", "-O", f2]).await;
    assert!(!err.contains("snapshot"), "{err}");
    ok(&src, &["volume", "create", "data", "--size", "16M", "--wait"]).await;
    ok(&src, &["snapshot", "create", "data", "nightly", "--wait"]).await;
    let err = stderr_of(&src, &["bundle", "export", "-O", f2]).await;
    assert!(err.contains("note: 1 snapshot(s) stay on this site (nightly)"), "{err}");
    s.stop().await;
}

/// `vdc bundle push` (the real binary): a dry run prints the target's plan (exit 1 while a
/// conflict is unresolved; `--map-file` resolves it), the push imports and reports the
/// bytes sent, and a second push of the same state sends none of the image's chunks.
/// One site: it trusts its own key, so another account is the target.
async fn vdc_bundle_push_sends_what_the_target_lacks(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let src = s.account("src").await;
    let dst = s.account("dst").await;
    ok(&src, &["network", "create", "front", "--cidr", "10.70.0.0/24"]).await;
    ok(&dst, &["network", "create", "mine", "--cidr", "10.70.0.0/16"]).await;
    // 8 MiB that do not compress: two chunks.
    let data = vdc_tests::incompressible(8 << 20);
    let img = src.create_image(&vdc_tests::image_request("blob", vdc_schema::ImageFormat::Raw)).await.unwrap();
    src.upload_image(&img.id, data).await.unwrap();
    src.wait_image(&img.id, std::time::Duration::from_secs(30)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    vdc_cli::config::save(&config, &vdc_cli::config::CliConfig::new(s.url(), src.token())).unwrap();
    let maps = dir.path().join("maps");
    std::fs::write(&maps, "# front collides with mine here\n\nnetwork.front.cidr=10.71.0.0/24\n").unwrap();
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = ["bundle", "push", "--to", &s.url()].iter().map(|a| a.to_string()).collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        let (config, token) = (config.clone(), dst.token().to_string());
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(vdc_tests::procs::bin("vdc"))
                .env("VDC_CONFIG", &config)
                .env("VDC_PUSH_TOKEN", token)
                .env_remove("VDC_API")
                .env_remove("VDC_TOKEN")
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let sent = |err: &str| -> u64 {
        let line = err.lines().find(|l| l.starts_with("pushed to ")).unwrap_or_else(|| panic!("{err}"));
        line.split(": ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
    };
    let (code, out, err) = run(&["--dry-run"]).await.unwrap();
    assert_eq!(code, Some(1), "{out} {err}");
    assert!(out.contains("! cidr_overlap"), "{out}");
    assert!(err.contains("1 conflict(s) unresolved"), "{out} {err}");
    let (code, out, err) = run(&["--dry-run", "--map-file", maps.to_str().unwrap()]).await.unwrap();
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("+ network \"front\"") && out.contains("+ image \"blob\""), "{out}");
    assert!(dst.list_all_images().await.unwrap().iter().all(|i| i.public), "a dry run creates nothing");
    assert!(err.contains(&format!("planned at {}: ", s.url())) && !err.contains("pushed"), "{err}");

    let (code, out, err) = run(&["--map-file", maps.to_str().unwrap()]).await.unwrap();
    assert_eq!(code, Some(0), "{out} {err}");
    let first = sent(&err);
    assert!(first > 8 << 20, "{err}");
    assert!(err.contains("2 of 2 chunks sent, 0 held by the target, 0 left out"), "{err}");
    let nets = dst.list_all_networks().await.unwrap();
    assert!(nets.iter().any(|n| n.name == "front" && n.cidr.to_string() == "10.71.0.0/24"));
    assert!(dst.list_all_images().await.unwrap().iter().any(|i| i.name == "blob"));

    // Again: the remap holds (an update of the earlier import), no chunk goes: the
    // target keeps its image and uses none of them.
    let (code, out, err) = run(&[]).await.unwrap();
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(err.contains("0 of 2 chunks sent, 0 held by the target, 2 left out"), "{err}");
    assert!(sent(&err) < 8 << 10, "{err}");
    assert_eq!(dst.list_bundle_imports().await.unwrap().len(), 1);
    // A wrong token at the target: the target's refusal, exit 1.
    let bad = tokio::task::spawn_blocking({
        let config = config.clone();
        let url = s.url();
        move || {
            std::process::Command::new(vdc_tests::procs::bin("vdc"))
                .env("VDC_CONFIG", &config)
                .env_remove("VDC_API")
                .env_remove("VDC_TOKEN")
                .args(["bundle", "push", "--to", &url, "--to-token", "not-a-token"])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unauthorized"), "{}", String::from_utf8_lossy(&bad.stderr));
    s.stop().await;
}

/// `vdc image share|unshare|members`: the image by name or ID, the account by ID (a
/// tenant cannot look accounts up) or, for an admin, by name.
async fn images_are_shared_by_name_or_id(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let (owner, friend) = (s.account("owner").await, s.account("friend").await);
    let accounts = s.admin.list_all_accounts().await.unwrap();
    let friend_id = accounts.iter().find(|a| a.name == "friend").unwrap().id.clone();
    let disk = s.tmp.path().join("golden.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "16M"])
        .status()
        .expect("qemu-img");
    assert!(st.success());
    ok(&owner, &["image", "import", "golden", disk.to_str().unwrap()]).await;
    let img: Image = only(&owner, "/images", "golden").await;
    let invisible = |c: &Client| {
        let (c, id) = (c.clone(), img.id.clone());
        async move { c.get_image(&id).await.is_err_and(|e| e.is_not_found()) }
    };
    assert!(invisible(&friend).await, "private until shared");

    ok(&owner, &["image", "share", "golden", friend_id.as_str()]).await;
    assert_eq!(owner.image_members(&img.id).await.unwrap().members, vec![friend_id.clone()]);
    assert!(!invisible(&friend).await, "the member sees it");
    // Offered: listed with --offered only, and found by its name once accepted.
    let offered = table_of(&friend, &["image", "list", "--offered"]).await;
    assert!(offered.contains(img.id.as_str()), "{offered}");
    assert!(!table_of(&friend, &["image", "list"]).await.contains(img.id.as_str()));
    let err = fails(&friend, &["image", "show", "golden"]).await;
    assert!(err.ends_with("(not_found)"), "{err}");
    let accepted = table_of(&friend, &["image", "accept", img.id.as_str()]).await;
    assert!(accepted.contains(&format!("{friend_id} (accepted)")), "{accepted}");
    let members = table_of(&owner, &["image", "members", "golden"]).await;
    assert!(members.contains(&format!("{friend_id} (accepted)")), "{members}");
    // The member finds it by name and boots it, but cannot share it on.
    let owner_id = accounts_named(&s, "owner").await;
    let shown = table_of(&friend, &["image", "show", "golden"]).await;
    assert!(shown.contains("accepted") && shown.contains(owner_id.as_str()), "{shown}");
    let err = fails(&friend, &["image", "share", "golden", owner_id.as_str()]).await;
    assert!(err.ends_with("(not_image_owner)"), "{err}");
    // Again: still one member (repeat paths are success).
    ok(&owner, &["image", "share", img.id.as_str(), friend_id.as_str()]).await;
    ok(&owner, &["image", "members", "golden"]).await;
    assert_eq!(owner.image_members(&img.id).await.unwrap().members.len(), 1);

    // A tenant cannot name an account: the lookup is refused and nothing changes.
    let err = fails(&owner, &["image", "unshare", "golden", "friend"]).await;
    assert!(err.contains("\"friend\" is not an account ID") && err.contains("give the account's ID"), "{err}");
    assert_eq!(owner.image_members(&img.id).await.unwrap().members.len(), 1);

    ok(&owner, &["image", "unshare", "golden", friend_id.as_str()]).await;
    assert!(owner.image_members(&img.id).await.unwrap().members.is_empty());
    assert!(invisible(&friend).await, "unshared");
    let err = fails(&owner, &["image", "unshare", "golden", friend_id.as_str()]).await;
    assert!(err.ends_with("(not_found)"), "a second unshare: {err}");
    // A member declines an image shared with it unasked (it could not: 404), and learns
    // nothing of the other members.
    let other = s.account("other").await;
    let other_id = accounts_named(&s, "other").await;
    ok(&owner, &["image", "share", "golden", friend_id.as_str()]).await;
    ok(&owner, &["image", "share", "golden", other_id.as_str()]).await;
    let left = table_of(&friend, &["image", "decline", img.id.as_str()]).await;
    assert!(left.contains(&format!("{friend_id} (rejected)")) && !left.contains(other_id.as_str()), "{left}");
    assert!(!table_of(&friend, &["image", "list"]).await.contains(img.id.as_str()), "declined");
    assert!(table_of(&friend, &["image", "list", "--declined"]).await.contains(img.id.as_str()));
    let members = owner.image_members(&img.id).await.unwrap();
    assert!(members.members.contains(&friend_id) && members.members.contains(&other_id), "{members:?}");
    assert_eq!(members.member_status.get(friend_id.as_str()), Some(&MemberStatus::Rejected));
    ok(&friend, &["image", "decline", img.id.as_str()]).await; // again: as it was
                                                               // Nor may a member remove another member.
    assert!(other.unshare_image(&img.id, &friend_id).await.is_err_and(|e| e.code() == "not_image_owner"));
    ok(&owner, &["image", "unshare", "golden", other_id.as_str()]).await;
    ok(&owner, &["image", "unshare", "golden", friend_id.as_str()]).await;

    // `vdc instance capture` by name, waiting for the new image: the simulated host sends
    // back the disk it booted, so the capture is the same blob as `golden`.
    let inst = CreateInstance {
        name: Some("prepared".into()),
        image_id: img.id.clone(),
        cpus: 1,
        memory_mib: 128,
        hypervisor: None,
        ssh_key_id: None,
        user_data: None,
        root_disk_size: None,
        interfaces: vec![],
        server_group: None,
        zone: None,
        host_labels: Default::default(),
    };
    let prepared = owner.create_instance(&inst).await.unwrap().resource;
    vdc_tests::wait_state(&owner, &prepared.id, vdc_schema::InstanceState::Running).await;
    // Running: captured as it runs; then stopped, captured as it is.
    ok(&owner, &["instance", "capture", "prepared", "--image-name", "golden-live", "--wait"]).await;
    let live: Image = only(&owner, "/images", "golden-live").await;
    assert_eq!((live.state, live.checksum.as_ref()), (vdc_schema::ImageState::Available, img.checksum.as_ref()));
    ok(&owner, &["instance", "stop", "prepared", "--wait"]).await;
    ok(&owner, &["instance", "capture", "prepared", "--image-name", "golden2", "--os", "custom", "--wait"]).await;
    let golden2: Image = only(&owner, "/images", "golden2").await;
    assert_eq!((golden2.state, golden2.os.as_deref()), (vdc_schema::ImageState::Available, Some("custom")));
    assert_eq!(golden2.checksum, img.checksum);

    // An admin may name the account; the image is then the admin's own to share.
    ok(&s.admin, &["image", "import", "adm", disk.to_str().unwrap()]).await;
    ok(&s.admin, &["image", "share", "adm", "friend"]).await;
    let adm: Image = only(&s.admin, "/images", "adm").await;
    assert_eq!(s.admin.image_members(&adm.id).await.unwrap().members, vec![friend_id]);
    s.stop().await;
}

/// Two all-in-ones (`vdc up --sim`, each a process with a data directory of its own), as
/// two laptops: B refuses A's bundle until B runs with `--trust-key` A's key, then imports
/// it (after a SIGKILL and a start again on the same data). A malformed key stops
/// `vdc up` before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vdc_up_imports_bundles_of_the_keys_it_is_told_to_trust() {
    use std::process::Command;
    use vdc_tests::procs::{bin, free_port, wait_port, Proc};
    let dir = tempfile::tempdir().unwrap();
    let up = |name: &str, port: u16, extra: &[&str]| {
        let mut cmd = Command::new(bin("vdc"));
        cmd.env("VDC_CONFIG", dir.path().join(format!("{name}.toml")))
            .env("RUST_LOG", "warn")
            .args(["up", "--sim", "--no-external", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path().join(name))
            .args(extra);
        cmd
    };
    let bad = up("bad", free_port(), &["--trust-key", "not-a-key"]).output().unwrap();
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && said.contains("--trust-key \"not-a-key\""), "{said}");
    assert!(!dir.path().join("bad/vdc.db").exists(), "nothing started");

    let admin = |name: &str, port: u16| {
        let token = std::fs::read_to_string(dir.path().join(name).join("admin-token")).unwrap();
        Client::new(format!("http://127.0.0.1:{port}"), token.trim())
    };
    let (pa, pb) = (free_port(), free_port());
    let _a = Proc::spawn("a", &mut up("a", pa, &[]), dir.path());
    assert!(wait_port(pa, std::time::Duration::from_secs(60)), "A answers");
    let a = admin("a", pa);
    let net = CreateNetwork {
        name: "laptop".into(),
        cidr: "10.42.0.0/24".into(),
        gateway: None,
        dhcp_start: None,
        dhcp_end: None,
    };
    a.create_network(&net).await.unwrap();
    let mut bundle = Vec::new();
    a.export_bundle(true, false, &mut bundle, |_| {}).await.unwrap();
    let key = a.bundle_key().await.unwrap().public_key;

    let mut b = Proc::spawn("b", &mut up("b", pb, &[]), dir.path());
    assert!(wait_port(pb, std::time::Duration::from_secs(60)), "B answers");
    let refused = admin("b", pb).import_bundle(bundle.clone(), &[]).await.unwrap_err();
    assert_eq!(refused.code(), "bundle_untrusted_key", "{refused}");
    b.kill();
    let _b = Proc::spawn("b2", &mut up("b", pb, &["--trust-key", &key]), dir.path());
    assert!(wait_port(pb, std::time::Duration::from_secs(60)), "B answers again");
    let done = admin("b", pb).import_bundle(bundle, &[]).await.unwrap();
    assert!(done.created);
    let nets = admin("b", pb).list_all_networks().await.unwrap();
    assert!(nets.iter().any(|n| n.name == "laptop" && n.cidr.to_string() == "10.42.0.0/24"), "{nets:?}");
}

/// `vdc up` registers its built-in images at every start unless they are there. Its admin
/// deleted `tiny` while an instance still booted from it, so the name stayed held: the
/// next start failed on that name and the cloud could not be started at all. It starts
/// without the image then, and registers it again once the deleted one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vdc_up_starts_again_when_its_deleted_built_in_image_is_still_used() {
    use std::process::Command;
    use vdc_tests::procs::{bin, free_port, wait_port, Proc};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let up = || {
        let mut cmd = Command::new(bin("vdc"));
        cmd.env("VDC_CONFIG", dir.path().join("cli.toml"))
            .env("RUST_LOG", "warn")
            .args(["up", "--sim", "--no-external", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path().join("data"));
        cmd
    };
    // Started once the CLI config is written, after the built-in images are registered.
    let start = |n: usize| {
        let cfg = dir.path().join("cli.toml");
        let _ = std::fs::remove_file(&cfg);
        let p = Proc::spawn(&format!("up{n}"), &mut up(), dir.path());
        assert!(wait_port(port, std::time::Duration::from_secs(60)), "start {n} answers");
        let t = std::time::Instant::now();
        while !cfg.exists() && t.elapsed() < std::time::Duration::from_secs(60) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(cfg.exists(), "start {n} ends");
        p
    };
    let admin = || {
        let token = std::fs::read_to_string(dir.path().join("data/admin-token")).unwrap();
        Client::new(format!("http://127.0.0.1:{port}"), token.trim())
    };
    let tiny = |c: Client| async move { c.list_all_images().await.unwrap().into_iter().find(|i| i.name == "tiny") };
    let mut first = start(1);
    // A second one on the same data directory is refused before it starts or changes
    // anything (it stopped the first one's Open vSwitch before its dcmgr found the
    // database locked), and the first keeps answering.
    let other = format!("127.0.0.1:{}", free_port());
    let mut again = Command::new(bin("vdc"));
    again
        .env("VDC_CONFIG", dir.path().join("cli-again.toml"))
        .args(["up", "--sim", "--no-external", "--listen", &other, "--data-dir"])
        .arg(dir.path().join("data"))
        .stdin(std::process::Stdio::null());
    let refused = tokio::task::spawn_blocking(move || again.output().unwrap()).await.unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a second vdc up on the same data directory ran");
    assert!(
        said.contains("another vdc up runs on the data directory") && said.contains("nothing was started"),
        "{said}"
    );
    assert!(admin().whoami().await.is_ok(), "the first still answers");
    // One that fails to start (the first's port is taken) on a new data directory
    // leaves no data directory behind.
    let fresh = dir.path().join("fresh");
    let mut busy = Command::new(bin("vdc"));
    busy.env("VDC_CONFIG", dir.path().join("cli-busy.toml"))
        .args(["up", "--sim", "--no-external", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&fresh)
        .stdin(std::process::Stdio::null());
    let failed = tokio::task::spawn_blocking(move || busy.output().unwrap()).await.unwrap();
    assert!(!failed.status.success(), "a vdc up on a taken port ran");
    assert!(!fresh.exists(), "{} left behind: {}", fresh.display(), String::from_utf8_lossy(&failed.stderr));
    assert!(admin().whoami().await.is_ok(), "the first still answers");
    let image = tiny(admin()).await.expect("registered at the first start");
    let req = vdc_tests::qemu_guest(&image.id, "keeps-it");
    let inst = admin().create_instance(&req).await.unwrap().resource.id;
    vdc_tests::wait_state(&admin(), &inst, InstanceState::Running).await;
    admin().delete_image(&image.id).await.unwrap();
    first.kill();

    let mut second = start(2);
    assert!(tiny(admin()).await.is_none(), "not registered while the deleted one holds its name");
    let t = admin().terminate_instance(&inst).await.unwrap();
    admin().wait_job(&t.job.id, std::time::Duration::from_secs(15)).await.unwrap();
    let probe = vdc_tests::image_request("tiny", ImageFormat::Raw);
    let free =
        vdc_tests::eventually(std::time::Duration::from_secs(20), || async { admin().create_image(&probe).await.ok() })
            .await
            .expect("the deleted image is collected once no instance uses it");
    admin().delete_image(&free.id).await.unwrap();
    second.kill();
    let _third = start(3);
    assert!(tiny(admin()).await.is_some_and(|i| i.public), "registered again");
}

/// An admin's `vdc --account ACCOUNT token …`: the list and the revoke act in that
/// account (they acted in the admin's own, and revoked the admin's token of the same
/// name), and a create for a user who is no member says what to do.
async fn an_admin_manages_the_tokens_of_the_account_it_names(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let alice = s.account("alice").await;
    let theirs = alice.create_token(&token_req("deploy")).await.unwrap();
    let mine = s.admin.create_token(&token_req("deploy")).await.unwrap();
    vdc_in(&s.admin, "alice", &["token", "list"]).await.unwrap();
    vdc_in(&s.admin, "alice", &["token", "revoke", "deploy"]).await.unwrap();
    let live =
        |c: Client| async move { c.list_all_tokens().await.unwrap().into_iter().map(|t| t.id).collect::<Vec<_>>() };
    assert!(!live(alice.clone()).await.contains(&theirs.token.id), "alice's deploy is revoked");
    assert!(live(s.admin.clone()).await.contains(&mine.token.id), "the admin's own deploy is not");
    let e = vdc_in(&s.admin, "alice", &["token", "create", "ci"]).await.unwrap_err().report();
    assert!(e.contains("--user NAME"), "{e}");
    // An owner who is no admin names the account as `vdc login` keeps it, by its name:
    // members and tokens were refused ("only an admin can look accounts up by name").
    let bob = s.admin.create_user(&CreateUser { name: "bob".into(), admin: false, password: None }).await.unwrap();
    vdc_in(&alice, "alice", &["account", "member", "add", "bob", "--role", "reader"]).await.unwrap();
    vdc_in(&alice, "alice", &["account", "member", "list"]).await.unwrap();
    vdc_in(&alice, "alice", &["token", "create", "ci"]).await.unwrap();
    let members = alice.list_members(&alice.whoami().await.unwrap().account.id).await.unwrap();
    assert!(members.iter().any(|m| m.user_id == bob.id && m.role == vdc_schema::Role::Reader), "{members:?}");
    let e = vdc_in(&alice, "bobs", &["account", "member", "list"]).await.unwrap_err().report();
    assert!(e.contains("bobs"), "{e}");
    s.stop().await;
}

async fn accounts_named(s: &Stack, name: &str) -> vdc_schema::id::AccountId {
    s.admin.list_all_accounts().await.unwrap().into_iter().find(|a| a.name == name).unwrap().id
}

fn token_req(name: &str) -> CreateToken {
    CreateToken { name: name.into(), account_id: None, expires_at: None, role: None, user_id: None }
}
