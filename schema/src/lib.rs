//! The vdc contract: every type that crosses a process boundary, and nothing else.
//!
//! - [`id`]: typed, prefixed resource IDs (`i-…`, `vol-…`, …).
//! - [`net`]: addresses: [`net::MacAddr`], and IPv4 addresses and networks (CIDRs) as
//!   `std::net::Ipv4Addr` and `ipnet::Ipv4Net`.
//! - [`api`]: Web API request and response bodies (with OpenAPI derives).
//! - [`bus`]: messages between dcmgr and the agents, carrying [`bus::PROTOCOL_VERSION`].
//! - [`agent`]: one trait per agent API, implemented by the real agent, the simulated agent
//!   and dcmgr's bus adapter alike.
//!
//! This crate does no I/O: no sqlx, axum, virt or tokio here.

pub mod agent;
pub mod api;
pub mod bus;
pub mod disk;
pub mod id;
pub mod net;
pub mod state;

pub use id::*;
pub use state::*;

/// Text a client sent, fit to be echoed in a message: control and [`invisible_char`]s
/// written as `\u{…}` (a bidirectional override in an ID turned the rest of an error
/// message around in the console and the terminal), and at most 100 characters.
pub fn echoed(text: &str) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == 100 {
            out.push('…');
            break;
        }
        match c.is_control() || invisible_char(c) {
            true => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            false => out.push(c),
        }
    }
    out
}

/// Unicode's format characters (general category Cf) that occur in practice: soft hyphen,
/// zero-width spaces and joiners, bidirectional marks, embeddings, overrides and isolates,
/// word joiners and invisible operators, the byte-order mark, interlinear annotations and
/// tag characters; also the combining grapheme joiner, the Hangul and Khmer fillers that
/// render as nothing, and the private-use areas (no font shows them alike). Names refuse
/// them (dcmgr's API and the bundle reader alike): two names must not look alike while
/// differing.
pub fn invisible_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
        | '\u{E000}'..='\u{F8FF}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}' | '\u{F0000}'..='\u{FFFFD}' | '\u{100000}'..='\u{10FFFD}')
}
