//! Who may call what: bearer tokens with roles for clients, a shared
//! cluster secret for peers.
//!
//! * **Tokens file** (`--tokens-file`): one token per line,
//!   `<name> <role> sha256:<hex of SHA-256(token)>`; `#` starts a comment.
//!   Only hashes are stored, so the file is no secret by itself;
//!   `raftkvctl token new <name> <role>` makes a token and its line. Roles
//!   nest: `read` (GET of keys and lists), `write` (also PUT and DELETE),
//!   `admin` (also `/admin/*`: log filters, snapshots). `/health` and
//!   `/ready` are always open (probes); `/status` and `/metrics` need any
//!   valid token unless `--public-status` opens them.
//! * **Cluster secret** (`--cluster-secret-file`): every `/raft/*` request
//!   must carry it (`Authorization: Bearer <secret>`); a node sends its own
//!   on every peer request. Without TLS it travels in the clear, so it
//!   keeps out whoever can reach the port but cannot watch the traffic;
//!   mutual TLS is the stronger layer (README, threat model).
//!
//! A presented token is hashed and compared with every stored hash in
//! constant time, without stopping at a match, so timing says nothing
//! about which hash or how many bytes matched. Tokens are never logged.

use std::path::Path;

use sha2::{Digest, Sha256};

/// What a token may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

pub type Digest32 = [u8; 32];

pub fn digest(secret: &str) -> Digest32 {
    digest_bytes(secret.as_bytes())
}

pub fn digest_bytes(data: &[u8]) -> Digest32 {
    Sha256::digest(data).into()
}

/// Equal digests, in time independent of where they differ.
pub fn ct_eq(a: &Digest32, b: &Digest32) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(d: &Digest32) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Digest32> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The tokens-file line for `token`.
pub fn token_line(name: &str, role: Role, token: &str) -> String {
    format!("{name} {} sha256:{}", role.as_str(), hex(&digest(token)))
}

/// A new random token: 256 bits, hex.
pub fn new_token() -> String {
    format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>())
}

#[derive(Clone)]
struct Entry {
    name: String,
    role: Role,
    digest: Digest32,
}

/// The tokens a node accepts. Debug output shows names and roles only.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| format!("{} ({})", e.name, e.role.as_str()))).finish()
    }
}

impl Tokens {
    /// Parses a tokens file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Tokens, String> {
        let mut entries: Vec<Entry> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = format!("{origin} line {}", n + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                return Err(format!("{at}: expected `<name> <role> sha256:<64 hex digits>`"));
            };
            let role = Role::parse(role).ok_or_else(|| format!("{at}: role {role:?} is not read, write or admin"))?;
            let digest = hash
                .strip_prefix("sha256:")
                .and_then(unhex)
                .ok_or_else(|| format!("{at}: the hash must be sha256: and 64 hex digits (raftkvctl token new)"))?;
            if entries.iter().any(|e| e.name == name) {
                return Err(format!("{at}: token name {name:?} is listed twice"));
            }
            if entries.iter().any(|e| ct_eq(&e.digest, &digest)) {
                return Err(format!("{at}: the same token is listed twice"));
            }
            entries.push(Entry { name: name.to_string(), role, digest });
        }
        if entries.is_empty() {
            return Err(format!("{origin} lists no tokens: every request would be refused"));
        }
        Ok(Tokens { entries })
    }

    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("tokens file {}: {e}", path.display()))?;
        Tokens::parse(&text, &format!("tokens file {}", path.display()))
    }

    /// The name and role of `token`, if it is one of these.
    pub fn find(&self, token: &str) -> Option<(&str, Role)> {
        let d = digest(token);
        let mut found = None;
        for e in &self.entries {
            if ct_eq(&e.digest, &d) {
                found = Some((e.name.as_str(), e.role));
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The cluster secret, kept as its hash; the secret itself only where it
/// is sent. Debug output hides both.
#[derive(Clone)]
pub struct ClusterSecret {
    secret: String,
    digest: Digest32,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<hidden>)")
    }
}

impl ClusterSecret {
    pub fn load(path: &Path) -> Result<ClusterSecret, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cluster secret file {}: {e}", path.display()))?;
        let secret = text.trim();
        if secret.len() < 16 {
            return Err(format!("cluster secret file {}: the secret must be at least 16 characters", path.display()));
        }
        Ok(ClusterSecret { secret: secret.to_string(), digest: digest(secret) })
    }

    /// The value of the Authorization header a node sends to its peers.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.secret)
    }

    pub fn matches(&self, presented: &str) -> bool {
        ct_eq(&self.digest, &digest(presented))
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_hash_with_their_role() {
        let (r, w) = (new_token(), new_token());
        assert_ne!(r, w);
        assert_eq!(r.len(), 64);
        let text = format!(
            "# who can do what\n{}\n\n{}  # ci\n",
            token_line("ro", Role::Read, &r),
            token_line("ci", Role::Write, &w)
        );
        assert!(!text.contains(&r) && !text.contains(&w), "only hashes are stored");
        let t = Tokens::parse(&text, "test").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.find(&r), Some(("ro", Role::Read)));
        assert_eq!(t.find(&w), Some(("ci", Role::Write)));
        assert_eq!(t.find("not a token"), None);
        assert!(Role::Admin > Role::Write && Role::Write > Role::Read);
        assert!(!format!("{t:?}").contains("sha256"));
    }

    #[test]
    fn bad_token_files_are_explained() {
        let e = |text: &str| Tokens::parse(text, "f").unwrap_err();
        assert!(e("").contains("no tokens"));
        assert!(e("alice admin").contains("line 1"));
        assert!(e("alice root sha256:00").contains("not read, write or admin"));
        assert!(e("alice read sha256:abc").contains("64 hex digits"));
        assert!(e(&format!("alice read sha256:{}", "z".repeat(64))).contains("64 hex digits"));
        let line = token_line("a", Role::Read, "t");
        assert!(e(&format!("{line}\n{line}")).contains("twice"));
        assert!(e(&format!("{line}\n{}", token_line("b", Role::Admin, "t"))).contains("same token"));
    }

    #[test]
    fn bearer_headers_and_constant_time_comparison() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        let (a, mut b) = (digest("x"), digest("x"));
        assert!(ct_eq(&a, &b));
        b[31] ^= 1;
        assert!(!ct_eq(&a, &b));
    }
}
