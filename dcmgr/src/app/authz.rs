//! Authorization, decided here and nowhere else: [`allowed`] is the pure table role ×
//! operation → allowed, [`route_op`] says which operation each route is (applied to every
//! authenticated call by the `Caller` extractor), and [`check`] turns a refusal into its
//! stable error code. Handlers that need a finer operation than their route's (revoking
//! another user's token) call [`check`] with it.
//!
//! | operation             | reader | member | owner | admin |
//! |-----------------------|--------|--------|-------|-------|
//! | Read                  |   yes  |   yes  |  yes  |  yes  |
//! | Write                 |        |   yes  |  yes  |  yes  |
//! | ManageMembers         |        |        |  yes  |  yes  |
//! | ManageOthersTokens    |        |        |  yes  |  yes  |
//! | ReadAudit             |        |        |  yes  |  yes  |
//! | Own                   |   yes  |   yes  |  yes  |  yes  |
//! | Admin                 |        |        |       |  yes  |
//!
//! `Own` is the caller's own standing (leaving an account, revoking its user's own
//! tokens): any role's, but not a token's capped to reader, which changes nothing.
//!
//! Which account a call may touch at all is not decided here: a foreign resource is an
//! unknown one (404) in each resource's module.

use crate::ctx::Caller;
use crate::error::{ApiError, ApiResult};
use vdc_schema::state::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Reads within the account.
    Read,
    /// Any state change within the account (create, delete, actions, own tokens).
    Write,
    /// Give, change or take away users' roles in the account.
    ManageMembers,
    /// List or revoke the tokens of other users of the account.
    ManageOthersTokens,
    /// Read the account's audit log (an admin reads every account's).
    ReadAudit,
    /// The caller's own standing: leave the account, revoke its user's own tokens.
    Own,
    /// Cloud operation: accounts, users, nodes, public images, host files.
    Admin,
}

/// The table above.
pub fn allowed(admin: bool, role: Role, op: Op) -> bool {
    if admin {
        return true;
    }
    match op {
        Op::Read | Op::Own => true,
        Op::Write => matches!(role, Role::Member | Role::Owner),
        Op::ManageMembers | Op::ManageOthersTokens | Op::ReadAudit => role == Role::Owner,
        Op::Admin => false,
    }
}

/// Refuses with 403 and a code saying what is missing: `read_only` (a reader's token
/// changing something), `owner_only` (members and other users' tokens), `forbidden`
/// (admin operations).
pub fn check(caller: &Caller, op: Op) -> ApiResult<()> {
    // A reader user leaves or revokes its own; a token capped to reader does neither (an
    // owner's dashboard token took its owner out of the account, red team 2026-12-07).
    let capped_reader = op == Op::Own && !caller.admin && caller.token_role == Some(Role::Reader);
    if allowed(caller.admin, caller.role, op) && !capped_reader {
        return Ok(());
    }
    Err(match (op, caller.role) {
        (Op::Admin, _) => ApiError::Forbidden("only an admin can do this".into()),
        (Op::ReadAudit, _) => ApiError::Denied {
            code: "owner_only",
            message: "only an owner of the account (or an admin) reads its audit log".into(),
        },
        (_, Role::Reader) => ApiError::Denied {
            code: "read_only",
            message: "this token acts with the reader role: it can only read".into(),
        },
        _ => ApiError::Denied {
            code: "owner_only",
            message: "only an owner of the account manages its members and other users' tokens".into(),
        },
    })
}

/// The one read that is a write ([`route_op`]), and is audited as one.
pub const EXPORT: &str = "/bundle";

/// The operation a route is, by method and route template (as under `/api/v1`).
pub fn route_op(method: &str, route: &str) -> Op {
    let route = route.strip_prefix("/api/v1").unwrap_or(route);
    let reading = matches!(method, "GET" | "HEAD" | "OPTIONS");
    let under = |base: &str| route == base || route.strip_prefix(base).is_some_and(|r| r.starts_with('/'));
    // Acting on the call's own token (signing out, switching accounts) or the caller's own
    // password: any signed-in user; `app::session` decides on the rest.
    if matches!(route, "/sessions/current" | "/sessions/switch" | "/users/{id}/password") {
        return Op::Read;
    }
    if under("/users") || under("/host_nodes") || under("/storage_nodes") {
        return Op::Admin;
    }
    if reading {
        if under("/audit") {
            return Op::ReadAudit;
        }
        // An export captures disks (temporary snapshots and images, and with `stop` stops
        // and starts instances) and carries what reads never show (user data, every
        // disk's bytes): a member's, as a capture is.
        if route == EXPORT {
            return Op::Write;
        }
        return Op::Read;
    }
    match route {
        // Verifies a bundle and says what an import would do; changes nothing.
        "/bundle/plan" => Op::Read,
        // Which chunks the account lacks here (a push's dry run asks it too); changes nothing.
        "/bundle/chunks/missing" => Op::Read,
        // Which chunks of a bundle an import would use here; changes nothing.
        "/bundle/chunks/wanted" => Op::Read,
        // Setting an account's quotas is an operator's (a reader asking is told `forbidden`,
        // not `read_only`: no role in the account would let it).
        "/accounts" | "/accounts/{id}" | "/accounts/{id}/quotas" => Op::Admin,
        // The caller's own role: any role may leave.
        "/accounts/{id}/membership" => Op::Own,
        // Its own tokens: any role revokes them (`app::token::revoke` decides on others').
        "/tokens/{id}" if method == "DELETE" => Op::Own,
        r if r.starts_with("/accounts/{id}/members/") || r == "/accounts/{id}/members" => Op::ManageMembers,
        _ => Op::Write,
    }
}

/// The smaller of two roles (a token's cap over its user's role).
pub fn cap(role: Role, token: Option<Role>) -> Role {
    match token {
        Some(t) if rank(t) < rank(role) => t,
        _ => role,
    }
}

fn rank(r: Role) -> u8 {
    match r {
        Role::Reader => 0,
        Role::Member => 1,
        Role::Owner => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        use Op::*;
        let ops = [Read, Write, ManageMembers, ManageOthersTokens, ReadAudit, Own, Admin];
        let expect = |admin: bool, role: Role| -> Vec<bool> {
            match (admin, role) {
                (true, _) => vec![true; 7],
                (false, Role::Reader) => vec![true, false, false, false, false, true, false],
                (false, Role::Member) => vec![true, true, false, false, false, true, false],
                (false, Role::Owner) => vec![true, true, true, true, true, true, false],
            }
        };
        for admin in [false, true] {
            for role in Role::ALL {
                let got: Vec<bool> = ops.iter().map(|op| allowed(admin, *role, *op)).collect();
                assert_eq!(got, expect(admin, *role), "admin {admin}, {role}");
            }
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route_op("GET", "/api/v1/instances"), Op::Read);
        assert_eq!(route_op("POST", "/api/v1/instances"), Op::Write);
        assert_eq!(route_op("POST", "/api/v1/bundle/plan"), Op::Read);
        assert_eq!(route_op("GET", "/api/v1/users"), Op::Admin);
        assert_eq!(route_op("DELETE", "/api/v1/users/{id}"), Op::Admin);
        assert_eq!(route_op("GET", "/api/v1/host_nodes/{id}"), Op::Admin);
        assert_eq!(route_op("GET", "/api/v1/usersfoo"), Op::Read);
        assert_eq!(route_op("POST", "/api/v1/accounts"), Op::Admin);
        assert_eq!(route_op("GET", "/api/v1/accounts/{id}/members"), Op::Read);
        assert_eq!(route_op("POST", "/api/v1/accounts/{id}/members"), Op::ManageMembers);
        assert_eq!(route_op("DELETE", "/api/v1/accounts/{id}/members/{user_id}"), Op::ManageMembers);
        assert_eq!(route_op("DELETE", "/api/v1/accounts/{id}/membership"), Op::Own, "leaving is anyone's own");
        assert_eq!(route_op("DELETE", "/api/v1/tokens/{id}"), Op::Own);
        assert_eq!(route_op("POST", "/api/v1/accounts/{id}/tokens"), Op::Write);
        assert_eq!(route_op("GET", "/api/v1/accounts/{id}/quotas"), Op::Read);
        assert_eq!(route_op("PUT", "/api/v1/accounts/{id}/quotas"), Op::Admin);
        assert_eq!(route_op("GET", "/api/v1/audit"), Op::ReadAudit);
        assert_eq!(route_op("GET", "/api/v1/whoami"), Op::Read);
        assert_eq!(route_op("DELETE", "/api/v1/sessions/current"), Op::Read);
        assert_eq!(route_op("POST", "/api/v1/sessions/switch"), Op::Read);
        assert_eq!(route_op("PUT", "/api/v1/users/{id}/password"), Op::Read);
        assert_eq!(route_op("PUT", "/api/v1/users/{id}/other"), Op::Admin);
    }

    #[test]
    fn a_token_caps_its_users_role() {
        assert_eq!(cap(Role::Owner, Some(Role::Reader)), Role::Reader);
        assert_eq!(cap(Role::Reader, Some(Role::Owner)), Role::Reader);
        assert_eq!(cap(Role::Member, None), Role::Member);
    }
}
