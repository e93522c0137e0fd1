//! The web console in a real browser (issue 14): headless Chromium driven through
//! chromedriver's WebDriver protocol (plain HTTP with reqwest: a handful of calls, no
//! WebDriver crate needed). A dcmgr on the suites' simulated stack; a user with a password
//! in two accounts, each with a network and an instance. The browser signs in with a wrong
//! password (the error is shown), then the right one; sees its user name, account and role;
//! lists instances and networks; switches to the other account and sees its objects (and
//! one made meanwhile through the API, which the event stream brings); opens
//! the account panel (quotas with usage); signs out, and the session's token no longer works
//! through the API. Signed in again, a session revoked behind its back sends it back to the
//! sign-in form with a message. Then the admin's API token: an operator picks beta in the
//! account select (a member of no tenant account), sees beta's objects and events, and
//! goes back to its own.
//!
//! Needs `chromium` and `chromium-driver` (packaging/install-deps.sh installs them); it
//! fails, not skips, without them.

use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vdc_schema::api::*;
use vdc_schema::state::Role;
use vdc_schema::{ImageFormat, ImageState, InstanceState};
use vdc_tests::{Db, Stack, StackOptions};

const PASSWORD: &str = "browser-password-1";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver in a process group of its own, with the Chromium it starts: the whole
/// group is killed (by its ID) when dropped, also when the test fails half-way.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One WebDriver session of headless Chromium.
struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    async fn start() -> (Driver, Browser) {
        Browser::start_saving_to(None).await
    }

    /// With `downloads`, files the page downloads are saved there without asking.
    async fn start_saving_to(downloads: Option<&std::path::Path>) -> (Driver, Browser) {
        let bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromedriver is missing: run packaging/install-deps.sh (Debian's chromium-driver)");
        assert!(
            std::path::Path::new("/usr/bin/chromium").exists(),
            "chromium is missing: run packaging/install-deps.sh (Debian's chromium)"
        );
        let port = free_port();
        let child = Command::new(bin)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let driver = Driver { child, url: format!("http://127.0.0.1:{port}"), _profile: profile };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http.get(format!("{}/status", driver.url)).send().await;
            if let Ok(r) = ready {
                let v: Value = r.json().await.unwrap_or_default();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--disable-crash-reporter",
            "--disable-breakpad",
            "--window-size=1280,900",
            "--lang=en-US",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", driver._profile.path().display())])
        .collect::<Vec<_>>();
        let mut options = json!({"binary": "/usr/bin/chromium", "args": args});
        if let Some(dir) = downloads {
            options["prefs"] = json!({
                "download.default_directory": dir.to_str().unwrap(),
                "download.prompt_for_download": false,
            });
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}});
        let resp: Value =
            http.post(format!("{}/session", driver.url)).json(&caps).send().await.unwrap().json().await.unwrap();
        let id = resp["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {resp}"));
        let base = format!("{}/session/{id}", driver.url);
        (driver, Browser { http, base })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if v["value"].get("error").is_some() {
            panic!("WebDriver {method} {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    /// Runs `script` (a function body; `arguments` as given) in the page.
    async fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": args}))).await
    }

    async fn find(&self, css: &str) -> String {
        let v = self.cmd(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("finding {css}: {v}")).to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/clear"), Some(json!({}))).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/value"), Some(json!({"text": text}))).await;
    }

    /// Chooses `path` in the file input `css`.
    async fn choose_file(&self, css: &str, path: &std::path::Path) {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/value"), Some(json!({"text": path.to_str().unwrap()})))
            .await;
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/click"), Some(json!({}))).await;
    }

    /// Waits until `script` returns a truthy value (up to 20 s) and returns it.
    async fn wait(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.js(script, json!([])).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            if Instant::now() > deadline {
                let page = self.js("return document.body.innerText", json!([])).await;
                let refused = self.js("return JSON.stringify(app.refused)", json!([])).await;
                panic!(
                    "waited 20 s for {what}; the page shows:\n{}\ncalls refused 401: {}",
                    page.as_str().unwrap_or_default(),
                    refused.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The visible text of the element, once it is shown and has some.
    async fn text_of(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({css:?}); return e && !e.closest('[hidden]') ? e.textContent.trim() : ''"
        );
        self.wait(&format!("text in {css}"), &script).await.as_str().unwrap().to_owned()
    }

    async fn quit(&self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

/// The main view's text once a table or an empty note is in it.
async fn view_text(b: &Browser, view: &str) -> String {
    b.js(&format!("location.hash = '#{view}'"), json!([])).await;
    let script = format!(
        "const v = document.querySelector('#view'); \
         return location.hash === '#{view}' && v && !v.hidden && v.querySelector('table, .empty') ? v.innerText : ''"
    );
    b.wait(&format!("the {view} view"), &script).await.as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_signs_in_switches_accounts_and_signs_out() {
    // A user with a password, a member of two accounts that hold a network and an instance each.
    let (s, alpha, beta) = stack_with_member("hana").await;
    let url = s.url();
    for (c, net, cidr, inst) in
        [(&alpha, "alpha-net", "10.71.0.0/24", "alpha-web"), (&beta, "beta-net", "10.72.0.0/24", "beta-db")]
    {
        c.post::<_, Value>("/networks", &json!({"name": net, "cidr": cidr})).await.unwrap();
        s.running_instance(c, inst).await;
    }

    let (_driver, b) = Browser::start().await;
    let started = Instant::now();
    b.goto(&format!("{url}/console/")).await;
    b.wait("the sign-in form", "return !document.querySelector('#password-form').hidden").await;

    // A wrong password: the error is shown, nothing else.
    b.type_into("#user-input", "hana").await;
    b.type_into("#password-input", "not-her-password").await;
    b.click("#password-form button[type=submit]").await;
    let error = b.text_of("#signin-error").await;
    assert_eq!(error, "The user name or the password is wrong.");
    assert_eq!(b.js("return document.querySelector('#who').hidden", json!([])).await, true);

    // The right one: signed in as hana in alpha (the first account by name), a member.
    b.type_into("#password-input", PASSWORD).await;
    b.click("#password-form button[type=submit]").await;
    assert_eq!(b.text_of("#who-user").await, "hana");
    assert_eq!(b.text_of("#who-role").await, "member");
    let selected = b
        .wait("the account select", "return document.querySelector('#account-select').selectedOptions[0]?.textContent")
        .await;
    assert_eq!(selected, "alpha");
    let instances = view_text(&b, "instances").await;
    assert!(instances.contains("alpha-web") && !instances.contains("beta-db"), "{instances}");
    // Jobs: one page, newest first.
    let jobs = view_text(&b, "jobs").await;
    assert!(jobs.contains("instance.create"), "{jobs}");
    let networks = view_text(&b, "networks").await;
    assert!(networks.contains("alpha-net") && !networks.contains("beta-net"), "{networks}");
    let first_token = b.js("return localStorage.getItem('vdc.console.token')", json!([])).await;
    let first_token = first_token.as_str().unwrap().to_owned();

    // Switch to beta: its objects, not alpha's; the first session is revoked.
    let beta_id = beta.whoami().await.unwrap().account.id;
    b.click(&format!("#account-select option[value='{beta_id}']")).await;
    b.wait(
        "the switch to beta",
        "return document.querySelector('#account-select').selectedOptions[0]?.textContent === 'beta'",
    )
    .await;
    let networks = b
        .wait(
            "beta's networks",
            "const v = document.querySelector('#view'); \
             return v && v.innerText.includes('beta-net') && !v.innerText.includes('alpha-net') ? v.innerText : ''",
        )
        .await;
    assert!(networks.as_str().unwrap().contains("beta-net"));
    let instances = view_text(&b, "instances").await;
    assert!(instances.contains("beta-db") && !instances.contains("alpha-web"), "{instances}");
    let old = vdc_cli::client::Client::new(&url, &first_token).whoami().await.unwrap_err();
    assert_eq!(old.code(), "token_revoked");

    // Live: the console follows the event stream. A network made elsewhere appears in the
    // networks view on screen, which has nothing under way and so never polls.
    let networks = view_text(&b, "networks").await;
    assert!(!networks.contains("beta-live"), "{networks}");
    b.wait("the event stream", "return live.connected && app.timer === 0").await;
    let made = Instant::now();
    beta.post::<_, Value>("/networks", &json!({"name": "beta-live", "cidr": "10.73.0.0/24"})).await.unwrap();
    b.wait(
        "the new network, through the event stream",
        "return location.hash === '#networks' && document.querySelector('#view').innerText.includes('beta-live')",
    )
    .await;
    eprintln!("a network made through the API was on screen {:?} later", made.elapsed());
    assert_eq!(b.js("return app.timer", json!([])).await, 0, "shown without polling");

    // The account panel: who, and the quotas with what is in use.
    let account = view_text(&b, "account").await;
    assert!(account.contains("hana") && account.contains("beta") && account.contains("instances"), "{account}");

    // A volume filled from a disk image, its size left to the image's disk (3 MiB and a
    // byte of raw data: 4 MiB).
    let img = beta.create_image(&vdc_tests::image_request("beta-disk", ImageFormat::Raw)).await.unwrap();
    let img = beta.upload_image(&img.id, vec![7u8; (3 << 20) + 1]).await.unwrap();
    assert_eq!(img.virtual_size, Some((3 << 20) + 1));
    view_text(&b, "images").await;
    let row = b
        .wait(
            "the image's row",
            "const r = [...document.querySelectorAll('#view tr')].find((r) => r.innerText.includes('beta-disk')); \
             return r ? r.innerText : ''",
        )
        .await;
    assert!(row.as_str().unwrap().contains("4 MiB"), "the image's disk size in its row: {row}");
    view_text(&b, "volumes").await;
    b.js(
        "[...document.querySelectorAll('#view button.primary')].find((x) => x.textContent === 'Create volume').click()",
        json!([]),
    )
    .await;
    b.wait("the volume form", "return !!document.querySelector('#view .panel input[value=image]')").await;
    b.js(
        "const p = document.querySelector('#view .panel');          p.querySelector('input[value=image]').click();          const name = p.querySelector('input:not([type])') || p.querySelector('input[type=text]');          name.value = 'filled';          const sel = [...p.querySelectorAll('select')].find((x) => !x.closest('.field').hidden);          sel.value = arguments[0];          p.querySelector('button[type=submit]').click();",
        json!([img.id.as_str()]),
    )
    .await;
    b.wait("the filled volume", "return document.querySelector('#view').innerText.includes('filled')").await;
    let vol = beta.list_all_volumes().await.unwrap().into_iter().find(|v| v.name == "filled").expect("created");
    assert_eq!((vol.size_mib, vol.image_id.as_ref()), (4, Some(&img.id)), "the image's disk size, rounded up");

    // Sign out: back to the form, and the session's token no longer works.
    let token = b.js("return localStorage.getItem('vdc.console.token')", json!([])).await;
    let token = token.as_str().unwrap().to_owned();
    assert_eq!(vdc_cli::client::Client::new(&url, &token).whoami().await.unwrap().account.name, "beta");
    b.click("#sign-out").await;
    assert_eq!(b.text_of("#signin-error").await, "You have signed out.");
    b.wait("the sign-in form", "return !document.querySelector('#password-form').hidden").await;
    let gone = vdc_cli::client::Client::new(&url, &token).whoami().await.unwrap_err();
    assert_eq!(gone.code(), "token_revoked");
    assert_eq!(b.js("return localStorage.getItem('vdc.console.token')", json!([])).await, Value::Null);

    // Signed in again; the session revoked behind the console's back (as an expired one
    // is refused): the next call returns to the sign-in form with a message.
    b.type_into("#user-input", "hana").await;
    b.type_into("#password-input", PASSWORD).await;
    b.click("#password-form button[type=submit]").await;
    assert_eq!(b.text_of("#who-user").await, "hana");
    let token = b.js("return localStorage.getItem('vdc.console.token')", json!([])).await;
    let session = vdc_cli::client::Client::new(&url, token.as_str().unwrap());
    let me = session.whoami().await.unwrap();
    alpha.revoke_token(&me.token.id).await.unwrap();
    // The next call the console makes (here: opening another view) is refused.
    b.js("location.hash = '#networks'", json!([])).await;
    let message = b.text_of("#signin-error").await;
    assert!(message.contains("Please sign in again"), "{message}");

    // An operator (the admin's API token, a member of no tenant account) picks beta in the
    // select: beta's objects, and beta's events, without a session of beta; then back.
    b.wait("the sign-in form", "return !document.querySelector('#password-form').hidden").await;
    b.click("#use-token").await;
    b.type_into("#token-input", &s.admin_token).await;
    b.click("#signin-form button[type=submit]").await;
    b.wait(
        "the admin's accounts",
        &format!(
            "return app.who && app.who.admin && app.allAccounts && app.allAccounts.length > 0 \
             && !!document.querySelector(\"#account-select option[value='{beta_id}']\")"
        ),
    )
    .await;
    let own = b.js("return document.querySelector('#account-select').value", json!([])).await;
    b.click(&format!("#account-select option[value='{beta_id}']")).await;
    b.wait("acting in beta", &format!("return app.actIn === '{beta_id}' && app.who.account.id === '{beta_id}'")).await;
    let instances = b
        .wait(
            "beta's instances, for the admin",
            "location.hash = '#instances'; const v = document.querySelector('#view'); \
             return v.innerText.includes('beta-db') ? v.innerText : ''",
        )
        .await;
    assert!(!instances.as_str().unwrap().contains("alpha-web"), "{instances}");
    assert_eq!(b.text_of("#who-role").await, "owner, administrator");
    view_text(&b, "networks").await;
    b.wait("the event stream, in beta", "return live.connected && live.actIn !== ''").await;
    beta.post::<_, Value>("/networks", &json!({"name": "beta-ops", "cidr": "10.74.0.0/24"})).await.unwrap();
    b.wait(
        "beta's new network, through beta's event stream",
        "return location.hash === '#networks' && document.querySelector('#view').innerText.includes('beta-ops')",
    )
    .await;
    b.click(&format!("#account-select option[value='{}']", own.as_str().unwrap())).await;
    b.wait(
        "the admin's own account again",
        "const v = document.querySelector('#view'); \
         return location.hash === '#networks' && !app.actIn && v.querySelector('table, .empty') && !v.innerText.includes('beta-') ? 'yes' : ''",
    )
    .await;
    // The hosts view: what the host holds, of every account, when opened.
    view_text(&b, "hosts").await;
    // Clicked from the page's script: the view may be drawn again between a find and a click.
    b.js("document.querySelector('#view details summary').click()", json!([])).await;
    let held = b
        .wait(
            "the host's instances",
            "const u = document.querySelector('#view details ul.held'); return u ? u.innerText : ''",
        )
        .await;
    let held = held.as_str().unwrap();
    assert!(held.contains("alpha-web · alpha") && held.contains("beta-db · beta"), "{held}");
    // Cordoned from the console, and opened again: the API and the view say so.
    let host = s.admin.list_all_host_nodes().await.unwrap().remove(0).id;
    b.js(&format!("document.querySelector('[data-fk=\"cordon:{host}\"]').click()"), json!([])).await;
    b.wait(
        "the host shown cordoned",
        &format!("return document.querySelector('[data-fk=\"uncordon:{host}\"]') && document.querySelector('#view').innerText.includes('Cordoned')"),
    )
    .await;
    assert!(!s.admin.get_host_node(&host).await.unwrap().schedulable);
    b.js(&format!("document.querySelector('[data-fk=\"uncordon:{host}\"]').click()"), json!([])).await;
    b.wait("the host open again", &format!("return document.querySelector('[data-fk=\"cordon:{host}\"]')")).await;
    assert!(s.admin.get_host_node(&host).await.unwrap().schedulable);
    // The instances view: every account's at once, each row naming its account.
    view_text(&b, "instances").await;
    b.js("document.querySelector('#every-account').click()", json!([])).await;
    let rows = b
        .wait(
            "every account's instances",
            "const rows = [...document.querySelectorAll('#view table tbody tr')].map((r) => \
               [...r.cells].slice(1, 3).map((c) => c.innerText.trim()).join(' ')); \
             return rows.includes('alpha alpha-web') && rows.includes('beta beta-db') ? rows.join(', ') : ''",
        )
        .await;
    eprintln!("every account's instances: {rows}");
    eprintln!("the browser part took {:?}", started.elapsed());
    b.quit().await;
    s.stop().await;
}

/// The Floating IPs view: an address allocated, associated with an instance's interface,
/// disassociated and released, each from the console (it had no view of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_allocates_associates_and_releases_a_floating_ip() {
    let (s, alpha, _beta) = stack_with_member("mio").await;
    let vm = s.running_instance(&alpha, "web").await;
    let (_driver, b) = Browser::start().await;
    sign_in(&b, &s.url(), "mio").await;
    view_text(&b, "floating-ips").await;
    b.js(
        "[...document.querySelectorAll('#view button.primary')].find((x) => x.textContent === 'Allocate address').click()",
        json!([]),
    )
    .await;
    b.wait("the allocate form", "return !!document.querySelector('#fip-ip')").await;
    b.js("document.querySelector('#fip-ip').form.querySelector('button[type=submit]').click()", json!([])).await;
    let fip = vdc_tests::eventually(Duration::from_secs(20), || async {
        alpha.list_all_floating_ips().await.unwrap().into_iter().next()
    })
    .await
    .expect("allocated from the console");
    let button = |action: &str| format!("document.querySelector('[data-fk=\"{action}:{}\"]')", fip.id);
    b.wait("its row", &format!("const x = {}; return !!x && !x.disabled", button("associate"))).await;
    b.js(&format!("{}.click()", button("associate")), json!([])).await;
    b.wait("the associate form", "return !!document.querySelector('#fip-target')").await;
    let offered = b.text_of("#fip-target").await;
    assert!(offered.contains(vm.id.as_str()) && offered.contains(&vm.interfaces[0].ip.to_string()), "{offered}");
    b.js("document.querySelector('#fip-target').form.querySelector('button[type=submit]').click()", json!([])).await;
    let on = vdc_tests::eventually(Duration::from_secs(20), || async {
        let f = alpha.get_floating_ip(&fip.id).await.unwrap();
        f.instance_id.is_some().then_some(f)
    })
    .await
    .expect("associated from the console");
    assert_eq!((on.instance_id.as_ref(), on.interface_id.as_ref()), (Some(&vm.id), Some(&vm.interfaces[0].id)));
    b.wait("the disassociate button", &format!("return !!{}", button("disassociate"))).await;
    let row = b.text_of("#view table").await;
    assert!(row.contains(&fip.ip.to_string()) && row.contains(&vm.interfaces[0].ip.to_string()), "{row}");
    b.js(&format!("{}.click()", button("disassociate")), json!([])).await;
    vdc_tests::eventually(Duration::from_secs(20), || async {
        alpha.get_floating_ip(&fip.id).await.unwrap().instance_id.is_none().then_some(())
    })
    .await
    .expect("disassociated from the console");
    b.wait("release enabled", &format!("const x = {}; return !!x && !x.disabled", button("del"))).await;
    b.js(&format!("{}.click()", button("del")), json!([])).await;
    b.wait("the confirmation", "return !!document.querySelector('dialog[open] button.danger')").await;
    b.js("document.querySelector('dialog[open] button.danger').click()", json!([])).await;
    vdc_tests::eventually(Duration::from_secs(20), || async {
        alpha.list_all_floating_ips().await.unwrap().is_empty().then_some(())
    })
    .await
    .expect("released from the console");
    b.quit().await;
    s.stop().await;
}

/// The Server groups view makes a group, and the launch form puts an instance in it; a
/// group with members cannot be deleted there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_makes_a_server_group_and_launches_into_it() {
    let (s, alpha, _beta) = stack_with_member("ren").await;
    let (_driver, b) = Browser::start().await;
    sign_in(&b, &s.url(), "ren").await;
    view_text(&b, "server-groups").await;
    b.js(
        "[...document.querySelectorAll('#view button.primary')].find((x) => x.textContent === 'Create server group').click()",
        json!([]),
    )
    .await;
    b.wait("the form", "return !!document.querySelector('#server-group-name')").await;
    b.js(
        "document.querySelector('#server-group-name').value = 'web'; \
         document.querySelector('#server-group-policy').value = 'soft-anti-affinity'; \
         document.querySelector('#server-group-name').form.querySelector('button[type=submit]').click();",
        json!([]),
    )
    .await;
    let group = vdc_tests::eventually(Duration::from_secs(20), || async {
        alpha.get::<Page<ServerGroup>>("/server_groups").await.unwrap().items.into_iter().find(|g| g.name == "web")
    })
    .await
    .expect("made from the console");
    assert_eq!(group.policy, vdc_schema::ServerGroupPolicy::SoftAntiAffinity);

    view_text(&b, "instances").await;
    b.js(
        "[...document.querySelectorAll('#view button.primary')].find((x) => x.textContent === 'Launch instance').click()",
        json!([]),
    )
    .await;
    b.wait("the launch form", "return !!document.querySelector('#launch-server-group')").await;
    b.js(
        "const g = document.querySelector('#launch-server-group'); g.value = arguments[0]; \
         const f = g.form; f.querySelector('input[name=name]').value = 'in-group'; \
         f.querySelector('button[type=submit]').click();",
        json!([group.id.as_str()]),
    )
    .await;
    let vm = vdc_tests::eventually(Duration::from_secs(20), || async {
        alpha.list_all_instances().await.unwrap().into_iter().find(|i| i.name == "in-group")
    })
    .await
    .expect("launched from the console");
    assert_eq!(vm.server_group_id.as_ref(), Some(&group.id));
    view_text(&b, "server-groups").await;
    let del = format!("document.querySelector('[data-fk=\"del:{}\"]')", group.id);
    b.wait(
        "the member listed, delete disabled",
        &format!(
            "return document.querySelector('#view').innerText.includes('in-group') && {del}.disabled ? 'yes' : ''"
        ),
    )
    .await;
    b.quit().await;
    s.stop().await;
}

/// The Account view makes an API token (its secret shown once, and it works), revokes it,
/// and changes the user's own password: the current one is asked (a wrong one is refused
/// there and changes nothing), and the new one then signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_manages_tokens_members_and_the_users_own_password() {
    let (s, alpha, _beta) = stack_with_member("sora").await;
    let url = s.url();
    // Sora owns alpha, where the console adds kai and takes kai out again.
    let alpha_id = alpha.whoami().await.unwrap().account.id;
    alpha.add_member(&alpha_id, &AddMember { user: "sora".into(), role: Role::Owner }).await.unwrap();
    s.admin.create_user(&CreateUser { name: "kai".into(), admin: false, password: None }).await.unwrap();
    let (_driver, b) = Browser::start().await;
    sign_in(&b, &url, "sora").await;
    view_text(&b, "account").await;
    // The session it signed in with is listed, marked.
    b.wait("the tokens", "return document.querySelector('#view').innerText.includes('This session') ? 'yes' : ''")
        .await;

    let kai = |c: &vdc_cli::client::Client| {
        let (c, id) = (c.clone(), alpha_id.clone());
        async move { c.list_members(&id).await.unwrap().into_iter().find(|m| m.user_name == "kai").map(|m| m.role) }
    };
    b.wait("the member form", "return !!document.querySelector('#member-user')").await;
    b.js(
        "document.querySelector('#member-user').value = 'kai'; document.querySelector('#member-role').value = 'reader'; \
         document.querySelector('#member-add button[type=submit]').click();",
        json!([]),
    )
    .await;
    vdc_tests::eventually(Duration::from_secs(20), || async {
        (kai(&alpha).await == Some(Role::Reader)).then_some(())
    })
    .await
    .expect("kai added from the console");
    let users = s.admin.list_users(&ListQuery::default()).await.unwrap().items;
    let kai_id = users.into_iter().find(|u| u.name == "kai").unwrap().id;
    let remove = format!("document.querySelector('[data-fk=\"unmember:{kai_id}\"]')");
    b.wait("kai's row", &format!("return !!{remove}")).await;
    b.js(&format!("{remove}.click()"), json!([])).await;
    b.wait("the confirmation", "return !!document.querySelector('dialog[open] button.danger')").await;
    b.js("document.querySelector('dialog[open] button.danger').click()", json!([])).await;
    vdc_tests::eventually(Duration::from_secs(20), || async { kai(&alpha).await.is_none().then_some(()) })
        .await
        .expect("kai removed from the console");

    b.js(
        "document.querySelector('#token-name').value = 'laptop'; \
         document.querySelector('#token-expires').value = '30'; \
         document.querySelector('#token-role').value = 'reader'; \
         document.querySelector('#token-create button[type=submit]').click();",
        json!([]),
    )
    .await;
    let secret =
        b.wait("the secret", "const x = document.querySelector('#token-secret'); return x ? x.value : ''").await;
    let token = vdc_cli::client::Client::new(url.clone(), secret.as_str().unwrap());
    let who = token.whoami().await.unwrap();
    assert_eq!((who.user.name.as_str(), who.role, who.token.name.as_str()), ("sora", Role::Reader, "laptop"));
    assert!(who.token.expires_at.is_some());
    b.js("document.querySelector('dialog[open] button[type=submit]').click()", json!([])).await;
    b.wait("the token's row", &format!("return !!document.querySelector('[data-fk=\"revoke:{}\"]')", who.token.id))
        .await;
    b.js(&format!("document.querySelector('[data-fk=\"revoke:{}\"]').click()", who.token.id), json!([])).await;
    b.wait("the confirmation", "return !!document.querySelector('dialog[open] button.danger')").await;
    b.js("document.querySelector('dialog[open] button.danger').click()", json!([])).await;
    vdc_tests::eventually(Duration::from_secs(20), || async {
        (token.whoami().await.err()?.code() == "token_revoked").then_some(())
    })
    .await
    .expect("revoked from the console");
    let fill = |current: &str| {
        format!(
            "document.querySelector('#password-current').value = {current:?}; \
             document.querySelector('#password-new').value = 'sora-new-password'; \
             document.querySelector('#password-again').value = 'sora-new-password'; \
             document.querySelector('#password-change button[type=submit]').click();"
        )
    };
    b.js(&fill("not-her-password"), json!([])).await;
    let said = b.text_of("#password-change .form-error").await;
    assert!(said.contains("wrong_password"), "{said}");
    // In Japanese the code is explained first (the API's messages are English).
    b.js(
        "const l = document.querySelector('#lang-select'); l.value = 'ja'; l.dispatchEvent(new Event('change'));",
        json!([]),
    )
    .await;
    b.wait("Japanese", "return document.documentElement.lang === 'ja' ? 'yes' : ''").await;
    b.js(&fill("still-not-her-password"), json!([])).await;
    let said = b
        .wait(
            "the error in Japanese",
            "const e = document.querySelector('#password-change .form-error'); \
             return e && !e.hidden && e.textContent.startsWith('現在のパスワードが違います') ? e.textContent : ''",
        )
        .await;
    assert!(said.as_str().unwrap().contains("wrong_password"), "{said}");
    b.js(
        "const l = document.querySelector('#lang-select'); l.value = 'en'; l.dispatchEvent(new Event('change'));",
        json!([]),
    )
    .await;
    b.wait("English", "return document.documentElement.lang === 'en' ? 'yes' : ''").await;
    let with = |password: &str| {
        let req = CreateSession { user: "sora".into(), password: password.into(), account: None };
        let c = vdc_cli::client::Client::new(url.clone(), "");
        async move { c.sign_in(&req).await.is_ok() }
    };
    assert!(with(PASSWORD).await, "unchanged after the wrong one");
    b.js(&fill(PASSWORD), json!([])).await;
    b.wait(
        "the notice",
        "return [...document.querySelectorAll('#notices p')].some((p) => p.textContent.startsWith('Password changed'))",
    )
    .await;
    assert!(with("sora-new-password").await, "the new password signs in");
    assert!(!with(PASSWORD).await, "the old one no longer does");
    b.quit().await;
    s.stop().await;
}

/// The suites' stack with one host and `user` (with [`PASSWORD`]) a member of two
/// accounts, alpha and beta, whose owners' clients it returns.
async fn stack_with_member(user: &str) -> (Stack, vdc_cli::client::Client, vdc_cli::client::Client) {
    vdc_tests::init_logging();
    let mut o = StackOptions::new(Db::Sqlite);
    o.hosts = 1;
    o.external = Some(vdc_tests::test_external("203.0.113.20"));
    let s = Stack::start(o).await;
    s.admin
        .create_user(&CreateUser { name: user.into(), admin: false, password: Some(PASSWORD.into()) })
        .await
        .unwrap();
    let (alpha, beta) = (s.account("alpha").await, s.account("beta").await);
    for c in [&alpha, &beta] {
        let id = c.whoami().await.unwrap().account.id;
        c.add_member(&id, &AddMember { user: user.into(), role: Role::Member }).await.unwrap();
    }
    (s, alpha, beta)
}

/// Signs `user` in with the password form; waits for the first account's view.
async fn sign_in(b: &Browser, url: &str, user: &str) {
    b.goto(&format!("{url}/console/")).await;
    b.wait("the sign-in form", "return !document.querySelector('#password-form').hidden").await;
    b.type_into("#user-input", user).await;
    b.type_into("#password-input", PASSWORD).await;
    b.click("#password-form button[type=submit]").await;
    assert_eq!(b.text_of("#who-user").await, user);
}

/// Issues 12 and 13 in the console: an image uploaded from a file through the register
/// form, then the account's whole VDC exported as a bundle (a real download), planned
/// and imported into another account from that file; the plan, the import and its IDs
/// shown, and what the import made there, through the API. Then a stopped instance
/// captured, the image shared with the other account, and an image made from a volume's
/// snapshot, each from its view.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_uploads_an_image_and_moves_a_vdc_with_a_bundle() {
    let (s, alpha, beta) = stack_with_member("ren").await;
    let url = s.url();
    alpha.post::<_, Value>("/networks", &json!({"name": "alpha-net", "cidr": "10.81.0.0/24"})).await.unwrap();
    alpha
        .post::<_, Value>(
            "/security_groups",
            &json!({"name": "web", "description": "ssh", "rules": [{"protocol": "tcp", "port_min": 22, "cidr": "0.0.0.0/0"}]}),
        )
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    // A raw disk of 2 MiB and a bit, incompressible.
    let disk = files.path().join("disk.raw");
    let bytes = vdc_tests::incompressible((2 << 20) + 4096);
    std::fs::write(&disk, &bytes).unwrap();
    let sha = {
        use sha2::Digest;
        format!("sha256:{:x}", sha2::Sha256::digest(&bytes))
    };

    let (_driver, b) = Browser::start_saving_to(Some(downloads.path())).await;
    sign_in(&b, &url, "ren").await;
    b.wait("alpha", "return document.querySelector('#account-select').selectedOptions[0]?.textContent === 'alpha'")
        .await;

    // The image, uploaded from the file.
    view_text(&b, "images").await;
    b.js(
        "[...document.querySelectorAll('#view button.primary')].find((x) => x.textContent === 'Register image').click()",
        json!([]),
    )
    .await;
    b.wait("the image form", "return !!document.querySelector('#image-file')").await;
    b.type_into("#image-name", "uploaded-disk").await;
    b.js("const f = document.querySelector('#image-name').form; f.querySelector('select').value = 'raw';", json!([]))
        .await;
    b.choose_file("#image-file", &disk).await;
    b.js("document.querySelector('#image-file').form.querySelector('button[type=submit]').click()", json!([])).await;
    let notice = b
        .wait(
            "the upload's notice",
            "const n = [...document.querySelectorAll('#notices p')].map((p) => p.textContent).find((t) => t.includes('uploaded-disk'));              return n || (document.querySelector('.form-error:not([hidden])')?.textContent ?? '')",
        )
        .await;
    assert!(notice.as_str().unwrap().contains("uploaded and checked"), "{notice}");
    let img = alpha.list_all_images().await.unwrap().into_iter().find(|i| i.name == "uploaded-disk").unwrap();
    assert_eq!(img.state, ImageState::Available);
    assert_eq!(img.checksum.as_deref(), Some(sha.as_str()), "the file's bytes, as sent");
    assert_eq!(img.format, ImageFormat::Raw);
    let row = b
        .wait(
            "the image's row",
            "const r = [...document.querySelectorAll('#view tr')].find((r) => r.innerText.includes('uploaded-disk'));              return r && r.innerText.includes('Available') ? r.innerText : ''",
        )
        .await;
    assert!(row.as_str().unwrap().contains("Uploaded or captured"), "{row}");

    // The whole VDC, exported: a download. The key it is signed with is shown, for the
    // operator of a site that is to trust it.
    view_text(&b, "bundles").await;
    let key = alpha.get::<Value>("/bundle/key").await.unwrap();
    assert_eq!(b.text_of("#site-key").await, key["public_key"].as_str().unwrap());
    b.js("document.querySelector('#bundle-export button[type=submit]').click()", json!([])).await;
    let saved = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let done: Vec<_> = std::fs::read_dir(downloads.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "bundle"))
                .collect();
            if let [one] = &done[..] {
                break one.clone();
            }
            assert!(Instant::now() < deadline, "no bundle was downloaded: {done:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let exported = b.wait("the export's notice", "return [...document.querySelectorAll('#notices p')].map((p) => p.textContent).find((t) => t.startsWith('Bundle vdc-')) || ''").await;
    let name = saved.file_name().unwrap().to_str().unwrap();
    assert!(exported.as_str().unwrap().contains(name), "{exported} names {name}");
    assert!(std::fs::metadata(&saved).unwrap().len() > bytes.len() as u64 / 2, "the image's data is in it");

    // Into beta: planned, then imported.
    let beta_id = beta.whoami().await.unwrap().account.id;
    b.click(&format!("#account-select option[value='{beta_id}']")).await;
    b.wait(
        "beta",
        "return document.querySelector('#account-select').selectedOptions[0]?.textContent === 'beta' && location.hash === '#bundles'          && document.querySelector('#view').innerText.includes('No bundle was imported')",
    )
    .await;
    b.choose_file("#bundle-file", &saved).await;
    b.click("#bundle-plan-button").await;
    let plan = b.text_of("#bundle-plan-result").await;
    for want in
        ["+ network “alpha-net”", "+ security_group “web”", "+ image “uploaded-disk”", "Nothing keeps this bundle"]
    {
        assert!(plan.contains(want), "the plan shows {want}: {plan}");
    }
    assert!(beta.list_all_networks().await.unwrap().is_empty(), "a plan makes nothing");
    b.click("#bundle-import-button").await;
    let imported = b.text_of("#bundle-imported").await;
    assert!(imported.starts_with("Imported as "), "{imported}");
    let imports = beta.list_bundle_imports().await.unwrap();
    assert_eq!(imports.len(), 1);
    assert!(imported.contains(imports[0].id.as_str()), "{imported}");
    let nets = beta.list_all_networks().await.unwrap();
    assert_eq!((nets.len(), nets[0].name.as_str(), nets[0].cidr.to_string()), (1, "alpha-net", "10.81.0.0/24".into()));
    let copy = beta.list_all_images().await.unwrap().into_iter().find(|i| i.name == "uploaded-disk").unwrap();
    assert_eq!((copy.state, copy.checksum.as_deref()), (ImageState::Available, Some(sha.as_str())));
    // The imports table, and the IDs the import made.
    let list = b
        .wait(
            "the import in the table",
            &format!("const v = document.querySelector('#view'); return v.querySelector('[data-fk=\"map:{}\"]') ? v.innerText : ''", imports[0].id),
        )
        .await;
    assert!(list.as_str().unwrap().contains(imports[0].id.as_str()));
    b.js(&format!("document.querySelector('[data-fk=\"map:{}\"]').click()", imports[0].id), json!([])).await;
    let ids = b.text_of("dialog table").await;
    assert!(ids.contains(nets[0].id.as_str()) && ids.contains(copy.id.as_str()), "{ids}");
    b.js("document.querySelector('dialog button[type=submit]').click()", json!([])).await;

    // The same bundle again: the plan says it was imported already.
    b.click("#bundle-plan-button").await;
    b.wait(
        "the second plan",
        "return document.querySelector('#bundle-plan-result')?.innerText.includes('imported here already')",
    )
    .await;

    // Back in alpha: an instance launched, stopped and captured as an image, and the
    // uploaded image shared with beta, from the console.
    let alpha_id = alpha.whoami().await.unwrap().account.id;
    b.click(&format!("#account-select option[value='{alpha_id}']")).await;
    b.wait(
        "alpha again",
        "return document.querySelector('#account-select').selectedOptions[0]?.textContent === 'alpha'",
    )
    .await;
    // Launched from the console on the uploaded disk, grown to 32 MiB.
    view_text(&b, "instances").await;
    b.js(
        "[...document.querySelectorAll('#view button.primary')].find((x) => x.textContent === 'Launch instance').click()",
        json!([]),
    )
    .await;
    b.wait("the launch form", "return !!document.querySelector('#root-disk')").await;
    b.js(
        "const f = document.querySelector('#root-disk').form; f.querySelector('input[name=name]').value = 'alpha-vm'; \
         f.querySelector('select').value = arguments[0]; document.querySelector('#root-disk').value = '32'; \
         f.querySelector('button[type=submit]').click();",
        json!([img.id.as_str()]),
    )
    .await;
    let vm = vdc_tests::eventually(Duration::from_secs(20), || async {
        alpha.list_all_instances().await.unwrap().into_iter().find(|i| i.name == "alpha-vm")
    })
    .await
    .expect("launched from the console");
    assert_eq!((&vm.image_id, vm.root_disk_size), (&img.id, Some(32 << 20)));
    vdc_tests::wait_state(&alpha, &vm.id, InstanceState::Running).await;
    alpha.stop_instance(&vm.id).await.unwrap();
    vdc_tests::wait_state(&alpha, &vm.id, InstanceState::Stopped).await;
    view_text(&b, "instances").await;
    b.wait(
        "the capture button",
        &format!("const x = document.querySelector('[data-fk=\"capture:{}\"]'); return x && !x.disabled", vm.id),
    )
    .await;
    b.js(&format!("document.querySelector('[data-fk=\"capture:{}\"]').click()", vm.id), json!([])).await;
    b.type_into("#capture-name", "golden").await;
    b.js("document.querySelector('#capture-name').form.querySelector('button[type=submit]').click()", json!([])).await;
    b.wait(
        "the capture's notice",
        "return [...document.querySelectorAll('#notices p')].some((p) => p.textContent.startsWith('Capturing alpha-vm'))",
    )
    .await;
    let golden = alpha.list_all_images().await.unwrap().into_iter().find(|i| i.name == "golden").expect("captured");
    let golden = alpha.wait_image(&golden.id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(golden.state, ImageState::Available, "{golden:?}");
    view_text(&b, "images").await;
    b.js(&format!("document.querySelector('[data-fk=\"share:{}\"]').click()", img.id), json!([])).await;
    assert_eq!(b.text_of("dialog .empty").await, "Not shared with any account.");
    b.type_into("#share-account", beta_id.as_str()).await;
    b.js("document.querySelector('#share-account').form.querySelector('button.primary').click()", json!([])).await;
    let shared = b.text_of("dialog ul.plain").await;
    assert!(shared.contains(beta_id.as_str()), "{shared}");
    assert_eq!(alpha.image_members(&img.id).await.unwrap().members, vec![beta_id.clone()]);
    assert!(shared.contains("Offered"), "{shared}");
    b.js("document.querySelector('dialog button.ghost').click()", json!([])).await;

    // In beta the image is offered apart, with its owner, until accepted there.
    b.click(&format!("#account-select option[value='{beta_id}']")).await;
    b.wait("beta", "return document.querySelector('#account-select').selectedOptions[0]?.textContent === 'beta'").await;
    view_text(&b, "images").await;
    let accept = format!("[data-fk=\"accept:{}\"]", img.id);
    b.wait("the offer", &format!("return !!document.querySelector('#image-offers {accept}')")).await;
    let offers = b.text_of("#image-offers").await;
    assert!(offers.contains(alpha_id.as_str()), "its owner: {offers}");
    b.js(&format!("document.querySelector('{accept}').click()"), json!([])).await;
    b.wait(
        "accepted",
        &format!(
            "return !document.querySelector('#image-offers') && !!document.querySelector('[data-fk=\"decline:{}\"]')",
            img.id
        ),
    )
    .await;
    let seen = beta.get_image(&img.id).await.unwrap();
    assert_eq!(seen.member_status, Some(vdc_schema::MemberStatus::Accepted));
    b.click(&format!("#account-select option[value='{alpha_id}']")).await;
    b.wait("alpha", "return document.querySelector('#account-select').selectedOptions[0]?.textContent === 'alpha'")
        .await;

    // An image from a volume's snapshot.
    let req = CreateVolume { name: "data".into(), size_mib: Some(16), snapshot_id: None, image_id: None };
    let vol = alpha.create_volume(&req).await.unwrap().resource;
    let snap = loop {
        if alpha.get_volume(&vol.id).await.unwrap().state == vdc_schema::VolumeState::Available {
            let req = CreateSnapshot { volume_id: vol.id.clone(), name: "data-snap".into() };
            break alpha.create_snapshot(&req).await.unwrap().resource;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    view_text(&b, "volumes").await;
    b.wait(
        "the snapshot's image button",
        &format!("const x = document.querySelector('[data-fk=\"image:{}\"]'); return x && !x.disabled", snap.id),
    )
    .await;
    b.js(&format!("document.querySelector('[data-fk=\"image:{}\"]').click()", snap.id), json!([])).await;
    b.type_into("#snapshot-image-name", "from-snap").await;
    b.js("document.querySelector('#snapshot-image-name').form.querySelector('button[type=submit]').click()", json!([]))
        .await;
    b.wait(
        "the snapshot image's notice",
        "return [...document.querySelectorAll('#notices p')].some((p) => p.textContent.startsWith('Making image from-snap'))",
    )
    .await;
    let from_snap = alpha.list_all_images().await.unwrap().into_iter().find(|i| i.name == "from-snap").expect("made");
    let from_snap = alpha.wait_image(&from_snap.id, Duration::from_secs(30)).await.unwrap();
    assert_eq!((from_snap.state, from_snap.format), (ImageState::Available, ImageFormat::Raw), "{from_snap:?}");

    // An image whose upload never came (cut off, or a script that stopped): its data
    // uploaded from its row.
    let pending = alpha.create_image(&vdc_tests::image_request("later", ImageFormat::Raw)).await.unwrap();
    view_text(&b, "images").await;
    b.wait("the upload button", &format!("return !!document.querySelector('[data-fk=\"upload:{}\"]')", pending.id))
        .await;
    b.js(&format!("document.querySelector('[data-fk=\"upload:{}\"]').click()", pending.id), json!([])).await;
    b.choose_file("#upload-file", &disk).await;
    b.js("document.querySelector('#upload-file').form.querySelector('button[type=submit]').click()", json!([])).await;
    b.wait(
        "the second upload's notice",
        "return [...document.querySelectorAll('#notices p')].some((p) => p.textContent.startsWith('Image later'))",
    )
    .await;
    let later = alpha.get_image(&pending.id).await.unwrap();
    assert_eq!((later.state, later.checksum.as_deref()), (ImageState::Available, Some(sha.as_str())));
    b.quit().await;
    s.stop().await;
}
