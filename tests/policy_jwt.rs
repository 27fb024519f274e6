//! RequestAuthentication end to end, against real Envoy 1.40.
//!
//! Tokens are signed at test time with keys the test makes (RS256 and ES256), and the
//! keys are served as JWKS by a local HTTP server the test controls. The same Istio
//! resources go to `meshgate translate` (loaded into Envoy) and to `meshgate gateway
//! --config`; every probe must get the same status, body and `www-authenticate` from
//! both, and where the token is accepted the same request reaches the upstream
//! (payload and claim headers, the token forwarded or removed). Then the server rotates
//! the RSA key: with a 2s cache both proxies accept the new key's tokens and refuse the
//! old key's, by refreshing the set.
//!
//! A second test feeds both proxies the same `jwt_authn` filter requiring a token (no
//! `allow_missing`): the missing-token answer and its `www-authenticate` must match.
mod support;
#[path = "support/translate.rs"]
mod translate_support;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::gateway::{GatewayProcess, InProcess, RawResponse, envoy_with, get};
use support::{EchoUpstream, TempDir, free_port, wait_until};
use translate_support::TranslatedEnvoy;

// ---------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A signing key and its kid.
struct Signer {
    kid: String,
    key: Key,
}

impl Signer {
    fn rsa(kid: &str) -> Signer {
        Signer {
            kid: kid.into(),
            key: Key::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap()),
        }
    }

    fn ec(kid: &str) -> Signer {
        Signer {
            kid: kid.into(),
            key: Key::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            ),
        }
    }

    fn alg(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "RS256",
            Key::Ec(_) => "ES256",
        }
    }

    /// The public key as a JWK.
    fn jwk(&self) -> Value {
        match &self.key {
            Key::Rsa(k) => {
                let c = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig", "n": B64.encode(c.n), "e": B64.encode(c.e)})
            }
            Key::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "crv": "P-256", "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
            }
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
            Key::Ec(k) => k.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{input}.{}", B64.encode(sig))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const RS_ISSUER: &str = "https://rs.issuer.example";
const ES_ISSUER: &str = "https://es.issuer.example";

fn claims(iss: &str, aud: &str) -> Value {
    json!({"iss": iss, "sub": "user-1", "aud": aud, "iat": now(), "exp": now() + 600,
           "scope": "read write", "org": {"team": "blue", "size": 7}})
}

// ---------------------------------------------------------------------------------------
// The key server
// ---------------------------------------------------------------------------------------

/// An HTTP server on loopback answering `GET /rs` and `GET /es` with the key sets it is
/// given, counting requests.
struct JwksServer {
    port: u16,
    sets: Arc<Mutex<std::collections::BTreeMap<String, String>>>,
    hits: Arc<AtomicUsize>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl JwksServer {
    fn start() -> JwksServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let sets: Arc<Mutex<std::collections::BTreeMap<String, String>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let (s, h) = (sets.clone(), hits.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let (s, h) = (s.clone(), h.clone());
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                                    h.fetch_add(1, Ordering::SeqCst);
                                    let body = s.lock().unwrap().get(req.uri().path()).cloned();
                                    async move {
                                        let (status, body) = match body {
                                            Some(b) => (200, b),
                                            None => (404, String::new()),
                                        };
                                        Ok::<_, std::convert::Infallible>(
                                            http::Response::builder()
                                                .status(status)
                                                .header("content-type", "application/json")
                                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                                .unwrap(),
                                        )
                                    }
                                });
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                            });
                        }
                    }
                }
            });
        });
        JwksServer {
            port,
            sets,
            hits,
            _stop: tx,
        }
    }

    fn serve(&self, path: &str, keys: &[&Signer]) {
        let doc = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        self.sets
            .lock()
            .unwrap()
            .insert(path.to_string(), doc.to_string());
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------
// The configuration
// ---------------------------------------------------------------------------------------

fn istio_config(gw_port: u16, backend: u16, jwks: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: istio-system}}
spec:
  hosts: [backend.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {backend}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: backend.internal, port: {{number: 80}}}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt
  namespace: istio-system
  annotations: {{meshgate.io/jwks-cache-duration: 2s}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {RS_ISSUER}
    audiences: [api]
    jwksUri: http://127.0.0.1:{jwks}/rs
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}, {{header: x-jwt-team, claim: org.team}}, {{header: x-jwt-size, claim: org.size}}]
  - issuer: {ES_ISSUER}
    jwksUri: http://127.0.0.1:{jwks}/es
    fromHeaders: [{{name: x-token, prefix: "Token "}}]
    fromParams: [tok]
    fromCookies: [session]
    forwardOriginalToken: true
"#
    )
}

/// The two proxies' ports: every request goes to both.
struct Pair {
    envoy: u16,
    mesh: u16,
}

/// What is compared of an answer: status, body of local answers, `www-authenticate`,
/// and for forwarded requests what the upstream received of the headers that matter.
fn facts(r: &RawResponse) -> Value {
    let echo = r.echo();
    let upstream = if echo.is_null() {
        Value::Null
    } else {
        let h = &echo["headers"];
        json!({
            "path": echo["path"],
            "authorization": h["authorization"],
            "x-token": h["x-token"],
            "cookie": h["cookie"],
            "x-jwt-payload": h["x-jwt-payload"],
            "x-jwt-sub": h["x-jwt-sub"],
            "x-jwt-team": h["x-jwt-team"],
            "x-jwt-size": h["x-jwt-size"],
        })
    };
    json!({
        "status": r.status,
        "www-authenticate": r.header("www-authenticate"),
        "body": if echo.is_null() { Value::String(r.body_str()) } else { Value::Null },
        "upstream": upstream,
    })
}

impl Pair {
    fn both(&self, path: &str, headers: &[(&str, &str)]) -> (Value, Value) {
        let e = facts(&get(self.envoy, "example.com", path, headers));
        let m = facts(&get(self.mesh, "example.com", path, headers));
        (e, m)
    }

    /// Sends to both, asserts they agree, returns the answer.
    fn same(&self, what: &str, path: &str, headers: &[(&str, &str)]) -> Value {
        let (e, m) = self.both(path, headers);
        assert_eq!(m, e, "{what}: meshgate (left) and Envoy (right) differ");
        e
    }
}

#[test]
fn request_authentication_matches_envoy_and_follows_key_rotation() {
    let backend = EchoUpstream::start("backend");
    let jwks = JwksServer::start();
    let rs1 = Signer::rsa("rs-1");
    let es1 = Signer::ec("es-1");
    jwks.serve("/rs", &[&rs1]);
    jwks.serve("/es", &[&es1]);

    let envoy_port = free_port();
    let mesh_port = free_port();
    let envoy = TranslatedEnvoy::start(
        &istio_config(envoy_port, backend.port(), jwks.port),
        "istio=ingressgateway",
        1,
    );
    let dir = TempDir::new();
    let cfg = dir.path().join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.yaml"),
        istio_config(mesh_port, backend.port(), jwks.port),
    )
    .unwrap();
    let _mesh = GatewayProcess::start_with(&["--config", cfg.to_str().unwrap()], dir.path());
    support::wait_for_port(envoy_port, Duration::from_secs(20));
    support::wait_for_port(mesh_port, Duration::from_secs(20));
    let p = Pair {
        envoy: envoy_port,
        mesh: mesh_port,
    };

    let good = rs1.sign(&claims(RS_ISSUER, "api"));
    let bearer = format!("Bearer {good}");
    // Envoy fetches in the background at start; both must accept a good token (bounded
    // wait for the first fetch).
    wait_until(
        "both accept a valid RS256 token",
        Duration::from_secs(20),
        || {
            let (e, m) = p.both("/", &[("authorization", &bearer)]);
            e["status"] == 200 && m["status"] == 200
        },
    );

    // A valid token in the Authorization header: the token is removed, the payload and
    // the claims (nested ones too) become headers.
    let a = p.same("valid RS256", "/get?x=1", &[("authorization", &bearer)]);
    assert_eq!(a["status"], 200);
    assert_eq!(a["upstream"]["authorization"], Value::Null);
    assert_eq!(a["upstream"]["x-jwt-sub"], json!(["user-1"]));
    assert_eq!(a["upstream"]["x-jwt-team"], json!(["blue"]));
    assert_eq!(a["upstream"]["x-jwt-size"], json!(["7"]));
    assert_eq!(
        a["upstream"]["x-jwt-payload"],
        json!([good.split('.').nth(1).unwrap()])
    );
    // Headers a client sends in the names of the output headers never reach the upstream.
    let spoofed = p.same(
        "client-sent claim headers",
        "/",
        &[("x-jwt-sub", "admin"), ("x-jwt-payload", "forged")],
    );
    assert_eq!(spoofed["status"], 200);
    assert_eq!(spoofed["upstream"]["x-jwt-sub"], Value::Null);
    assert_eq!(spoofed["upstream"]["x-jwt-payload"], Value::Null);
    // A token in `access_token` (the default parameter) is removed from the path.
    let q = p.same(
        "valid RS256 in access_token",
        &format!("/q?a=1&access_token={good}&b=2"),
        &[],
    );
    assert_eq!(q["status"], 200);
    assert_eq!(q["upstream"]["path"], "/q?a=1&b=2");

    // ES256 in the custom header with its prefix, in the query parameter, in the cookie:
    // accepted and forwarded as they came.
    let es = es1.sign(&claims(ES_ISSUER, "anything"));
    let token_header = format!("Token {es}");
    let h = p.same("ES256 in x-token", "/", &[("x-token", &token_header)]);
    assert_eq!(h["status"], 200);
    assert_eq!(h["upstream"]["x-token"], json!([token_header]));
    let q = p.same("ES256 in ?tok", &format!("/p?tok={es}"), &[]);
    assert_eq!(q["status"], 200);
    assert_eq!(q["upstream"]["path"], format!("/p?tok={es}"));
    // A header that is not one of Envoy's inline ones keeps one value per line: each is
    // a token, and every one must be valid.
    let r = p.same(
        "x-token twice, one bad",
        "/",
        &[("x-token", &token_header), ("x-token", "Token abc")],
    );
    assert_eq!(r["status"], 401);
    let cookie = format!("a=b; session={es}");
    let c = p.same("ES256 in cookie", "/", &[("cookie", &cookie)]);
    assert_eq!(c["status"], 200);

    // Refused tokens: same status, body and www-authenticate from both.
    let mut expired = claims(RS_ISSUER, "api");
    expired["exp"] = json!(now() - 3600);
    let mut early = claims(RS_ISSUER, "api");
    early["nbf"] = json!(now() + 3600);
    let wrong_issuer = rs1.sign(&claims("https://other.example", "api"));
    let wrong_aud = rs1.sign(&claims(RS_ISSUER, "not-api"));
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = B64.encode(
        claims(RS_ISSUER, "api")
            .to_string()
            .replace("user-1", "user-2"),
    );
    let bad_signature = parts.join(".");
    let es_in_bearer = format!("Bearer {es}");
    // (what, Authorization value, Envoy's body, status)
    let cases: [(&str, String, &str, u16); 7] = [
        (
            "expired",
            format!("Bearer {}", rs1.sign(&expired)),
            "Jwt is expired",
            401,
        ),
        (
            "not yet valid",
            format!("Bearer {}", rs1.sign(&early)),
            "Jwt not yet valid",
            401,
        ),
        (
            "wrong issuer",
            format!("Bearer {wrong_issuer}"),
            "Jwt issuer is not configured",
            401,
        ),
        (
            "wrong audience",
            format!("Bearer {wrong_aud}"),
            "Audiences in Jwt are not allowed",
            403,
        ),
        (
            "bad signature",
            format!("Bearer {bad_signature}"),
            "Jwt verification fails",
            401,
        ),
        (
            "malformed",
            "Bearer abc".to_string(),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            401,
        ),
        // An ES256 token where only the RS issuer reads tokens.
        (
            "other issuer's location",
            es_in_bearer,
            "Jwt issuer is not configured",
            401,
        ),
    ];
    for (what, auth, body, status) in &cases {
        let r = p.same(what, "/path?q=1", &[("authorization", auth)]);
        assert_eq!(r["status"], *status, "{what}: {r}");
        assert_eq!(r["body"], *body, "{what}");
        assert_eq!(
            r["www-authenticate"],
            "Bearer realm=\"http://example.com/path?q=1\", error=\"invalid_token\"",
            "{what}"
        );
    }
    // An expired ES256 token in the query parameter; a malformed one in the cookie.
    let mut es_expired = claims(ES_ISSUER, "x");
    es_expired["exp"] = json!(now() - 3600);
    let r = p.same(
        "expired in ?tok",
        &format!("/e?tok={}", es1.sign(&es_expired)),
        &[],
    );
    assert_eq!(r["status"], 401);
    let r = p.same("malformed cookie", "/", &[("cookie", "session=not.a.jwt")]);
    assert_eq!(r["status"], 401);
    // No token at all: allowed through (authorization decides), as Istio configures.
    let r = p.same("missing", "/", &[]);
    assert_eq!(r["status"], 200);

    // Key rotation: the RSA set now holds only a new key.
    let rs2 = Signer::rsa("rs-2");
    let before = jwks.hits();
    jwks.serve("/rs", &[&rs2]);
    let new_token = format!("Bearer {}", rs2.sign(&claims(RS_ISSUER, "api")));
    let old_token = format!("Bearer {}", rs1.sign(&claims(RS_ISSUER, "api")));
    wait_until(
        "both proxies refresh the key set (2s cache): new key accepted, old key refused",
        Duration::from_secs(30),
        || {
            let (en, mn) = p.both("/", &[("authorization", &new_token)]);
            let (eo, mo) = p.both("/", &[("authorization", &old_token)]);
            en["status"] == 200 && mn["status"] == 200 && eo["status"] == 401 && mo["status"] == 401
        },
    );
    let r = p.same(
        "old key after rotation",
        "/",
        &[("authorization", &old_token)],
    );
    assert_eq!(
        r["body"],
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
    p.same(
        "new key after rotation",
        "/",
        &[("authorization", &new_token)],
    );
    assert!(jwks.hits() > before, "the key server was asked again");
    drop(envoy);
}

// ---------------------------------------------------------------------------------------
// A required token (no allow_missing), inline keys
// ---------------------------------------------------------------------------------------

fn required_token_resources(port: u16, backend: u16, jwks: &str) -> Value {
    use support::gateway::{hcm_listener, static_cluster};
    let jwt = json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"p": {
                "issuer": RS_ISSUER,
                "local_jwks": {"inline_string": jwks},
                "forward": true,
                "payload_in_metadata": RS_ISSUER,
            }},
            "rules": [
                {"match": {"prefix": "/open"}},
                {"match": {"prefix": "/"}, "requires": {"provider_name": "p"}},
            ],
        }
    });
    json!({
        "listeners": [hcm_listener("l", port, "r", json!({}), vec![jwt])],
        "routes": [{"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}
        ]}]}],
        "clusters": [static_cluster("backend", &[backend], json!({}))],
    })
}

#[test]
fn a_required_token_is_answered_as_envoy_answers() {
    let backend = EchoUpstream::start("backend");
    let key = Signer::rsa("k");
    let jwks = json!({"keys": [key.jwk()]}).to_string();
    let (ep, mp) = (free_port(), free_port());
    let dir = TempDir::new();
    let _envoy = envoy_with(&required_token_resources(ep, backend.port(), &jwks), &dir);
    let _mesh = InProcess::start(&required_token_resources(mp, backend.port(), &jwks));
    support::wait_for_port(ep, Duration::from_secs(20));
    let p = Pair {
        envoy: ep,
        mesh: mp,
    };
    let r = p.same("missing", "/a/b?c=d", &[]);
    assert_eq!(r["status"], 401);
    assert_eq!(r["body"], "Jwt is missing");
    assert_eq!(
        r["www-authenticate"],
        "Bearer realm=\"http://example.com/a/b?c=d\""
    );
    let r = p.same("rule without requirement", "/open", &[]);
    assert_eq!(r["status"], 200);
    let good = format!("Bearer {}", key.sign(&claims(RS_ISSUER, "x")));
    let r = p.same("valid, forwarded", "/", &[("authorization", &good)]);
    assert_eq!(r["status"], 200);
    assert_eq!(r["upstream"]["authorization"], json!([good]));
    // A long path is cut in the realm as Envoy cuts it.
    let long = format!("/{}", "x".repeat(400));
    let r = p.same("long path", &long, &[]);
    assert_eq!(r["status"], 401);
    // `authorization` twice is one value joined with `,` in Envoy: the token runs to the
    // end of it, and its signature is then not base64url.
    let r = p.same(
        "two authorization headers",
        "/",
        &[("authorization", &good), ("authorization", "Bearer abc")],
    );
    assert_eq!(r["body"], "Jwt signature is an invalid Base64url encoded");
    // Text after the token in the same header value is part of it too.
    let trailing = format!("{good} trailing");
    let r = p.same("text after the token", "/", &[("authorization", &trailing)]);
    assert_eq!(r["status"], 401);
}
