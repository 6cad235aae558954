//! Credentials and authorization: Docker's `config.json`, `WWW-Authenticate` challenges, and the
//! distribution token flow (a bearer token per scope, fetched from the challenge's realm).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::HeaderValue;
use reqwest::Url;
use serde::Deserialize;

use super::client::{backoff, error_chain, is_retryable, status_message};
use super::reference::Reference;
use super::RegistryError;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<hidden>").finish()
    }
}

impl Credentials {
    fn basic_header(&self) -> HeaderValue {
        let raw = format!("{}:{}", self.username, self.password);
        let text = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw));
        let mut value = HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        value.set_sensitive(true);
        value
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Where Docker's config is read from: `explicit`, else `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn docker_config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The credentials Docker's config at `path` holds for `reference`'s registry. A missing file
/// holds none; a malformed one is an error.
pub fn load_credentials(path: &Path, reference: &Reference) -> Result<Option<Credentials>, RegistryError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!("{}: no docker config, pushing without credentials", path.display());
            return Ok(None);
        }
        Err(e) => return Err(RegistryError::Io { path: path.to_path_buf(), source: e }),
    };
    parse_docker_config(&bytes, reference).map_err(|why| RegistryError::DockerConfig { path: path.to_path_buf(), why })
}

/// The credentials in a Docker config's `auths` for `reference`'s registry: `auth` (base64 of
/// `user:password`), or `username` and `password`.
pub fn parse_docker_config(bytes: &[u8], reference: &Reference) -> Result<Option<Credentials>, String> {
    let config: DockerConfig = serde_json::from_slice(bytes).map_err(|e| format!("not a valid docker config: {e}"))?;
    let entry = config.auths.iter().find(|(k, _)| reference.matches_auth_key(k));
    let Some((key, entry)) = entry else {
        let helper = config.cred_helpers.iter().find(|(k, _)| reference.matches_auth_key(k)).map(|(_, v)| v);
        if let Some(h) = helper.or(config.creds_store.as_ref()) {
            tracing::warn!(
                "docker config names credential helper {h:?}, which flywheel does not run: pushing to {} without credentials",
                reference.registry
            );
        }
        return Ok(None);
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let engines = [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::STANDARD_NO_PAD];
        let decoded = engines
            .iter()
            .find_map(|e| e.decode(auth.trim()).ok())
            .ok_or_else(|| format!("auths.{key:?}.auth is not base64"))?;
        let text = String::from_utf8(decoded).map_err(|_| format!("auths.{key:?}.auth is not UTF-8 text"))?;
        let (user, password) =
            text.split_once(':').ok_or_else(|| format!("auths.{key:?}.auth is not base64 of user:password"))?;
        return Ok(Some(Credentials { username: user.to_string(), password: password.to_string() }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials { username: u.clone(), password: p.clone() })),
        (None, None) => Ok(None),
        _ => Err(format!("auths.{key:?} has a username or a password but not both")),
    }
}

/// One challenge of a `WWW-Authenticate` header: a scheme (lowercased) and its parameters
/// (names lowercased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` value (RFC 9110 §11.6.1): one or more challenges, each a scheme
/// followed by `name=value` or `name="quoted, \"value\""` parameters separated by commas.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let b = header.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    let skip_ws_commas = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        skip_ws_commas(&mut i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if start == i {
            // Not a token: skip a character and go on.
            i += 1;
            continue;
        }
        let token = &header[start..i];
        skip_ws(&mut i);
        // `name=value` inside a challenge; `=` followed by `=` would be token68 padding.
        let is_param = !out.is_empty() && i < b.len() && b[i] == b'=' && b.get(i + 1) != Some(&b'=');
        if is_param {
            i += 1;
            skip_ws(&mut i);
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    let ch_len = header[i..].chars().next().map_or(1, char::len_utf8);
                    v.push_str(&header[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1; // the closing quote
                v
            } else {
                let s = i;
                while i < b.len() && b[i] != b',' {
                    i += 1;
                }
                header[s..i].trim().to_string()
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(token.to_ascii_lowercase(), value);
            }
        } else {
            out.push(Challenge { scheme: token.to_ascii_lowercase(), params: BTreeMap::new() });
            // A token68 after the scheme (`Negotiate abc+/==`): skip it when a comma or the
            // end follows; otherwise what follows is the first parameter.
            let s = i;
            let is_t68 = |c: u8| c.is_ascii_alphanumeric() || b"-._~+/".contains(&c);
            while i < b.len() && is_t68(b[i]) {
                i += 1;
            }
            while i < b.len() && b[i] == b'=' {
                i += 1;
            }
            let mut k = i;
            skip_ws(&mut k);
            if s == i || (k < b.len() && b[k] != b',') {
                i = s;
            }
        }
    }
    out
}

enum Scheme {
    /// No challenge seen yet: send no `Authorization`.
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct Token {
    value: String,
    expires: Instant,
}

/// Authorization for one registry: what its challenge asked for, the credentials, and the
/// bearer tokens fetched so far (one per set of scopes).
pub struct Auth {
    registry: String,
    creds: Option<Credentials>,
    config_path: Option<PathBuf>,
    retries: u32,
    scheme: Mutex<Scheme>,
    tokens: tokio::sync::Mutex<HashMap<String, Token>>,
}

impl Auth {
    pub fn new(registry: &str, creds: Option<Credentials>, config_path: Option<PathBuf>, retries: u32) -> Self {
        Auth {
            registry: registry.to_string(),
            creds,
            config_path,
            retries,
            scheme: Mutex::new(Scheme::None),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// What a 401 error adds to say where credentials came from.
    pub fn hint(&self) -> String {
        let config = self.config_path.as_ref().map_or("no docker config".to_string(), |p| p.display().to_string());
        match &self.creds {
            None => format!("no credentials for {} in {config}", self.registry),
            Some(c) => format!("credentials of {:?} for {} from {config}", c.username, self.registry),
        }
    }

    fn set_scheme(&self, scheme: Scheme) {
        if let Ok(mut s) = self.scheme.lock() {
            *s = scheme;
        }
    }

    /// Remembers what a challenge (from `GET /v2/` or a 401) asks for. Returns the challenge's
    /// own `scope` parameter, if any.
    pub fn learn(&self, header_values: &[String]) -> Option<Vec<String>> {
        let challenges: Vec<Challenge> = header_values.iter().flat_map(|h| parse_challenges(h)).collect();
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = c.params.get("realm").cloned().unwrap_or_default();
            let service = c.params.get("service").cloned();
            self.set_scheme(Scheme::Bearer { realm, service });
            return Some(c.params.get("scope").map(|s| s.split(' ').map(str::to_string).collect()).unwrap_or_default());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            self.set_scheme(Scheme::Basic);
            return Some(Vec::new());
        }
        None
    }

    /// The `Authorization` header for a request needing `scopes`, fetching a token if needed.
    pub async fn header(
        &self,
        http: &reqwest::Client,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let bearer = match self.scheme.lock() {
            Ok(s) => match &*s {
                Scheme::None => return Ok(None),
                Scheme::Basic => return Ok(self.creds.as_ref().map(Credentials::basic_header)),
                Scheme::Bearer { realm, service } => (realm.clone(), service.clone()),
            },
            Err(_) => return Ok(None),
        };
        let key = scope_key(scopes);
        let mut tokens = self.tokens.lock().await;
        if let Some(t) = tokens.get(&key) {
            if t.expires > Instant::now() {
                return Ok(Some(bearer_header(&t.value)));
            }
        }
        let token = self.fetch_token(http, &bearer.0, bearer.1.as_deref(), scopes).await?;
        let header = bearer_header(&token.value);
        tokens.insert(key, token);
        Ok(Some(header))
    }

    /// After a 401 with these `WWW-Authenticate` values: whether sending the request again, with
    /// what the challenge asks for, can succeed. `sent` says whether the refused request carried
    /// an `Authorization` header.
    pub async fn on_challenge(
        &self,
        http: &reqwest::Client,
        header_values: &[String],
        scopes: &[String],
        sent: bool,
    ) -> Result<bool, RegistryError> {
        let was_bearer = matches!(self.scheme.lock().as_deref(), Ok(Scheme::Bearer { .. }));
        let Some(extra) = self.learn(header_values) else { return Ok(false) };
        let bearer = match self.scheme.lock() {
            Ok(s) => match &*s {
                Scheme::Bearer { realm, service } => Some((realm.clone(), service.clone())),
                _ => None,
            },
            Err(_) => None,
        };
        let Some((realm, service)) = bearer else {
            // Basic: worth a try only with credentials not sent yet.
            return Ok(self.creds.is_some() && (!sent || was_bearer));
        };
        // Bearer: a fresh token for the request's scopes and whatever the challenge names.
        let mut all: Vec<String> = scopes.to_vec();
        for s in extra {
            if !s.is_empty() && !all.contains(&s) {
                all.push(s);
            }
        }
        let token = self.fetch_token(http, &realm, service.as_deref(), &all).await?;
        self.tokens.lock().await.insert(scope_key(scopes), token);
        Ok(true)
    }

    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Token, RegistryError> {
        let what =
            format!("getting a token for {}", if scopes.is_empty() { "the registry".into() } else { scopes.join(" ") });
        let fail = |why: String| RegistryError::Token { what: what.clone(), realm: realm.to_string(), why };
        let mut url = Url::parse(realm).map_err(|e| fail(format!("the registry's realm is not a URL: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
            if let Some(c) = &self.creds {
                q.append_pair("account", &c.username);
            }
        }
        let max = self.retries.max(1);
        let mut attempt = 1;
        let resp = loop {
            let mut rb = http.get(url.clone());
            if let Some(c) = &self.creds {
                rb = rb.basic_auth(&c.username, Some(&c.password));
            }
            match rb.send().await {
                Ok(r) if is_retryable(r.status()) && attempt < max => {}
                Ok(r) => break r,
                Err(e) if attempt < max => tracing::debug!("{what}: {}", error_chain(&e)),
                Err(e) => return Err(fail(format!("{} (after {attempt} attempts)", error_chain(&e)))),
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        };
        let status = resp.status();
        if !status.is_success() {
            let message = status_message(resp).await;
            let hint =
                if status == reqwest::StatusCode::UNAUTHORIZED { format!(" ({})", self.hint()) } else { String::new() };
            let sep = if message.is_empty() { "" } else { ": " };
            return Err(fail(format!("answered {status}{sep}{message}{hint}")));
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let bytes = resp.bytes().await.map_err(|e| fail(error_chain(&e)))?;
        let body: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| fail(format!("answer is not a token response: {e}")))?;
        let value = body
            .token
            .filter(|t| !t.is_empty())
            .or(body.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| fail("answer has neither token nor access_token".into()))?;
        // Tokens live 60 s unless said otherwise; renew a little early.
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(60).max(1));
        let expires = Instant::now() + lifetime.saturating_sub(Duration::from_secs(10)).max(Duration::from_secs(1));
        Ok(Token { value, expires })
    }
}

fn scope_key(scopes: &[String]) -> String {
    let mut s = scopes.to_vec();
    s.sort();
    s.join(" ")
}

fn bearer_header(token: &str) -> HeaderValue {
    let mut v =
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
    v.set_sensitive(true);
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn reference(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn bearer_challenge_with_commas_in_quotes() {
        let h = r#"Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope""#;
        let c = parse_challenges(h);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.example.org/token");
        assert_eq!(c[0].params["service"], "registry.example.org");
        assert_eq!(c[0].params["scope"], "repository:a/b:pull,push repository:c:pull");
        assert_eq!(c[0].params["error"], "insufficient_scope");
    }

    #[test]
    fn basic_and_several_challenges() {
        let c = parse_challenges(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            c,
            vec![Challenge { scheme: "basic".into(), params: [("realm".into(), "Registry Realm".into())].into() }]
        );
        let c = parse_challenges(
            r#"Negotiate abc+/=, Basic realm="a, b", charset="UTF-8" , BEARER Realm=http://x/t , service = "s\"q""#,
        );
        let schemes: Vec<&str> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["negotiate", "basic", "bearer"]);
        assert!(c[0].params.is_empty());
        assert_eq!(c[1].params["realm"], "a, b");
        assert_eq!(c[1].params["charset"], "UTF-8");
        assert_eq!(c[2].params["realm"], "http://x/t");
        assert_eq!(c[2].params["service"], "s\"q");
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Basic").len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn challenges_never_panic(s in "\\PC{0,80}", t in "[a-zA-Z =\",\\\\é]{0,40}") {
            let _ = parse_challenges(&s);
            let _ = parse_challenges(&t);
            let _ = parse_challenges(&format!("Bearer {t}"));
        }
    }

    #[test]
    fn docker_config_auth_field() {
        let r = reference("127.0.0.1:5000/a");
        let auth = base64::engine::general_purpose::STANDARD.encode("user:pa:ss");
        let cfg = format!(r#"{{"auths":{{"other:1":{{"auth":"eDp5"}},"127.0.0.1:5000":{{"auth":"{auth}"}}}}}}"#);
        let c = parse_docker_config(cfg.as_bytes(), &r).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pa:ss"));
        // An http:// key with a path, and username/password fields.
        let cfg = r#"{"auths":{"http://127.0.0.1:5000/v2/":{"username":"u","password":"p"}}}"#;
        let c = parse_docker_config(cfg.as_bytes(), &r).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
        assert!(!format!("{c:?}").contains("\"p\""), "the password is not in Debug output");
    }

    #[test]
    fn docker_config_without_entry_or_malformed() {
        let r = reference("127.0.0.1:5000/a");
        assert_eq!(parse_docker_config(b"{}", &r).unwrap(), None);
        assert_eq!(parse_docker_config(br#"{"auths":{"127.0.0.1:5001":{"auth":"eDp5"}}}"#, &r).unwrap(), None);
        assert_eq!(parse_docker_config(br#"{"auths":{"127.0.0.1:5000":{}}}"#, &r).unwrap(), None);
        assert_eq!(parse_docker_config(br#"{"credsStore":"desktop"}"#, &r).unwrap(), None);
        let e = parse_docker_config(b"{not json", &r).unwrap_err();
        assert!(e.contains("not a valid docker config"), "{e}");
        let e = parse_docker_config(br#"{"auths":{"127.0.0.1:5000":{"auth":"!!!"}}}"#, &r).unwrap_err();
        assert!(e.contains("not base64"), "{e}");
        let no_colon = base64::engine::general_purpose::STANDARD.encode("user");
        let cfg = format!(r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{no_colon}"}}}}}}"#);
        let e = parse_docker_config(cfg.as_bytes(), &r).unwrap_err();
        assert!(e.contains("user:password"), "{e}");
        let e = parse_docker_config(br#"{"auths":{"127.0.0.1:5000":{"username":"u"}}}"#, &r).unwrap_err();
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn config_path_prefers_explicit() {
        assert_eq!(docker_config_path(Some(Path::new("/x/c.json"))), Some(PathBuf::from("/x/c.json")));
    }
}
