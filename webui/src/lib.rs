//! The web console: a single page (HTML, CSS and vanilla JavaScript, English and Japanese)
//! served by dcmgr at the root of its HTTP server, next to the Web API under `/api/v1`.
//! Being same-origin with the API, it needs no CORS and no configuration; being embedded
//! with `include_str!`, it needs no build step and no files at run time.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file and where it is served.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const INDEX: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const I18N_JS: &str = include_str!("../static/i18n.js");
const STYLE_CSS: &str = include_str!("../static/style.css");

const ASSETS: &[Asset] = &[
    Asset { path: "/", content_type: HTML, body: INDEX },
    Asset { path: "/console", content_type: HTML, body: INDEX },
    Asset { path: "/console/", content_type: HTML, body: INDEX },
    Asset { path: "/console/app.js", content_type: JS, body: APP_JS },
    Asset { path: "/console/i18n.js", content_type: JS, body: I18N_JS },
    Asset { path: "/console/style.css", content_type: CSS, body: STYLE_CSS },
];

/// The page runs only its own files and talks only to its own origin, so an injected
/// value could neither load nor run anything else (defence in depth: the JS already
/// inserts API data as text only). `data:` images cover the empty favicon.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// no-cache: browsers revalidate, so a new dcmgr's console is picked up at once.
fn respond(asset: &'static Asset) -> Response {
    let mut res = asset.body.into_response();
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if asset.content_type == HTML {
        h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    res
}

/// The console's routes; dcmgr merges them at the root of its router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |r, asset| r.route(asset.path, get(move || async move { respond(asset) })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use std::collections::{BTreeMap, BTreeSet};
    use tower::ServiceExt;

    /// Every state the API can answer (vdc_schema::state), which the console shows as a
    /// translated badge through the `state_<name>` keys.
    const STATES: &[&str] = &[
        // instances
        "scheduling",
        "pending",
        "starting",
        "running",
        "stopping",
        "stopped",
        "halting",
        "halted",
        "shuttingdown",
        "terminated",
        "failed",
        // volumes and snapshots
        "creating",
        "available",
        "attaching",
        "attached",
        "detaching",
        "deleting",
        "deleted",
        // jobs
        "succeeded",
        "cancelled",
        // nodes and interfaces
        "online",
        "offline",
        "active",
    ];

    /// The states that make a view refresh itself every 3 s (the console's contract).
    const TRANSITIONAL: &[&str] = &[
        "scheduling",
        "pending",
        "starting",
        "stopping",
        "halting",
        "shuttingdown",
        "creating",
        "attaching",
        "detaching",
        "deleting",
    ];

    fn scripts() -> [(&'static str, &'static str); 2] {
        [("app.js", APP_JS), ("i18n.js", I18N_JS)]
    }

    /// Parses `const I18N = { en: {...}, ja: {...} }` in the shape documented at the top
    /// of i18n.js: one `key: "value",` per line. Anything else inside a block fails the
    /// test, so the shape cannot drift unnoticed.
    fn dictionaries() -> BTreeMap<String, BTreeMap<String, String>> {
        let mut langs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut current: Option<String> = None;
        let mut seen_start = false;
        for (n, raw) in I18N_JS.lines().enumerate() {
            let line = raw.trim();
            if line == "const I18N = {" {
                seen_start = true;
                continue;
            }
            if !seen_start {
                continue;
            }
            match &current {
                None => {
                    if line == "};" {
                        break;
                    }
                    if let Some(lang) = line.strip_suffix(": {") {
                        assert!(!langs.contains_key(lang), "i18n.js:{}: language {lang} twice", n + 1);
                        langs.insert(lang.to_owned(), BTreeMap::new());
                        current = Some(lang.to_owned());
                    } else {
                        assert!(line.is_empty() || line.starts_with("//"), "i18n.js:{}: unexpected {line:?}", n + 1);
                    }
                }
                Some(lang) => {
                    if line == "}," {
                        current = None;
                        continue;
                    }
                    if line.is_empty() || line.starts_with("//") {
                        continue;
                    }
                    let (key, rest) = line
                        .split_once(": ")
                        .unwrap_or_else(|| panic!("i18n.js:{}: not `key: \"value\",`: {line:?}", n + 1));
                    assert!(
                        !key.is_empty()
                            && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                        "i18n.js:{}: bad key {key:?}",
                        n + 1
                    );
                    let value = rest
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix("\","))
                        .unwrap_or_else(|| panic!("i18n.js:{}: value must be \"...\", on one line: {line:?}", n + 1));
                    let dict = langs.get_mut(lang).unwrap();
                    let dup = dict.insert(key.to_owned(), value.to_owned());
                    assert!(dup.is_none(), "i18n.js:{}: key {key} twice in {lang}", n + 1);
                }
            }
        }
        assert!(seen_start, "i18n.js has no `const I18N = {{` line");
        assert!(current.is_none(), "i18n.js: language block not closed");
        langs
    }

    fn placeholders(s: &str) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        let mut rest = s;
        while let Some(i) = rest.find('{') {
            match rest[i + 1..].find('}') {
                Some(j) => {
                    out.insert(&rest[i + 1..i + 1 + j]);
                    rest = &rest[i + 2 + j..];
                }
                None => break,
            }
        }
        out
    }

    /// The source without `//` comment lines, so that prose cannot trip the scanners.
    fn code_lines(src: &str) -> String {
        src.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
    }

    /// Every `t(` call in app.js, as the text right after the parenthesis. A call is `t(`
    /// not preceded by an identifier character or a dot (so `split(` or `x.t(` are not).
    fn t_calls(src: &str) -> Vec<&str> {
        let bytes = src.as_bytes();
        src.match_indices("t(")
            .filter(|(i, _)| {
                *i == 0 || {
                    let p = bytes[i - 1];
                    !(p.is_ascii_alphanumeric() || p == b'_' || p == b'$' || p == b'.')
                }
            })
            .map(|(i, _)| &src[i + 2..])
            .collect()
    }

    /// Keys named in the HTML by data-i18n, data-i18n-placeholder, data-i18n-title, ….
    fn html_keys() -> Vec<String> {
        let mut keys = Vec::new();
        for (i, _) in INDEX.match_indices("data-i18n") {
            let rest = &INDEX[i + "data-i18n".len()..];
            let attr_end = rest.find("=\"").expect("data-i18n attribute without a value");
            assert!(
                rest[..attr_end].bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "odd attribute data-i18n{}",
                &rest[..attr_end]
            );
            let value = &rest[attr_end + 2..];
            keys.push(value[..value.find('"').unwrap()].to_owned());
        }
        keys
    }

    async fn get(path: &str) -> axum::response::Response {
        router::<()>().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn every_route_answers_with_its_content_type() {
        for asset in ASSETS {
            let res = get(asset.path).await;
            assert_eq!(res.status(), StatusCode::OK, "{}", asset.path);
            let h = res.headers();
            assert_eq!(h[CONTENT_TYPE], asset.content_type, "{}", asset.path);
            assert_eq!(h[CACHE_CONTROL], "no-cache", "{}", asset.path);
            assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff", "{}", asset.path);
            assert_eq!(h.contains_key(CONTENT_SECURITY_POLICY), asset.content_type == HTML, "{}", asset.path);
            let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
            assert_eq!(body, asset.body.as_bytes(), "{}", asset.path);
        }
        assert_eq!(get("/").await.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(get("/console/app.js").await.headers()[CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(get("/console/style.css").await.headers()[CONTENT_TYPE], "text/css; charset=utf-8");
    }

    #[tokio::test]
    async fn unknown_console_paths_are_not_found() {
        assert_eq!(get("/console/nope.js").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(get("/console/../Cargo.toml").await.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_page_loads_only_served_files() {
        let served: BTreeSet<&str> = ASSETS.iter().map(|a| a.path).collect();
        let mut refs = 0;
        for attr in ["src=\"", "href=\""] {
            for (i, _) in INDEX.match_indices(attr) {
                let rest = &INDEX[i + attr.len()..];
                let url = &rest[..rest.find('"').unwrap()];
                if url.starts_with('#') || url.starts_with("data:") {
                    continue;
                }
                assert!(served.contains(url), "index.html refers to {url}, which is not served");
                refs += 1;
            }
        }
        assert_eq!(refs, 3, "index.html should load i18n.js, app.js and style.css");
        // The CSP forbids inline code and styles: keep the page free of them.
        for bad in ["<script>", "style=\"", " onclick=", " onload=", "<style"] {
            assert!(!INDEX.contains(bad), "index.html contains {bad}");
        }
    }

    #[test]
    fn english_and_japanese_have_the_same_keys() {
        let langs = dictionaries();
        assert_eq!(langs.keys().map(String::as_str).collect::<Vec<_>>(), ["en", "ja"]);
        let en: BTreeSet<&String> = langs["en"].keys().collect();
        let ja: BTreeSet<&String> = langs["ja"].keys().collect();
        assert!(en.len() > 100, "suspiciously few keys: {}", en.len());
        assert_eq!(en.difference(&ja).collect::<Vec<_>>(), Vec::<&&String>::new(), "keys missing in ja");
        assert_eq!(ja.difference(&en).collect::<Vec<_>>(), Vec::<&&String>::new(), "keys missing in en");
        for (key, en_text) in &langs["en"] {
            let ja_text = &langs["ja"][key];
            assert!(!ja_text.is_empty() && !en_text.is_empty(), "{key} is empty");
            assert_eq!(placeholders(en_text), placeholders(ja_text), "placeholders of {key} differ");
        }
    }

    /// Each code the console explains (`API_ERRORS` in i18n.js) is one the API document
    /// names, so that the explanations do not outlive the codes.
    #[test]
    fn explained_error_codes_are_the_apis() {
        const DOC: &str = include_str!("../../dcmgr/openapi.json");
        let start = I18N_JS.find("const API_ERRORS = {").expect("API_ERRORS in i18n.js");
        let mut codes = 0;
        for line in I18N_JS[start..].lines().skip(1) {
            let line = line.trim();
            if line == "};" {
                break;
            }
            let Some((code, text)) = line.split_once(": ") else { continue };
            if code.ends_with('{') || line.ends_with(": {") {
                continue;
            }
            assert!(text.starts_with('"') && text.ends_with("\","), "{line}");
            assert!(DOC.contains(&format!("`{code}`")), "the API document names no error {code}");
            codes += 1;
        }
        assert!(codes >= 30, "{codes} codes explained");
    }

    #[test]
    fn every_key_used_exists_and_every_key_is_used() {
        let langs = dictionaries();
        let en = &langs["en"];
        let app = code_lines(APP_JS);
        let mut used = BTreeSet::new();
        for after in t_calls(&app) {
            // The one non-literal call: the HTML's keys, checked just below.
            if after.starts_with("e.dataset.i18n") || after.starts_with("key, params)") {
                continue;
            }
            let key = after
                .strip_prefix('\'')
                .and_then(|r| r.split_once('\''))
                .map(|(k, _)| k)
                .unwrap_or_else(|| panic!("t() must take a literal 'key': t({}", &after[..after.len().min(40)]));
            assert!(en.contains_key(key), "app.js uses t('{key}'), which is not in the dictionaries");
            used.insert(key.to_owned());
        }
        for key in html_keys() {
            assert!(en.contains_key(&key), "index.html uses data-i18n \"{key}\", which is not in the dictionaries");
            used.insert(key);
        }
        for state in STATES {
            let key = format!("state_{state}");
            assert!(en.contains_key(&key), "no label for state {state}");
            used.insert(key);
        }
        let unused: Vec<&String> = en.keys().filter(|k| !used.contains(*k)).collect();
        assert!(unused.is_empty(), "keys no code uses: {unused:?}");
    }

    #[test]
    fn api_data_never_becomes_markup() {
        for (name, src) in scripts() {
            let code = code_lines(src);
            for (i, _) in code.match_indices("innerHTML") {
                assert!(code[i..].starts_with("innerHTML = ''"), "{name}: innerHTML may only be cleared");
            }
            for sink in ["outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "srcdoc"] {
                assert!(!code.contains(sink), "{name} uses {sink}");
            }
        }
    }

    #[test]
    fn transitional_states_refresh_the_view() {
        let start = APP_JS.find("const TRANSITIONAL = new Set([").expect("TRANSITIONAL set in app.js");
        let set = &APP_JS[start..start + APP_JS[start..].find("]);").unwrap()];
        for state in TRANSITIONAL {
            assert!(set.contains(&format!("'{state}'")), "{state} does not trigger the auto-refresh");
        }
        assert!(APP_JS.contains("const REFRESH_MS = 3000;"));
    }
}
