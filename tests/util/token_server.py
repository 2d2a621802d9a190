#!/usr/bin/env python3
"""A docker/distribution token server for clip's registry tests (standard library
plus the `openssl` command; started by tests/util/registry.rs).

Endpoints (`/token` is the realm the registry's `WWW-Authenticate` names):

- `GET /token?service=S&scope=repository:NAME:pull,push[&scope=...]` with HTTP
  Basic credentials: a JWT granting the requested actions (`push` and `*` only to
  authenticated users). Wrong credentials get 401. Without credentials: 401, or a
  pull-only token with `--anonymous-pull`. `offline_token=true` adds a
  `refresh_token` to the answer.
- `POST /token` (OAuth2, form-encoded): `grant_type=password` with
  `username`/`password`, or `grant_type=refresh_token` with the `refresh_token`
  given by `--refresh-token`; `service` and `scope` as above.
- `GET /count`: the number of tokens issued so far.

The JWT is ES256-signed with `--key`; its header carries the signing certificate
(`--cert`) in `x5c`, which the registry verifies against its `rootcertbundle`.
distribution 2.x accepts a token until `exp` + 60 s (its clock-skew leeway), so the
`exp` claim is `iat + ttl - --exp-offset` (the caller passes 60 to make the
registry reject the token `ttl` seconds after issue; `iat` is rounded up to a
whole second, so the token is good for at least `ttl` seconds). Answers say
`expires_in: ttl`, or `--expires-in` (a token that dies before the client expects).

On start it prints `PORT\n` on stdout; every token issued appends one line (JSON,
the token itself included, so tests can look for it where it must not be) to
`--log`. It runs until killed.
"""

import argparse
import base64
import binascii
import datetime
import http.server
import json
import math
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse

ARGS = None
LOCK = threading.Lock()
COUNT = 0


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_to_raw_es256(der):
    """ECDSA-Sig-Value (DER SEQUENCE of two INTEGERs) -> r || s, 32 bytes each."""

    def read_len(buf, i):
        n = buf[i]
        i += 1
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(buf[i : i + k], "big")
            i += k
        return n, i

    assert der[0] == 0x30, "not a DER sequence"
    _, i = read_len(der, 1)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02, "not a DER integer"
        n, i = read_len(der, i + 1)
        value = int.from_bytes(der[i : i + n], "big")
        i += n
        out += value.to_bytes(32, "big")
    return out


def sign(signing_input):
    der = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", ARGS.key],
        input=signing_input,
        capture_output=True,
        check=True,
    ).stdout
    return der_to_raw_es256(der)


def cert_chain():
    with open(ARGS.cert) as f:
        pem = f.read()
    body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    return ["".join(body.split())]


def parse_scopes(values, authenticated):
    """Scope strings -> the `access` claim: repository scopes get the requested
    actions that this client may have; other scopes (registry:catalog:*) go only to
    authenticated clients."""
    access = []
    for value in values:
        for scope in value.split(" "):
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            typ, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            if typ == "repository":
                allowed = {"pull", "push", "delete", "*"} if authenticated else {"pull"}
            elif authenticated:
                allowed = {"*"}
            else:
                allowed = set()
            granted = [a for a in actions if a in allowed]
            access.append({"type": typ, "name": name, "actions": granted})
    return access


def issue(subject, scopes, authenticated, via):
    global COUNT
    now = math.ceil(time.time())
    access = parse_scopes(scopes, authenticated)
    header = {"typ": "JWT", "alg": "ES256", "x5c": cert_chain()}
    claims = {
        "iss": ARGS.issuer,
        "sub": subject,
        "aud": ARGS.service,
        "exp": now + ARGS.ttl - ARGS.exp_offset,
        "nbf": now - 1,
        "iat": now,
        "jti": secrets.token_hex(16),
        "access": access,
    }
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    token = signing_input + "." + b64url(sign(signing_input.encode()))
    with LOCK:
        COUNT += 1
        with open(ARGS.log, "a") as f:
            entry = {
                "n": COUNT,
                "sub": subject,
                "via": via,
                "scopes": scopes,
                "access": access,
                "token": token,
            }
            f.write(json.dumps(entry) + "\n")
    issued_at = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    return token, issued_at.strftime("%Y-%m-%dT%H:%M:%SZ")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("token-server: " + (fmt % args) + "\n")

    def reply(self, status, body, extra=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def unauthorized(self, why):
        self.reply(
            401,
            {"errors": [{"code": "UNAUTHORIZED", "message": why}]},
            [("WWW-Authenticate", 'Basic realm="clip-test-token-server"')],
        )

    def basic_credentials(self):
        header = self.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return ("", "")
        return (user, password)

    def read_body(self):
        """The request body, with `Content-Length` or chunked (Go clients, e.g.
        containers/image's OAuth2 POST, send a form body chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0") or "0")
        return self.rfile.read(length)

    def check_service(self, service):
        if service and service != ARGS.service:
            self.reply(400, {"errors": [{"code": "DENIED", "message": "unknown service"}]})
            return False
        return True

    def grant(self, subject, scopes, authenticated, via, offline):
        token, issued_at = issue(subject, scopes, authenticated, via)
        body = {
            "token": token,
            "access_token": token,
            "expires_in": ARGS.expires_in or ARGS.ttl,
            "issued_at": issued_at,
        }
        if offline and authenticated and ARGS.refresh_token:
            body["refresh_token"] = ARGS.refresh_token
        self.reply(200, body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/count":
            with LOCK:
                self.reply(200, {"count": COUNT})
            return
        if url.path != "/token":
            self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        if not self.check_service(query.get("service", [""])[0]):
            return
        scopes = query.get("scope", [])
        offline = query.get("offline_token", [""])[0] == "true"
        creds = self.basic_credentials()
        if creds is None:
            if ARGS.anonymous_pull:
                self.grant("", scopes, False, "anonymous", False)
            else:
                self.unauthorized("authentication required")
            return
        if creds != (ARGS.user, ARGS.password):
            self.unauthorized("invalid username or password")
            return
        self.grant(ARGS.user, scopes, True, "basic", offline)

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        # Parameters may come in the query string too; the body wins.
        form = urllib.parse.parse_qs(url.query)
        form.update(urllib.parse.parse_qs(self.read_body().decode()))
        if url.path != "/token":
            self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        if not self.check_service(form.get("service", [""])[0]):
            return
        scopes = form.get("scope", [])
        grant_type = form.get("grant_type", [""])[0]
        offline = form.get("access_type", [""])[0] == "offline"
        if grant_type == "password":
            creds = (form.get("username", [""])[0], form.get("password", [""])[0])
            if creds != (ARGS.user, ARGS.password):
                self.reply(401, {"error": "invalid_grant"})
                return
            self.grant(ARGS.user, scopes, True, "oauth-password", offline)
        elif grant_type == "refresh_token":
            given = form.get("refresh_token", [""])[0]
            if not ARGS.refresh_token or given != ARGS.refresh_token:
                self.reply(401, {"error": "invalid_grant"})
                return
            self.grant(ARGS.user, scopes, True, "oauth-refresh", offline)
        else:
            self.reply(400, {"error": "unsupported_grant_type"})


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--key", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--refresh-token", default="")
    p.add_argument("--ttl", type=int, required=True)
    p.add_argument("--exp-offset", type=int, default=0)
    p.add_argument("--expires-in", type=int, default=0)
    p.add_argument("--anonymous-pull", action="store_true")
    p.add_argument("--log", required=True)
    ARGS = p.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    sys.stdout.write("%d\n" % server.server_address[1])
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    os.umask(0o077)
    main()
