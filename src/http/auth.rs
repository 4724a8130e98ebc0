//! Host authentication for the room API: `Authorization: Basic` against the argon2id
//! hashes of `[[http.hosts]]`, or `Bearer <JWT>` (HS256 under `http.jwt_secret`, `exp`
//! required) from an outside login.
//!
//! With no host configured (only allowed on a loopback `http.listen`, see the config
//! check) the node makes a one-time password for the account `host` at start.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::limit::PerSource;
use crate::config::HttpConfig;

/// Name of the account that gets the one-time password.
pub(crate) const ONE_TIME_ACCOUNT: &str = "host";
/// argon2 verifications run at once (each takes ~19 MiB and a core for a while).
const CONCURRENT_VERIFICATIONS: usize = 2;
/// How long a login waits for a verification slot before it is told to retry.
const VERIFY_QUEUE_WAIT: Duration = Duration::from_secs(10);
/// Logins being verified or waiting for a slot; one more is told to retry at once, so
/// a burst cannot queue good logins behind it for long.
const MAX_PENDING_VERIFICATIONS: usize = 8;
/// Failed password logins one address (an IPv6 /64) may make per minute; more are
/// answered 429 without a verification.
const FAILED_LOGINS_PER_MINUTE: u32 = 10;
/// Leeway on a host token's `exp` and `nbf` for clocks a little apart.
const JWT_LEEWAY_SECS: u64 = 5;
/// Longest `Authorization` value looked at.
const MAX_AUTHORIZATION_LEN: usize = 8192;

/// Why a host request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No or a malformed `Authorization` header, wrong credentials, or a bad token: 401.
    /// `bearer` says which challenge to answer with.
    Unauthorized { bearer: bool },
    /// Too many logins being checked at once: 503.
    Busy,
    /// Too many failed logins from this address: 429, with the seconds to wait.
    TooMany { retry_after: u64 },
}

/// The host accounts and the JWT key, and the throttles of password logins.
pub(crate) struct HostAuth {
    /// Replaced as a whole on SIGHUP ([`HostAuth::replace`]).
    logins: RwLock<Arc<Logins>>,
    verifications: Semaphore,
    /// Verifications running or waiting (see [`MAX_PENDING_VERIFICATIONS`]).
    pending: AtomicUsize,
    /// Failed password logins per source.
    failures: PerSource,
}

/// On any other `http.listen` than loopback, the node needs a way for hosts to log in:
/// an `[[http.hosts]]` account or `http.jwt_secret` (the one-time password is for a
/// node on loopback only).
pub(crate) fn check_host_logins(http: &HttpConfig) -> Result<(), String> {
    if http.hosts.is_empty() && http.jwt_secret.is_empty() && !http.listen.ip().is_loopback() {
        return Err(format!(
            "http.hosts: http.listen {} is not a loopback address, so at least one \
             [[http.hosts]] account (or http.jwt_secret) is needed",
            http.listen
        ));
    }
    Ok(())
}

/// Who may log in as a host.
struct Logins {
    /// Name and argon2id PHC string of each `[[http.hosts]]` account.
    accounts: Vec<(String, String)>,
    /// SHA-256 of the one-time password of [`ONE_TIME_ACCOUNT`] (128 random bits, so a
    /// fast hash is enough), when no account is configured.
    one_time: Option<[u8; 32]>,
    jwt: Option<(DecodingKey, Validation)>,
}

impl Logins {
    /// The accounts and JWT key of `[http]`, with the digest of a one-time password.
    fn new(http: &HttpConfig, one_time: Option<[u8; 32]>) -> Logins {
        let accounts = http
            .hosts
            .iter()
            .map(|h| (h.name.clone(), h.password_hash.0.clone()))
            .collect();
        let jwt = (!http.jwt_secret.is_empty()).then(|| {
            let mut v = Validation::new(Algorithm::HS256);
            v.set_required_spec_claims(&["exp"]);
            v.validate_exp = true;
            v.validate_nbf = true;
            v.leeway = JWT_LEEWAY_SECS;
            v.validate_aud = false;
            (DecodingKey::from_secret(http.jwt_secret.as_bytes()), v)
        });
        Logins {
            accounts,
            one_time,
            jwt,
        }
    }
}

impl std::fmt::Debug for HostAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let logins = self.logins();
        f.debug_struct("HostAuth")
            .field("accounts", &logins.accounts.len())
            .field("one_time", &logins.one_time.is_some())
            .field("jwt", &logins.jwt.is_some())
            .finish_non_exhaustive()
    }
}

impl HostAuth {
    /// The accounts of `[http]`; with none (and no JWT secret) a one-time password is
    /// made and returned so that it can be shown to the operator once.
    pub(crate) fn from_config(http: &HttpConfig) -> (HostAuth, Option<String>) {
        install_hs256_provider();
        let none = http.hosts.is_empty() && http.jwt_secret.is_empty();
        let password = none.then(|| {
            let mut raw = [0u8; 16];
            OsRng.fill_bytes(&mut raw);
            URL_SAFE_NO_PAD.encode(raw)
        });
        let logins = Logins::new(http, password.as_deref().map(sha256));
        let auth = HostAuth {
            logins: RwLock::new(Arc::new(logins)),
            verifications: Semaphore::new(CONCURRENT_VERIFICATIONS),
            pending: AtomicUsize::new(0),
            failures: PerSource::new(FAILED_LOGINS_PER_MINUTE, 60),
        };
        (auth, password)
    }

    /// The accounts and JWT secret of a new `[http]` (SIGHUP); logins from now on are
    /// checked against them. With neither, a one-time password shown at start stays
    /// good; none is made now (no terminal may be watching).
    pub(crate) fn replace(&self, http: &HttpConfig) {
        let one_time = self.logins().one_time;
        let none = http.hosts.is_empty() && http.jwt_secret.is_empty();
        let logins = Logins::new(http, one_time.filter(|_| none));
        *self.logins.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(logins);
    }

    fn logins(&self) -> Arc<Logins> {
        self.logins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The host a request speaks for: the account name (Basic), or `jwt:` and the
    /// token's `sub` (Bearer). `source` is the client's address: one that failed too
    /// many password logins is refused before any verification.
    pub(crate) async fn authenticate(
        self: &Arc<Self>,
        headers: &HeaderMap,
        source: Option<IpAddr>,
    ) -> Result<String, Refusal> {
        let result = self.check(headers, source).await;
        if let (Err(Refusal::Unauthorized { bearer: false }), Some(ip)) = (&result, source) {
            let _ = self.failures.check(ip, unix_now());
        }
        result
    }

    async fn check(
        self: &Arc<Self>,
        headers: &HeaderMap,
        source: Option<IpAddr>,
    ) -> Result<String, Refusal> {
        let basic = Refusal::Unauthorized { bearer: false };
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= MAX_AUTHORIZATION_LEN)
            .ok_or(basic)?;
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.check_jwt(rest.trim());
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(basic);
        }
        if let Some(retry_after) = source.and_then(|ip| self.failures.blocked(ip, unix_now())) {
            return Err(Refusal::TooMany { retry_after });
        }
        let decoded = STANDARD.decode(rest.trim()).map_err(|_| basic)?;
        let colon = decoded.iter().position(|&b| b == b':').ok_or(basic)?;
        let name = std::str::from_utf8(&decoded[..colon]).map_err(|_| basic)?;
        let password = decoded[colon + 1..].to_vec();
        if self.check_password(name, password).await? {
            Ok(name.to_owned())
        } else {
            Err(basic)
        }
    }

    fn check_jwt(&self, token: &str) -> Result<String, Refusal> {
        let bearer = Refusal::Unauthorized { bearer: true };
        let logins = self.logins();
        let (key, validation) = logins.jwt.as_ref().ok_or(bearer)?;
        #[derive(serde::Deserialize)]
        struct Claims {
            sub: Option<String>,
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|_| bearer)?;
        Ok(match data.claims.sub {
            Some(sub) => format!("jwt:{sub}"),
            None => "jwt".to_owned(),
        })
    }

    /// argon2id verification on a blocking thread, at most
    /// [`CONCURRENT_VERIFICATIONS`] at once. An unknown name is verified against
    /// another account's hash all the same, so the time taken does not tell which
    /// names exist.
    async fn check_password(
        self: &Arc<Self>,
        name: &str,
        password: Vec<u8>,
    ) -> Result<bool, Refusal> {
        let logins = self.logins();
        if let Some(digest) = logins.one_time {
            let ok = name == ONE_TIME_ACCOUNT;
            return Ok(same(&digest, &sha256_bytes(&password)) && ok);
        }
        let known = logins.accounts.iter().position(|(n, _)| n == name);
        let Some(index) = known.or((!logins.accounts.is_empty()).then_some(0)) else {
            return Ok(false);
        };
        let _pending = Pending::take(&self.pending).ok_or(Refusal::Busy)?;
        let _permit = tokio::time::timeout(VERIFY_QUEUE_WAIT, self.verifications.acquire())
            .await
            .map_err(|_| Refusal::Busy)?
            .map_err(|_| Refusal::Busy)?;
        let verified = tokio::task::spawn_blocking(move || {
            let Some((_, phc)) = logins.accounts.get(index) else {
                return false;
            };
            PasswordHash::new(phc)
                .map(|h| Argon2::default().verify_password(&password, &h).is_ok())
                .unwrap_or(false)
        })
        .await
        .map_err(|_| Refusal::Busy)?;
        Ok(verified && known.is_some())
    }
}

/// One login in [`HostAuth::pending`]; leaves it when dropped.
struct Pending<'a>(&'a AtomicUsize);

impl<'a> Pending<'a> {
    fn take(pending: &'a AtomicUsize) -> Option<Pending<'a>> {
        let before = pending.fetch_add(1, Ordering::SeqCst);
        let taken = Pending(pending);
        (before < MAX_PENDING_VERIFICATIONS).then_some(taken)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sha256(text: &str) -> [u8; 32] {
    sha256_bytes(text.as_bytes())
}

fn sha256_bytes(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares two digests without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// jsonwebtoken's crypto for HS256 only, on `hmac` and `sha2`: no other algorithm can
/// be verified, whatever a token's header says (the validation allows HS256 alone too).
static HS256_ONLY: CryptoProvider = CryptoProvider {
    signer_factory: hs256_signer,
    verifier_factory: hs256_verifier,
    jwk_utils: JwkUtils::new_unimplemented(),
};

/// Makes [`HS256_ONLY`] jsonwebtoken's provider for this process (once; later calls
/// change nothing).
pub(crate) fn install_hs256_provider() {
    let _ = HS256_ONLY.install_default();
}

struct Hs256(Hmac<Sha256>);

impl Hs256 {
    fn new(secret: &[u8]) -> jsonwebtoken::errors::Result<Hs256> {
        Hmac::<Sha256>::new_from_slice(secret)
            .map(Hs256)
            .map_err(|_| ErrorKind::InvalidKeyFormat.into())
    }
}

impl jsonwebtoken::signature::Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, jsonwebtoken::signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl jsonwebtoken::signature::Verifier<Vec<u8>> for Hs256 {
    fn verify(
        &self,
        msg: &[u8],
        signature: &Vec<u8>,
    ) -> Result<(), jsonwebtoken::signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        // Constant-time comparison.
        mac.verify_slice(signature)
            .map_err(|_| jsonwebtoken::signature::Error::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn hs256_signer(
    alg: &Algorithm,
    key: &EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    if *alg != Algorithm::HS256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(Hs256::new(key.try_get_hmac_secret()?)?))
}

fn hs256_verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    if *alg != Algorithm::HS256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(Hs256::new(key.try_get_hmac_secret()?)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostAccount, PasswordHash as ConfigHash};
    use argon2::password_hash::{PasswordHasher, SaltString};
    use axum::http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "a-long-enough-test-secret-for-hs256";

    /// A cheap argon2id hash (tests only; the config accepts any argon2id parameters).
    fn cheap_hash(password: &str) -> String {
        let params = argon2::Params::new(8, 1, 1, None).expect("params");
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        argon
            .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
            .expect("hash")
            .to_string()
    }

    fn config(hosts: &[(&str, &str)], jwt: &str) -> HttpConfig {
        HttpConfig {
            hosts: hosts
                .iter()
                .map(|(n, p)| HostAccount {
                    name: (*n).to_owned(),
                    password_hash: ConfigHash(cheap_hash(p)),
                })
                .collect(),
            jwt_secret: jwt.to_owned(),
            ..HttpConfig::default()
        }
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        headers(&format!(
            "Basic {}",
            STANDARD.encode(format!("{user}:{password}"))
        ))
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn jwt(claims: serde_json::Value, secret: &str) -> String {
        install_hs256_provider();
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn unauthorized(bearer: bool) -> Result<String, Refusal> {
        Err(Refusal::Unauthorized { bearer })
    }

    #[tokio::test]
    async fn basic_accounts() {
        let (auth, one_time) =
            HostAuth::from_config(&config(&[("ann", "pw1"), ("bob", "pw2")], ""));
        assert!(one_time.is_none());
        let auth = Arc::new(auth);
        assert_eq!(
            auth.authenticate(&basic("ann", "pw1"), None).await,
            Ok("ann".into())
        );
        assert_eq!(
            auth.authenticate(&basic("bob", "pw2"), None).await,
            Ok("bob".into())
        );
        assert_eq!(
            auth.authenticate(&basic("bob", "pw1"), None).await,
            unauthorized(false)
        );
        assert_eq!(
            auth.authenticate(&basic("eve", "pw1"), None).await,
            unauthorized(false)
        );
        // A password with a colon in it is split at the first colon only.
        assert_eq!(
            auth.authenticate(&basic("ann", "pw1:"), None).await,
            unauthorized(false)
        );
        assert_eq!(
            auth.authenticate(&HeaderMap::new(), None).await,
            unauthorized(false)
        );
        assert_eq!(
            auth.authenticate(&headers("Basic !!!"), None).await,
            unauthorized(false)
        );
        assert_eq!(
            auth.authenticate(&headers("Digest x"), None).await,
            unauthorized(false)
        );
        // Bearer with no jwt_secret configured.
        let token = jwt(serde_json::json!({ "exp": now() + 60 }), SECRET);
        assert_eq!(
            auth.authenticate(&headers(&format!("Bearer {token}")), None)
                .await,
            unauthorized(true)
        );
    }

    #[tokio::test]
    async fn one_time_password_when_nothing_is_configured() {
        let (auth, password) = HostAuth::from_config(&HttpConfig::default());
        let password = password.expect("one-time password");
        assert_eq!(password.len(), 22);
        let auth = Arc::new(auth);
        assert_eq!(
            auth.authenticate(&basic("host", &password), None).await,
            Ok("host".into())
        );
        assert_eq!(
            auth.authenticate(&basic("host", "guess"), None).await,
            unauthorized(false)
        );
        assert_eq!(
            auth.authenticate(&basic("other", &password), None).await,
            unauthorized(false)
        );
        // A second start makes another.
        let (_, again) = HostAuth::from_config(&HttpConfig::default());
        assert_ne!(again.as_deref(), Some(password.as_str()));
        // No one-time password once a JWT secret is set.
        let (_, none) = HostAuth::from_config(&config(&[], SECRET));
        assert!(none.is_none());
    }

    #[tokio::test]
    async fn jwt_rules() {
        let (auth, _) = HostAuth::from_config(&config(&[], SECRET));
        let auth = Arc::new(auth);
        let bearer = |t: &str| headers(&format!("Bearer {t}"));
        let good = jwt(
            serde_json::json!({ "exp": now() + 600, "sub": "alice" }),
            SECRET,
        );
        assert_eq!(
            auth.authenticate(&bearer(&good), None).await,
            Ok("jwt:alice".into())
        );
        let anonymous = jwt(serde_json::json!({ "exp": now() + 600 }), SECRET);
        assert_eq!(
            auth.authenticate(&bearer(&anonymous), None).await,
            Ok("jwt".into())
        );
        // An audience is not checked (none is configured), but does not fail either.
        let aud = jwt(
            serde_json::json!({ "exp": now() + 600, "aud": "x" }),
            SECRET,
        );
        assert!(auth.authenticate(&bearer(&aud), None).await.is_ok());

        let expired = jwt(serde_json::json!({ "exp": now() - 3600 }), SECRET);
        let no_exp = jwt(serde_json::json!({ "sub": "alice" }), SECRET);
        let wrong_key = jwt(serde_json::json!({ "exp": now() + 600 }), "another secret");
        let text_exp = jwt(serde_json::json!({ "exp": "tomorrow" }), SECRET);
        let b64 = |v: &str| URL_SAFE_NO_PAD.encode(v);
        let claims = b64(&format!(r#"{{"exp":{}}}"#, now() + 600));
        let alg_none = format!("{}.{claims}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        // HS512 under the right secret is still refused: HS256 only.
        let mut mac = Hmac::<sha2::Sha512>::new_from_slice(SECRET.as_bytes()).expect("key");
        let head = b64(r#"{"alg":"HS512","typ":"JWT"}"#);
        mac.update(format!("{head}.{claims}").as_bytes());
        let hs512 = format!(
            "{head}.{claims}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        // The right signature moved under a changed payload.
        let sig = good.rsplit('.').next().expect("sig");
        let tampered = format!(
            "{}.{}.{sig}",
            b64(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64(&format!(r#"{{"exp":{},"sub":"mallory"}}"#, now() + 600))
        );
        for bad in [
            expired.as_str(),
            &no_exp,
            &wrong_key,
            &text_exp,
            &alg_none,
            &hs512,
            &tampered,
            "",
            "not.a.jwt",
        ] {
            assert_eq!(
                auth.authenticate(&bearer(bad), None).await,
                unauthorized(true),
                "{bad}"
            );
        }
        // A Basic login against a node with only a JWT secret fails.
        assert_eq!(
            auth.authenticate(&basic("host", "x"), None).await,
            unauthorized(false)
        );
    }

    #[test]
    fn debug_hides_accounts() {
        let (auth, _) = HostAuth::from_config(&config(&[("ann", "pw1")], SECRET));
        let shown = format!("{auth:?}");
        assert!(
            !shown.contains("ann") && !shown.contains("argon2"),
            "{shown}"
        );
    }
}
