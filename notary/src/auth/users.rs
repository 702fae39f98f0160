//! Who may get a token for what: the users file (htpasswd, bcrypt only, as docker-registry's
//! htpasswd auth reads it) and the access list (`--token-access`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use zeroize::Zeroizing;

/// Largest users or access file read.
const MAX_FILE: u64 = 4 << 20;

fn read_small(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_FILE {
        return Err(format!("{}: larger than {MAX_FILE} bytes", path.display()));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `user:bcrypt-hash` lines; `#` comments and blank lines allowed.
pub fn parse_htpasswd(text: &str) -> Result<HashMap<String, String>, String> {
    let mut users = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("htpasswd: invalid entry at line {}", i + 1));
        };
        if user.is_empty() {
            return Err(format!("htpasswd: empty user name at line {}", i + 1));
        }
        if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            return Err(format!(
                "htpasswd: entry for {user:?} at line {} is not a bcrypt hash (only bcrypt is supported)",
                i + 1
            ));
        }
        users.insert(user.to_string(), hash.to_string());
    }
    Ok(users)
}

/// The users file, re-read when its modification time changes.
pub struct Users {
    path: PathBuf,
    loaded: Mutex<(Option<SystemTime>, HashMap<String, String>)>,
    /// Compared against when the user is unknown, so that an unknown name costs the same
    /// bcrypt work as a wrong password.
    dummy: String,
}

/// A bcrypt hash of `password` for a users file (cost 10, `$2y$` as htpasswd -B writes).
pub fn hash_password(password: &str) -> Result<String, String> {
    bcrypt::hash_with_result(password, 10)
        .map(|h| h.format_for_version(bcrypt::Version::TwoY))
        .map_err(|e| e.to_string())
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, String> {
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let users = parse_htpasswd(&read_small(path)?)?;
        Ok(Users {
            path: path.to_path_buf(),
            loaded: Mutex::new((mtime, users)),
            dummy: hash_password("unknown user")?,
        })
    }

    fn hash_of(&self, user: &str) -> Option<String> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime != loaded.0 {
            match read_small(&self.path).and_then(|t| parse_htpasswd(&t)) {
                Ok(users) => *loaded = (mtime, users),
                Err(e) => {
                    tracing::warn!(error = %e, "users file not reloaded; keeping the last good one")
                }
            }
        }
        loaded.1.get(user).cloned()
    }

    /// Is `password` right for `user`? Slow on purpose (bcrypt): call from a blocking thread.
    pub fn check(&self, user: &str, password: &Zeroizing<String>) -> bool {
        match self.hash_of(user) {
            Some(h) => bcrypt::verify(password.as_bytes(), &h).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password.as_bytes(), &self.dummy);
                false
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    User(String),
    /// `*`: any user who logged in.
    AnyUser,
    /// `anonymous`: requests without credentials.
    Anonymous,
}

#[derive(Debug, Clone)]
struct Rule {
    who: Who,
    prefix: String,
    actions: Vec<String>,
}

/// `--token-access`: lines `<user|*|anonymous> <repository prefix|*> <actions>`, actions a
/// comma list of `pull`, `push` and `*`. A prefix matches a repository name, or the name
/// without its registry host (`127.0.0.1:5000/team/app` → `team/app`), so one line covers the
/// registry's scope and the trust server's GUN of the same image. Rules add up.
#[derive(Debug, Clone, Default)]
pub struct AccessList {
    rules: Option<Vec<Rule>>,
}

/// The repository path without a leading registry host (a first component with `.` or `:`,
/// or `localhost`).
fn without_host(name: &str) -> &str {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => name,
    }
}

impl AccessList {
    /// No file: every user who logged in may push and pull everything; anonymous nothing.
    pub fn everyone_push_pull() -> Self {
        AccessList { rules: None }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let [who, prefix, actions] = f[..] else {
                return Err(format!(
                    "access list line {}: expected `<user|*|anonymous> <prefix|*> <actions>`",
                    i + 1
                ));
            };
            let actions: Vec<String> = actions.split(',').map(str::to_string).collect();
            if let Some(a) = actions
                .iter()
                .find(|a| !["pull", "push", "*"].contains(&a.as_str()))
            {
                return Err(format!("access list line {}: unknown action {a:?}", i + 1));
            }
            let who = match who {
                "*" => Who::AnyUser,
                "anonymous" => Who::Anonymous,
                u => Who::User(u.to_string()),
            };
            rules.push(Rule {
                who,
                prefix: prefix.to_string(),
                actions,
            });
        }
        Ok(AccessList { rules: Some(rules) })
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        Self::parse(&read_small(path)?)
    }

    /// The actions `user` (`None`: anonymous) may have on repository `name`.
    pub fn allowed(&self, user: Option<&str>, name: &str) -> BTreeSet<String> {
        let Some(rules) = &self.rules else {
            return match user {
                Some(_) => ["pull", "push"].map(String::from).into(),
                None => BTreeSet::new(),
            };
        };
        let mut out = BTreeSet::new();
        for r in rules {
            let who = match (&r.who, user) {
                (Who::AnyUser, Some(_)) | (Who::Anonymous, None) => true,
                (Who::User(u), Some(v)) => u == v,
                _ => false,
            };
            let path = without_host(name);
            let what =
                r.prefix == "*" || name.starts_with(&r.prefix) || path.starts_with(&r.prefix);
            if who && what {
                out.extend(r.actions.iter().cloned());
            }
        }
        out
    }

    /// The requested actions that are allowed (`*` allowed grants any; asking for `*` needs
    /// `*`).
    pub fn grant(&self, user: Option<&str>, name: &str, requested: &[String]) -> Vec<String> {
        let allowed = self.allowed(user, name);
        requested
            .iter()
            .filter(|a| allowed.contains(*a) || (allowed.contains("*")))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_accepts_bcrypt_only() {
        let u = parse_htpasswd("# c\n\nalice:$2y$05$abc\n").unwrap();
        assert_eq!(u["alice"], "$2y$05$abc");
        assert!(parse_htpasswd("bob:{SHA}xyz\n").is_err());
        assert!(parse_htpasswd("no-colon\n")
            .unwrap_err()
            .contains("invalid entry at line 1"));
    }

    #[test]
    fn access_rules_match_both_names_of_an_image() {
        let a = AccessList::parse(
            "carol team/ pull\n* public/ pull\nadmin * *\nanonymous public/ pull\n",
        )
        .unwrap();
        let req: Vec<String> = vec!["push".into(), "pull".into()];
        assert_eq!(a.grant(Some("carol"), "team/app", &req), vec!["pull"]);
        assert_eq!(
            a.grant(Some("carol"), "127.0.0.1:5000/team/app", &req),
            vec!["pull"]
        );
        assert!(a.grant(Some("carol"), "other/app", &req).is_empty());
        assert_eq!(a.grant(None, "public/x", &req), vec!["pull"]);
        assert_eq!(a.grant(Some("admin"), "x/y", &["*".into()]), vec!["*"]);
        assert!(a.grant(Some("carol"), "team/app", &["*".into()]).is_empty());
        let open = AccessList::everyone_push_pull();
        assert_eq!(open.grant(Some("x"), "a/b", &req), req);
        assert!(open.grant(None, "a/b", &req).is_empty());
        assert!(AccessList::parse("u p delete\n").is_err());
    }
}
